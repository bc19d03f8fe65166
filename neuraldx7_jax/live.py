"""Live control: MIDI CCs steer the latent, a precompiled decoder sends each new voice as SysEx.

The engine (`Controls`, `Decoder`, `Engine`) knows no MIDI backend and is tested without one.
`JackLink` and `RtmidiLink` are thin adapters that feed it CCs and send what it returns;
`list_ports` and `send_file` serve `neuraldx7 ports / send`. jax (through `sample`), jack and
rtmidi are imported where they are used, so listing ports and sending files start fast and a
host without libjack still has rtmidi.
"""
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
BACKENDS = ("jack", "rtmidi")


def latent_summary(model):
    """(mean (Z,), std (Z,)) of the decoder latent over the dataset: the model's `features`
    summary, or None when the model has none (then the prior, N(0, 1), stands in)."""
    features = getattr(model, "features", None)
    if features is None:
        return None
    latent = model.config.model.latent
    mean, std = (np.asarray(features[k], np.float64) for k in ("mean", "std"))
    if mean.shape != (latent,) or std.shape != (latent,) or not (np.all(std > 0) and np.all(np.isfinite(mean))):
        raise Error(f"features.json of the model in {getattr(model, 'path', None)}: the latent summary needs "
                    f"{latent} finite means and {latent} positive stds; run `neuraldx7 features` again")
    return mean, std


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
    """CC messages in, single-voice SysEx out: `control`/`handle` move the latent, `update`
    decodes it and frames the voice into a preallocated 163-byte dump, timing each decode."""

    def __init__(self, model, channel=0, ccs=None, span=SPAN):
        summary = latent_summary(model)
        mean, std = summary or (np.zeros(model.config.model.latent), np.ones(model.config.model.latent))
        self.controls = Controls(mean, std, ccs, span)
        self.decoder = Decoder(model)
        self.message = bytearray(dx7.single_voice_message(np.zeros(dx7.N_PARAMS, np.uint8), channel))
        self._data = memoryview(self.message)[len(dx7.SINGLE_HEADER):-2]
        self.latency_ms = np.zeros(HISTORY)
        self.updates = 0
        self.decoder(self.controls.z_1xZ)  # the first call of an executable allocates; not in a callback

    def control(self, cc, value):
        """One CC message (number, value); True when the latent moved."""
        return self.controls.control(cc, value)

    def handle(self, data):
        """One raw MIDI message (bytes); True when it was a CC that moved the latent."""
        return (len(data) == 3 and data[0] & 0xF0 == 0xB0 and data[1] < 128 and data[2] < 128
                and self.controls.control(data[1], data[2]))

    def update(self):
        """Decodes the current latent; returns the single-voice dump (rewritten by the next update)."""
        start = time.perf_counter()
        voice = self.decoder(self.controls.z_1xZ)
        self._data[:] = voice
        self.message[-2] = -int(voice.sum()) & 0x7F
        self.latency_ms[self.updates % HISTORY] = (time.perf_counter() - start) * 1e3
        self.updates += 1
        return self.message

    def stats(self):
        """dict(updates, p50_ms, p99_ms, max_ms) of the updates so far (latencies: latent -> SysEx)."""
        ms = self.latency_ms[:min(self.updates, HISTORY)]
        if not len(ms):
            return dict(updates=0, p50_ms=float("nan"), p99_ms=float("nan"), max_ms=float("nan"))
        return dict(updates=self.updates, p50_ms=float(np.percentile(ms, 50)),
                    p99_ms=float(np.percentile(ms, 99)), max_ms=float(ms.max()))


def decode_latency(model, n=100, seed=0):
    """Times `n` updates of an Engine (AOT-compiled decode + framing) on random prior latents:
    dict(updates, p50_ms, p99_ms, max_ms)."""
    engine = Engine(model)
    rng = np.random.default_rng(seed)
    for z in rng.standard_normal((n, model.config.model.latent)).astype(np.float32):
        engine.controls.z_1xZ[0] = z
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


def _jack():
    try:
        import jack
    except OSError as e:
        raise Error(f"the JACK library is not installed ({e}); use the rtmidi backend") from None
    return jack


def _jack_client(name, jack):
    """An inactive JACK client; a clear Error, without libjack's own lines, when no server runs."""
    jack.set_error_function(lambda message: None)
    try:
        return jack.Client(name, no_start_server=True)
    except jack.JackOpenError:
        raise Error("cannot reach a JACK server: start one (jackd or qjackctl) or use the rtmidi "
                    "backend") from None
    finally:
        jack.set_error_function()


def _jack_ports(client):
    """(sources, destinations): MIDI ports of other clients that send / receive."""
    own = client.name + ":"
    names = lambda **kw: [p.name for p in client.get_ports(is_midi=True, **kw) if not p.name.startswith(own)]
    return names(is_output=True), names(is_input=True)


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


def _rtmidi_open(direction, api, client, pattern=None, port=None, role=""):
    """An rtmidi MidiIn ("in") or MidiOut ("out") of `client`: with `pattern`, connected to the port
    it picks (ours is named `port`); with `port` only, a virtual port; else no port.
    Returns (midi, the picked port's name or None)."""
    import rtmidi

    errors = (rtmidi.RtMidiError, NotImplementedError, RuntimeError)  # e.g. no ALSA sequencer
    try:
        midi = (rtmidi.MidiIn if direction == "in" else rtmidi.MidiOut)(_rtmidi_api(api), client)
    except errors as e:
        raise Error(f"rtmidi: {e}") from None
    try:
        name = None
        if pattern:
            names = midi.get_ports()
            name = match_port(pattern, names, role)
            midi.open_port(names.index(name), port)
        elif port:
            midi.open_virtual_port(port)
        return midi, name
    except BaseException as e:
        midi.delete()
        if isinstance(e, errors):
            raise Error(f"rtmidi: {e}") from None
        raise


def _rtmidi_close(midi):
    midi.close_port()
    midi.delete()


def list_ports(backend, api=None):
    """dict(sources=[...], destinations=[...]): MIDI ports that send (controllers, for
    --controller) and that receive (synths, for --synth and `send --port`)."""
    if backend == "jack":
        jack = _jack()
        client = _jack_client("neuraldx7-ports", jack)
        try:
            sources, destinations = _jack_ports(client)
        finally:
            client.close()
    else:
        ports = []
        for direction in ("in", "out"):
            midi, _ = _rtmidi_open(direction, api, "neuraldx7-ports")
            ports.append(midi.get_ports())
            midi.delete()
        sources, destinations = ports
    return dict(sources=sources, destinations=destinations)


class JackLink:
    """The JACK adapter: a client with a MIDI input `control` and output `synth`. Each cycle its
    process callback applies the cycle's CCs and, when the latent moved, writes one voice dump."""

    def __init__(self, engine, controller=None, synth=None, name="neuraldx7"):
        jack = _jack()
        self.engine, self.xruns, self.dropped = engine, 0, 0
        self.stopped = threading.Event()  # set when the JACK server goes away
        self.client = client = _jack_client(name, jack)
        self.inport = client.midi_inports.register("control")
        self.outport = client.midi_outports.register("synth")
        client.set_process_callback(self._process)
        client.set_xrun_callback(self._xrun)
        client.set_shutdown_callback(lambda status, reason: self.stopped.set())
        self._jack_error = jack.JackError
        try:
            sources, destinations = _jack_ports(client)
            self.controller = controller and match_port(controller, sources, "source")
            self.synth = synth and match_port(synth, destinations, "destination")
            client.activate()
            if self.controller:
                client.connect(self.controller, self.inport)
            if self.synth:
                client.connect(self.outport, self.synth)
        except BaseException:
            client.close()
            raise

    def _process(self, frames):
        changed = False
        for _, data in self.inport.incoming_midi_events():
            changed |= self.engine.handle(bytes(data))
        self.outport.clear_buffer()
        if changed:
            try:
                self.outport.write_midi_event(0, self.engine.update())
            except self._jack_error:
                self.dropped += 1

    def _xrun(self, delay_usecs):
        self.xruns += 1

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


class RtmidiLink:
    """The rtmidi adapter: a callback on the controller's port decodes and sends a voice for each CC
    that moved the latent. An unnamed port is opened as a virtual one for the user to connect.

    python-rtmidi is used directly, not through mido: mido puts its callback back while it closes
    a port, and rtmidi holds the GIL while it waits for that callback's thread (JACK) to stop."""

    def __init__(self, engine, controller=None, synth=None, api=None, name="neuraldx7"):
        self.engine, self.xruns, self.dropped = engine, None, 0
        self.name = name
        self.stopped = threading.Event()  # rtmidi never stops by itself
        self.output, self.synth = _rtmidi_open("out", api, name, synth, "synth", "destination")
        try:
            self.input, self.controller = _rtmidi_open("in", api, name, controller, "control", "source")
        except BaseException:
            _rtmidi_close(self.output)
            raise
        self.input.ignore_types(sysex=True, timing=True, active_sense=True)
        self.input.set_callback(self._on_message)

    def _on_message(self, event, data=None):
        if self.engine.handle(event[0]):
            self.output.send_message(self.engine.update())

    def ports(self):
        return f"{self.name}:control", f"{self.name}:synth"

    def close(self):
        self.input.cancel_callback()
        time.sleep(0.1)  # a callback under way ends first: closing waits on its thread, holding the GIL
        _rtmidi_close(self.input)
        _rtmidi_close(self.output)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_link(backend, engine, controller=None, synth=None, api=None, name="neuraldx7"):
    """The adapter of `backend` ("jack" or "rtmidi") around `engine`, connected and running."""
    if backend == "jack":
        return JackLink(engine, controller, synth, name)
    if backend == "rtmidi":
        return RtmidiLink(engine, controller, synth, api, name)
    raise Error(f"unknown MIDI backend {backend!r}; choose one of {', '.join(BACKENDS)}")


def load(checkpoint=None):
    """The model to play: `checkpoint`, or the bundled one (with a clear error if there is none)."""
    from neuraldx7_jax import sample

    try:
        return sample.load_model(checkpoint)
    except Error as e:
        if checkpoint is not None:
            raise
        raise Error(f"cannot load the bundled model: {e}") from None


def summary_line(stats, xruns):
    return (f"sent {stats['updates']} voices; decode latency p50 {stats['p50_ms']:.2f} ms, "
            f"p99 {stats['p99_ms']:.2f} ms, max {stats['max_ms']:.2f} ms; "
            f"xruns {'n/a' if xruns is None else xruns}")


def run(checkpoint=None, backend="jack", controller=None, synth=None, channel=0, ccs=None,
        span=SPAN, api=None, name="neuraldx7"):
    """Plays the model live until Ctrl-C (or SIGTERM, or the JACK server stopping), then prints
    the number of voices sent, the decode latency and the xruns. Returns the statistics."""
    model = load(checkpoint)
    if latent_summary(model) is None:
        print("note: the model has no latent summary; CCs sweep the prior, 0 +/- "
              f"{span:g} on every dimension")
    engine = Engine(model, channel, ccs, span)
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    with open_link(backend, engine, controller, synth, api, name) as link:
        control, out = link.ports()
        print(f"controller: {link.controller or f'(connect to {control})'}")
        print(f"synth:      {link.synth or f'(connect {out} to it)'}")
        mapping = "learns the first CCs" if ccs is None else ", ".join(
            f"CC {cc} -> {d}" for cc, d in engine.controls.mapping().items())
        print(f"latent dimensions: {mapping}; SysEx channel {channel + 1}")
        print("ready; Ctrl-C stops", flush=True)
        shown = 0
        try:
            while not (stop.wait(0.2) or link.stopped.is_set()):
                if engine.controls.learned > shown:
                    learnt = {cc: d for cc, d in engine.controls.mapping().items() if d > shown}
                    print(", ".join(f"CC {cc} -> dimension {d}" for cc, d in learnt.items()), flush=True)
                    shown = engine.controls.learned
        except KeyboardInterrupt:
            pass
        if link.stopped.is_set():
            print("the JACK server stopped")
    if main:
        signal.signal(signal.SIGTERM, previous)
    stats = dict(engine.stats(), xruns=link.xruns, dropped=link.dropped)
    print(summary_line(stats, link.xruns) + (f"; {link.dropped} dropped" if link.dropped else ""))
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


def send_messages(messages, port, backend="rtmidi", api=None, gap=0.1, timeout=10.0):
    """Sends SysEx `messages` (bytes, F0 .. F7) to the destination `port` picks, `gap` seconds apart.
    Returns the port's full name."""
    if backend == "rtmidi":
        out, name = _rtmidi_open("out", api, "neuraldx7-send", port, "out", "destination")
        try:
            for i, message in enumerate(messages):
                time.sleep(gap if i else 0)
                out.send_message(message)
        finally:
            _rtmidi_close(out)  # waits until the last message is out
        return name
    if backend != "jack":
        raise Error(f"unknown MIDI backend {backend!r}; choose one of {', '.join(BACKENDS)}")
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


def send_file(path, port, backend="rtmidi", api=None, channel=0, gap=0.1):
    """Sends the voices of a DX7 file to a synth; returns (voices, messages, bytes, port name)."""
    n, messages = file_messages(path, channel)
    name = send_messages(messages, port, backend, api, gap)
    return n, len(messages), sum(map(len, messages)), name
