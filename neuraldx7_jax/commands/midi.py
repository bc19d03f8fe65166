"""MIDI commands: ports, send; and the backend options they share with `live`."""

from neuraldx7_jax.commands.options import command
from neuraldx7_jax.config import MIDI_BACKENDS

BACKEND_HELP = ("jack: a JACK client; rtmidi: the system's MIDI through rtmidi (ALSA, CoreMIDI, "
                "Windows MM, or the API --rtmidi-api names)")


def backend_args(parser):
    parser.add_argument("--backend", choices=MIDI_BACKENDS,
                        help=f"{BACKEND_HELP} (default: jack when a JACK server is running, else rtmidi)")
    parser.add_argument("--rtmidi-api", metavar="API",
                        help="rtmidi's API: jack, alsa, core or winmm (default: rtmidi's own for the system)")


@command("ports", "List the MIDI ports a controller or a synth can be reached on.")
def ports(parser):
    parser.description = (
        "List MIDI sources (controllers: use with neuraldx7 live --controller) and destinations "
        "(synths: neuraldx7 live --synth, neuraldx7 send --port) of JACK when a JACK server is "
        "running, else of rtmidi, or of the backend --backend names.")
    backend_args(parser)

    def run(args):
        from neuraldx7_jax import midi

        found = midi.list_ports(backend=args.backend, api=args.rtmidi_api)
        backend = found["backend"]
        print(backend + (f" ({args.rtmidi_api})" if backend == "rtmidi" and args.rtmidi_api else "") + ":")
        for kind in ("sources", "destinations"):
            print(f"  {kind}:")
            for name in found[kind] or ["(none)"]:
                print(f"    {name}")
    return run


@command("send", "Send a DX7 file's voices (a cartridge or a single voice) to a synth as SysEx.")
def send(parser):
    parser.description = (
        "Send the voices of a DX7 file to a synth: a single voice as a single-voice dump (it lands "
        "in the synth's edit buffer), 32 voices as a 32-voice bulk dump, more as one bulk dump per 32.")
    parser.add_argument("file", metavar="FILE", help="a .syx file, a headerless 4096-byte bank or a compact .bin")
    parser.add_argument("--port", required=True,
                        help="the synth's MIDI port: its name, a part of it, or a regex (see `neuraldx7 ports`)")
    backend_args(parser)
    parser.add_argument("--channel", type=int, default=1, choices=range(1, 17), metavar="1-16",
                        help="MIDI channel written in the SysEx (default: 1)")
    parser.add_argument("--gap", type=float, default=0.1,
                        help="seconds between messages, for hardware that needs time (default: 0.1)")

    def run(args):
        from neuraldx7_jax import dx7, midi

        voices, warned = dx7.load_with_warnings(args.file)
        for text in warned:
            print(f"warning: {text}")
        n = len(voices)
        messages, size, backend, name = midi.send_voices(voices, args.file, args.port, backend=args.backend,
                                                         api=args.rtmidi_api, channel=args.channel - 1,
                                                         gap=args.gap)
        print(f"sent {n} voice{'s' * (n != 1)} ({messages} message{'s' * (messages != 1)}, "
              f"{size} bytes) to {name} ({backend})")
    return run
