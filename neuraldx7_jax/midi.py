"""The MIDI backends of live control and of `ports` and `send`: the one backend table (`BACKENDS`:
name -> adapter class, each on the base `midi_link.Link`) and the one backend rule
(`choose_backend`: JACK when a JACK server is running, else rtmidi; `--backend` overrides).

Each adapter feeds an engine (`live.Engine`: `receive`, `due`, `fresh`, `update`, `resend`) the CCs
that arrive, sends what it returns, and follows its ports when they go away and come back
(`poll`); each lists ports and sends files too.
"""
from neuraldx7_jax import config, dx7
from neuraldx7_jax.errors import Error
from neuraldx7_jax.midi_jack import JackLink, jack_running
from neuraldx7_jax.midi_rtmidi import RtmidiLink

BACKENDS = dict(zip(config.MIDI_BACKENDS, (JackLink, RtmidiLink)))  # the MIDI backends, each one adapter class


def choose_backend(backend=None):
    """The backend to use: `backend` when given, else jack when a JACK server is running, else rtmidi."""
    if backend is None:
        return "jack" if jack_running() else "rtmidi"
    if backend not in BACKENDS:
        raise Error(f"unknown MIDI backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def list_ports(*, backend=None, api=None):
    """dict(backend, sources=[...], destinations=[...]): MIDI ports that send (controllers, for
    --controller) and that receive (synths, for --synth and `send --port`)."""
    backend = choose_backend(backend)
    sources, destinations = BACKENDS[backend].list_ports(api)
    return dict(backend=backend, sources=sources, destinations=destinations)


def open_link(engine, *, backend=None, controller=None, synth=None, api=None, name="neuraldx7"):
    """The adapter of `backend` (None: `choose_backend`) around `engine`, connected and running."""
    return BACKENDS[choose_backend(backend)](engine, controller=controller, synth=synth, api=api, name=name)


def voice_messages(voices, path, channel=0):
    """The SysEx messages of the voices read from `path`: one single-voice dump for a single voice,
    else one bulk dump per 32 voices."""
    if len(voices) == 1:
        return [dx7.single_voice_message(voices[0], channel)]
    if len(voices) % 32:
        raise Error(f"{path}: {len(voices)} voices, neither one voice nor whole cartridges of 32")
    return [dx7.cartridge_message(voices[i:i + 32], channel) for i in range(0, len(voices), 32)]


def send_messages(messages, port, *, backend=None, api=None, gap=0.1, timeout=10.0):
    """Sends SysEx `messages` (bytes, F0 .. F7) to the destination `port` picks, `gap` seconds apart,
    over `backend` (None: `choose_backend`). Returns (the backend, the port's full name)."""
    backend = choose_backend(backend)
    return backend, BACKENDS[backend].send_messages(messages, port, api, gap, timeout)


def send_voices(voices, path, port, *, backend=None, api=None, channel=0, gap=0.1):
    """Sends the voices read from `path` to a synth; returns (messages, bytes, backend, port name)."""
    messages = voice_messages(voices, path, channel)
    backend, name = send_messages(messages, port, backend=backend, api=api, gap=gap)
    return len(messages), sum(map(len, messages)), backend, name
