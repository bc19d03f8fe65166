"""Audio command: render (needs the `audio` extra; neuraldx7_jax.audio is imported only when it runs)."""
from neuraldx7_jax.commands.formats import read_voices
from neuraldx7_jax.commands.options import DX7_FILE, Option, subcommand
from neuraldx7_jax.errors import Error


def parse_voices(spec, count):
    """'1,5-8' -> [1, 5, 6, 7, 8]: voice numbers from 1, in the order given, each once; None -> all."""
    if spec is None:
        return list(range(1, count + 1))
    numbers, seen = [], set()
    for part in spec.split(","):
        low, dash, high = part.strip().partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise Error(f"bad --voices {spec!r}: {part.strip()!r} is not N or N-M "
                        f"(voice numbers from 1, e.g. 1,5-8)") from None
        if first < 1 or first > last:
            raise Error(f"bad --voices {spec!r}: in {part.strip()!r} voice numbers start at 1 and N-M needs N <= M")
        if last > count:
            raise Error(f"bad --voices {spec!r}: voice {last} asked for, the file has {count}")
        numbers += [n for n in range(first, last + 1) if n not in seen]
        seen.update(range(first, last + 1))
    return numbers


def _level(dbfs):
    return f"{dbfs:8.1f}"


OPTIONS = (
    DX7_FILE,
    Option("out_dir", required=True, metavar="DIR", help="folder for the WAVs and summary.csv"),
    Option("note", int, 60, "MIDI note, 60 = C4 (default: 60)"),
    Option("velocity", int, 100, "MIDI velocity 1-127 (default: 100)"),
    Option("seconds", float, 1.5, "length of each WAV (default: 1.5)"),
    Option("sample_rate", int, 48000, "Hz (default: 48000)"),
    Option("voices", metavar="SPEC", help="voice numbers from 1, e.g. 1,5-8 (default: all)"),
    Option("plot", bool, help="also write envelopes.png: each voice's RMS level over time"),
)


@subcommand("render", "Render voices to WAV files through Dexed, with their loudness (needs the audio extra).", (
    "Play one note of each voice of a DX7 file through the Dexed engine (dexed-py, GPL-3.0: "
    'pip install "neuraldx7-jax[audio]") and write one 16-bit mono WAV per voice, named by '
    "number and name (01_E.PIANO_1.wav), and summary.csv with each voice's RMS and peak level "
    "in dBFS and a flag for silent voices (RMS not above -60 dBFS). The key is held until 0.5 s "
    "(at most a third of the length) before the end, then released."), OPTIONS)
def render(args):
    from neuraldx7_jax import audio

    voices = read_voices(args.file)
    numbers = parse_voices(args.voices, len(voices))
    rows, png = audio.render_to_dir(voices[[n - 1 for n in numbers]], numbers, args.out_dir, note=args.note,
                                    velocity=args.velocity, seconds=args.seconds,
                                    sample_rate=args.sample_rate, plot=args.plot)
    print(f"{'voice':>5s}  {'name':10s}  {'RMS dBFS':>8s}  {'peak dBFS':>9s}  file")
    for row in rows:
        flags = ("  SILENT" if row["silent"] else "") + (
            f"  (clamped: {row['out_of_range']})" if row["out_of_range"] else "")
        print(f"{row['voice']:5d}  {row['name']:10s}  {_level(row['rms_dbfs'])}  "
              f"{_level(row['peak_dbfs']):>9s}  {row['file']}{flags}")
    silent = sum(row["silent"] for row in rows)
    print(f"wrote {len(rows)} WAVs and summary.csv to {args.out_dir}"
          + (f", and {png.name}" if png else "")
          + f"; {silent} silent (RMS not above {audio.SILENCE_DBFS:g} dBFS)")
