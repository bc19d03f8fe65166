"""Live control: the CC -> latent mapping and the engine without MIDI, then end to end through a
real (dummy-driver) JACK server: the JACK and rtmidi adapters, tools/live.py, `ports` and `send`."""
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

import jax
import numpy as np
import pytest

from neuraldx7_jax import cli, config, dx7, live, sample, train
from neuraldx7_jax.errors import Error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = [0.5, -0.25, 0.1, 0.0], [1.5, 0.5, 1.0, 2.0]  # a latent summary for the test preset (Z = 4)


def cc(number, value, channel=0):
    return bytes([0xB0 | channel, number, value])


def reference_latents(batches, mean, std, per_message=False):
    """The latents after each batch (or message) that moved one, replayed from the spec: the
    first distinct CCs (not 120-127) take dimensions 1..Z; value v -> mean + 3 std (2 v / 127 - 1)."""
    z, dims, out = np.array(mean, np.float32), {}, []
    for batch in batches:
        changed = False
        for m in batch:
            if m[0] & 0xF0 != 0xB0 or m[1] >= 120 or (m[1] not in dims and len(dims) == len(z)):
                continue
            d = dims.setdefault(m[1], len(dims))
            new = np.float32(mean[d] + std[d] * 3.0 * (2.0 * m[2] / 127 - 1.0))
            if new != z[d]:
                z[d], changed = new, True
                if per_message:
                    out.append(z.copy())
        if changed and not per_message:
            out.append(z.copy())
    return out


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A real checkpoint of the test preset: one step on random valid voices (no validation
    split, so no evaluation to compile)."""
    d = tmp_path_factory.mktemp("live")
    voices = np.random.default_rng(0).integers(0, dx7.MAX.astype(int) + 1, (16, dx7.N_PARAMS)).astype(np.uint8)
    np.savez(d / "data.npz", train=voices, validation=voices[:0])
    train.train_and_evaluate(config.test(), d / "data.npz", d / "work", steps=1, checkpoint_every=1,
                             progress=False)
    return d / "work"


@pytest.fixture(scope="module")
def model(workdir):
    """The checkpoint's model with a latent summary, so CCs sweep mean +/- 3 std."""
    return sample.load_model(workdir)._replace(features=dict(mean=MEAN, std=STD))


@pytest.fixture(scope="module")
def reference(model):
    """The library's decode (jit, not AOT): latent (Z,) -> voice (155,)."""
    decode = sample.make_decoder(model.config.model)
    return lambda z: np.asarray(decode(model.params, np.asarray(z, np.float32)[None]))[0]


def test_learns_the_first_distinct_ccs_and_maps_values_linearly():
    controls = live.Controls(MEAN, STD)
    np.testing.assert_array_equal(controls.z_1xZ[0], np.float32(MEAN))
    assert controls.control(20, 0)
    assert controls.z_1xZ[0, 0] == pytest.approx(MEAN[0] - 3 * STD[0])
    assert not controls.control(20, 0)  # no move, no update
    assert not controls.control(123, 5)  # all notes off is never learnt
    assert controls.control(21, 127) and controls.control(22, 64) and controls.control(23, 1)
    assert not controls.control(24, 99)  # Z = 4 dimensions, all taken
    assert controls.mapping() == {20: 1, 21: 2, 22: 3, 23: 4}
    want = [MEAN[0] - 3 * STD[0], MEAN[1] + 3 * STD[1], MEAN[2] + 3 * STD[2] * (2 * 64 / 127 - 1),
            MEAN[3] + 3 * STD[3] * (2 / 127 - 1)]
    np.testing.assert_allclose(controls.z_1xZ[0], want, rtol=1e-6)
    assert controls.control(20, 127) and controls.z_1xZ[0, 0] == pytest.approx(MEAN[0] + 3 * STD[0])
    assert live.Controls(np.zeros(16), np.ones(16)).capacity == live.LEARN  # 8 at most, as the original


def test_a_fixed_mapping_ignores_other_ccs():
    controls = live.Controls(MEAN, STD, ccs=[7, 1], span=1.0)
    assert not controls.control(20, 0)
    assert controls.control(1, 127) and controls.z_1xZ[0, 1] == pytest.approx(MEAN[1] + STD[1])
    assert controls.control(7, 0) and controls.z_1xZ[0, 0] == pytest.approx(MEAN[0] - STD[0])
    assert controls.mapping() == {7: 1, 1: 2}
    for bad in ([1, 1], [128], [1, 2, 3, 4, 5]):
        with pytest.raises(Error):
            live.Controls(MEAN, STD, ccs=bad)


def test_port_matching():
    names = ["system:midi_capture_1", "Dexed:midi_in", "a2j:nanoKONTROL2 [24] (capture): nanoKONTROL2 _ CTR"]
    assert live.match_port("dexed", names, "destination") == "Dexed:midi_in"
    assert live.match_port("nanoKONTROL2 [24]", names, "source").startswith("a2j:")  # literal first
    assert live.match_port("^system", names, "source") == "system:midi_capture_1"
    assert live.match_port("capture_1|midi_in", ["a:capture_1", "b:out"], "source") == "a:capture_1"
    with pytest.raises(Error, match="several"):
        live.match_port("_", names, "source")
    with pytest.raises(Error, match="no MIDI destination"):
        live.match_port("Surge", names, "destination")


def test_engine_decodes_with_a_compiled_function_into_a_single_voice_dump(model, reference):
    engine = live.Engine(model, channel=5)
    assert isinstance(engine.decoder.compiled, jax.stages.Compiled)
    assert live.latent_summary(model)[1].tolist() == STD
    assert engine.handle(cc(30, 100)) and not engine.handle(bytes([0x90, 60, 100]))
    message = bytes(engine.update())
    assert message == dx7.single_voice_message(reference(engine.controls.z_1xZ[0]), channel=5)
    stats = engine.stats()
    assert stats["updates"] == 1 and 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert live.decode_latency(model, n=5)["updates"] == 5


def test_a_missing_bundled_model_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(sample, "BUNDLED", tmp_path / "none")
    with pytest.raises(Error, match="bundled model"):
        live.load(None)


def test_no_latent_summary_means_the_prior(workdir):
    model = sample.load_model(workdir)._replace(features=None)
    assert live.latent_summary(model) is None
    with pytest.raises(Error, match="positive stds"):
        live.latent_summary(model._replace(features=dict(mean=[0.0] * 4, std=[1.0, 0.0, 1.0, 1.0])))


@pytest.fixture(scope="module")
def jack_server(tmp_path_factory):
    """A dummy-driver JACK server (48 kHz, 256 frames) under a unique name, for this module."""
    jackd = shutil.which("jackd")
    if jackd is None:
        if os.environ.get("CI"):
            pytest.fail("jackd is missing in CI (.ci/run installs jackd2)")
        pytest.skip("jackd is not installed (apt-get install jackd2)")
    import jack

    name = f"neuraldx7-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path_factory.mktemp("jackd") / "jackd.log"
    with pytest.MonkeyPatch.context() as env, open(log, "w") as out:
        env.setenv("JACK_DEFAULT_SERVER", name)
        env.setenv("JACK_NO_START_SERVER", "1")
        # Synchronous mode (-S, clients may be 5 s late): a slow cycle on a loaded machine is an
        # xrun, never a lost message. setpriv: the server gets SIGTERM if pytest dies, even killed.
        orphan_guard = ["setpriv", "--pdeathsig", "TERM"] if shutil.which("setpriv") else []
        server = subprocess.Popen(orphan_guard + [jackd, "-S", "-t", "5000", "--no-realtime", "-n", name,
                                                  "-d", "dummy", "-r", "48000", "-p", "256"],
                                  stdout=out, stderr=subprocess.STDOUT)
        try:
            jack.set_error_function(lambda message: None)
            deadline = time.monotonic() + 20
            while True:
                try:
                    jack.Client("probe", no_start_server=True).close()
                    break
                except jack.JackOpenError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"jackd did not start:\n{log.read_text()}")
                    time.sleep(0.1)
            yield name
        finally:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


RIG = r"""
import collections, json, queue, sys, threading
import jack

controller = jack.Client("pytest-controller", use_exact_name=True, no_start_server=True)
synth = jack.Client("pytest-synth", use_exact_name=True, no_start_server=True)
out, inp = controller.midi_outports.register("out"), synth.midi_inports.register("in")
batches, received = collections.deque(), queue.Queue()

@controller.set_process_callback
def play(frames):  # one batch of messages per cycle
    out.clear_buffer()
    if batches:
        for i, message in enumerate(batches.popleft()):
            out.write_midi_event(i, message)

@synth.set_process_callback
def keep(frames):
    for _, data in inp.incoming_midi_events():
        received.put(bytes(data).hex())

def report():
    while True:
        print(received.get(), flush=True)

controller.activate()
synth.activate()
threading.Thread(target=report, daemon=True).start()
print("ready", flush=True)
for line in sys.stdin:
    batches.extend([bytes.fromhex(m) for m in batch] for batch in json.loads(line))
for client in (controller, synth):
    client.deactivate()
    client.close()
"""


class Rig:
    """A controller that plays one batch of MIDI messages per JACK cycle and a synth that keeps
    what it receives: JACK clients in a process of their own, as python-rtmidi holds the GIL
    while it opens a JACK client, and the server then waits on the Python callbacks beside it."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", RIG], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines, self.received = queue.Queue(), []
        threading.Thread(target=lambda: [self.lines.put(line.strip()) for line in self.proc.stdout],
                         daemon=True).start()
        first = self.lines.get(timeout=60)
        assert first == "ready", first

    def play(self, batches):
        self.proc.stdin.write(json.dumps([[m.hex() for m in batch] for batch in batches]) + "\n")
        self.proc.stdin.flush()

    def wait_for(self, n, timeout=30.0):
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

    def close(self):
        self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def rig(jack_server):
    rig = Rig()
    yield rig
    rig.close()


BATCHES = [
    [cc(20, 0)],  # CC 20 learns dimension 1
    [cc(21, 127), cc(20, 64)],  # two moves in one cycle: one voice
    [],
    [cc(20, 64)],  # same value: nothing to send
    [bytes([0x90, 60, 100]), cc(123, 0)],  # a note and all-notes-off: ignored
    [cc(22, 10, channel=5), cc(23, 99)],  # any channel
    [cc(24, 50)],  # a fifth CC: no dimension left (Z = 4)
    [cc(23, 0)],
]


def check_dumps(received, latents, reference, channel):
    assert len(received) == len(latents)
    for message, z in zip(received, latents):
        assert len(message) == dx7.SINGLE_SIZE and message[-1] == 0xF7
        assert message[:6] == bytes([0xF0, 0x43, channel, 0x00, 0x01, 0x1B])
        assert message[-2] == dx7.checksum(message[6:-2])
        voice = dx7.parse_single_voice(message)
        assert dx7.is_valid(voice[None])[0]
        np.testing.assert_array_equal(voice, reference(z))


def test_jack_sends_one_voice_per_cycle_that_moved_the_latent(rig, model, reference):
    engine = live.Engine(model, channel=2)
    with live.JackLink(engine, controller="pytest-controller", synth="pytest-synth") as link:
        assert link.controller == "pytest-controller:out" and link.synth == "pytest-synth:in"
        latents = reference_latents(BATCHES, MEAN, STD)
        rig.play(BATCHES)
        received = rig.wait_for(len(latents))
    assert len(latents) == 4
    check_dumps(received, latents, reference, channel=2)
    assert engine.stats()["updates"] == 4 and link.dropped == 0


def test_rtmidi_sends_one_voice_per_message_that_moved_the_latent(rig, model, reference):
    engine = live.Engine(model)
    with live.RtmidiLink(engine, controller="pytest-controller", synth="pytest-synth", api="jack"):
        latents = reference_latents(BATCHES, MEAN, STD, per_message=True)
        rig.play(BATCHES)
        received = rig.wait_for(len(latents))
    assert len(latents) == 6
    check_dumps(received, latents, reference, channel=0)


def test_tools_live_end_to_end(rig, workdir):
    tool = [sys.executable, os.path.join(ROOT, "tools", "live.py")]
    listed = subprocess.run(tool + ["--list"], capture_output=True, text=True, timeout=120)
    assert "pytest-controller:out" in listed.stdout and "pytest-synth:in" in listed.stdout, listed.stderr

    proc = subprocess.Popen(tool + ["--checkpoint", str(workdir), "--controller", "pytest-controller",
                                    "--synth", "pytest-synth", "--channel", "3", "--cc", "7,1"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)],
                     daemon=True).start()
    output = []
    try:
        while not output or output[-1] is not None and not output[-1].startswith("ready"):
            output.append(lines.get(timeout=120))
        assert output[-1] is not None, "".join(output[:-1])
        rig.play([[cc(7, 100)], [cc(1, 0), cc(9, 5)], [cc(9, 6)]])
        received = rig.wait_for(2)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        proc.kill()
    while (line := lines.get(timeout=10)) is not None:
        output.append(line)
    text = "".join(output)
    assert proc.returncode == 0, text
    assert "no latent summary" in text and "CC 7 -> 1, CC 1 -> 2" in text
    assert "sent 2 voices" in text and "xruns" in text
    assert len(received) == 2 and all(m[:3] == bytes([0xF0, 0x43, 2]) for m in received)


def test_ports_and_send_commands(rig, tmp_path, capsys):
    assert cli.main(["ports"]) == 0  # every backend, or why it is unavailable (no ALSA sequencer here)
    assert "pytest-synth:in" in capsys.readouterr().out
    assert cli.main(["ports", "--backend", "jack"]) == 0
    out = capsys.readouterr().out
    assert out.index("pytest-controller:out") < out.index("destinations") < out.index("pytest-synth:in")
    assert cli.main(["ports", "--backend", "rtmidi", "--rtmidi-api", "UNIX_JACK"]) == 0
    assert "pytest-synth:in" in capsys.readouterr().out

    voices = np.random.default_rng(1).integers(0, dx7.MAX.astype(int) + 1, (32, dx7.N_PARAMS)).astype(np.uint8)
    dx7.save_cartridge(tmp_path / "cart.syx", voices)
    dx7.save_single_voice(tmp_path / "one.syx", voices[3])
    assert cli.main(["send", str(tmp_path / "cart.syx"), "--port", "pytest-synth", "--backend", "jack",
                     "--channel", "4", "--gap", "0"]) == 0
    assert "sent 32 voices (1 message, 4104 bytes) to pytest-synth:in" in capsys.readouterr().out
    assert rig.wait_for(1) == [dx7.cartridge_message(voices, channel=3)]
    assert cli.main(["send", str(tmp_path / "one.syx"), "--port", "synth:in", "--backend", "rtmidi",
                     "--rtmidi-api", "UNIX_JACK", "--gap", "0"]) == 0
    assert rig.wait_for(2)[1:] == [dx7.single_voice_message(voices[3])]
    assert cli.main(["send", str(tmp_path / "one.syx"), "--port", "Dexed", "--backend", "jack"]) == 2
    assert "no MIDI destination matches 'Dexed'" in capsys.readouterr().err
