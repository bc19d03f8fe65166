"""Live control: MIDI CCs steer the latent, a precompiled decoder sends the newest voice as SysEx.

The engine (`Controls`, `Decoder`, `Engine`) knows no MIDI backend and is tested without one: it
counts every CC, coalesces the moves since its last decode into one decode of the newest
position, and re-sends that voice when asked to (after an xrun, a failed write, a synth that came
back). The MIDI adapters beside it are `midi.BACKENDS`. `run` plays a model until stopped and
reports through a `say` callback; nothing here prints. jax is imported (through `sample`) only
where a model is decoded.
"""
import json
import signal
import threading
import time

import numpy as np

from neuraldx7_jax import config, dx7, midi, midi_link
from neuraldx7_jax.errors import Error

LEARN = 8  # the first LEARN distinct CC numbers received take latent dimensions 1..LEARN
MODE_CCS = range(120, 128)  # channel mode messages (all notes off, ...): never learnt
HISTORY = 1 << 16  # decode latencies kept for the statistics (a ring)


def latent_summary(model):
    """`checkpoint.latent_summary`: (mean, std) of the decoder latent, or None."""
    from neuraldx7_jax import checkpoint
    return checkpoint.latent_summary(model)


class Controls:
    """The latent a controller steers. A CC value v in 0..127 puts its dimension at
    mean + std * span * (2 v / 127 - 1). CCs map to dimensions through `ccs` (CC ccs[i] moves
    dimension i), or, without it, the first distinct CCs received take dimensions 1, 2, ..."""

    def __init__(self, mean, std, *, ccs=None, span=config.LATENT_SPAN):
        mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
        latent = len(mean)
        frac = 2.0 * np.arange(128) / 127 - 1.0
        self.table_Zx128 = (mean[:, None] + std[:, None] * span * frac[None, :]).astype(np.float32)
        self.z_1xZ = mean.astype(np.float32)[None].copy()  # updated in place, read by the decoder
        self.dims = np.full(128, -1, np.int64)  # CC number -> latent dimension, -1 = none
        self.learned = 0
        self.capacity = min(LEARN, latent) if ccs is None else 0
        if ccs is not None:
            ccs = [int(c) for c in ccs]
            if len(ccs) > latent or len(set(ccs)) != len(ccs) or not all(0 <= c < 128 for c in ccs):
                raise Error(f"--cc needs at most {latent} distinct CC numbers in 0..127, got {ccs}")
            self.dims[ccs] = np.arange(len(ccs))

    def control(self, cc, value):
        """Applies one CC message; True when it moved the latent."""
        return self.apply(np.array([cc]), np.array([value])) > 0

    def apply(self, numbers, values):
        """Applies CC messages in their order (CC numbers and values, int arrays); returns how many
        moved the latent. Array work whatever their number: a new CC takes the next free dimension
        where it first appears, each dimension lands on its last value, and a message moves the
        latent when its value differs from the one before it on its dimension."""
        if self.learned < self.capacity:
            new = numbers[(self.dims[numbers] < 0) & (numbers < MODE_CCS.start)]
            ccs, first = np.unique(new, return_index=True)
            ccs = ccs[np.argsort(first)][:self.capacity - self.learned]  # in order of arrival
            self.dims[ccs] = self.learned + np.arange(len(ccs))
            self.learned += len(ccs)
        dims = self.dims[numbers]
        mapped = dims >= 0
        order = np.argsort(dims[mapped], kind="stable")  # by dimension, each in arrival order
        dims, new = dims[mapped][order], self.table_Zx128[dims[mapped], values[mapped]][order]
        if not len(dims):
            return 0
        first = np.r_[True, dims[1:] != dims[:-1]]
        before = np.r_[new[:1], new[:-1]]
        before[first] = self.z_1xZ[0, dims[first]]
        last = np.r_[first[1:], True]
        self.z_1xZ[0, dims[last]] = new[last]
        return int(np.count_nonzero(new != before))

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
    """CC messages in, single-voice SysEx out. `receive` counts and applies a cycle's CCs at once
    (`handle`: raw messages); `due` says whether a voice is wanted (the latent moved, or `resend`
    asked for the voice again);
    `update` decodes the newest latent into a preallocated 163-byte dump, timing each decode, or,
    for a resend of an unmoved latent, returns the dump it keeps without decoding again.
    All the moves since the previous decode go out as one voice: those before the newest are
    counted as superseded. `receive` and `update` may run on two threads (each writes its own
    counters), so a decode that read a latent mid-move is followed by another."""

    def __init__(self, model, *, channel=0, ccs=None, span=config.LATENT_SPAN):
        summary = latent_summary(model)
        mean, std = summary or (np.zeros(model.config.model.latent), np.ones(model.config.model.latent))
        self.controls = Controls(mean, std, ccs=ccs, span=span)
        self.decoder = Decoder(model)
        self.message = bytearray(dx7.single_voice_message(np.zeros(dx7.N_PARAMS, np.uint8), channel))
        self._data = memoryview(self.message)[len(dx7.SINGLE_HEADER):-2]
        self.latency_ms = np.zeros(HISTORY)
        self.ccs = self.moves = 0  # CC messages received; those that moved the latent (by `receive`)
        self.requests = 0  # times `resend` asked for the voice again
        self.updates = self.decodes = 0  # dumps returned by `update`; those decoded (the rest: resends)
        self.superseded = self.resent = 0  # moves never decoded; dumps sent again
        self._moves_done = self._requests_done = 0  # `moves` and `requests` at the last update
        self.decoder(self.controls.z_1xZ)  # the first call of an executable allocates; not in a callback

    def receive(self, numbers, values):
        """CC messages (numbers, values: int arrays, in arrival order), counted and applied at
        once; returns how many moved the latent."""
        if not len(numbers):
            return 0
        self.ccs += len(numbers)
        moved = self.controls.apply(numbers, values)
        self.moves += moved
        return moved

    def handle(self, *messages):
        """Raw MIDI messages (bytes); True when a CC among them moved the latent."""
        return self.receive(*midi_link.cc_arrays(messages)) > 0

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
        """The single-voice dump of the current latent (rewritten by the next update): decoded when
        the latent moved, else the last one again."""
        self.updates += 1
        moves, self._requests_done = self.moves, self.requests
        if moves == self._moves_done:
            self.resent += 1
            return self.message
        start = time.perf_counter()
        self.superseded += moves - self._moves_done - 1
        self._moves_done = moves
        voice = self.decoder(self.controls.z_1xZ)
        self._data[:] = voice
        self.message[-2] = -int(voice.sum()) & 0x7F
        self.latency_ms[self.decodes % HISTORY] = (time.perf_counter() - start) * 1e3
        self.decodes += 1
        return self.message

    def stats(self):
        """dict(updates, decodes, resent, ccs, moves, superseded, p50_ms, p99_ms, max_ms) so far
        (latencies: latent -> SysEx, of the last HISTORY decodes)."""
        ms = self.latency_ms[:min(self.decodes, HISTORY)]
        counts = dict(updates=self.updates, decodes=self.decodes, resent=self.resent, ccs=self.ccs,
                      moves=self.moves, superseded=self.superseded)
        if not len(ms):
            return dict(counts, p50_ms=float("nan"), p99_ms=float("nan"), max_ms=float("nan"))
        return dict(counts, p50_ms=float(np.percentile(ms, 50)), p99_ms=float(np.percentile(ms, 99)),
                    max_ms=float(ms.max()))


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
    """The CC numbers for latent dimensions 1, 2, ... written to `path` by `write_mapping`."""
    try:
        with open(path) as f:
            ccs = json.load(f)["cc"]
        return [int(c) for c in ccs]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise Error(f"{path}: not a mapping file saved by --save-mapping ({e})") from None


def write_mapping(path, ccs):
    """Writes the CC numbers of latent dimensions 1, 2, ... to `path` (JSON: {"cc": [...]})."""
    try:
        with open(path, "w") as f:
            json.dump({"cc": [int(c) for c in ccs]}, f)
            f.write("\n")
    except OSError as e:
        raise Error(f"{path}: cannot save the mapping ({e})") from None


def summary_line(stats):
    """What went in and out: voices, CCs, what was superseded, resent or lost, latency, xruns, and
    where input may have been lost (JACK: cycles read `late`, buffers `changed` while read, events
    `dropped` by a full buffer upstream; None where the backend cannot tell)."""
    xruns = stats.get("xruns")
    resent = f" ({stats['resent']} of them again, in case one was lost)" if stats["resent"] else ""
    latency = (f"decode latency p50 {stats['p50_ms']:.2f} ms, p99 {stats['p99_ms']:.2f} ms, "
               f"max {stats['max_ms']:.2f} ms" if stats["decodes"] else "no decodes")
    counts = [(stats.get(key), what) for key, what in (
        ("late", "cycles read late"), ("changed", "buffers changed while read"),
        ("dropped", "events refused by a full buffer upstream"))]
    lost = ("n/a" if counts[0][0] is None else ", ".join(f"{n} {what}" for n, what in counts if n)
            or "none seen")
    return (f"sent {stats['sent']} voices{resent} for {stats['ccs']} CCs ({stats['moves']} moves, "
            f"{stats['superseded']} superseded by a newer one before a decode); "
            f"{stats['failed']} could not be written; {latency}; xruns {'n/a' if xruns is None else xruns}; "
            f"input lost: {lost}")


def run(checkpoint=None, *, backend=None, controller=None, synth=None, channel=0, ccs=None, mapping=None,
        save_mapping=None, span=config.LATENT_SPAN, api=None, name="neuraldx7", say=None):
    """Plays the model live until Ctrl-C or SIGTERM, reporting through `say(line)`: the ports, each
    CC as it is learnt (written to the file `save_mapping` as it grows, when given), ports that go
    away and come back, then a summary. `ccs` (CC numbers for dimensions 1, 2, ...) or `mapping`
    (a file `save_mapping` wrote) fix the mapping. Returns the statistics; an Error when the JACK
    server goes away."""
    say = say or (lambda line: None)
    if mapping is not None:
        if ccs is not None:
            raise Error("--cc and --mapping exclude each other")
        ccs = load_mapping(mapping)
    backend = midi.choose_backend(backend)
    model = load(checkpoint)
    if latent_summary(model) is None:
        say("note: the model has no latent summary; CCs sweep the prior, 0 +/- "
            f"{span:g} on every dimension")
    try:
        engine = Engine(model, channel=channel, ccs=ccs, span=span)
    except Error as e:
        raise Error(f"{mapping}: {e}" if mapping else str(e)) from None
    stop = threading.Event()
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set()) if main else None
    try:
        with midi.open_link(engine, backend=backend, controller=controller, synth=synth, api=api,
                            name=name) as link:
            control, out = link.ports()
            say(f"backend: {backend}")
            say(f"controller: {link.controller or f'(connect to {control})'}")
            say(f"synth:      {link.synth or f'(connect {out} to it)'}")
            fixed = "learns the first CCs" if ccs is None else ", ".join(
                f"CC {cc} -> {d}" for cc, d in engine.controls.mapping().items())
            say(f"latent dimensions: {fixed}; SysEx channel {channel + 1}")
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
                        if save_mapping:
                            write_mapping(save_mapping, engine.controls.mapping())
            except KeyboardInterrupt:
                pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
    if save_mapping:
        write_mapping(save_mapping, engine.controls.mapping())
    stats = dict(engine.stats(), xruns=link.xruns, sent=link.sent, failed=link.failed, late=link.late,
                 changed=link.changed, dropped=link.dropped)
    say(summary_line(stats))
    if link.stopped.is_set():
        raise Error(f"the JACK server went away ({link.reason or 'no reason given'}); start it and "
                    "run again")
    return stats
