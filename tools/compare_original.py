"""Run `neuraldx7 bench` and the original PyTorch code's timer side by side; print the ratios.

    python tools/compare_original.py --torch-python python3 \
        --timer ../shared/bench/torch_original.py --config small [--rounds 2] [--torch-steps 10]
        [--torch-cuda]

The torch side needs a Python with torch, numpy, mido and bitstruct: this one after
`pip install -e ".[original]"`, or any other (see the timer's header).
Both run in turn, `--rounds` times each, on the same machine; the best round of each is kept.
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

FIGURES = ("train_samples_per_s", "sample_per_s", "decode1_p50_ms", "decode1_p99_ms")


def run_json(cmd):
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best(runs, key):
    values = [r[key] for r in runs if key in r]
    return (min if key.endswith("_ms") else max)(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--torch-python", required=True, help="python with torch for the original")
    ap.add_argument("--timer", required=True, help="path of torch_original.py")
    ap.add_argument("--config", default="small", choices=["small", "original"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--sample-batch", type=int, default=1024)
    ap.add_argument("--what", default="train,sample,latency")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--torch-steps", type=int, default=10,
                    help="train steps the original's timer averages (fewer for the slow `original` preset)")
    ap.add_argument("--torch-cuda", action="store_true",
                    help="run the original on a CUDA GPU (through tools/torch_cuda.py); ours runs on JAX's default backend")
    a = ap.parse_args()
    timer = [str(Path(__file__).with_name("torch_cuda.py")), a.timer] if a.torch_cuda else [a.timer]
    common = ["--config", a.config, "--batch", str(a.batch), "--sample-batch", str(a.sample_batch),
              "--what", a.what]
    ours, theirs = [], []
    for _ in range(a.rounds):
        theirs.append(run_json([a.torch_python, *timer, *common, "--steps", str(a.torch_steps)]))
        ours.append(run_json([sys.executable, "-m", "neuraldx7_jax", "bench", "--json", *common]))
    rows = []
    for key in FIGURES:
        if any(key in r for r in ours) and any(key in r for r in theirs):
            o, t = best(ours, key), best(theirs, key)
            ratio = t / o if key.endswith("_ms") else o / t
            rows.append(dict(figure=key, jax=o, torch=t, speedup=ratio))
    for r in rows:
        print(f"{r['figure']:22s} jax {r['jax']:10.2f}   torch {r['torch']:10.2f}   speed-up x{r['speedup']:.2f}")
    print(json.dumps(dict(config=a.config, batch=a.batch, sample_batch=a.sample_batch, rows=rows,
                          jax_runs=ours, torch_runs=theirs)))


if __name__ == "__main__":
    main()
