import glob
import importlib.util
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuraldx7_jax import dx7

jax.config.update("jax_numpy_rank_promotion", "raise")  # silent broadcasting is an error in tests

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data`: skipped with a reason when absent, a failure in CI (CI always has it)."""
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DATA} is missing in CI")
        pytest.skip(f"real DX7 data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def dexed():
    """dexed-py and matplotlib (the `audio` extra): skipped when absent, a failure in CI (CI installs it)."""
    missing = [m for m in ("dexed", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed: pip install -e '.[audio]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install the audio extra)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sklearn():
    """scikit-learn (the `realism` extra): skipped when absent, a failure in CI (CI installs it)."""
    if importlib.util.find_spec("sklearn") is None:
        reason = "scikit-learn not installed: pip install -e '.[realism]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install the realism extra)")
        pytest.skip(reason)


def random_voices(n, seed=0):
    """(n, 155) uint8 voices, every field uniformly random in its range (all valid)."""
    return np.random.default_rng(seed).integers(0, dx7.MAX.astype(int) + 1, (n, dx7.N_PARAMS)).astype(np.uint8)


def make_random_model(decoder="independent"):
    """The tiny test model (with `decoder`) with random parameters (shapes from eval_shape: no
    compilation), no meta."""
    from neuraldx7_jax import checkpoint, config
    from neuraldx7_jax.model import VAE

    cfg = config.override(config.test(), [f"model.decoder={decoder}"])
    shapes = jax.eval_shape(VAE(cfg.model).init, jax.random.key(0), jnp.zeros((1, dx7.N_PARAMS), jnp.int32),
                            jnp.zeros((1, cfg.model.latent)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes)
    return checkpoint.Model(cfg, params, None, Path("."))


@pytest.fixture(scope="session")
def random_model():
    """`make_random_model()`, one per session."""
    return make_random_model()


@pytest.fixture(scope="session")
def random_masked_model():
    """`make_random_model("masked")`, one per session."""
    return make_random_model("masked")


@pytest.fixture(scope="session")
def trained(shared_data, tmp_path_factory):
    """(work directory, dataset) of the test config trained 20 steps on the factory cartridges, with
    its features and training facts, as `neuraldx7 train` leaves it. Shared: tests copy it to change it."""
    from neuraldx7_jax import config, data, features, train

    root = tmp_path_factory.mktemp("trained")
    # No validation split: training then compiles no evaluation step.
    data.build_dataset([shared_data / "factory"], root / "data.npz", validation_fraction=0.0, progress=False)
    train.train_and_evaluate(config.test(), root / "data.npz", root / "work", steps=20,
                             checkpoint_every=20, eval_every=20, progress=False)
    features.write(root / "work", root / "data.npz")  # as `train` does at its end
    return root / "work", root / "data.npz"


# A served model: the page's App over a tiny real checkpoint, on a free port, for test_serve and
# test_webserver.

MEAN, STD = [0.5, -0.25, 0.1, 0.0], [1.5, 0.5, 1.0, 2.0]  # a latent summary for the test preset (Z = 4)


@pytest.fixture(scope="session")
def served_workdir(tmp_path_factory):
    """A real checkpoint of the test preset, two steps on random valid voices, with a latent summary."""
    from neuraldx7_jax import checkpoint, config, train

    d = tmp_path_factory.mktemp("serve")
    voices = random_voices(40)
    np.savez(d / "data.npz", train=voices[:32], validation=voices[32:])
    train.train_and_evaluate(config.test(), d / "data.npz", d / "work", steps=2, checkpoint_every=2,
                             eval_every=2, log_every=2, progress=False)
    checkpoint.features_path(d / "work").write_text(json.dumps(dict(mean=MEAN, std=STD)))
    return d / "work"


@pytest.fixture(scope="session")
def app(served_workdir):
    """`serve.App` of the served checkpoint."""
    from neuraldx7_jax import checkpoint, serve

    return serve.App(checkpoint.load(served_workdir))


def start_server(app):
    """(url, stop) of `app` served on a free port of 127.0.0.1 from a thread."""
    from neuraldx7_jax import webserver

    server = webserver.make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
    return webserver.url_of(server), stop


@pytest.fixture(scope="session")
def url(app):
    address, stop = start_server(app)
    yield address
    stop()


def get(url, method="GET"):
    """(status, headers, body) of one request; error statuses are answers, not exceptions."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def get_json(url):
    status, _, body = get(url)
    assert status == 200, body
    return json.loads(body)


def busy_or_ok(status, headers, body):
    """A burst's answer: 200, or 503 with Retry-After and our JSON saying it is busy."""
    from neuraldx7_jax import serve

    if status == 503:
        assert headers["Retry-After"] == str(serve.RETRY_SECONDS) and "busy" in json.loads(body)["error"]
    return status in (200, 503)


# A real JACK server (dummy driver) and a test controller and synth, for test_live and test_midi.

def need_jackd():
    jackd = shutil.which("jackd")
    if jackd is None:
        if os.environ.get("CI"):
            pytest.fail("jackd is missing in CI (.ci/run installs jackd2)")
        pytest.skip("jackd is not installed (apt-get install jackd2)")
    return jackd


def start_jackd(name, log, synchronous=True):
    """A dummy-driver JACK server (48 kHz, 256 frames) called `name`, once it answers.
    Synchronous mode (-S, clients may be 5 s late): a slow cycle on a loaded machine is an xrun,
    never a lost message; asynchronous, as a user runs it, the next cycle starts on time.
    setpriv: the server gets SIGTERM if pytest dies, even killed."""
    import jack

    orphan_guard = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
    mode = ["-S", "-t", "5000"] if synchronous else []
    server = subprocess.Popen(orphan_guard + [need_jackd(), *mode, "--no-realtime", "-n", name,
                                              "-d", "dummy", "-r", "48000", "-p", "256"],
                              stdout=log, stderr=subprocess.STDOUT)
    jack.set_error_function(lambda message: None)
    deadline = time.monotonic() + 20
    while True:
        try:
            jack.Client("probe", no_start_server=True, servername=name).close()
            return server
        except jack.JackOpenError:
            if server.poll() is not None or time.monotonic() > deadline:
                stop_jackd(server)
                pytest.fail(f"jackd did not start (log: {log.name})")
            time.sleep(0.1)


def stop(proc, seconds=60):
    """Ends a child still running: SIGTERM first (`neuraldx7 live` stops cleanly, closing its JACK
    client: a killed client stalls a synchronous server for its timeout), SIGKILL after `seconds`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(seconds)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def stop_jackd(server):
    """Stops a server `start_jackd` started and removes the files it leaves in /dev/shm (its
    semaphores and socket, named after the server: a killed client's stay behind)."""
    stop(server, 30)
    name = server.args[server.args.index("-n") + 1]
    for path in glob.glob(f"/dev/shm/jack*_{glob.escape(name)}_*"):
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    """A JACK server under a unique name, the default one for this module."""
    need_jackd()
    name = f"neuraldx7-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("jackd") / "jackd.log"
    with pytest.MonkeyPatch.context() as env, open(log, "w") as out:
        env.setenv("JACK_DEFAULT_SERVER", name)
        env.setenv("JACK_NO_START_SERVER", "1")
        server = start_jackd(name, out)
        try:
            yield name
        finally:
            stop_jackd(server)


RIG = r"""
import collections, json, sys, threading, time
import jack

items, lock = collections.deque(), threading.Lock()  # per cycle: a batch of messages, or a stall (s)

def say(*words):
    with lock:
        print(*words, flush=True)

def controller():
    client = jack.Client("pytest-controller", use_exact_name=True, no_start_server=True)
    out = client.midi_outports.register("out")

    @client.set_process_callback
    def play(frames):
        out.clear_buffer()
        if not items:
            return
        item = items.popleft()
        if isinstance(item, float):  # a late cycle: the server counts an xrun
            time.sleep(item)
            return
        for i, message in enumerate(item):
            try:
                out.write_midi_event(min(i, frames - 1), message)
            except jack.JackError:  # the buffer is full: the rest goes next cycle, as a MIDI driver does
                items.appendleft(item[i:])
                break
    return client

def synth():
    client = jack.Client("pytest-synth", use_exact_name=True, no_start_server=True)
    inp = client.midi_inports.register("in")

    @client.set_process_callback
    def keep(frames):
        for _, data in inp.incoming_midi_events():
            say("rx", bytes(data).hex())
    return client

OPEN = dict(controller=controller, synth=synth)
clients = {}
for role in OPEN:
    clients[role] = OPEN[role]()
    clients[role].activate()
say("ready")
for line in sys.stdin:
    command = json.loads(line)
    if "play" in command:
        items.extend(i if isinstance(i, float) else [bytes.fromhex(m) for m in i] for i in command["play"])
    elif "close" in command:
        client = clients.pop(command["close"])
        client.deactivate()
        client.close()
        say("done")
    else:
        clients[command["open"]] = OPEN[command["open"]]()
        clients[command["open"]].activate()
        say("done")
for client in clients.values():
    client.deactivate()
    client.close()
"""


class Rig:
    """A controller that plays one batch of MIDI messages per JACK cycle (what does not fit its
    buffer goes the next cycle) and a synth that keeps what it receives; either can be closed
    and opened again under the same name. JACK clients in a process of their own, as
    python-rtmidi holds the GIL while it opens a JACK client, and the server then waits on the
    Python callbacks beside it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", RIG], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines, self.done, self.received = queue.Queue(), queue.Queue(), []
        threading.Thread(target=self._read, daemon=True).start()
        try:
            first = self.done.get(timeout=300)
        except queue.Empty:
            self.close()
            pytest.fail("the test controller and synth did not open in 300 s")
        assert first == "ready", first

    def _read(self):
        for line in self.proc.stdout:
            (self.lines.put(line[3:].strip()) if line.startswith("rx ") else self.done.put(line.strip()))

    def _send(self, command):
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def play(self, batches):
        """Batches of messages, one per cycle; a number instead of a batch stalls that cycle (s)."""
        self._send(dict(play=[b if isinstance(b, float) else [m.hex() for m in b] for b in batches]))

    def close_client(self, role):
        self._send(dict(close=role))
        assert self.done.get(timeout=300) == "done"

    def open_client(self, role):
        self._send(dict(open=role))
        assert self.done.get(timeout=300) == "done"

    def wait_for(self, n, timeout=300.0):
        """Every message received so far once there are `n`, plus any that follow within 50 cycles."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            try:
                self.received.append(bytes.fromhex(self.lines.get(timeout=0.05)))
            except queue.Empty:
                pass
        time.sleep(50 * 256 / 48000)
        while not self.lines.empty():
            self.received.append(bytes.fromhex(self.lines.get()))
        return list(self.received)

    def wait_last(self, message, timeout=300.0):
        """Every message received so far, once the last one is `message` (an asynchronous server
        may lose some; the link sends the newest again until the last one is through)."""
        deadline = time.monotonic() + timeout
        while not (self.received and self.received[-1] == message) and time.monotonic() < deadline:
            try:
                self.received.append(bytes.fromhex(self.lines.get(timeout=0.05)))
            except queue.Empty:
                pass
        return list(self.received)

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rig(jack_server):
    rig = Rig()
    yield rig
    rig.close()
