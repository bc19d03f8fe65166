"""A local "this DX7 cartridge does not exist" page: a small JSON API over the samplers, one static page.

Every answer is a pure function of the request (seed, temperature, voice index, latent, note), so
requests share only read-only state (the model, its compiled functions) and two caches behind a
lock. Audio goes through the optional `audio` extra; without it the API and the page say how to
install it. `App` knows nothing of sockets: `webserver` is its hardened HTTP layer, and `run` puts
the two together.
"""
import collections
import contextlib
import importlib.util
import math
import re
import secrets
import threading
import urllib.parse
from pathlib import Path

import numpy as np

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import cartridges, dx7, sample, webserver
from neuraldx7_jax.config import MUTATE_AMOUNT, NEW_VOICE_TEMPERATURE
from neuraldx7_jax.errors import Error
from neuraldx7_jax.webserver import Response, error_response, json_response

WEB = Path(__file__).resolve().parent / "web"
CARTRIDGE = 32  # voices per cartridge, and rows per device call: one shape, compiled once
MAX_SEED = 2 ** 32 - 1
SOURCE = ("like", "mutate", "amount")  # where a cartridge's voices come from, beside seed and temperature
NOTE_SECONDS = 1.5  # length of each rendered note
AUDIO_INSTALL = 'pip install "neuraldx7-jax[audio]"'
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
MODEL_SLOTS = 4  # model calls running at once: XLA's CPU client wedged for good under 64 concurrent ones
SLOT_SECONDS = 20.0  # a request waits this long for a model slot, then is answered 503 with Retry-After
RETRY_SECONDS = 5  # the Retry-After of that 503


class BadRequest(Exception):
    """A request the client can fix (or retry): answered with `status`, a JSON body {"error",
    "status"} and `headers`."""

    def __init__(self, message, status=400, headers=None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


class LruCache:
    """A small thread-safe least-recently-used map; size 0 keeps nothing. A miss computes outside
    the lock, so one slow request does not hold up the others (two may compute the same value)."""

    def __init__(self, size):
        self._size, self._items, self._lock = size, collections.OrderedDict(), threading.Lock()

    def get(self, key, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            if self._size:
                self._items[key] = value
                while len(self._items) > self._size:
                    self._items.popitem(last=False)
        return value


def audio_available():
    """Whether the `audio` extra's engine (dexed-py) is installed."""
    return importlib.util.find_spec("dexed") is not None


def describe(index, voice):
    """The page's summary of one voice: number (1-32), name, algorithm (1-32)."""
    return {"index": index, "name": dx7.voice_name(voice), "algorithm": int(voice[dx7.ALG]) + 1}


# Query parameters: each parser takes the parsed query and raises BadRequest.

def _one(query, name):
    values = query.get(name)
    if values is not None and len(values) > 1:
        raise BadRequest(f"{name} is given {len(values)} times")
    return None if values is None else values[0]


def _whole(query, name, low, high, default=None):
    text = _one(query, name)
    if text is None:
        if default is None:
            raise BadRequest(f"{name} is required: an integer in {low}..{high}")
        return default
    if not re.fullmatch(r"[0-9]{1,10}", text) or not low <= int(text) <= high:
        raise BadRequest(f"bad {name} {text!r}: expected an integer in {low}..{high}")
    return int(text)


def _temperature(query):
    text = _one(query, "temperature")
    if text is None:
        return NEW_VOICE_TEMPERATURE
    try:
        t = float(text)
    except ValueError:
        t = math.nan
    if not (t >= 0 and math.isfinite(t)):
        raise BadRequest(f"bad temperature {text!r}: expected a finite number >= 0")
    return t


def _source(query, name):
    """`like=SEED:INDEX` or `mutate=SEED:INDEX` (voice INDEX of cartridge SEED at the same
    temperature) -> (seed, index)."""
    text = _one(query, name)
    if text is None:
        return None
    match = re.fullmatch(r"([0-9]{1,10}):([0-9]{1,2})", text)
    if not match or int(match[1]) > MAX_SEED or not 1 <= int(match[2]) <= CARTRIDGE:
        raise BadRequest(f"bad {name} {text!r}: expected SEED:INDEX, a seed in 0..{MAX_SEED} and a voice "
                         f"in 1..{CARTRIDGE}")
    return int(match[1]), int(match[2])


def _like(query):
    """The cartridge's source: ("like" or "mutate", (seed, index), amount) or None. "like": new
    voices near that voice; "mutate": 32 mutants of it, `amount` of their values changed."""
    like, mutate = _source(query, "like"), _source(query, "mutate")
    if like and mutate:
        raise BadRequest("like and mutate both say where the voices come from; give one")
    text = _one(query, "amount")
    if text is not None and not mutate:
        raise BadRequest("amount goes with mutate=SEED:INDEX")
    if not mutate:
        return None if like is None else ("like", like, None)
    try:
        amount = float(text) if text is not None else MUTATE_AMOUNT
    except ValueError:
        amount = math.nan
    if not 0 < amount <= 1:
        raise BadRequest(f"bad amount {text!r}: expected a number in (0, 1]")
    return "mutate", mutate, amount


def _source_fields(like):
    """What the answers say of the cartridge's source: like, mutate (SEED:INDEX or None), amount."""
    text = None if like is None else f"{like[1][0]}:{like[1][1]}"
    mutate = like is not None and like[0] == "mutate"
    return {"like": None if mutate else text, "mutate": text if mutate else None,
            "amount": like[2] if mutate else None}


def _latent(query, latent):
    text = _one(query, "z")
    if text is None:
        return None
    try:
        z = [float(x) for x in text.split(",")] if text.strip() else []
    except ValueError:
        raise BadRequest(f"bad latent z {text!r}: expected {latent} comma-separated numbers") from None
    if len(z) != latent:
        raise BadRequest(f"wrong latent length: z has {len(z)} numbers, the model's latent has {latent}")
    with np.errstate(over="ignore"):
        z32 = np.asarray(z, np.float32)  # what the model computes in: 1e39 is finite only in float64
    if not np.isfinite(z32).all():
        raise BadRequest(f"bad latent z {text!r}: the numbers must be finite float32 values "
                         f"(|z| <= {np.finfo(np.float32).max:.3g})")
    return z32


class App:
    """The page and its API, independent of the HTTP server: `respond(method, target) -> Response`.

    Construction compiles what the page calls (prior sampling and decoding of one cartridge, at
    temperature 0 and above), so the first visitor does not wait. `audio` None detects the extra.
    At most `slots` model calls run at once; a request that waits `slot_seconds` for one is
    answered 503 with Retry-After (and so is a render waiting as long for the synth).
    """

    ROUTES = {  # path -> (method, query parameters it takes)
        "/api/info": ("info", ()),
        "/api/cartridge": ("cartridge", ("seed", "temperature", *SOURCE)),
        "/api/cartridge.syx": ("cartridge_syx", ("seed", "temperature", *SOURCE)),
        "/api/voice": ("voice_json", ("seed", "temperature", "index", "z", *SOURCE)),
        "/api/voice.wav": ("voice_wav", ("seed", "temperature", "index", "z", "note", *SOURCE)),
        "/api/voice.syx": ("voice_syx", ("seed", "temperature", "index", "z", *SOURCE)),
    }

    def __init__(self, model, audio=None, cache_size=64, slots=MODEL_SLOTS, slot_seconds=SLOT_SECONDS):
        self.model = model
        self.latent = model.config.model.latent
        self.low, self.center, self.high, self.range_source = checkpoint_lib.latent_ranges(model)
        self.audio = audio_available() if audio is None else bool(audio)
        self._cartridges = LruCache(cache_size)
        self._wavs = LruCache(cache_size)
        self._render_lock = threading.Lock()  # `audio` keeps one Dexed synth per rate: renders take turns
        self._slots, self.slot_seconds = threading.BoundedSemaphore(slots), slot_seconds
        self._static = {"/": WEB / "index.html", **{f"/{p.name}": p for p in WEB.iterdir() if p.suffix in _TYPES}}
        for temperature in (0.0, 1.0):  # compile: greedy and sampled, prior and decode
            cart = self.cartridge_voices(0, temperature)
            self.voice(0, temperature, 1, cart.z[0])

    # The model's side: everything from (seed, temperature, index, latent).

    @contextlib.contextmanager
    def _turn(self, lock, what):
        """Holds `lock` (a model slot or the synth) or raises a 503 after `slot_seconds` waiting.
        Never nested: a holder waiting for a second turn could wait on the other holders."""
        if not lock.acquire(timeout=self.slot_seconds):
            raise BadRequest(f"busy: {what} were all in use for {self.slot_seconds:g} s; try again shortly",
                             status=503, headers={"Retry-After": str(RETRY_SECONDS)})
        try:
            yield
        finally:
            lock.release()

    def cartridge_voices(self, seed, temperature, like=None):
        """The `cartridges.Cartridge` (seed, temperature): what `neuraldx7 generate --seed SEED
        --temperature T` writes; with `like` ("like", (seed, index), None), new voices near voice
        `index` of cartridge (seed, temperature), as `generate --like` draws them ("more like
        this"); with ("mutate", (seed, index), amount), 32 mutants of that voice, as `neuraldx7
        mutate` makes them (all at its latent)."""
        def make():
            near = None if like is None else self.cartridge_voices(like[1][0], temperature).voices[like[1][1] - 1]
            with self._turn(self._slots, "the model slots"):
                if like is not None and like[0] == "mutate":
                    mutants, _ = sample.mutate(self.model, near[None], amount=like[2], count=CARTRIDGE, seed=seed)
                    z = np.repeat(sample.encode(self.model, near[None])["zk"], CARTRIDGE, axis=0)
                    return cartridges.Cartridge(z, mutants[0], {}, np.arange(CARTRIDGE), {})
                prior = None if near is None else sample.like_prior(self.model, near[None], seed=seed)
                return next(cartridges.cartridges(self.model, 1, temperature=temperature, seed=seed, prior=prior))
        return self._cartridges.get((seed, temperature, like), make)

    def voice(self, seed, temperature, index, z=None, like=None):
        """(z, voice) of voice `index` (1-32) of cartridge (seed, temperature, like) or, given `z`,
        of that voice moved to latent z: decoded with the same value noise (its row in the seed's
        sample stream) and named from z, so its own latent gives the voice back exactly."""
        cart = self.cartridge_voices(seed, temperature, like)
        if z is None or np.array_equal(z, cart.z[index - 1]):
            return cart.z[index - 1], cart.voices[index - 1]
        z = np.asarray(z, np.float32)
        row = int(cart.rows[index - 1])
        rows = np.repeat(z[None], CARTRIDGE, axis=0)  # (32, Z): one compiled shape
        with self._turn(self._slots, "the model slots"):
            voice = sample.decode(self.model, rows, temperature=temperature, seed=seed, batch=CARTRIDGE,
                                  first_block=row // CARTRIDGE)[row % CARTRIDGE]
            return z, cartridges.name_voices(self.model, z[None], voice[None])[0]

    def wav(self, voice, note):
        """WAV bytes of one note of `voice` rendered through Dexed (the `audio` extra)."""
        from neuraldx7_jax import audio

        def make():
            with self._turn(self._render_lock, "the synth"):
                signal = audio.render(voice, note=note, seconds=NOTE_SECONDS)
            return audio.wav_bytes(signal, audio.SAMPLE_RATE)
        return self._wavs.get((voice.tobytes(), note), make)

    # The request's side: parse, dispatch, answer.

    def respond(self, method, target):
        """The answer to `method target`; client errors are 4xx with a JSON body {"error", "status"}."""
        url = urllib.parse.urlsplit(target)
        known = url.path in self.ROUTES or url.path in self._static
        if method not in ("GET", "HEAD") and (known or not target.startswith("/")):  # CONNECT's host:port
            return error_response(405, f"{method} is not allowed here; use GET", {"Allow": "GET, HEAD"})
        if not known:
            return error_response(404, f"no such page or endpoint: {url.path}")
        if url.path in self._static:  # the page reads its own ?seed=&temperature=
            file = self._static[url.path]
            return Response(200, _TYPES[file.suffix], file.read_bytes())
        name, allowed = self.ROUTES[url.path]
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        try:
            unknown = sorted(set(query) - set(allowed))
            if unknown:
                raise BadRequest(f"unknown parameter {', '.join(unknown)}; {url.path} takes "
                                 f"{', '.join(allowed) or 'no parameters'}")
            return getattr(self, name)(query)
        except BadRequest as e:
            return error_response(e.status, str(e), e.headers)
        except Error as e:
            return error_response(400, str(e))

    def info(self, query):
        return json_response({"latent": self.latent, "low": self.low.tolist(), "center": self.center.tolist(),
                              "high": self.high.tolist(), "range_source": self.range_source,
                              "audio": self.audio, "audio_install": AUDIO_INSTALL, "voices": CARTRIDGE,
                              "model": {"path": str(self.model.path), "step": self.model.meta.step}})

    def cartridge(self, query):
        seed = _whole(query, "seed", 0, MAX_SEED) if "seed" in query else secrets.randbelow(2 ** 31)
        temperature, like = _temperature(query), _like(query)
        cart = self.cartridge_voices(seed, temperature, like)
        return json_response({"seed": seed, "temperature": temperature, **_source_fields(like),
                              "redrawn": cart.redrawn,
                              "voices": [describe(i + 1, v) for i, v in enumerate(cart.voices)],
                              "latents": cart.z.astype(np.float64).tolist()})

    def cartridge_syx(self, query):
        seed, temperature, like = _whole(query, "seed", 0, MAX_SEED), _temperature(query), _like(query)
        voices = self.cartridge_voices(seed, temperature, like).voices
        near = f"_{like[0]}{like[1][0]}-{like[1][1]}" if like else ""
        return Response(200, "application/octet-stream", dx7.cartridge_message(voices),
                        _attachment(f"neuraldx7_seed{seed}_t{temperature:g}{near}.syx"))

    def _voice_request(self, query):
        seed, temperature = _whole(query, "seed", 0, MAX_SEED), _temperature(query)
        index, like = _whole(query, "index", 1, CARTRIDGE), _like(query)
        z, voice = self.voice(seed, temperature, index, _latent(query, self.latent), like)
        return dict(seed=seed, temperature=temperature, index=index, **_source_fields(like)), z, voice

    def voice_json(self, query):
        request, z, voice = self._voice_request(query)
        return json_response({**request, **describe(request["index"], voice),
                              "z": z.astype(np.float64).tolist(), "values": voice.tolist()})

    def voice_wav(self, query):
        note = _whole(query, "note", 0, 127, default=60)
        _, _, voice = self._voice_request(query)
        if not self.audio:
            raise BadRequest(f"playing voices needs the audio extra: {AUDIO_INSTALL}", status=501)
        return Response(200, "audio/wav", self.wav(voice, note))

    def voice_syx(self, query):
        request, _, voice = self._voice_request(query)
        edited = "_edit" if "z" in query else ""
        return Response(200, "application/octet-stream", dx7.single_voice_message(voice), _attachment(
            f"neuraldx7_seed{request['seed']}_t{request['temperature']:g}_voice{request['index']}{edited}.syx"))


def _attachment(filename):
    return {"Content-Disposition": f'attachment; filename="{filename}"'}


def run(checkpoint=None, *, host=webserver.HOST, port=webserver.PORT, announce=print):
    """Loads the model, compiles, binds, announces the URL, then serves until interrupted."""
    webserver.check_port(port)  # before the slow part
    model = checkpoint_lib.load(checkpoint)
    announce(f"loaded {model.path}; compiling...")
    app = App(model)
    server = webserver.make_server(app, host, port)
    if not app.audio:
        announce(f"note: voices cannot be played; that needs the audio extra: {AUDIO_INSTALL}")
    if host not in _LOOPBACK:
        announce(f"warning: listening on {host}: whoever reaches this machine can use the page")
    announce(f"serving on {webserver.url_of(server)} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
