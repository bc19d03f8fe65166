"""Option tables: each command's options, declared once, from which both its argparse parser
(`neuraldx7 COMMAND`) and its absl launcher (`experiments/dx7_vae/*.py`) are built, so the two
cannot drift. Also the registry of the subcommands (`command`). Imports nothing heavy."""
import sys
from typing import Any, Callable, NamedTuple

from neuraldx7_jax.config import HEARTBEAT_S, MIDI_BACKENDS, NEW_VOICE_TEMPERATURE, PRIORS
from neuraldx7_jax.errors import Error


class Option(NamedTuple):
    """One option: `--name-with-dashes` in argparse (or a positional argument), `--name` in absl."""
    name: str  # with underscores
    type: type = str  # str, int, float, bool (a switch) or list (repeatable)
    default: Any = None
    help: str = ""
    choices: tuple = ()
    required: bool = False
    positional: bool = False  # argparse: a positional argument (absl: a flag)
    many: bool = False  # one or more values (argparse nargs="+"; absl: repeated)
    const: Any = None  # argparse: the value when the option is given without one (nargs="?")
    metavar: str | None = None


def add_arguments(parser, options):
    """Adds `options` to an argparse parser."""
    for o in options:
        kw = dict(help=o.help)
        if o.metavar:
            kw["metavar"] = o.metavar
        if o.type is bool:
            parser.add_argument("--" + o.name.replace("_", "-"), action="store_true", **kw)
            continue
        if o.type is list:
            parser.add_argument("--" + o.name.replace("_", "-"), action="append", default=[], **kw)
            continue
        kw.update(type=o.type, choices=o.choices or None)
        if o.many:
            kw["nargs"] = "+"
        elif o.const is not None:
            kw.update(nargs="?", const=o.const)
        if o.positional:
            parser.add_argument(o.name, **kw)
        else:
            parser.add_argument("--" + o.name.replace("_", "-"), default=o.default, required=o.required, **kw)


def define_flags(options, flag_values=None):
    """Defines `options` as absl flags in `flag_values` (default: absl's FLAGS); positional
    arguments become flags of the same name."""
    from absl import flags

    where = dict(flag_values=flags.FLAGS if flag_values is None else flag_values)

    for o in options:
        if o.type is list or o.many:
            flags.DEFINE_multi_string(o.name, (o.default or []) if o.type is list else None, o.help, **where)
        elif o.choices and o.type is str:
            flags.DEFINE_enum(o.name, o.default, list(o.choices), o.help, **where)
        else:
            define = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                      bool: flags.DEFINE_bool}[o.type]
            define(o.name, False if o.type is bool else o.default, o.help, **where)
        if o.required or o.positional:
            flags.mark_flag_as_required(o.name, **where)


def launch(options, run):
    """An absl launcher: `options` as flags, then `run(FLAGS)`; an Error is one line and exit 2.
    Quiet like `neuraldx7`: absl.app raises the log level to INFO, so orbax printed ~80 records per
    checkpoint among the progress; here warnings and errors only, unless --verbosity is given
    (`--verbosity 0` or `-v 0`: INFO, the library chatter, again)."""
    from absl import app, flags, logging

    define_flags(options)

    def main(argv):
        del argv
        if not flags.FLAGS["verbosity"].present:
            flags.FLAGS.verbosity = logging.WARNING
        try:
            return run(flags.FLAGS) or 0
        except (Error, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    app.run(main)


class Command(NamedTuple):
    name: str
    help: str
    setup: Callable  # setup(sub_parser) -> handler(args)


COMMANDS = []  # in the order of `neuraldx7 --help`


def command(name, help):
    """Registers `setup(sub_parser) -> handler(args)` as the subcommand `name`."""
    def register(setup):
        COMMANDS.append(Command(name, help, setup))
        return setup
    return register


def subcommand(name, help, description, options):
    """Registers the subcommand `name` whose options are the table `options`, handled by the
    decorated `run(args)`; its --help says `description`, or `help` when that is None."""
    def register(run):
        def setup(parser):
            parser.description = description or help
            add_arguments(parser, options)
            return run
        COMMANDS.append(Command(name, help, setup))
        return run
    return register


CHECKPOINT = Option("checkpoint", help="a training work directory or its checkpoints/ folder, or 'bundled' "
                    "(default: the bundled model)", metavar="DIR")
SEED = Option("seed", int, 0, "random seed in 0..4294967295 (2^32 - 1); the same seed gives the same output (default: 0)")
AUDIO = Option("audio", int, None, "also render N voices (default 1024) at C4 through Dexed and report the "
               "audible fraction (RMS above -60 dBFS), beside the training data's; needs the audio extra",
               const=1024, metavar="N")
PRIOR = Option("prior", str, None, "where latents are drawn: 'posterior', near the latent of a random "
               "training voice (the default when the model has them), 'mixture', a Gaussian mixture fitted "
               "to those latents, 'gaussian', one Gaussian fitted to them, or 'standard', N(0, I) as the "
               "original did", choices=PRIORS)
TEMPERATURE = Option("temperature", float, NEW_VOICE_TEMPERATURE, "values are sampled from "
                     "softmax(logits / T) (default: 1, the model's own distribution); 0 takes the most "
                     "likely value of each parameter, as the original did")
BATCH = Option("batch", int, None, "voices per device call (default: 256 on CPU, 4096 on GPU/TPU); "
               "results do not depend on it")
JSON = Option("json", bool, help="print the figures as JSON")
SET = Option("set", list, [], "change a config field as SECTION.FIELD=VALUE, e.g. model.features=256, "
             "train.masked_ce=true or model.compute_dtype=bfloat16 (repeatable)", metavar="SECTION.FIELD=VALUE")
DX7_FILE = Option("file", positional=True, metavar="FILE",
                  help="a .syx file, a headerless 4096-byte bank or a compact .bin")
SYX_OUT = Option("out", required=True, help="the .syx file to write")
CARTRIDGES = Option("count", int, 1, "number of cartridges (default: 1)")
MIDI_BACKEND = (  # the MIDI commands: ports, send, live
    Option("backend", str, None, "jack: a JACK client; rtmidi: the system's MIDI through rtmidi (ALSA, CoreMIDI, "
           "Windows MM, or the API --rtmidi-api names) (default: jack when a JACK server is running, else rtmidi)",
           MIDI_BACKENDS),
    Option("rtmidi_api", help="rtmidi's API: jack, alsa, core or winmm (default: rtmidi's own for the system)",
           metavar="API"),
)
CHANNEL = Option("channel", int, 1, "MIDI channel written in the SysEx (default: 1)", tuple(range(1, 17)),
                 metavar="1-16")
PROCESSES = (  # a multi-process run: every process is started with the same options but --process-id
    Option("distributed", bool, False, "join a multi-process run as JAX detects it (SLURM, Open MPI, Cloud TPU, "
           "Kubernetes)"),
    Option("coordinator", str, None, "join a multi-process run whose process 0 listens at HOST:PORT (with "
           "--num-processes and --process-id; docs/multihost.md)", metavar="HOST:PORT"),
    Option("num_processes", int, None, "processes in the run (with --coordinator)", metavar="N"),
    Option("process_id", int, None, "this process's number, 0 to N-1 (with --coordinator)", metavar="I"),
    Option("heartbeat_timeout", int, HEARTBEAT_S, "seconds a lost process of a multi-process run may stay "
           f"silent before the others stop (default: {HEARTBEAT_S})", metavar="S"),
)


def processes(a):
    """The keyword arguments of `devices.initialize` from the `PROCESSES` options `a`."""
    return dict(distributed=a.distributed, coordinator=a.coordinator, num_processes=a.num_processes,
                process_id=a.process_id, heartbeat_s=a.heartbeat_timeout)
