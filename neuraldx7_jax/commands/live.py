"""Live command: a MIDI controller's knobs steer the latent, the newest voice goes to a synth."""
import argparse

from neuraldx7_jax import config, live as live_lib
from neuraldx7_jax.commands.options import CHANNEL, CHECKPOINT, MIDI_BACKEND, add_arguments, command


def _ccs(text):
    try:
        return [int(c) for c in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of CC numbers: {text!r}") from None


@command("live", "Steer a synth live: a MIDI controller's knobs move the latent, each move sends a voice.")
def live(parser):
    parser.description = (
        "Play a model from a MIDI controller: each knob (CC) moves one latent dimension, and the "
        "voice of the newest position goes to the synth as a single-voice SysEx dump. The first "
        f"{live_lib.LEARN} distinct CCs to arrive take dimensions 1-{live_lib.LEARN} (--cc or --mapping fix "
        f"them); CC 0..127 sweeps mean +/- {config.LATENT_SPAN:g} std of its dimension (--span). Ports that go "
        "away are connected again when a port matching the same pattern comes back. Ctrl-C stops and "
        "prints what went in and out. See docs/live.md.")
    add_arguments(parser, (CHECKPOINT,))
    parser.add_argument("--controller", metavar="PORT",
                        help="the controller's MIDI port: its name, a part of it, or a regex (see `neuraldx7 "
                             "ports`; default: none, connect to our `control` port by hand)")
    parser.add_argument("--synth", metavar="PORT",
                        help="the synth's MIDI port, the same way (default: none, connect our `synth` port by hand)")
    add_arguments(parser, (*MIDI_BACKEND, CHANNEL))
    fixed = parser.add_mutually_exclusive_group()
    fixed.add_argument("--cc", type=_ccs, metavar="N,N,...",
                       help="CC numbers for latent dimensions 1, 2, ... (default: the first ones to arrive)")
    fixed.add_argument("--mapping", metavar="FILE", help="a file --save-mapping wrote: its CCs for dimensions 1, 2, ...")
    parser.add_argument("--save-mapping", metavar="FILE",
                        help="write the CC -> dimension mapping to FILE (JSON) as it is learnt; --mapping reads it")
    parser.add_argument("--span", type=float, default=config.LATENT_SPAN,
                        help=f"a CC sweeps mean +/- SPAN std of its dimension (default: {config.LATENT_SPAN:g})")
    parser.add_argument("--name", default="neuraldx7", help="our MIDI client's name (default: neuraldx7)")

    def run(args):
        live_lib.run(args.checkpoint, backend=args.backend, controller=args.controller, synth=args.synth,
                     channel=args.channel - 1, ccs=args.cc, mapping=args.mapping,
                     save_mapping=args.save_mapping, span=args.span, api=args.rtmidi_api, name=args.name,
                     say=lambda line: print(line, flush=True))
    return run
