"""The rtmidi adapter of live control (`RtmidiLink`), and rtmidi's side of listing ports and
sending files. rtmidi is imported where it is used; alsa-lib's and libjack's own lines stay off
the terminal: our Errors say what was tried and what to try instead.
"""
import ctypes
import ctypes.util
import threading
import time

from neuraldx7_jax.errors import Error
from neuraldx7_jax.midi_jack import import_jack, jack_running
from neuraldx7_jax.midi_link import Follow, Link, cc_arrays, match_port

POLL_S = 1.0  # how often the port list is read to follow ports that went away
INPUT_S = 0.001  # with no MIDI queued, the worker looks again after this long
INPUT_BATCH = 1024  # the most queued messages the worker applies at once (rtmidi's queue size)
# `send`: rtmidi does not say when a connection carries messages or when a message has left, and
# over JACK one written as the connection is made, or just before the port closes, can be lost on
# a loaded machine; so `send` waits this long after connecting and after the last one.
SEND_SETTLE_S = 0.2


_ALSA_QUIET = []  # the no-op alsa-lib error handler, kept alive once installed


def _quiet_alsa():
    """Keeps alsa-lib's own error lines ("ALSA lib seq_hw.c: ... failed") off the terminal: rtmidi's
    exception says the same, and our Error says what to try instead."""
    if _ALSA_QUIET:
        return
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    except OSError:  # not Linux, or no alsa-lib: nothing prints
        _ALSA_QUIET.append(None)
        return
    handler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                               ctypes.c_char_p)(lambda *args: None)
    lib.snd_lib_error_set_handler(handler)
    _ALSA_QUIET.append(handler)


def _rtmidi_api(api):
    """rtmidi's number for the API `api` names (jack, alsa, core, winmm, or UNIX_JACK, LINUX_ALSA,
    MACOSX_CORE, WINDOWS_MM); None is rtmidi's default for the platform."""
    import rtmidi

    if api is None:
        return rtmidi.API_UNSPECIFIED
    names = {}
    for k in dir(rtmidi):
        if k.startswith("API_") and getattr(rtmidi, k) in rtmidi.get_compiled_api():
            number = getattr(rtmidi, k)
            names.update({k[4:].lower(): number, rtmidi.get_api_name(number): number})
    if api.lower() not in names:
        raise Error(f"rtmidi has no {api!r} API here; it has {', '.join(sorted(names))}")
    return names[api.lower()]


def _rtmidi_errors():
    import rtmidi

    return rtmidi.RtMidiError, NotImplementedError, RuntimeError  # e.g. no ALSA sequencer


def _rtmidi_failed(e):
    """The Error for rtmidi failing to open the system's MIDI: what was tried, what to try instead."""
    instead = ("a JACK server is running: try --backend jack" if jack_running() else
               "start a JACK server (jackd or qjackctl) and use --backend jack, or on Linux load "
               "the ALSA sequencer (modprobe snd-seq)")
    return Error(f"rtmidi cannot open the system's MIDI ({e}); {instead}")


def _rtmidi_new(direction, api, client):
    """An rtmidi MidiIn ("in") or MidiOut ("out") of `client`, without a port."""
    import rtmidi

    _quiet_alsa()
    try:
        import_jack()  # rtmidi's JACK API prints through the same libjack
    except Error:
        pass
    try:
        return (rtmidi.MidiIn if direction == "in" else rtmidi.MidiOut)(_rtmidi_api(api), client)
    except _rtmidi_errors() as e:
        raise _rtmidi_failed(e) from None


def _rtmidi_connect(midi, name, port):
    """Opens our port `port` of `midi` connected to the port called `name`."""
    try:
        midi.open_port(midi.get_ports().index(name), port)
    except (ValueError, *_rtmidi_errors()) as e:
        raise Error(f"rtmidi: cannot connect to {name} ({e})") from None


def _rtmidi_open(direction, api, client, pattern=None, port=None, role=""):
    """An rtmidi MidiIn ("in") or MidiOut ("out") of `client`: with `pattern`, connected to the port
    it picks (ours is named `port`); with `port` only, a virtual port; else no port.
    Returns (midi, the picked port's name or None)."""
    midi = _rtmidi_new(direction, api, client)
    try:
        name = None
        if pattern:
            name = match_port(pattern, midi.get_ports(), role)
            _rtmidi_connect(midi, name, port)
        elif port:
            try:
                midi.open_virtual_port(port)
            except _rtmidi_errors() as e:
                raise Error(f"rtmidi: cannot open a virtual port ({e}); name the port to connect to") from None
        return midi, name
    except BaseException:
        midi.delete()
        raise


def _rtmidi_close(midi):
    midi.close_port()
    midi.delete()


class RtmidiLink(Link):
    """The rtmidi adapter. A worker thread reads what the controller's port has queued, applies
    the CCs at once, then decodes and sends whatever is due, so a flood of CCs costs one decode per pass,
    always of the newest position; with nothing queued it looks again after INPUT_S. An unnamed
    port is opened as a virtual one for the user to connect; a named one that goes away is looked
    for again every POLL_S (`poll`).

    No rtmidi callback is set: rtmidi calls one from its own thread, which may already be on its
    way in when python-rtmidi cancels it (as closing a port does) and frees what the call is about
    to use (a SIGSEGV in CI), and closing a port waits for that thread while holding the GIL it
    waits on."""

    def __init__(self, engine, *, controller=None, synth=None, api=None, name="neuraldx7"):
        self.name = name
        self._closing, self._lock = False, threading.Lock()  # the lock: the ports, worker or poll
        self._polled = time.monotonic()
        self.output, synth_name = _rtmidi_open("out", api, name, synth, "synth", "destination")
        try:
            self.input, controller_name = _rtmidi_open("in", api, name, controller, "control", "source")
        except BaseException:
            _rtmidi_close(self.output)
            raise
        super().__init__(engine, Follow("controller", controller, controller_name),
                         Follow("synth", synth, synth_name))
        self.input.ignore_types(sysex=True, timing=True, active_sense=True)
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()

    def _work(self):
        errors = _rtmidi_errors()
        while not self._closing:
            messages = []
            with self._lock:
                while len(messages) < INPUT_BATCH and (event := self.input.get_message()) is not None:
                    messages.append(event[0])
            if messages:
                self.engine.receive(*cc_arrays(messages))
                continue  # everything queued first: one decode, of the newest position
            if not self.engine.due():
                time.sleep(INPUT_S)
                continue
            message = self.engine.update()
            with self._lock:
                try:
                    self.output.send_message(message)
                    self.sent += 1
                except errors:
                    self.failed += 1

    def poll(self):
        """Every POLL_S at most: reopens a named port that went away once the same pattern
        picks a port again. Returns lines saying what changed."""
        if time.monotonic() - self._polled < POLL_S:
            return []
        self._polled = time.monotonic()

        def reconnect(midi, port):
            def connect(name):
                with self._lock:
                    midi.close_port()
                    _rtmidi_connect(midi, name, port)
            return connect

        def connect_output(name):
            reconnect(self.output, "synth")(name)
            self.engine.resend()  # the synth that came back has not heard the current voice

        with self._lock:
            destinations, sources = self.output.get_ports(), self.input.get_ports()
        return (self._synth.update(destinations, lambda name: True, connect_output)
                + self._controller.update(sources, lambda name: True, reconnect(self.input, "control")))

    def ports(self):
        return f"{self.name}:control", f"{self.name}:synth"

    def close(self):
        self._closing = True
        self._worker.join()
        _rtmidi_close(self.input)
        _rtmidi_close(self.output)

    @staticmethod
    def list_ports(api=None):
        ports = []
        for direction in ("in", "out"):
            midi = _rtmidi_new(direction, api, "neuraldx7-ports")
            ports.append(midi.get_ports())
            midi.delete()
        return tuple(ports)

    @staticmethod
    def send_messages(messages, port, api=None, gap=0.1, timeout=None):
        out, name = _rtmidi_open("out", api, "neuraldx7-send", port, "out", "destination")
        try:
            time.sleep(SEND_SETTLE_S)
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                out.send_message(message)
            time.sleep(SEND_SETTLE_S)
        finally:
            _rtmidi_close(out)
        return name
