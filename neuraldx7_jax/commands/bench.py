"""`neuraldx7 bench`."""
import json
import sys

from neuraldx7_jax.commands.options import command
from neuraldx7_jax.config import PRESETS


@command("bench", "Time training, sampling and single-voice decoding (see docs/performance.md).")
def _bench(p):
    p.add_argument("--config", choices=sorted(PRESETS), default="small", help="model preset (random weights)")
    p.add_argument("--checkpoint",
                   help="time this trained model (a work directory, or 'bundled') instead of random weights")
    p.add_argument("--batch", type=int, default=32, help="training batch size")
    p.add_argument("--sample-batch", type=int, default=1024,
                   help="prior samples per device call (the samplers' batch; --batch is training's)")
    p.add_argument("--sample-seconds", type=float, default=10.0,
                   help="how long sampling is timed, after warm-up (default: 10)")
    p.add_argument("--what", default="train,sample,latency",
                   help="comma-separated subset of train,sample,latency")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="change a config field, e.g. --set train.microbatch=8 or --set "
                        "model.compute_dtype=bfloat16 (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON line")

    def handler(a):
        from neuraldx7_jax import bench
        what = a.what.split(",")
        out = bench.run(a.config, batch=a.batch, sample_batch=a.sample_batch, sample_seconds=a.sample_seconds,
                        what=what, checkpoint=a.checkpoint, overrides=a.set,
                        announce=lambda line: print(line, file=sys.stderr, flush=True))
        if a.json:
            print(json.dumps(out))
        else:
            for k, v in out.items():
                print(f"{k:22s}{v:.3f}" if isinstance(v, float) else f"{k:22s}{v}")
    return handler
