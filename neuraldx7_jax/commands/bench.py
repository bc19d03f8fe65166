"""`neuraldx7 bench`."""
import json
import sys

from neuraldx7_jax.commands.options import CHECKPOINT, JSON, SET, Option, subcommand
from neuraldx7_jax.config import PRESETS

OPTIONS = (
    Option("config", str, "small", "model preset (random weights)", tuple(sorted(PRESETS))),
    CHECKPOINT._replace(help="time this trained model (a work directory, or 'bundled') instead of random weights"),
    Option("batch", int, 32, "training batch size"),
    Option("sample_batch", int, 1024, "prior samples per device call (the samplers' batch; --batch is training's)"),
    Option("sample_seconds", float, 10.0, "how long sampling is timed, after warm-up (default: 10)"),
    Option("what", str, "train,sample,latency", "comma-separated subset of train,sample,latency"),
    SET, JSON,
)


@subcommand("bench", "Time training, sampling and single-voice decoding (see docs/performance.md).", None, OPTIONS)
def bench(a):
    from neuraldx7_jax import bench as bench_lib

    out = bench_lib.run(a.config, batch=a.batch, sample_batch=a.sample_batch, sample_seconds=a.sample_seconds,
                        what=a.what.split(","), checkpoint=a.checkpoint, overrides=a.set,
                        announce=lambda line: print(line, file=sys.stderr, flush=True))
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:22s}{v:.3f}" if isinstance(v, float) else f"{k:22s}{v}")
