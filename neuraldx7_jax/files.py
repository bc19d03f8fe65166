"""Writing output files: all or nothing, never replacing what is not a regular file.

A regular file (or a new one) is written through a temporary file beside it, renamed over it at
the end: a killed or failed write leaves the old file. A symlink is written through: the
temporary file goes beside its target and is renamed onto the target, so the link stays. What is
not a regular file (a FIFO, a character device such as /dev/null or /dev/full, a socket) and
the names of a process's open files (/dev/stdout, /dev/stderr, /dev/fd/N, /proc/PID/fd/N) are
written in place, streamed, never replaced: `--out /dev/stdout | ...` works. A directory is an
error. No JAX, no numpy.
"""
import os
import re
import stat
import tempfile
import time
from pathlib import Path

from neuraldx7_jax.errors import Error

STALE_SECONDS = 600  # a temporary file of ours older than this was left by a killed write
# What _temp_file names: .NAME.PID.XXXXXXXX.tmp (before the PID was in the name: .NAME.XXXXXXXX.tmp)
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
_TEMP_PID = re.compile(r"\..+\.([0-9]+)\.[a-z0-9_]{8}\.tmp")
_FD_ALIAS = re.compile(r"/dev/(stdout|stderr|stdin|fd/[0-9]+)|/proc/[^/]+/fd/[0-9]+")


def _temp_file(folder, path):
    return tempfile.mkstemp(dir=folder, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")


def in_place(path):
    """Whether `path` is written in place (streamed) rather than replaced: an open file's name
    (/dev/stdout, /dev/fd/N...) or, following links, something that is not a regular file or a
    directory (a FIFO, a device, a socket)."""
    if _FD_ALIAS.fullmatch(os.path.abspath(path)):
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def is_stdout(path):
    """Whether writing `path` writes this process's standard output (`--out /dev/stdout`)."""
    try:
        return os.path.samestat(os.stat(path), os.fstat(1))
    except (OSError, ValueError):
        return False


def _target(path):
    """Where an atomic write of `path` goes: the file a symlink points to, else `path`."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


def check_writable(*paths):
    """Raises Error naming the path unless each of `paths` could be written by `write_atomic`:
    called before long work, so a bad destination fails at once. Creates nothing, opens nothing."""
    for given in map(Path, paths):
        if in_place(given):
            if not os.access(given, os.W_OK):
                raise Error(f"{given}: cannot write there")
            continue
        path = _target(given)
        if path.is_dir():
            raise Error(f"{given}: is a directory; give a file name")
        folder = path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        if not folder.is_dir():
            raise Error(f"{given}: cannot write there: {folder} is not a directory")
        try:
            fd, tmp = _temp_file(folder, path)
        except OSError as e:
            raise Error(f"{given}: cannot write there: cannot create a file in {folder} ({e.strerror or e})") from None
        os.close(fd)
        os.unlink(tmp)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        return True
    return True


def _remove_stale_temps(folder):
    """Deletes the temporary files of writes killed before their rename: only names of our
    pattern, when the process that made it is gone, or (no process named, or a live one: perhaps
    a write in progress) when older than STALE_SECONDS."""
    now = time.time()
    for tmp in folder.glob(".*.tmp"):
        try:
            if not (_TEMP_NAME.fullmatch(tmp.name) and tmp.is_file()):
                continue
            pid = _TEMP_PID.fullmatch(tmp.name)
            if (pid and int(pid[1]) != os.getpid() and not _alive(int(pid[1]))) or now - tmp.lstat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass


def _write_in_place(path, data):
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise Error(f"{path}: cannot write ({e.strerror or e})") from None


def write_atomic(path, data):
    """Writes `data` to `path` through a temporary file beside it (beside a symlink's target):
    all or nothing; what is not a regular file is written in place (see the module). Missing
    parent directories are created; temporary files of killed writes are removed. Errors name
    `path`, not the temporary file."""
    given = Path(path)
    if in_place(given):
        return _write_in_place(given, data)
    path = _target(given)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path.parent)
        fd, tmp = _temp_file(path.parent, path)
    except OSError as e:
        raise Error(f"{given}: cannot write there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise Error(f"{given}: cannot write ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
