"""Where a train step's time goes: a jax.profiler trace of a few steps, summed by HLO op kind
(on a GPU, by kernel), and the step's arithmetic rate (XLA's count of its FLOPs over its time).

    python tools/profile_train.py --config small --batch 32 [--steps 3] [--trace-dir /tmp/trace]
"""
import argparse
import collections
import glob
import gzip
import json
import re
import time

import jax

from neuraldx7_jax import bench, config, devices, train


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=sorted(config.PRESETS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--trace-dir", default="/tmp/neuraldx7-trace")
    a = ap.parse_args()
    cfg = config.preset(a.config).replace(batch_size=a.batch)
    state = train.init_state(cfg, 0)
    step = train.make_train_step(cfg, devices.make_mesh(cfg.model))
    x, key = jax.numpy.asarray(bench.random_voices(a.batch)), jax.random.key(0)
    for _ in range(2):
        state, metrics = step(state, x, key)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(a.steps):
        state, metrics = step(state, x, key)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t) / a.steps
    # FLOPs of the same step in one pass (XLA counts a loop's body once, so not the microbatched
    # one), counted before optimisation: a GPU's compiled program calls cuBLAS, which it does not count.
    one_pass = cfg.replace(microbatch=a.batch)
    cost = train.make_train_step(one_pass, devices.make_mesh(cfg.model)).lower(state, x, key).cost_analysis()
    flops = (cost[0] if isinstance(cost, list) else cost)["flops"]
    print(f"{jax.default_backend()} {jax.devices()[0].device_kind}: {step_s * 1e3:.1f} ms/step, "
          f"{flops / 1e9:.1f} GFLOP/step, {flops / step_s / 1e9:.1f} GFLOP/s")
    jax.profiler.start_trace(a.trace_dir, create_perfetto_trace=True)
    for _ in range(a.steps):
        state, metrics = step(state, x, key)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    trace = json.load(gzip.open(sorted(glob.glob(f"{a.trace_dir}/**/*.json.gz", recursive=True))[-1]))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    # On a GPU, only the kernels (the device's processes), not the host's calls around them.
    gpu = {e["pid"] for e in events if e.get("ph") == "M" and "GPU" in str(e.get("args", {}).get("name"))}
    kinds, calls = collections.Counter(), collections.Counter()
    for e in events:
        if gpu and e.get("pid") not in gpu:
            continue
        if e.get("ph") == "X" and not e["name"].startswith("$") and "Thunk" not in e["name"]:
            kind = re.sub(r"[.\d]+$", "", e["name"])
            kinds[kind] += e["dur"]
            calls[kind] += 1
    total = sum(kinds.values())
    print(f"traced ops: {total / a.steps / 1e3:.1f} ms/step in {sum(calls.values()) // a.steps} calls")
    for kind, us in kinds.most_common(20):
        print(f"{us / a.steps / 1e3:9.1f} ms/step {100 * us / total:5.1f}%  {calls[kind] // a.steps:5d} calls  {kind}")


if __name__ == "__main__":
    main()
