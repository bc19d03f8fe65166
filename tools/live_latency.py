"""Decode latency and xruns of live control, measured through the real engine on a JACK server.

    python tools/live_latency.py --cycles 2000 --json latency.json [--checkpoint WORKDIR]

Starts a dummy-driver JACK server of its own (`jackd --no-realtime -d dummy -r 48000 -p 256`,
asynchronous, as a user runs it), a controller client (in a process of its own) that moves one
of 4 knobs every cycle for --cycles cycles and a synth client that counts what it receives, and
connects a `midi_jack.JackLink` around a `live.Engine` of the model (the bundled one by default)
between them. Prints and writes (--json) the decode latency p50/p99/max inside the process
callback, the decodes longer than the period, the xruns JACK counted, the input the link may have
lost (`late`, `changed`, `dropped`: see `midi_jack.JackInput`), CCs and voices sent and received, and
whether the synth's last voice is the engine's final one.
Needs jackd (apt-get install jackd2).
"""
import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

from neuraldx7_jax import live, midi_jack
from neuraldx7_jax.errors import Error

PEERS = r"""
import sys, threading, time
import jack

cycles, seed = int(sys.argv[1]), int(sys.argv[2])
import random
rng = random.Random(seed)
moves = [bytes([0xB0, 20 + rng.randrange(4), rng.randrange(128)]) for _ in range(cycles)]
state = dict(go=False, sent=0, received=0, last=b"")

controller = jack.Client("latency-controller", use_exact_name=True, no_start_server=True)
out = controller.midi_outports.register("out")
synth = jack.Client("latency-synth", use_exact_name=True, no_start_server=True)
inp = synth.midi_inports.register("in")

@controller.set_process_callback
def play(frames):
    out.clear_buffer()
    if state["go"] and state["sent"] < cycles:
        out.write_midi_event(0, moves[state["sent"]])
        state["sent"] += 1

@synth.set_process_callback
def keep(frames):
    for _, data in inp.incoming_midi_events():
        state["received"] += 1
        state["last"] = bytes(data)

controller.activate()
synth.activate()
print("ready", flush=True)
for line in sys.stdin:
    if line.strip() == "go":
        state["go"] = True
    elif line.strip() == "count":
        print(state["sent"], state["received"], state["last"].hex() or "-", flush=True)
controller.deactivate()
synth.deactivate()
"""


def start_jackd(name, rate, period, log):
    """A dummy-driver JACK server called `name`, once it answers."""
    import jack

    jackd = shutil.which("jackd")
    if jackd is None:
        raise Error("jackd is not installed (apt-get install jackd2)")
    server = subprocess.Popen([jackd, "--no-realtime", "-n", name, "-d", "dummy", "-r", str(rate),
                               "-p", str(period)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            jack.Client("latency-probe", no_start_server=True, servername=name).close()
            return server
        except jack.JackOpenError:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise Error(f"jackd did not start (log: {log.name})") from None
            time.sleep(0.1)


def measure(checkpoint=None, cycles=2000, rate=48000, period=256, seed=0):
    """The figures of one run (a dict): `cycles` cycles, each moving a knob, through the engine."""
    midi_jack.import_jack()  # libjack's own lines off the terminal, before any client opens
    model = live.load(checkpoint)
    engine = live.Engine(model)
    name = f"neuraldx7-latency-{uuid.uuid4().hex[:8]}"
    os.environ["JACK_DEFAULT_SERVER"] = name
    os.environ["JACK_NO_START_SERVER"] = "1"
    logs = tempfile.mkdtemp(prefix="live_latency")  # the server's log, kept only when it did not start
    with open(os.path.join(logs, "jackd.log"), "w") as out:
        server = start_jackd(name, rate, period, out)
    peers = None
    try:
        peers = subprocess.Popen([sys.executable, "-c", PEERS, str(cycles), str(seed)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        if peers.stdout.readline().strip() != "ready":
            raise Error("the controller and synth clients did not start")

        def count():
            peers.stdin.write("count\n")
            peers.stdin.flush()
            sent, received, last = peers.stdout.readline().split()
            return int(sent), int(received), last

        with midi_jack.JackLink(engine, controller="latency-controller", synth="latency-synth") as link:
            load = os.getloadavg()[0]
            start = time.monotonic()
            peers.stdin.write("go\n")
            peers.stdin.flush()
            while count()[0] < cycles:
                time.sleep(0.05)
            time.sleep((midi_jack.RESEND_CYCLES + 20) * period / rate)  # past the resends after the last voice
            while engine.due():
                time.sleep(0.01)
            time.sleep(20 * period / rate)
            seconds = time.monotonic() - start
        sent_ccs, received, last = count()
    finally:
        if peers is not None:
            peers.stdin.close()
            peers.wait(10)
        server.terminate()
        server.wait(30)
        shutil.rmtree(logs)
        for path in glob.glob(f"/dev/shm/jack*_{glob.escape(name)}_*"):  # what a killed client left
            os.remove(path)
    stats = engine.stats()
    period_ms = period / rate * 1e3
    ms = engine.latency_ms[:min(engine.decodes, live.HISTORY)]
    return dict(model=str(model.path), machine=f"{platform.machine()}, {os.cpu_count()} CPUs "
                f"({platform.processor() or platform.platform()})", load_average_at_start=round(load, 2),
                cycles=cycles, seconds=round(seconds, 2), rate=rate, period=period, period_ms=round(period_ms, 3),
                ccs=stats["ccs"], moves=stats["moves"], decodes=stats["decodes"], superseded=stats["superseded"],
                resent=stats["resent"], p50_ms=stats["p50_ms"], p99_ms=stats["p99_ms"], max_ms=stats["max_ms"],
                decodes_over_period=int((ms > period_ms).sum()), xruns=link.xruns, late=link.late,
                changed=link.changed, dropped=link.dropped, sent=link.sent,
                failed=link.failed, received=received, ccs_sent=sent_ccs,
                final_voice_arrived=last == bytes(engine.message).hex())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", metavar="DIR", help="the model (default: the bundled one)")
    parser.add_argument("--cycles", type=int, default=2000, help="cycles that each move a knob (default: 2000)")
    parser.add_argument("--period", type=int, default=256, help="JACK frames per period (default: 256)")
    parser.add_argument("--rate", type=int, default=48000, help="JACK sample rate (default: 48000)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures to FILE")
    args = parser.parse_args(argv)
    try:
        figures = measure(args.checkpoint, args.cycles, args.rate, args.period)
    except Error as e:
        print(f"live_latency: error: {e}", file=sys.stderr)
        return 2
    for key, value in figures.items():
        print(f"{key}: {value:.3f}" if isinstance(value, float) else f"{key}: {value}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
            f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
