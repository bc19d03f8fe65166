"""The rate of lone jitted matmuls on this machine (GFLOP/s), float32 and bfloat16 with float32
accumulation, on one device: the ceiling the model's own matmuls are measured against in
docs/performance.md (`neuraldx7 bench` measures the same over all devices beside its train figure).

    python tools/matmul_rate.py [--calls 30]          # taskset -c 0 ... for one core
"""
import argparse
import os

os.environ.setdefault("JAX_NUM_CPU_DEVICES", "1")  # one device, whose matmuls use every core
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from neuraldx7_jax.bench import matmul_rate  # noqa: E402

# A large square; the `small` preset's dense layers over a batch of 32 voices (4,960 rows) and
# over one voice (155 rows), forwards and the second layer of the feed-forward block.
SHAPES = ((2048, 2048, 2048), (4960, 128, 384), (155, 128, 384), (155, 384, 128))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=30)
    a = ap.parse_args()
    print(f"{jax.default_backend()} {jax.devices()[0].device_kind}")
    for shape in SHAPES:
        f32, bf16 = (matmul_rate(*shape, dtype, a.calls) for dtype in (jnp.float32, jnp.bfloat16))
        print(f"({shape[0]} x {shape[1]}) @ ({shape[1]} x {shape[2]}): float32 {f32:6.0f}  bfloat16 {bf16:6.0f} GFLOP/s")


if __name__ == "__main__":
    main()
