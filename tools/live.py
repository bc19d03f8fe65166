"""Steer a DX7 synth live: a MIDI controller's knobs move the latent, the newest voice goes out as SysEx.

    python tools/live.py --list
    python tools/live.py --controller nanoKONTROL --synth Dexed [--checkpoint WORKDIR]

The first 8 distinct CCs received take latent dimensions 1-8 (or --cc / --mapping fix them,
--save-mapping keeps what was learnt); a CC's 0..127 sweeps mean +/- 3 std of its dimension.
The backend is JACK when a JACK server runs, else rtmidi (--backend picks). A port that goes
away is connected again when a port matching the same pattern comes back. Ctrl-C stops and
prints the voices sent, the CCs received and superseded, the decode latency and the xruns.
Kept short on purpose: the logic is `neuraldx7_jax.live`.
"""
import sys

from absl import app, flags, logging

from neuraldx7_jax import live
from neuraldx7_jax.errors import Error

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "work directory or checkpoints folder (default: the bundled model)")
flags.DEFINE_enum("backend", None, list(live.BACKENDS), "jack: a JACK client; rtmidi: the system's MIDI "
                  "through rtmidi (default: jack when a JACK server is running, else rtmidi)")
flags.DEFINE_string("rtmidi_api", None,
                    "rtmidi's API: jack, alsa, core or winmm (default: rtmidi's own for the system)")
flags.DEFINE_string("controller", None, "the controller's MIDI port: name, part of it, or regex "
                    "(default: none; connect to our `control` port by hand)")
flags.DEFINE_string("synth", None, "the synth's MIDI port: name, part of it, or regex "
                    "(default: none; connect our `synth` port by hand)")
flags.DEFINE_bool("list", False, "list the MIDI ports of the backend and exit")
flags.DEFINE_integer("channel", 1, "MIDI channel written in the SysEx", lower_bound=1, upper_bound=16)
flags.DEFINE_list("cc", None, "CC numbers for latent dimensions 1, 2, ... (default: the first ones received)")
flags.DEFINE_string("mapping", None, "a file saved by --save-mapping: its CCs for latent dimensions 1, 2, ...")
flags.DEFINE_string("save_mapping", None, "write the CC -> dimension mapping to this file (JSON) as it is "
                    "learnt; --mapping reads it back")
flags.DEFINE_float("span", live.SPAN, "a CC sweeps mean +/- span std of its dimension", lower_bound=0)
flags.DEFINE_string("name", "neuraldx7", "the MIDI client name")
flags.register_validator("cc", lambda cc: cc is None or FLAGS.mapping is None, "--cc and --mapping exclude "
                         "each other")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # no absl/orbax INFO lines while the model loads
    try:
        if FLAGS.list:
            ports = live.list_ports(FLAGS.backend, FLAGS.rtmidi_api)
            for kind in ("sources", "destinations"):
                print(f"{ports['backend']} {kind} ({'--controller' if kind == 'sources' else '--synth'}):")
                for name in ports[kind] or ["(none)"]:
                    print(f"  {name}")
            return
        ccs = live.load_mapping(FLAGS.mapping) if FLAGS.mapping else FLAGS.cc and [int(c) for c in FLAGS.cc]
        live.run(FLAGS.checkpoint, FLAGS.backend, FLAGS.controller, FLAGS.synth, FLAGS.channel - 1,
                 ccs, FLAGS.span, FLAGS.rtmidi_api, FLAGS.name, FLAGS.save_mapping,
                 say=lambda line: print(line, flush=True))
    except (Error, ValueError) as e:
        print(f"live: error: {e}", file=sys.stderr)
        sys.exit(2)


def underscores(argv):
    """--save-mapping=x -> --save_mapping=x: the flags take dashes too, as `neuraldx7`'s options do."""
    out = []
    for arg in argv:
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + eq + value
        out.append(arg)
    return out


if __name__ == "__main__":
    app.run(main, argv=underscores(sys.argv))
