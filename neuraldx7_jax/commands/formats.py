"""Format and dataset commands: info, dataset build, dataset info."""
from collections import Counter
from pathlib import Path

from neuraldx7_jax import data, dx7, files
from neuraldx7_jax.commands.options import DX7_FILE, Option, add_arguments, command, subcommand
from neuraldx7_jax.errors import Error


INFO = (
    DX7_FILE._replace(help=DX7_FILE.help + "; FILE:INDEX for one voice"),
    Option("strict", bool, help="drop voices whose message has a bad checksum"),
)


@subcommand("info", "List the voices of a DX7 file (.syx, headerless bank or compact .bin).", (
    "List every voice of a DX7 file: number, name, algorithm (1-32), whether all 155 fields "
    "are in range and, if not, which fields are out of range. Problems in the file (bad "
    "checksums, truncated messages) are printed as warnings. FILE:INDEX (from 1) shows that "
    "voice's every parameter instead: the operators side by side, then the global ones."), INFO)
def info(args):
    head, sep, index = args.file.rpartition(":")
    if sep and index.isdigit() and not Path(args.file).exists():
        return _show_voice(args.file, head, int(index), args.strict)
    voices, warned = dx7.load_with_warnings(args.file, strict=args.strict)
    valid = dx7.is_valid(voices)
    print(f"{args.file}: {len(voices)} voices, {valid.sum()} valid")
    for n, (voice, ok) in enumerate(zip(voices, valid), 1):
        bad = "" if ok else "  out of range: " + ", ".join(dx7.out_of_range(voice))
        print(f"{dx7.voice_line(n, voice)}  {'valid' if ok else 'INVALID'}{bad}")
    for text in warned:
        print(f"warning: {text}")


def read_voices(path):
    """The voices of the DX7 file `path`, its warnings printed first (render, send)."""
    voices, warned = dx7.load_with_warnings(path)
    for text in warned:
        print(f"warning: {text}")
    return voices


def _show_voice(spec, file, index, strict):
    voices, warned = dx7.load_with_warnings(file, strict=strict)
    if not 1 <= index <= len(voices):
        raise Error(f"{spec}: no voice {index}; {file} holds {len(voices)} (numbered from 1)")
    voice = voices[index - 1]
    print(f"{file}: voice {index} of {len(voices)}, "
          + ("valid" if dx7.is_valid(voice[None])[0] else "out of range: " + ", ".join(dx7.out_of_range(voice))))
    print(dx7.describe_voice(voice))
    for text in warned:
        print(f"warning: {text}")


BUILD = (
    Option("sources", positional=True, many=True, metavar="SRC", help="a DX7 file or a directory of them"),
    Option("out", required=True, help="the dataset .npz to write"),
    Option("validation_fraction", float, 0.05, "share of the voices (by hash) put in the validation split "
           "(default: 0.05)"),
    Option("clamp", bool, help="clamp out-of-range fields into range instead of dropping those voices"),
    Option("strict", bool, help="drop the voices of damaged messages (a wrong or missing checksum, no F7 "
           "where the message ends); without it they are kept and counted"),
)


@command("dataset", "Build a training dataset from DX7 files, or summarise one.")
def dataset(parser):
    subs = parser.add_subparsers(dest="dataset_command", metavar="ACTION", required=True)
    build = subs.add_parser(
        "build", help="read DX7 files into a train/validation .npz",
        description="Read every voice of the given files and directories (.syx and compact .bin, "
                    "searched recursively), drop invalid voices (or clamp them) and duplicates "
                    "(and, with --strict, the voices of damaged messages), "
                    "split train/validation by a hash of each voice (stable as files are added) "
                    "and write an .npz with the voices and their provenance.")
    add_arguments(build, BUILD)
    build.set_defaults(action=_build)
    show = subs.add_parser("info", help="summarise a dataset .npz",
                           description="Print the split sizes, sources and build summary of a dataset .npz.")
    add_arguments(show, (Option("dataset", positional=True, metavar="DATASET",
                                help="a .npz written by `neuraldx7 dataset build`"),))
    show.set_defaults(action=lambda args: _print_info(args.dataset, data.load_dataset(args.dataset)))
    return lambda args: args.action(args)


def _build(args):
    files.check_writable(args.out)
    _print_build(data.build_dataset(args.sources, args.out, validation_fraction=args.validation_fraction,
                                    clamp=args.clamp, strict=args.strict))


def _print_build(summary):
    for problem in summary["problems"]:
        print(f"warning: {problem}")
    for rel, reason in summary["files_skipped"]:
        print(f"skipped {rel}: {reason}")
    print(f"files read      {summary['files_read']}")
    print(f"files skipped   {len(summary['files_skipped'])}")
    print(f"voices found    {summary['voices_found']}")
    fate = f"clamped {summary['clamped']}" if summary["clamped"] else "dropped"
    print(f"invalid         {summary['invalid']} ({fate})")
    print(f"duplicates      {summary['duplicates']}")
    if summary["strict"]:
        print(f"damaged         {summary['damaged_dropped']} voices of damaged messages dropped (--strict)")
    else:
        print(f"damaged         {summary['damaged_kept']} of the kept voices come from damaged messages "
              "(--strict drops them)")
    print(f"train           {summary['train']}")
    print(f"validation      {summary['validation']}")


def _print_info(path, arrays):
    print(f"{path}:")
    for split in data.SPLITS:
        voices = arrays[split]
        print(f"{split:12s} {len(voices):6d} voices, {dx7.is_valid(voices).sum()} valid")
        counts = sorted(Counter(arrays.get(f"{split}_source", [])).items(), key=lambda sc: (-sc[1], sc[0]))
        for source, count in counts[:10]:
            print(f"    {count:6d}  {source}")
        if len(counts) > 10:
            print(f"    {sum(c for _, c in counts[10:]):6d}  from {len(counts) - 10} more files")
    summary = arrays["summary"]
    if summary:
        print(f"built from {', '.join(summary['sources'])}: {summary['voices_found']} voices found, "
              f"{summary['invalid']} invalid, {summary['clamped']} clamped, "
              f"{summary['duplicates']} duplicates, validation fraction {summary['validation_fraction']}")
