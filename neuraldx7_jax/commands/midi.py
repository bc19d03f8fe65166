"""MIDI commands: ports, send (their backend options, `options.MIDI_BACKEND`, are shared with `live`)."""
from neuraldx7_jax.commands.formats import read_voices
from neuraldx7_jax.commands.options import CHANNEL, DX7_FILE, MIDI_BACKEND, Option, subcommand


@subcommand("ports", "List the MIDI ports a controller or a synth can be reached on.", (
    "List MIDI sources (controllers: use with neuraldx7 live --controller) and destinations "
    "(synths: neuraldx7 live --synth, neuraldx7 send --port) of JACK when a JACK server is "
    "running, else of rtmidi, or of the backend --backend names."), MIDI_BACKEND)
def ports(args):
    from neuraldx7_jax import midi

    found = midi.list_ports(backend=args.backend, api=args.rtmidi_api)
    backend = found["backend"]
    print(backend + (f" ({args.rtmidi_api})" if backend == "rtmidi" and args.rtmidi_api else "") + ":")
    for kind in ("sources", "destinations"):
        print(f"  {kind}:")
        for name in found[kind] or ["(none)"]:
            print(f"    {name}")


SEND = (
    DX7_FILE,
    Option("port", required=True, help="the synth's MIDI port: its name, a part of it, or a regex "
           "(see `neuraldx7 ports`)"),
    *MIDI_BACKEND, CHANNEL,
    Option("gap", float, 0.1, "seconds between messages, for hardware that needs time (default: 0.1)"),
)


@subcommand("send", "Send a DX7 file's voices (a cartridge or a single voice) to a synth as SysEx.", (
    "Send the voices of a DX7 file to a synth: a single voice as a single-voice dump (it lands "
    "in the synth's edit buffer), 32 voices as a 32-voice bulk dump, more as one bulk dump per 32."), SEND)
def send(args):
    from neuraldx7_jax import midi

    voices = read_voices(args.file)
    n = len(voices)
    messages, size, backend, name = midi.send_voices(voices, args.file, args.port, backend=args.backend,
                                                     api=args.rtmidi_api, channel=args.channel - 1, gap=args.gap)
    print(f"sent {n} voice{'s' * (n != 1)} ({messages} message{'s' * (messages != 1)}, "
          f"{size} bytes) to {name} ({backend})")
