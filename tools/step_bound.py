"""How close the train step could come to the machine's matmul ceiling if attention cost nothing.

Times the step as it is and with `model.attention_core` (scores, softmax, weighted sum and their
layout changes) replaced by the values' share of the QKV projection, which keeps every dense
layer, norm, GELU and the optimiser; rounds alternate in one process, each beside the lone-matmul
ceiling `neuraldx7 bench` uses. Prints, per round, both steps' rate against that ceiling and what
the step would reach with attention at the ceiling's own rate: a bound for any attention kernel.

    python tools/step_bound.py --config small --batch 32 [--rounds 3]
"""
import argparse

from neuraldx7_jax import bench, config, dx7, model, train


def free_attention(qkv_BxNx3F, heads, scale):
    """The values' share of QKV, as attention_core's output shape, with no arithmetic."""
    return qkv_BxNx3F[..., :qkv_BxNx3F.shape[-1] // 3]


def measure(cfg, batch, core):
    """(samples/s, FLOPs per step) of the step built with `core` as the model's attention core."""
    real, model.attention_core = model.attention_core, core
    train.make_train_step.cache_clear()  # a step traced with the other core must not be reused
    try:
        return bench.time_train(cfg, batch), train.step_flops(cfg, train.init_state(cfg, 0).params, batch)
    finally:
        model.attention_core = real
        train.make_train_step.cache_clear()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small", choices=sorted(config.PRESETS))
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    cfg = config.preset(a.config)
    f = cfg.model.features
    print("round  ceiling  step: samples/s  of ceiling | attention free: samples/s  of ceiling |"
          " attention: GFLOP  GFLOP/s | at the ceiling's rate: of ceiling")
    for r in range(a.rounds):
        ceiling = bench.matmul_rate(a.batch * dx7.N_PARAMS, f, 3 * f) * 1e9
        rate, flops = measure(cfg, a.batch, model.attention_core)
        free_rate, free_flops = measure(cfg, a.batch, free_attention)
        step_s, free_s, attention = a.batch / rate, a.batch / free_rate, flops - free_flops
        bound_s = free_s + attention / ceiling  # the attention's FLOPs done at the ceiling's rate
        print(f"{r + 1:5d}  {ceiling / 1e9:7.1f}  {rate:15.1f}  {flops / step_s / ceiling:10.2f} |"
              f" {free_rate:25.1f}  {flops / free_s / ceiling:10.2f} |"
              f" {attention / 1e9:15.2f}  {attention / (step_s - free_s) / 1e9:7.1f} |"
              f" {flops / bound_s / ceiling:32.2f}", flush=True)


if __name__ == "__main__":
    main()
