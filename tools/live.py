"""Steer a DX7 synth live: a MIDI controller's knobs move the latent, each new voice goes out as SysEx.

    python tools/live.py --list
    python tools/live.py --controller nanoKONTROL --synth Dexed [--checkpoint WORKDIR]

The first 8 distinct CCs received take latent dimensions 1-8 (or --cc fixes them); a CC's
0..127 sweeps mean +/- 3 std of its dimension. Ctrl-C stops and prints the voices sent, the
decode latency and the xruns. Kept short on purpose: the logic is `neuraldx7_jax.live`.
"""
import sys

from absl import app, flags

from neuraldx7_jax import live
from neuraldx7_jax.errors import Error

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "work directory or checkpoints folder (default: the bundled model)")
flags.DEFINE_enum("backend", "jack", live.BACKENDS, "jack: a JACK client; rtmidi: the system's MIDI through rtmidi")
flags.DEFINE_string("rtmidi_api", None,
                    "rtmidi's API: jack, alsa, core or winmm (default: rtmidi's own for the system)")
flags.DEFINE_string("controller", None, "the controller's MIDI port: name, part of it, or regex "
                    "(default: none; connect to our `control` port by hand)")
flags.DEFINE_string("synth", None, "the synth's MIDI port: name, part of it, or regex "
                    "(default: none; connect our `synth` port by hand)")
flags.DEFINE_bool("list", False, "list the MIDI ports of the backend and exit")
flags.DEFINE_integer("channel", 1, "MIDI channel written in the SysEx", lower_bound=1, upper_bound=16)
flags.DEFINE_list("cc", None, "CC numbers for latent dimensions 1, 2, ... (default: the first ones received)")
flags.DEFINE_float("span", live.SPAN, "a CC sweeps mean +/- span std of its dimension", lower_bound=0)
flags.DEFINE_string("name", "neuraldx7", "the MIDI client name")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    try:
        if FLAGS.list:
            ports = live.list_ports(FLAGS.backend, FLAGS.rtmidi_api)
            for kind in ("sources", "destinations"):
                print(f"{kind} ({'--controller' if kind == 'sources' else '--synth'}):")
                for name in ports[kind] or ["(none)"]:
                    print(f"  {name}")
            return
        ccs = None if FLAGS.cc is None else [int(c) for c in FLAGS.cc]
        live.run(FLAGS.checkpoint, FLAGS.backend, FLAGS.controller, FLAGS.synth, FLAGS.channel - 1,
                 ccs, FLAGS.span, FLAGS.rtmidi_api, FLAGS.name)
    except (Error, ValueError) as e:
        sys.exit(f"live: error: {e}")


if __name__ == "__main__":
    app.run(main)
