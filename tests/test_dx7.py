import warnings

import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import dx7
from neuraldx7_jax.errors import Error


def used_bits():
    """(128,) uint8: the bits of each packed byte that some field of the table uses."""
    used = np.zeros(dx7.PACKED_SIZE, np.uint8)
    for p in dx7.PARAMS:
        used[p.byte] |= ((1 << p.bits) - 1) << p.shift
    return used


def write(path, *parts):
    path.write_bytes(b"".join(parts))
    return path


def bulk(voices, channel=0, check=None):
    data = dx7.pack(voices).tobytes()
    return bytes([0xF0, 0x43, channel, 0x09, 0x20, 0x00]) + data \
        + bytes([dx7.checksum(data) if check is None else check, 0xF7])


def test_table_derived_arrays():
    assert dx7.value_mask().shape == (155, 128)
    assert dx7.value_mask().sum() == int(dx7.MAX.astype(int).sum()) + 155
    assert [p.index for p in dx7.PARAMS] == list(range(155))
    # No two fields share a bit of the packed voice, and bit 7 is never used.
    bits = np.zeros(dx7.PACKED_SIZE, int)
    for p in dx7.PARAMS:
        bits[p.byte] += ((1 << p.bits) - 1) << p.shift
    assert np.array_equal(bits, used_bits()) and used_bits().max() < 0x80


def test_packed_layout_matches_the_format_doc():
    voice = np.zeros(155, np.uint8)
    voice[[11, 12, 13, 20]] = 3, 2, 5, 14  # op 6: LC, RC, RS, DET
    voice[[14, 15, 17, 18]] = 1, 6, 1, 31  # op 6: AMS, KVS, MODE, FC
    voice[[134, 135, 136]] = 31, 7, 1  # ALG, FB, OKS
    voice[[141, 142, 143, 144]] = 1, 5, 7, 48  # LKS, LFW, LPMS, TRNSP
    voice[105] = 99  # op 1 R1
    packed = dx7.pack(voice[None])[0]
    assert packed[11] == 3 | 2 << 2 and packed[12] == 5 | 14 << 3
    assert packed[13] == 1 | 6 << 2 and packed[15] == 1 | 31 << 1
    assert packed[110] == 31 and packed[111] == 7 | 1 << 3
    assert packed[116] == 1 | 5 << 1 | 7 << 4 and packed[117] == 48 and packed[85] == 99


@pytest.mark.parametrize("seed", range(5))
def test_pack_unpack_round_trip(seed):
    voices = random_voices(64, seed)
    packed = dx7.pack(voices)
    assert packed.shape == (64, 128) and packed.dtype == np.uint8
    assert np.array_equal(dx7.unpack(packed), voices)
    junk = np.random.default_rng(seed).integers(0, 256, (64, 128), dtype=np.uint8)
    assert np.array_equal(dx7.pack(dx7.unpack(junk)), junk & used_bits())


def test_pack_rejects_bad_shapes_and_values():
    with pytest.raises(Error):
        dx7.pack(np.zeros((2, 154)))
    with pytest.raises(Error):
        dx7.pack(np.full((1, 155), 128))


def test_factory_cartridges_round_trip(shared_data, tmp_path):
    files = sorted((shared_data / "factory").glob("*.syx"))
    assert len(files) == 32
    used = np.tile(used_bits(), 32)
    changed = []
    for path in files:
        raw = np.frombuffer(path.read_bytes(), np.uint8)
        voices = dx7.load(path)
        assert voices.shape == (32, 155)
        dx7.save_cartridge(tmp_path / path.name, voices)
        new = np.frombuffer((tmp_path / path.name).read_bytes(), np.uint8)
        junk = np.flatnonzero(raw[6:4102] & ~used) + 6
        assert np.array_equal(new[6:4102], raw[6:4102] & used)
        expected = sorted(junk) + ([4102] if len(junk) else [])
        assert list(np.flatnonzero(new != raw)) == expected, path.name
        if len(junk):
            changed.append(path.name)
            assert new[4102] == dx7.checksum(new[6:4102].tobytes())
    assert changed == ["rom3a.syx", "rom3b.syx"]


def test_single_voice_message_round_trip():
    voice = random_voices(1, 1)[0]
    message = dx7.single_voice_message(voice, channel=5)
    assert len(message) == 163 and message[:6] == bytes([0xF0, 0x43, 0x05, 0x00, 0x01, 0x1B])
    assert message[-1] == 0xF7 and (sum(message[6:162]) & 0x7F) == 0
    assert np.array_equal(dx7.parse_single_voice(message), voice)
    bad = message[:161] + bytes([(message[161] + 1) & 0x7F, 0xF7])
    with pytest.warns(dx7.ChecksumWarning):
        dx7.parse_single_voice(bad)
    with pytest.raises(dx7.FormatError):
        dx7.parse_single_voice(message[:-1])


def test_several_messages_any_channel_other_sysex_between(tmp_path):
    a, b, c = random_voices(32, 2), random_voices(32, 3), random_voices(1, 4)
    roland = bytes([0xF0, 0x41, 0x10, 0x42, 0x12, 0x40, 0x00, 0x7F, 0x00, 0x41, 0xF7])
    path = write(tmp_path / "mix.SYX", bulk(a, 0), roland, dx7.single_voice_message(c[0], 15),
                 b"\x00junk", bulk(b, 9))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voices = dx7.load(path)
    assert np.array_equal(voices, np.concatenate([a, c, b]))


def test_headerless_bank_and_compact_bin(tmp_path):
    voices = random_voices(32, 5)
    assert np.array_equal(dx7.load(write(tmp_path / "bank.syx", dx7.pack(voices).tobytes())), voices)
    assert np.array_equal(dx7.load(write(tmp_path / "c.bin", dx7.pack(voices[:3]).tobytes())), voices[:3])
    with pytest.raises(dx7.FormatError, match="not DX7 data"):
        dx7.load(write(tmp_path / "odd.bin", dx7.pack(voices[:3]).tobytes() + b"\x00"))


def test_wrong_or_missing_checksum_warns_and_strict_drops(tmp_path):
    a, b = random_voices(32, 6), random_voices(32, 7)
    wrong = (dx7.checksum(dx7.pack(b).tobytes()) + 1) & 0x7F
    path = write(tmp_path / "bad.syx", bulk(a), bulk(b, check=wrong))
    with pytest.warns(dx7.ChecksumWarning, match=r"bad\.syx: message 2 at byte 4104: checksum"):
        assert np.array_equal(dx7.load(path), np.concatenate([a, b]))
    with pytest.warns(dx7.ChecksumWarning):
        assert np.array_equal(dx7.load(path, strict=True), a)
    missing = write(tmp_path / "missing.syx", bulk(a)[:-2] + b"\xf7")
    with pytest.warns(dx7.ChecksumWarning, match="no checksum"):
        assert np.array_equal(dx7.load(missing), a)


def test_bit7_and_unused_bits_are_ignored(tmp_path):
    voices = random_voices(32, 8)
    packed = dx7.pack(voices)
    dirty = packed | (~np.tile(used_bits(), (32, 1)) & np.uint8(0xFF))  # every ignored bit set
    data = dirty.tobytes()
    path = write(tmp_path / "dirty.syx", bytes([0xF0, 0x43, 0, 9, 0x20, 0]), data,
                 bytes([dx7.checksum(data), 0xF7]))
    assert np.array_equal(dx7.load(path), voices)
    single = bytearray(dx7.single_voice_message(voices[0]))
    single[6:161] = bytes(x | 0x80 for x in single[6:161])
    assert np.array_equal(dx7.load(write(tmp_path / "one.syx", bytes(single))), voices[:1])


def test_out_of_range_fields_survive_and_are_invalid(tmp_path):
    voices = random_voices(32, 9)
    voices[3, 0], voices[3, 20], voices[3, 142] = 120, 15, 7  # OP6 R1, OP6 DET, LFW
    loaded = dx7.load(write(tmp_path / "range.syx", bulk(voices)))
    assert np.array_equal(loaded, voices)
    assert list(np.flatnonzero(~dx7.is_valid(loaded))) == [3]
    assert dx7.out_of_range(loaded[3]) == ["OP6 R1=120", "OP6 DET=15", "LFW=7"]
    single = voices[3].copy()
    single[17] = 100  # OP6 MODE: a single-voice dump keeps all 7 bits
    one = dx7.load(write(tmp_path / "one.syx", dx7.single_voice_message(single)))
    assert one[0, 17] == 100 and not dx7.is_valid(one)[0]
    assert dx7.is_valid(dx7.clamp(one)).all()


def test_truncated_files(tmp_path):
    a = random_voices(32, 10)
    cut = write(tmp_path / "cut.syx", bulk(a)[:2000])
    with pytest.raises(dx7.FormatError, match=r"cut\.syx: message 1 at byte 0: truncated"):
        dx7.load(cut)
    last = write(tmp_path / "last.syx", bulk(a), bulk(a)[:100])
    with pytest.warns(dx7.FormatWarning, match="message 2 at byte 4104: truncated"):
        assert np.array_equal(dx7.load(last), a)
    middle = write(tmp_path / "middle.syx", bulk(a)[:3000], bulk(a))
    with pytest.warns(dx7.FormatWarning, match="truncated"):
        assert np.array_equal(dx7.load(middle), a)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.syx", b"", "empty file"),
    ("notes.txt", b"not a synth patch\n", "not DX7 data"),
    ("roland.syx", bytes([0xF0, 0x41, 0x10, 0x42, 0x12, 0x00, 0xF7]), "no DX7 voice message"),
])
def test_unreadable_files(tmp_path, name, content, reason):
    path = write(tmp_path / name, content)
    with pytest.raises(dx7.FormatError, match=reason) as e:
        dx7.load(path)
    assert str(path) in str(e.value) and isinstance(e.value, Error)
    voices, intact, problems = dx7.read_file(path)
    assert voices.shape == (0, 155) and intact.shape == (0,) and len(problems) == 1 and reason in problems[0]


def test_read_file_reports_without_raising_or_warning(tmp_path):
    a = random_voices(32, 11)
    path = write(tmp_path / "bad.syx", bulk(a, check=(dx7.checksum(dx7.pack(a).tobytes()) + 1) & 0x7F))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        voices, intact, problems = dx7.read_file(path)
        assert np.array_equal(voices, a) and not intact.any() and "checksum" in problems[0]
        voices, intact, problems = dx7.read_file(tmp_path / "absent.syx")
    assert len(voices) == 0 and "absent.syx" in problems[0]


def test_save_cartridge_and_single_voice(tmp_path):
    voices = random_voices(64, 12)
    dx7.save_cartridge(tmp_path / "two.syx", voices, channel=3)
    raw = (tmp_path / "two.syx").read_bytes()
    assert len(raw) == 2 * 4104 and raw[2] == 3 and raw[4104 + 2] == 3
    assert np.array_equal(dx7.load(tmp_path / "two.syx"), voices)
    with pytest.raises(Error, match="multiple of 32"):
        dx7.save_cartridge(tmp_path / "bad.syx", voices[:33])
    dx7.save_single_voice(tmp_path / "one.syx", voices[0])
    assert len((tmp_path / "one.syx").read_bytes()) == 163
    assert np.array_equal(dx7.load(tmp_path / "one.syx"), voices[:1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.syx", "two.syx"]  # no temp files left


def test_voice_name():
    voice = np.zeros(155, np.uint8)
    voice[dx7.NAME] = list(b"E.PIANO") + [0x7F, 0x0A, 0x20]
    assert dx7.voice_name(voice) == "E.PIANO"
    voice[145 + 8] = ord("1") | 0x80  # after a DEL, shown as a space
    assert dx7.voice_name(voice) == "E.PIANO 1"


def test_saving_creates_missing_directories(tmp_path):
    voices = np.zeros((32, dx7.N_PARAMS), np.uint8)
    dx7.save_cartridge(tmp_path / "new" / "dir" / "cart.syx", voices)
    np.testing.assert_array_equal(dx7.load(tmp_path / "new" / "dir" / "cart.syx"), voices)


def test_header_only_file_is_one_short_message_fast(tmp_path):
    import resource
    import time
    path = write(tmp_path / "h.syx", bytes([0xF0, 0x43, 0, 9, 0x20, 0]) * (2 << 20))  # 12 MB of headers
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    with pytest.raises(dx7.FormatError) as e:
        dx7.load(path)
    assert time.perf_counter() - t < 10
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 400 << 10  # KiB
    message = str(e.value)
    assert len(message) < 2000 and "\n" not in message, message[:3000]
    assert str(path) in message and f"{(2 << 20) - dx7.PROBLEMS_SHOWN:,} more" in message and "truncated" in message
    voices, problems = dx7.read_file(path)[::2]
    assert len(voices) == 0 and len("; ".join(problems)) < 2000


def test_repeated_problems_are_counted_not_listed(tmp_path):
    a = random_voices(32, 13)
    bad = bulk(a, check=(dx7.checksum(dx7.pack(a).tobytes()) + 1) & 0x7F)
    path = write(tmp_path / "many.syx", bad * 40)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert len(dx7.load(path)) == 40 * 32
    texts = [str(w.message) for w in caught]
    assert len(texts) == dx7.PROBLEMS_SHOWN + 1
    assert texts[-1] == f"{path}: and {40 - dx7.PROBLEMS_SHOWN} more problems: " \
                        f"{40 - dx7.PROBLEMS_SHOWN} bad checksums"


@pytest.mark.parametrize("header", [dx7.BULK_HEADER, dx7.SINGLE_HEADER], ids=["bulk", "single"])
def test_a_header_inside_a_framed_message_is_data(tmp_path, header):
    voices = random_voices(32, 14)
    packed = dx7.pack(voices)
    packed[3, 118:124] = np.frombuffer(header, np.uint8)  # the name bytes (and bit 7) form a header
    data = packed.tobytes()
    message = dx7.BULK_HEADER + data + bytes([dx7.checksum(data), 0xF7])
    path = write(tmp_path / "inner.syx", message, bulk(voices[:32]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = dx7.load(path)
    assert len(loaded) == 64
    np.testing.assert_array_equal(loaded[:32], dx7.unpack(packed))
    np.testing.assert_array_equal(loaded[32:], voices)


def test_strict_drops_messages_with_wrong_framing(tmp_path):
    a, b = random_voices(32, 15), random_voices(32, 16)
    path = write(tmp_path / "nof7.syx", bulk(a)[:-1] + b"\x00", bulk(b))  # message 1: no F7 after the checksum
    with pytest.warns(dx7.FormatWarning, match="message 1 at byte 0: no F7"):
        assert np.array_equal(dx7.load(path), np.concatenate([a, b]))
    with pytest.warns(dx7.FormatWarning):
        assert np.array_equal(dx7.load(path, strict=True), b)
    voices, intact, _ = dx7.read_file(path)
    assert list(intact) == [False] * 32 + [True] * 32
