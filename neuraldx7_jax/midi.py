"""The MIDI adapters of live control, one per entry of `BACKENDS`, and the one backend rule.

`JackLink` and `RtmidiLink`, on one base `Link`, feed an engine (`live.Engine`: `receive`, `due`,
`fresh`, `update`, `resend`) the CCs that arrive, send what it returns, and follow their ports when
they go away and come back (`poll`); each lists ports and sends files too. `choose_backend` is the
rule every MIDI command uses: JACK when a JACK server is running, else rtmidi; `--backend`
overrides. libjack's and alsa-lib's own lines stay off the terminal: our Errors say what was
tried and what to try instead. jack and rtmidi are imported where they are used, so a host
without libjack still has rtmidi.
"""
import ctypes
import ctypes.util
import re
import threading
import time

import numpy as np

from neuraldx7_jax import config, dx7
from neuraldx7_jax.errors import Error

RESEND_CYCLES = 100  # JACK: an xrun up to this many cycles (0.5 s at 256/48k) after a new voice sends it again
SETTLE_CYCLES = 20  # JACK: this many quiet cycles (0.1 s) after a new voice, it goes out once more
POLL_S = 1.0  # rtmidi: how often the port list is read to follow ports that went away
INPUT_S = 0.001  # rtmidi: with no MIDI queued, the worker looks again after this long
INPUT_BATCH = 1024  # rtmidi: the most queued messages the worker applies at once (rtmidi's queue size)
# rtmidi (`send`): rtmidi does not say when a connection carries messages or when a message has
# left, and over JACK one written as the connection is made, or just before the port closes, can
# be lost on a loaded machine; so `send` waits this long after connecting and after the last one.
SEND_SETTLE_S = 0.2
SEND_SETTLE_CYCLES = 8  # JACK (`send`): cycles waited after connecting and after the last message


def cc_arrays(messages):
    """(CC numbers, values): int arrays of the control-change messages among raw MIDI messages
    (any channel), in order."""
    ccs = [m for m in messages if len(m) == 3 and m[0] & 0xF0 == 0xB0 and m[1] < 128 and m[2] < 128]
    return np.array([m[1] for m in ccs], np.int64), np.array([m[2] for m in ccs], np.int64)


def match_port(pattern, names, role):
    """The one name in `names` that `pattern` picks: the exact name, else the names holding it
    (case-insensitive), else those a case-insensitive regex search finds."""
    if pattern in names:
        return pattern
    found = [n for n in names if pattern.lower() in n.lower()]
    if not found:
        try:
            found = [n for n in names if re.search(pattern, n, re.IGNORECASE)]
        except re.error:
            pass
    if len(found) == 1:
        return found[0]
    if not found:
        raise Error(f"no MIDI {role} matches {pattern!r}; there are: {', '.join(names) or 'none'}")
    raise Error(f"{pattern!r} matches several MIDI {role}s: {', '.join(found)}; be more specific")


class Follow:
    """A port we connect to by a pattern (`what`: controller or synth). When it goes away, `update`
    waits for a port the same pattern picks and connects that one."""

    def __init__(self, what, pattern, name):
        self.what, self.pattern, self.name = what, pattern, name
        self.role = "source" if what == "controller" else "destination"

    def update(self, names, connected, connect):
        """Lines saying what changed, given the port names there are now; `connected(name)` and
        `connect(name)` do the backend's part."""
        if not self.pattern or self.name in names and connected(self.name):
            return []
        lines = []
        if self.name:
            lines.append(f"the {self.what} port {self.name} went away; waiting for a port matching "
                         f"{self.pattern!r}")
            self.name = None
        try:
            name = match_port(self.pattern, names, self.role)
            connect(name)
        except Error:
            return lines
        self.name = name
        return lines + [f"{self.what}: reconnected to {name}"]


_JACK_QUIET = []  # set once libjack's own lines are kept off the terminal


def _jack():
    """The jack module, with libjack's error and info lines (also those of rtmidi's JACK API)
    kept off the terminal from now on: our Errors say what happened and what to try instead."""
    try:
        import jack
    except OSError as e:
        raise Error(f"the JACK library is not installed ({e}); try --backend rtmidi") from None
    if not _JACK_QUIET:
        jack.set_error_function(lambda message: None)
        jack.set_info_function(lambda message: None)
        _JACK_QUIET.append(True)
    return jack


def _jack_client(name, jack):
    """An inactive JACK client; a clear Error when no server runs."""
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError:
        raise Error("cannot reach a JACK server: start one (jackd or qjackctl), or try "
                    "--backend rtmidi") from None


def jack_running():
    """Whether a JACK server answers (libjack installed and a server running)."""
    try:
        _jack_client("neuraldx7-probe", _jack()).close()
    except Error:
        return False
    return True


def _jack_ports(client):
    """(sources, destinations): MIDI ports of other clients that send / receive."""
    own = client.name + ":"
    names = lambda **kw: [p.name for p in client.get_ports(is_midi=True, **kw) if not p.name.startswith(own)]
    return names(is_output=True), names(is_input=True)


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
        _jack()  # rtmidi's JACK API prints through the same libjack
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


class JackInput:
    """A JACK MIDI input port's CCs, taken out of its buffer at the start of the process callback
    with array work that does not grow with the number of events in Python.

    In JACK2 an input port reads the writer's buffer in place, and the writer clears it in its
    next cycle, which on an asynchronous server may start while this cycle's callback still runs;
    going through a full buffer (about 2,700 CCs) one event at a time in Python takes longer than
    a period, and jack-client's iterator then stops silently. So `read` copies the buffer (one
    memmove), checks that it did not change during the copy (else copies it again and counts it
    in `changed`), and picks the 3-byte CC events out of the copy with numpy. It knows JACK2's
    buffer layout (a header, then 12-byte events with up to 4 bytes inline) by its magic number;
    another layout (JACK1) is read through jack-client's iterator. `late` counts the reads that
    did not start one period after the one before (the server's cycle had moved on: the writer
    may have cleared the buffer first), `dropped` the events that the writers upstream could not
    put in the buffer (JACK's lost-event count)."""

    MAGIC = 0x900DF00D  # JACK2's JackMidiBuffer: magic, size, frames, write_pos, events, lost (uint32)
    HEADER, EVENT = 24, 12  # bytes of its header and of each event (time, size, 4 data bytes)
    TRIES = 3  # copies of a buffer that keeps changing before the last is taken as it is

    def __init__(self, port, client, jack):
        self.port, self.client, self._ffi, self._lib = port, client, jack._ffi, jack._lib
        self.changed = self.dropped = self.late = 0
        self._frame = None  # the cycle's first frame at the last read
        self._copy = np.zeros(1 << 15, np.uint8)  # grown (once) to the server's MIDI buffer size

    def read(self):
        """(CC numbers, values): int arrays of this cycle's CC messages, in order."""
        frame, blocksize = self.client.last_frame_time, self.client.blocksize
        if self._frame is not None and (frame - self._frame) % 2 ** 32 != blocksize:
            self.late += 1
        self._frame = frame
        buf = self._lib.jack_port_get_buffer(self.port._ptr, blocksize)
        header = self._ffi.cast("uint32_t *", buf)
        if header[0] != self.MAGIC:
            return cc_arrays([bytes(data) for _, data in self.port.incoming_midi_events()])
        size = header[1]
        if size > len(self._copy):
            self._copy = np.zeros(size, np.uint8)
        live = np.frombuffer(self._ffi.buffer(buf, size), np.uint8)
        changed = False
        for _ in range(self.TRIES):
            events = header[4]
            count = min(events, (size - self.HEADER) // self.EVENT)
            used = self.HEADER + count * self.EVENT
            np.copyto(self._copy[:used], live[:used])
            if header[4] == events and np.array_equal(self._copy[:used], live[:used]):
                break
            changed = True
        self.changed += changed
        self.dropped += int(self._copy[20:24].view(np.uint32)[0])
        events = self._copy[self.HEADER:used].reshape(count, self.EVENT)
        sizes, data = events[:, 4:8].view(np.uint32)[:, 0], events[:, 8:11]
        cc = (sizes == 3) & (data[:, 0] & 0xF0 == 0xB0) & (data[:, 1] < 128) & (data[:, 2] < 128)
        return data[cc, 1].astype(np.int64), data[cc, 2].astype(np.int64)


class Link:
    """What the adapters share. Each feeds an engine the messages that arrive and sends what it
    returns, counting voices `sent` and those that `failed`; `stopped` is set (with a `reason`)
    when the backend goes away. Each defines `poll` (lines saying what changed in its ports),
    `ports` (our two ports' names), `close`, and the static `list_ports` and `send_messages`.
    `xruns`, `late`, `changed` and `dropped` (where input may have been lost: see `JackInput`) are
    None where the backend cannot count them."""

    xruns = late = changed = dropped = None

    def __init__(self, engine, controller, synth):
        """`controller` and `synth`: the `Follow`s of our two ports."""
        self.engine, self.sent, self.failed = engine, 0, 0
        self.stopped, self.reason = threading.Event(), None
        self._controller, self._synth = controller, synth

    controller = property(lambda self: self._controller.name)
    synth = property(lambda self: self._synth.name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class JackLink(Link):
    """The JACK adapter: a client with a MIDI input `control` and output `synth`. Each cycle its
    process callback applies the cycle's CCs and, when the engine has something due, writes one
    voice: the newest. After an xrun (up to RESEND_CYCLES after a new voice), a failed write or the
    synth's return, it sends the current voice again, and once more SETTLE_CYCLES after the last
    new voice or reconnection (an overloaded server drops some messages without an xrun, and a
    connection just made may not carry the first), so the synth ends on the final position.
    Each counter has one writer: xruns the notification thread, reconnects the main thread (poll),
    the rest the process callback."""

    def __init__(self, engine, *, controller=None, synth=None, api=None, name="neuraldx7"):
        """`api` is rtmidi's and unused here, so that both adapters open alike."""
        jack = _jack()
        self.xruns = 0
        self._xruns_seen = self.cycles = 0  # cycles: process callbacks run so far
        self._new_at = -RESEND_CYCLES  # the cycle of the last new voice
        self.reconnects = self._reconnects_seen = 0  # the synth came back: send it the voice
        self._changed = threading.Event()  # a port came or went
        self.client = client = _jack_client(name, jack)
        self.inport = client.midi_inports.register("control")
        self.input = JackInput(self.inport, client, jack)
        self.outport = client.midi_outports.register("synth")
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(self._shutdown)
        client.set_port_registration_callback(lambda port, register: self._changed.set(), only_available=False)
        self._jack_error = jack.JackError
        try:
            sources, destinations = _jack_ports(client)
            super().__init__(engine, Follow("controller", controller, controller and match_port(
                controller, sources, "source")), Follow("synth", synth, synth and match_port(
                    synth, destinations, "destination")))
            client.activate()
            if self.controller:
                client.connect(self.controller, self.inport)
            if self.synth:
                client.connect(self.outport, self.synth)
        except BaseException:
            client.close()
            raise

    late = property(lambda self: self.input.late)  # cycles whose input was read late
    changed = property(lambda self: self.input.changed)  # input buffers that changed while read
    dropped = property(lambda self: self.input.dropped)  # events a full buffer refused upstream

    def _process(self, frames):
        engine = self.engine
        engine.receive(*self.input.read())
        self.cycles += 1
        if self.xruns != self._xruns_seen:
            self._xruns_seen = self.xruns
            if self.cycles - self._new_at <= RESEND_CYCLES:
                engine.resend()
        if self.cycles - self._new_at == SETTLE_CYCLES:
            engine.resend()
        if self.reconnects != self._reconnects_seen:
            self._reconnects_seen = self.reconnects
            self._new_at = self.cycles  # a port that came back: as a new voice for the resends above
            engine.resend()
        self.outport.clear_buffer()
        if engine.due():
            if engine.fresh():
                self._new_at = self.cycles
            try:
                self.outport.write_midi_event(0, engine.update())
                self.sent += 1
            except self._jack_error:
                self.failed += 1
                engine.resend()

    def _xrun(self, delay_usecs):
        self.xruns += 1

    def _shutdown(self, status, reason):
        self.reason = reason
        self.stopped.set()

    def poll(self):
        """Outside the callback, now and then: reconnects a port that came back after it went
        away. Returns lines saying what changed."""
        if not self._changed.is_set() or self.stopped.is_set():
            return []
        self._changed.clear()
        sources, destinations = _jack_ports(self.client)

        def connect(source, destination):
            try:
                self.client.connect(source, destination)
            except self._jack_error as e:  # gone again already
                raise Error(str(e)) from None

        lines = self._controller.update(sources, self.inport.is_connected_to,
                                        lambda name: connect(name, self.inport))
        synth = self._synth.update(destinations, self.outport.is_connected_to,
                                   lambda name: connect(self.outport, name))
        if synth and synth[-1].startswith("synth: reconnected"):
            self.reconnects += 1
        return lines + synth

    def ports(self):
        """Our two ports' full names, for the user to connect by hand."""
        return self.inport.name, self.outport.name

    def close(self):
        try:
            self.client.deactivate()
        except self._jack_error:  # the server is gone
            pass
        self.client.close()

    @staticmethod
    def list_ports(api=None):
        client = _jack_client("neuraldx7-ports", _jack())
        try:
            return _jack_ports(client)
        finally:
            client.close()

    @staticmethod
    def send_messages(messages, port, api=None, gap=0.1, timeout=10.0):
        jack = _jack()
        client = _jack_client("neuraldx7-send", jack)
        try:
            name = match_port(port, _jack_ports(client)[1], "destination")
            outport = client.midi_outports.register("out")
            pending, cycles, failed = [], [0], []
            cycled = threading.Condition()

            def process(frames):
                outport.clear_buffer()
                if pending:
                    try:
                        outport.write_midi_event(0, pending.pop())
                    except jack.JackError as e:
                        failed.append(str(e))
                with cycled:
                    cycles[0] += 1
                    cycled.notify_all()

            def run_cycles(n):
                """Waits until `n` more cycles have run and nothing is pending (cycles, not seconds:
                a loaded server is slow)."""
                with cycled:
                    end = cycles[0] + n
                    if not cycled.wait_for(lambda: cycles[0] >= end and not pending, timeout):
                        raise Error(f"JACK did not run a cycle in {timeout:g} s")

            client.set_process_callback(process)
            client.activate()
            client.connect(outport, name)
            run_cycles(SEND_SETTLE_CYCLES)  # the connection is in the server's graph
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                pending.append(bytes(message))
                run_cycles(1)
                if failed:
                    raise Error(f"JACK could not send a {len(message)}-byte message ({failed[0]})")
            run_cycles(SEND_SETTLE_CYCLES)  # the last one has been delivered
            return name
        finally:
            client.close()


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
