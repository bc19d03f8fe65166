"""Audio command: render (needs the `audio` extra; neuraldx7_jax.audio is imported only when it runs)."""
from neuraldx7_jax import dx7
from neuraldx7_jax.commands.options import command
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


@command("render", "Render voices to WAV files through Dexed, with their loudness (needs the audio extra).")
def render(parser):
    parser.description = (
        "Play one note of each voice of a DX7 file through the Dexed engine (dexed-py, GPL-3.0: "
        'pip install "neuraldx7-jax[audio]") and write one 16-bit mono WAV per voice, named by '
        "number and name (01_E.PIANO_1.wav), and summary.csv with each voice's RMS and peak level "
        "in dBFS and a flag for silent voices (RMS not above -60 dBFS). The key is held until 0.5 s "
        "(at most a third of the length) before the end, then released.")
    parser.add_argument("file", metavar="FILE", help="a .syx file, a headerless 4096-byte bank or a compact .bin")
    parser.add_argument("--out-dir", required=True, metavar="DIR", help="folder for the WAVs and summary.csv")
    parser.add_argument("--note", type=int, default=60, help="MIDI note, 60 = C4 (default: 60)")
    parser.add_argument("--velocity", type=int, default=100, help="MIDI velocity 1-127 (default: 100)")
    parser.add_argument("--seconds", type=float, default=1.5, help="length of each WAV (default: 1.5)")
    parser.add_argument("--sample-rate", type=int, default=48000, help="Hz (default: 48000)")
    parser.add_argument("--voices", metavar="SPEC", help="voice numbers from 1, e.g. 1,5-8 (default: all)")
    parser.add_argument("--plot", action="store_true",
                        help="also write envelopes.png: each voice's RMS level over time")

    def run(args):
        from neuraldx7_jax import audio

        voices, warned = dx7.load_with_warnings(args.file)
        for text in warned:
            print(f"warning: {text}")
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
    return run
