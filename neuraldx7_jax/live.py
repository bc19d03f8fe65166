"""Live control: MIDI CCs steer the latent, a precompiled decoder sends the newest voice as SysEx.

The engine (`Controls`, `Decoder`, `Engine`) knows no MIDI backend and is tested without one: it
counts every CC, coalesces the moves since its last decode into one decode of the newest
position, and re-sends that voice when asked to. `JackLink` and `RtmidiLink` are the adapters,
one per entry of `BACKENDS`: they feed it CCs, send what it returns, follow their ports when
they go away and come back (`poll`), list ports and send files. Nothing here prints: `run`
reports through a `say` callback. jax (through `sample`), jack and rtmidi are imported where they
are used, so listing ports and sending files start fast and a host without libjack has rtmidi.
"""
import ctypes
import ctypes.util
import json
import re
import signal
import threading
import time

import numpy as np

from neuraldx7_jax import dx7
from neuraldx7_jax.errors import Error

SPAN = 3.0  # CC 0..127 sweeps mean - SPAN std .. mean + SPAN std of its dimension
LEARN = 8  # the first LEARN distinct CC numbers received take latent dimensions 1..LEARN
MODE_CCS = range(120, 128)  # channel mode messages (all notes off, ...): never learnt
HISTORY = 1 << 16  # decode latencies kept for the statistics (a ring)
RESEND_CYCLES = 100  # JACK: an xrun up to this many cycles (0.5 s at 256/48k) after a new voice sends it again
POLL_S = 1.0  # rtmidi: how often the port list is read to follow ports that went away


def latent_summary(model):
    """`checkpoint.latent_summary`: (mean, std) of the decoder latent, or None."""
    from neuraldx7_jax import checkpoint
    return checkpoint.latent_summary(model)


class Controls:
    """The latent a controller steers. A CC value v in 0..127 puts its dimension at
    mean + std * span * (2 v / 127 - 1). CCs map to dimensions through `ccs` (CC ccs[i] moves
    dimension i), or, without it, the first distinct CCs received take dimensions 1, 2, ..."""

    def __init__(self, mean, std, ccs=None, span=SPAN):
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        latent = len(mean)
        frac = 2.0 * np.arange(128) / 127 - 1.0
        self.table_Zx128 = (mean[:, None] + std[:, None] * span * frac[None, :]).astype(np.float32)
        self.z_1xZ = mean.astype(np.float32)[None].copy()  # updated in place, read by the decoder
        self.dims = np.full(128, -1, np.int64)  # CC number -> latent dimension, -1 = none
        self.learning = ccs is None
        self.learned = 0
        self.capacity = min(LEARN, latent) if ccs is None else 0
        if ccs is not None:
            ccs = [int(c) for c in ccs]
            if len(ccs) > latent or len(set(ccs)) != len(ccs) or not all(0 <= c < 128 for c in ccs):
                raise Error(f"--cc needs at most {latent} distinct CC numbers in 0..127, got {ccs}")
            self.dims[ccs] = np.arange(len(ccs))

    def control(self, cc, value):
        """Applies one CC message; True when it moved the latent."""
        d = self.dims[cc]
        if d < 0:
            if self.learned >= self.capacity or cc in MODE_CCS:
                return False
            d = self.dims[cc] = self.learned
            self.learned += 1
        new = self.table_Zx128[d, value]
        if self.z_1xZ[0, d] == new:
            return False
        self.z_1xZ[0, d] = new
        return True

    def mapping(self):
        """{CC number: latent dimension (1-based)} so far."""
        return {int(cc): int(self.dims[cc]) + 1 for cc in np.argsort(self.dims) if self.dims[cc] >= 0}


class Decoder:
    """The argmax decode of one latent, compiled ahead of time for a (1, Z) float32 input, so
    calling it never traces or compiles: `decoder(z_1xZ) -> voice (155,) uint8`."""

    def __init__(self, model):
        import jax
        import jax.numpy as jnp

        from neuraldx7_jax import sample

        self.params = model.params
        spec = jax.ShapeDtypeStruct((1, model.config.model.latent), jnp.float32)
        self.compiled = sample.make_decoder(model.config.model).lower(self.params, spec).compile()

    def __call__(self, z_1xZ):
        return np.asarray(self.compiled(self.params, z_1xZ))[0]


class Engine:
    """CC messages in, single-voice SysEx out. `handle` applies one message and counts it; `due`
    says whether a decode is wanted (the latent moved, or `resend` asked for the voice again);
    `update` decodes the newest latent into a preallocated 163-byte dump, timing each decode.
    All the moves since the previous decode go out as one voice: those before the newest are
    counted as superseded. `handle` and `update` may run on two threads (each writes its own
    counters), so a decode that read a latent mid-move is followed by another."""

    def __init__(self, model, channel=0, ccs=None, span=SPAN):
        summary = latent_summary(model)
        mean, std = summary or (np.zeros(model.config.model.latent), np.ones(model.config.model.latent))
        self.controls = Controls(mean, std, ccs, span)
        self.decoder = Decoder(model)
        self.message = bytearray(dx7.single_voice_message(np.zeros(dx7.N_PARAMS, np.uint8), channel))
        self._data = memoryview(self.message)[len(dx7.SINGLE_HEADER):-2]
        self.latency_ms = np.zeros(HISTORY)
        self.ccs = self.moves = 0  # CC messages received; those that moved the latent (by `handle`)
        self.requests = 0  # times `resend` asked for the voice again
        self.updates = self.superseded = self.resent = 0  # decodes; moves never decoded; resends
        self._moves_done = self._requests_done = 0  # `moves` and `requests` at the last decode
        self.decoder(self.controls.z_1xZ)  # the first call of an executable allocates; not in a callback

    def control(self, cc, value):
        """One CC message (number, value); True when the latent moved."""
        self.ccs += 1
        moved = self.controls.control(cc, value)
        self.moves += moved
        return moved

    def handle(self, data):
        """One raw MIDI message (bytes); True when it was a CC that moved the latent."""
        return (len(data) == 3 and data[0] & 0xF0 == 0xB0 and data[1] < 128 and data[2] < 128
                and self.control(data[1], data[2]))

    def resend(self):
        """Asks for the current voice again (it may have been lost); only once one went out."""
        if self.updates:
            self.requests += 1

    def fresh(self):
        """Whether the latent moved since the last decode."""
        return self.moves != self._moves_done

    def due(self):
        """Whether `update` has something to send: a latent not decoded yet, or a resend."""
        return self.fresh() or self.requests != self._requests_done

    def update(self):
        """Decodes the current latent; returns the single-voice dump (rewritten by the next update)."""
        start = time.perf_counter()
        moves, self._requests_done = self.moves, self.requests
        if moves == self._moves_done:
            self.resent += 1
        else:
            self.superseded += moves - self._moves_done - 1
            self._moves_done = moves
        voice = self.decoder(self.controls.z_1xZ)
        self._data[:] = voice
        self.message[-2] = -int(voice.sum()) & 0x7F
        self.latency_ms[self.updates % HISTORY] = (time.perf_counter() - start) * 1e3
        self.updates += 1
        return self.message

    def stats(self):
        """dict(updates, p50_ms, p99_ms, max_ms, ccs, moves, superseded, resent) so far
        (latencies: latent -> SysEx)."""
        ms = self.latency_ms[:min(self.updates, HISTORY)]
        counts = dict(updates=self.updates, ccs=self.ccs, moves=self.moves, superseded=self.superseded,
                      resent=self.resent)
        if not len(ms):
            return dict(counts, p50_ms=float("nan"), p99_ms=float("nan"), max_ms=float("nan"))
        return dict(counts, p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                    max_ms=float(ms.max()))


def decode_latency(model, n=100, seed=0):
    """Times `n` updates of an Engine (AOT-compiled decode + framing) on random prior latents:
    dict(updates, p50_ms, p99_ms, max_ms, ...)."""
    engine = Engine(model)
    rng = np.random.default_rng(seed)
    for z in rng.standard_normal((n, model.config.model.latent)).astype(np.float32):
        engine.controls.z_1xZ[0] = z
        engine.moves += 1
        engine.update()
    return engine.stats()


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


def _jack():
    try:
        import jack
    except OSError as e:
        raise Error(f"the JACK library is not installed ({e}); try --backend rtmidi") from None
    return jack


def _jack_client(name, jack):
    """An inactive JACK client; a clear Error, without libjack's own lines, when no server runs."""
    jack.set_error_function(lambda message: None)
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError:
        raise Error("cannot reach a JACK server: start one (jackd or qjackctl), or try "
                    "--backend rtmidi") from None
    finally:
        jack.set_error_function()


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


class JackLink:
    """The JACK adapter: a client with a MIDI input `control` and output `synth`. Each cycle its
    process callback applies the cycle's CCs and, when the engine has something due, writes one
    voice: the newest. After an xrun (up to RESEND_CYCLES after a new voice), a failed write or the
    synth's return, it sends the current voice again, so the synth ends on the final position.
    Each counter has one writer: xruns the notification thread, reconnects the main thread (poll),
    the rest the process callback."""

    def __init__(self, engine, controller=None, synth=None, name="neuraldx7"):
        jack = _jack()
        self.engine, self.xruns, self.sent, self.failed = engine, 0, 0, 0
        self.stopped = threading.Event()  # set when the JACK server goes away
        self.reason = None
        self._xruns_seen = self._cycle = 0
        self._new_at = -RESEND_CYCLES  # the cycle of the last new voice
        self.reconnects = self._reconnects_seen = 0  # the synth came back: send it the voice
        self._changed = threading.Event()  # a port came or went
        self.client = client = _jack_client(name, jack)
        self.inport = client.midi_inports.register("control")
        self.outport = client.midi_outports.register("synth")
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(self._shutdown)
        client.set_port_registration_callback(lambda port, register: self._changed.set(), only_available=False)
        self._jack_error = jack.JackError
        try:
            sources, destinations = _jack_ports(client)
            self._controller = Follow("controller", controller, controller and match_port(
                controller, sources, "source"))
            self._synth = Follow("synth", synth, synth and match_port(synth, destinations, "destination"))
            client.activate()
            if self.controller:
                client.connect(self.controller, self.inport)
            if self.synth:
                client.connect(self.outport, self.synth)
        except BaseException:
            client.close()
            raise

    controller = property(lambda self: self._controller.name)
    synth = property(lambda self: self._synth.name)

    def _process(self, frames):
        engine = self.engine
        for _, data in self.inport.incoming_midi_events():
            engine.handle(bytes(data))
        self._cycle += 1
        if self.xruns != self._xruns_seen:
            self._xruns_seen = self.xruns
            if self._cycle - self._new_at <= RESEND_CYCLES:
                engine.resend()
        if self.reconnects != self._reconnects_seen:
            self._reconnects_seen = self.reconnects
            engine.resend()
        self.outport.clear_buffer()
        if engine.due():
            if engine.fresh():
                self._new_at = self._cycle
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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
            pending, written, failed = [], threading.Event(), []

            def process(frames):
                outport.clear_buffer()
                if pending:
                    try:
                        outport.write_midi_event(0, pending.pop())
                    except jack.JackError as e:
                        failed.append(str(e))
                    written.set()

            client.set_process_callback(process)
            client.activate()
            client.connect(outport, name)
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                written.clear()
                pending.append(bytes(message))
                if not written.wait(timeout):
                    raise Error(f"JACK did not run a cycle in {timeout:g} s")
                if failed:
                    raise Error(f"JACK could not send a {len(message)}-byte message ({failed[0]})")
            time.sleep(2 * client.blocksize / client.samplerate)  # the cycle that delivers it
            return name
        finally:
            client.close()


class RtmidiLink:
    """The rtmidi adapter. rtmidi's callback on the controller's port only applies the CC; a
    worker thread decodes and sends whatever is due, so a flood of CCs costs one decode per
    pass, always of the newest position. An unnamed port is opened as a virtual one for the user
    to connect; a named one that goes away is looked for again every POLL_S (`poll`).

    python-rtmidi is used directly, not through mido: mido puts its callback back while it closes
    a port, and rtmidi holds the GIL while it waits for that callback's thread (JACK) to stop."""

    def __init__(self, engine, controller=None, synth=None, api=None, name="neuraldx7"):
        self.engine, self.xruns, self.sent, self.failed = engine, None, 0, 0
        self.name = name
        self.stopped = threading.Event()  # rtmidi never stops by itself
        self._wake, self._closing, self._lock = threading.Event(), False, threading.Lock()
        self._polled = time.monotonic()
        self.output, synth_name = _rtmidi_open("out", api, name, synth, "synth", "destination")
        try:
            self.input, controller_name = _rtmidi_open("in", api, name, controller, "control", "source")
        except BaseException:
            _rtmidi_close(self.output)
            raise
        self._synth = Follow("synth", synth, synth_name)
        self._controller = Follow("controller", controller, controller_name)
        self.input.ignore_types(sysex=True, timing=True, active_sense=True)
        self._worker = threading.Thread(target=self._work, daemon=True)
        self._worker.start()
        self.input.set_callback(self._on_message)

    controller = property(lambda self: self._controller.name)
    synth = property(lambda self: self._synth.name)

    def _on_message(self, event, data=None):
        if self.engine.handle(event[0]):
            self._wake.set()

    def _work(self):
        errors = _rtmidi_errors()
        while True:
            self._wake.wait()
            self._wake.clear()
            if self._closing:
                return
            while self.engine.due():
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

        def connect_output(name):
            with self._lock:
                self.output.close_port()
                _rtmidi_connect(self.output, name, "synth")
            self.engine.resend()  # the synth that came back has not heard the current voice
            self._wake.set()

        def connect_input(name):
            self.input.cancel_callback()
            time.sleep(0.1)  # a callback under way ends first (see the class docstring)
            self.input.close_port()
            _rtmidi_connect(self.input, name, "control")
            self.input.set_callback(self._on_message)

        with self._lock:
            destinations = self.output.get_ports()
        return (self._synth.update(destinations, lambda name: True, connect_output)
                + self._controller.update(self.input.get_ports(), lambda name: True, connect_input))

    def ports(self):
        return f"{self.name}:control", f"{self.name}:synth"

    def close(self):
        self.input.cancel_callback()
        self._closing = True
        self._wake.set()
        self._worker.join()
        time.sleep(0.1)  # a callback under way ends first: closing waits on its thread, holding the GIL
        _rtmidi_close(self.input)
        _rtmidi_close(self.output)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                out.send_message(message)
        finally:
            _rtmidi_close(out)  # waits until the last message is out
        return name


BACKENDS = {"jack": JackLink, "rtmidi": RtmidiLink}  # the MIDI backends, each one adapter class


def choose_backend(backend=None):
    """The backend to use: `backend` when given, else jack when a JACK server is running, else rtmidi."""
    if backend is None:
        return "jack" if jack_running() else "rtmidi"
    if backend not in BACKENDS:
        raise Error(f"unknown MIDI backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def list_ports(backend=None, api=None):
    """dict(backend, sources=[...], destinations=[...]): MIDI ports that send (controllers, for
    --controller) and that receive (synths, for --synth and `send --port`)."""
    backend = choose_backend(backend)
    sources, destinations = BACKENDS[backend].list_ports(api)
    return dict(backend=backend, sources=sources, destinations=destinations)


def open_link(backend, engine, controller=None, synth=None, api=None, name="neuraldx7"):
    """The adapter of `backend` (None: `choose_backend`) around `engine`, connected and running."""
    backend = choose_backend(backend)
    if backend == "jack":
        return JackLink(engine, controller, synth, name)
    return RtmidiLink(engine, controller, synth, api, name)


def load(checkpoint=None):
    """The model to play: `checkpoint`, or the bundled one (with a clear error if there is none)."""
    from neuraldx7_jax import checkpoint as checkpoint_lib

    try:
        return checkpoint_lib.load(checkpoint)
    except Error as e:
        if checkpoint is not None:
            raise
        raise Error(f"cannot load the bundled model: {e}") from None


def load_mapping(path):
    """The CC numbers for latent dimensions 1, 2, ... saved in `path` by `save_mapping`."""
    try:
        with open(path) as f:
            ccs = json.load(f)["cc"]
        return [int(c) for c in ccs]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Error(f"{path}: not a mapping file saved by --save-mapping ({e})") from None


def save_mapping(path, ccs):
    """Writes the CC numbers of latent dimensions 1, 2, ... to `path` (JSON: {"cc": [...]})."""
    try:
        with open(path, "w") as f:
            json.dump({"cc": [int(c) for c in ccs]}, f)
            f.write("\n")
    except OSError as e:
        raise Error(f"cannot save the mapping: {e}") from None


def summary_line(stats):
    """What went in and out: voices, CCs, what was superseded, resent or lost, latency, xruns."""
    xruns = stats.get("xruns")
    resent = f" ({stats['resent']} again after an xrun or a failed write)" if stats["resent"] else ""
    return (f"sent {stats['sent']} voices{resent} for {stats['ccs']} CCs ({stats['moves']} moves, "
            f"{stats['superseded']} superseded by a newer one before a decode); "
            f"{stats['failed']} could not be written; decode latency p50 {stats['p50_ms']:.2f} ms, "
            f"p99 {stats['p99_ms']:.2f} ms, max {stats['max_ms']:.2f} ms; "
            f"xruns {'n/a' if xruns is None else xruns}")


def run(checkpoint=None, backend=None, controller=None, synth=None, channel=0, ccs=None,
        span=SPAN, api=None, name="neuraldx7", save=None, say=print):
    """Plays the model live until Ctrl-C or SIGTERM, reporting through `say(line)`: the ports,
    each CC as it is learnt (saved to `save` as it grows, when given), ports that go away and come
    back, then a summary. Returns the statistics; an Error when the JACK server goes away."""
    backend = choose_backend(backend)
    model = load(checkpoint)
    if latent_summary(model) is None:
        say("note: the model has no latent summary; CCs sweep the prior, 0 +/- "
            f"{span:g} on every dimension")
    engine = Engine(model, channel, ccs, span)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        with open_link(backend, engine, controller, synth, api, name) as link:
            control, out = link.ports()
            say(f"backend: {backend}")
            say(f"controller: {link.controller or f'(connect to {control})'}")
            say(f"synth:      {link.synth or f'(connect {out} to it)'}")
            mapping = "learns the first CCs" if ccs is None else ", ".join(
                f"CC {cc} -> {d}" for cc, d in engine.controls.mapping().items())
            say(f"latent dimensions: {mapping}; SysEx channel {channel + 1}")
            say("ready; Ctrl-C stops")
            shown = 0
            try:
                while not (stop.wait(0.2) or link.stopped.is_set()):
                    for line in link.poll():
                        say(line)
                    if engine.controls.learned > shown:
                        learnt = {cc: d for cc, d in engine.controls.mapping().items() if d > shown}
                        say(", ".join(f"CC {cc} -> dimension {d}" for cc, d in learnt.items()))
                        shown = engine.controls.learned
                        if save:
                            save_mapping(save, engine.controls.mapping())
            except KeyboardInterrupt:
                pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if save:
        save_mapping(save, engine.controls.mapping())
    stats = dict(engine.stats(), xruns=link.xruns, sent=link.sent, failed=link.failed)
    say(summary_line(stats))
    if link.stopped.is_set():
        raise Error(f"the JACK server went away ({link.reason or 'no reason given'}); start it and "
                    "run again")
    return stats


def file_messages(path, channel=0):
    """(number of voices, SysEx messages) of a DX7 file: one single-voice dump for a single voice,
    else one bulk dump per 32 voices. The file's problems are `dx7.FormatWarning`s."""
    voices = dx7.load(path)
    if len(voices) == 1:
        return len(voices), [dx7.single_voice_message(voices[0], channel)]
    if len(voices) % 32:
        raise Error(f"{path}: {len(voices)} voices, neither one voice nor whole cartridges of 32")
    return len(voices), [dx7.cartridge_message(voices[i:i + 32], channel) for i in range(0, len(voices), 32)]


def send_messages(messages, port, backend=None, api=None, gap=0.1, timeout=10.0):
    """Sends SysEx `messages` (bytes, F0 .. F7) to the destination `port` picks, `gap` seconds apart,
    over `backend` (None: `choose_backend`). Returns (the backend, the port's full name)."""
    backend = choose_backend(backend)
    return backend, BACKENDS[backend].send_messages(messages, port, api, gap, timeout)


def send_file(path, port, backend=None, api=None, channel=0, gap=0.1):
    """Sends the voices of a DX7 file to a synth; returns (voices, messages, bytes, backend, port name)."""
    n, messages = file_messages(path, channel)
    backend, name = send_messages(messages, port, backend, api, gap)
    return n, len(messages), sum(map(len, messages)), backend, name
