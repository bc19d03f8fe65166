"""Training rate of two processes with one CPU device each (joined on 127.0.0.1 over gloo) beside
one process with two devices, measured side by side: rounds alternate the two, each a fresh
`neuraldx7 train` run; the rate is the median of its `steps_per_s` records (compilation left out).

    python tools/bench_multihost.py --config small --steps 60 --log-every 10 --rounds 3
"""
import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def train(workdir, data, a, processes):
    """One run over `processes` processes of 2 / processes devices each; returns its steps/s."""
    args = [sys.executable, "-m", "neuraldx7_jax", "train", "--config", a.config, "--data", str(data),
            "--workdir", str(workdir), "--steps", str(a.steps), "--log-every", str(a.log_every),
            "--eval-every", str(10 * a.steps), "--checkpoint-every", str(10 * a.steps)]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(2 // processes),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if processes == 1:
        procs = [subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen([*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                                   "--process-id", str(i)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(2)]
    if any(p.wait() for p in procs):
        sys.exit(f"a run in {workdir} failed")
    rates = [r["steps_per_s"] for r in map(json.loads, open(workdir / "metrics.jsonl"))
             if r["split"] == "train" and r.get("steps_per_s")]
    return statistics.median(rates)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from neuraldx7_jax import bench

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.savez(tmp / "data.npz", train=bench.random_voices(1024).astype(np.uint8),
                 validation=bench.random_voices(64).astype(np.uint8))
        rates = {1: [], 2: []}
        for r in range(a.rounds):
            for processes in (1, 2):
                rates[processes].append(train(tmp / f"{processes}-{r}", tmp / "data.npz", a, processes))
    for processes, label in ((1, "1 process x 2 devices"), (2, "2 processes x 1 device")):
        print(f"{label:24} {statistics.median(rates[processes]):6.2f} steps/s "
              f"(rounds: {', '.join(f'{x:.2f}' for x in rates[processes])})")


if __name__ == "__main__":
    main()
