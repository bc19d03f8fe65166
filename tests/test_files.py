"""Writing output files (`files`): atomic replacement of regular files, symlinks written through,
FIFOs and devices streamed, and the temporary files of killed writes cleaned up."""
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, random_voices
from neuraldx7_jax import dx7, files
from neuraldx7_jax.errors import Error


def test_stale_temporary_files_of_killed_writes_are_removed(tmp_path):
    old = time.time() - files.STALE_SECONDS - 60
    stale = [tmp_path / ".cart.syx.k3j_9x2a.tmp", tmp_path / ".other.npz.abcdefgh.tmp"]
    young = tmp_path / ".cart.syx.zzzzzzzz.tmp"  # perhaps another process's write in progress
    mine = tmp_path / f".cart.syx.{os.getpid()}.zzzzzzzz.tmp"  # a live process's: in progress
    theirs = [tmp_path / ".notes.tmp", tmp_path / "x.abcdefgh.tmp"]  # not our pattern
    for p in stale + [young, mine] + theirs:
        p.write_bytes(b"partial")
        if p not in (young, mine):
            os.utime(p, (old, old))
    dx7.save_cartridge(tmp_path / "new.syx", random_voices(32, 17))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [young.name, mine.name, "new.syx"] + [p.name for p in theirs])


@pytest.mark.slow
def test_a_write_killed_midway_leaves_a_temporary_file_the_next_write_removes(tmp_path):
    """SIGKILL inside the write window leaves `.NAME.PID.XXXXXXXX.tmp`; the next write into that
    folder removes it at once (its process is gone), not only once it is 10 minutes old."""
    killed = subprocess.run([sys.executable, "-c", (
        "import os, signal, sys; from pathlib import Path; from neuraldx7_jax import files; "
        f"fd, tmp = files._temp_file(Path({str(tmp_path)!r}), Path('cart.syx')); os.write(fd, b'half'); "
        "os.kill(os.getpid(), signal.SIGKILL)")], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert killed.returncode == -signal.SIGKILL
    left, = tmp_path.glob(".cart.syx.*.tmp")
    dx7.save_cartridge(tmp_path / "other.syx", random_voices(32, 1))
    assert not left.exists() and [p.name for p in tmp_path.iterdir()] == ["other.syx"]


def test_unwritable_destinations_name_the_path_given(tmp_path):
    (tmp_path / "dir.syx").mkdir()
    (tmp_path / "file").write_bytes(b"")
    for bad, reason in [(tmp_path / "dir.syx", "is a directory"), (tmp_path / "file" / "x.syx", "not a directory"),
                        (Path("/proc/x.syx"), "cannot write there")]:
        with pytest.raises(Error, match=reason) as e:
            files.check_writable(bad)
        assert str(e.value).startswith(f"{bad}: ")
        with pytest.raises(Error) as e:
            dx7.save_cartridge(bad, random_voices(32, 18))
        assert str(e.value).startswith(f"{bad}: ") and ".tmp" not in str(e.value)
    files.check_writable(tmp_path / "new" / "dir" / "x.syx", tmp_path / "y.syx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.syx", "file"]  # nothing created


def test_a_symlink_is_written_through_to_its_target(tmp_path):
    """A link into a synth's patch folder stays a link; its target gets the new bytes, atomically
    (the temporary file beside the target)."""
    (tmp_path / "patches").mkdir()
    target = tmp_path / "patches" / "cart.syx"
    target.write_bytes(b"old")
    link = tmp_path / "out.syx"
    link.symlink_to(target)
    voices = random_voices(32, 2)
    files.check_writable(link)
    dx7.save_cartridge(link, voices)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert (dx7.load(target) == voices).all()
    dangling = tmp_path / "new.syx"
    dangling.symlink_to(tmp_path / "patches" / "new.syx")
    dx7.save_cartridge(dangling, voices)
    assert dangling.is_symlink() and (tmp_path / "patches" / "new.syx").read_bytes() == target.read_bytes()
    assert sorted(p.name for p in (tmp_path / "patches").iterdir()) == ["cart.syx", "new.syx"]


@pytest.mark.slow
def test_a_fifo_is_streamed_not_replaced(tmp_path):
    fifo = tmp_path / "f"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    voices = random_voices(32, 3)
    files.check_writable(fifo)
    dx7.save_cartridge(fifo, voices)
    got, _ = reader.communicate(timeout=30)
    assert got == dx7.cartridge_message(voices) and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_devices_are_written_in_place(tmp_path):
    """/dev/null and /dev/full are written, never replaced (as root, a replacing write once turned
    /dev/null into a regular file): checked before writing to them."""
    assert files.in_place("/dev/null") and files.in_place("/dev/stdout")
    dx7.save_cartridge("/dev/null", random_voices(32, 4))
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full here")
    assert files.in_place("/dev/full")
    with pytest.raises(Error, match=r"^/dev/full: cannot write \(No space left on device\)$"):
        dx7.save_cartridge("/dev/full", random_voices(32, 4))
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def _cli(*argv):
    return subprocess.run([sys.executable, "-m", "neuraldx7_jax", *argv], cwd=ROOT, capture_output=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.slow
def test_out_dev_stdout_pipes_the_file_alone_and_dev_full_is_one_line(tmp_path):
    """`generate --out /dev/stdout | ...` gets the cartridge's bytes alone on stdout (the summary
    goes to stderr); `--out /dev/full` is one line, exit code 2; so is a directory."""
    assert files.in_place("/dev/stdout") and files.in_place("/dev/full")  # never replaced, even by a bug
    run = _cli("generate", "--out", "/dev/stdout", "--seed", "3")
    assert run.returncode == 0, run.stderr
    assert _cli("generate", "--out", str(tmp_path / "c.syx"), "--seed", "3").returncode == 0
    assert run.stdout == (tmp_path / "c.syx").read_bytes() and b"wrote /dev/stdout" in run.stderr
    dx7.save_cartridge(tmp_path / "in.syx", random_voices(32, 5))
    for out, words in (("/dev/full", "/dev/full: cannot write (No space left on device)"),
                       (str(tmp_path), f"{tmp_path}: is a directory; give a file name")):
        run = _cli("dataset", "build", str(tmp_path / "in.syx"), "--out", out)  # (after its progress bar)
        assert run.returncode == 2 and run.stderr.decode().split("\r")[-1].strip().splitlines() == [
            f"neuraldx7 dataset: error: {words}"], run.stderr
