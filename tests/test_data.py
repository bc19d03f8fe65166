import zipfile

import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import cli, data, dx7
from neuraldx7_jax.errors import Error


@pytest.fixture
def tree(tmp_path):
    """A small collection: 2 cartridges (one repeating 5 voices of the other, one with 3 invalid voices),
    a compact .bin, a non-DX7 .syx and a README that the walk ignores."""
    a, b, c = random_voices(32, 0), random_voices(32, 1), random_voices(7, 2)
    b[:5] = a[10:15]
    b[20, 0], b[21, 142], b[22, 20] = 120, 7, 15
    (tmp_path / "src" / "sub").mkdir(parents=True)
    dx7.save_cartridge(tmp_path / "src" / "a.syx", a)
    dx7.save_cartridge(tmp_path / "src" / "sub" / "B.SYX", b)
    (tmp_path / "src" / "sub" / "c.bin").write_bytes(dx7.pack(c).tobytes())
    (tmp_path / "src" / "sub" / "junk.syx").write_bytes(b"hello")
    (tmp_path / "src" / "README.md").write_text("not voices")
    return tmp_path, (a, b, c)


def test_build_small_tree(tree):
    root, (a, b, c) = tree
    summary = data.build_dataset([root / "src"], root / "d.npz", validation_fraction=0.3, progress=False)
    assert summary["files_read"] == 3
    assert summary["files_skipped"] == [["sub/junk.syx", f"{root / 'src' / 'sub' / 'junk.syx'}: not DX7 data "
                                         "(5 bytes, no DX7 SysEx message, not a whole number of 128-byte packed voices)"]]
    assert (summary["voices_found"], summary["invalid"], summary["clamped"], summary["duplicates"]) == (71, 3, 0, 5)
    d = data.load_dataset(root / "d.npz")
    assert summary["train"] + summary["validation"] == 63 == len(d["train"]) + len(d["validation"])
    assert 0 < summary["validation"] < 63 and d["summary"] == summary
    everything = np.concatenate([d["train"], d["validation"]])
    assert everything.dtype == np.uint8 and dx7.is_valid(everything).all()
    assert len(np.unique(everything, axis=0)) == 63
    files = {"a.syx": a, "sub/B.SYX": b, "sub/c.bin": c}
    for split in data.SPLITS:
        for voice, source, index in zip(d[split], d[f"{split}_source"], d[f"{split}_index"]):
            assert np.array_equal(files[source][index], voice)
    assert "sub/B.SYX" not in set(d["train_source"][d["train_index"] < 5]) | set(
        d["validation_source"][d["validation_index"] < 5])  # duplicates kept from a.syx


def test_clamp_keeps_invalid_voices_clamped(tree):
    root, _ = tree
    summary = data.build_dataset([root / "src"], root / "d.npz", clamp=True, progress=False)
    assert (summary["invalid"], summary["clamped"], summary["duplicates"]) == (3, 3, 5)
    assert summary["train"] + summary["validation"] == 66


def test_split_is_stable_as_files_are_added_and_order_free(tree):
    root, _ = tree
    src = root / "src"
    data.build_dataset([src / "a.syx"], root / "one.npz", validation_fraction=0.5, progress=False)
    data.build_dataset([src / "sub", src / "a.syx"], root / "all.npz", validation_fraction=0.5, progress=False)
    data.build_dataset([src / "a.syx", src / "sub"], root / "all2.npz", validation_fraction=0.5, progress=False)
    one, both, again = (data.load_dataset(root / n) for n in ("one.npz", "all.npz", "all2.npz"))
    for split in data.SPLITS:
        old = {v.tobytes() for v in one[split]}
        assert old <= {v.tobytes() for v in both[split]}
        for key in (split, f"{split}_source", f"{split}_index"):
            assert np.array_equal(both[key], again[key])


def test_shared_collection(shared_data, tmp_path):
    summary = data.build_dataset([shared_data], tmp_path / "d.npz", progress=False)
    files = sorted(shared_data.rglob("*.bin")) + sorted(shared_data.rglob("*.syx"))
    voices = np.concatenate([dx7.load(f) for f in files])
    valid = voices[dx7.is_valid(voices)]
    unique = np.unique(valid, axis=0)
    assert summary["files_read"] == 33 and summary["files_skipped"] == [] and summary["problems"] == []
    assert summary["voices_found"] == len(voices) == 29_811 + 1_024
    assert summary["invalid"] == len(voices) - len(valid)
    assert summary["duplicates"] == len(valid) - len(unique)
    d = data.load_dataset(tmp_path / "d.npz")
    both = np.concatenate([d["train"], d["validation"]])
    assert np.array_equal(np.unique(both, axis=0), unique)
    assert (summary["train"], summary["validation"]) == (len(d["train"]), len(d["validation"]))
    assert abs(len(d["validation"]) / len(both) - 0.05) < 0.01

    data.build_dataset([shared_data / "factory", shared_data / "compact-train.bin"], tmp_path / "a.npz",
                       progress=False)
    data.build_dataset([shared_data / "compact-train.bin", shared_data / "factory"], tmp_path / "b.npz",
                       progress=False)
    a, b = data.load_dataset(tmp_path / "a.npz"), data.load_dataset(tmp_path / "b.npz")
    for key in ("train", "validation", "train_source", "train_index", "validation_source", "validation_index"):
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(a["train"], d["train"]) and np.array_equal(a["validation"], d["validation"])


def test_load_dataset_errors(tmp_path):
    with pytest.raises(Error, match="no such dataset"):
        data.load_dataset(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(Error, match="not a dataset"):
        data.load_dataset(tmp_path / "text.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(Error, match="'train'"):
        data.load_dataset(tmp_path / "other.npz")
    with zipfile.ZipFile(tmp_path / "broken.npz", "w") as z:
        z.writestr("train.npy", b"garbage")
    with pytest.raises(Error, match="not a dataset"):
        data.load_dataset(tmp_path / "broken.npz")


def test_build_errors(tmp_path):
    with pytest.raises(Error, match="no such file"):
        data.build_dataset([tmp_path / "absent"], tmp_path / "d.npz", progress=False)
    (tmp_path / "junk.syx").write_bytes(b"hello")
    with pytest.raises(Error, match="no DX7 voices"):
        data.build_dataset([tmp_path], tmp_path / "d.npz", progress=False)
    assert not (tmp_path / "d.npz").exists()


def test_batch_indices_are_shuffled_epochs_and_stateless():
    n, b = 10, 3  # 3 batches an epoch; the last voice of each epoch's order is left out
    epoch0 = [data.batch_indices(n, b, seed=0, step=s) for s in range(3)]
    rows = np.concatenate(epoch0)
    assert len(set(rows.tolist())) == 9 and all(len(x) == b for x in epoch0)
    np.testing.assert_array_equal(data.batch_indices(n, b, 0, 1), epoch0[1])  # same step, same rows
    epoch1 = np.concatenate([data.batch_indices(n, b, 0, s) for s in range(3, 6)])
    assert not np.array_equal(rows, epoch1)  # a new order each epoch
    assert not np.array_equal(rows, np.concatenate([data.batch_indices(n, b, 1, s) for s in range(3)]))
    with pytest.raises(Error, match="fewer than one batch"):
        data.batch_indices(2, 3, 0, 0)

def test_cli_info_and_dataset(tree, capsys):
    root, (a, b, _) = tree
    assert cli.main(["info", str(root / "src" / "sub" / "B.SYX")]) == 0
    out = capsys.readouterr().out
    assert "32 voices, 29 valid" in out and "INVALID  out of range: OP6 R1=120" in out
    assert f" 1  {dx7.voice_name(b[0]):10s}  alg {b[0, 134] + 1:2d}  valid" in out
    assert cli.main(["info", str(root / "src" / "sub" / "junk.syx")]) == 2
    assert "not DX7 data" in capsys.readouterr().err

    out_file = root / "d.npz"
    assert cli.main(["dataset", "build", str(root / "src"), "--out", str(out_file),
                     "--validation-fraction", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "voices found    71" in out and "duplicates      5" in out and "skipped sub/junk.syx" in out
    assert cli.main(["dataset", "info", str(out_file)]) == 0
    out = capsys.readouterr().out
    d = data.load_dataset(out_file)
    assert f"train         {len(d['train']):5d} voices" in out and "a.syx" in out


def test_voices_of_damaged_messages_are_counted_and_strict_drops_them(tree, capsys):
    root, (a, b, c) = tree
    d = random_voices(32, 3)
    message = dx7.cartridge_message(d)
    (root / "src" / "damaged.syx").write_bytes(message[:-2] + bytes([(message[-2] + 1) & 0x7F, 0xF7]))
    (root / "src" / "nof7.syx").write_bytes(dx7.cartridge_message(random_voices(32, 4))[:-1] + b"\x00")
    summary = data.build_dataset([root / "src"], root / "d.npz", progress=False)
    assert (summary["strict"], summary["damaged_kept"], summary["damaged_dropped"]) == (False, 64, 0)
    assert summary["train"] + summary["validation"] == 63 + 64

    assert cli.main(["dataset", "build", str(root / "src"), "--out", str(root / "s.npz"), "--strict"]) == 0
    out = capsys.readouterr().out
    assert "damaged         64 voices of damaged messages dropped (--strict)" in out
    assert "skipped damaged.syx" in out and "skipped nof7.syx" in out
    summary = data.load_dataset(root / "s.npz")["summary"]
    assert (summary["damaged_kept"], summary["damaged_dropped"], summary["train"] + summary["validation"]) \
        == (0, 64, 63)
    assert cli.main(["dataset", "build", str(root / "src"), "--out", str(root / "k.npz")]) == 0
    assert "damaged         64 of the kept voices come from damaged messages" in capsys.readouterr().out


def test_a_file_of_headers_gives_a_short_reason(tmp_path):
    (tmp_path / "h.syx").write_bytes(bytes([0xF0, 0x43, 0, 9, 0x20, 0]) * (1 << 18))
    dx7.save_cartridge(tmp_path / "a.syx", random_voices(32, 5))
    summary = data.build_dataset([tmp_path], tmp_path / "d.npz", progress=False)
    (rel, reason), = summary["files_skipped"]
    assert rel == "h.syx" and len(reason) < 2000 and "more problems" in reason


def test_info_of_one_voice_shows_every_parameter(tree, capsys):
    root, (a, b, _) = tree
    path = root / "src" / "sub" / "B.SYX"
    assert cli.main(["info", f"{path}:21"]) == 0  # b[20] has OP6 R1 = 120
    out = capsys.readouterr().out
    assert f"{path}: voice 21 of 32, out of range: OP6 R1=120" in out
    assert f"name '{dx7.voice_name(b[20])}'  algorithm {b[20, 134] + 1}" in out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines()[3:24]}
    assert list(rows) == ["R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4", "BP", "LD", "RD", "LC", "RC",
                          "RS", "AMS", "KVS", "OL", "MODE", "FC", "FF", "DET"]
    assert rows["R1"][5] == "120!" and rows["OL"] == [str(b[20, (6 - op) * 21 + 16]) for op in range(1, 7)]
    assert f"FB {b[20, 135]}" in out and f"TRNSP {b[20, 144]}" in out
    assert cli.main(["info", f"{path}:33"]) == 2
    assert "no voice 33" in capsys.readouterr().err


def test_distinct_voices_are_counted_by_sound_not_name():
    voices = random_voices(3, 21)
    renamed = voices[[0]].copy()
    renamed[0, dx7.NAME] = np.frombuffer(b"OTHER NAME", np.uint8)
    assert data.count_distinct(np.concatenate([voices, renamed, voices[[1]]])) == 3
