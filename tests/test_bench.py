"""`neuraldx7 bench` and `tools/compare_original.py`: every figure comes out, measured, in the
documented form. No timed assertions: speed is reported, never asserted."""
import json
import math
import os
import subprocess
import sys

import jax
import pytest

from conftest import ROOT, SHARED
from neuraldx7_jax import checkpoint, config, dx7, train
from neuraldx7_jax.cli import main

TIMER = SHARED / "bench" / "torch_original.py"
SRC = os.environ.get("NDX7_SRC") or os.path.expanduser("~/.cache/neuraldx7-original/neuralDX7-0.0.8")


@pytest.mark.slow
def test_bench_prints_every_figure(capsys):
    assert main(["bench", "--config", "test", "--batch", "8", "--sample-batch", "64", "--sample-seconds", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["impl"] == "neuraldx7-jax" and out["config"] == "test" and out["devices"] >= 1
    for key in ("train_samples_per_s", "sample_per_s", "decode1_p50_ms", "decode1_p99_ms",
                "train_gflop_per_s", "matmul_gflop_per_s"):
        assert math.isfinite(out[key]) and out[key] > 0, key
    assert out["decode1_p99_ms"] >= out["decode1_p50_ms"]
    assert out["train_gflop_per_s"] == pytest.approx(out["train_gflop_per_step"] / 8 * out["train_samples_per_s"])
    assert out["train_of_matmul"] == pytest.approx(out["train_gflop_per_s"] / out["matmul_gflop_per_s"])
    assert out["matmul_shape"] == "(1240 x 16) @ (16 x 48)"  # the test preset's dense layers over the batch


@pytest.mark.slow
def test_the_step_flops_are_the_model_arithmetic():
    """Forward and backward of a transformer: about 6 FLOPs per dense weight per row, plus attention,
    linear in the batch (XLA's count of the whole batch, not of one microbatch's loop body)."""
    cfg = config.preset("small")
    params = train.init_state(cfg, 0).params
    dense = sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
                if "kernel" in jax.tree_util.keystr(path))
    f4, f8 = train.step_flops(cfg, params, 4), train.step_flops(cfg, params, 8)
    assert f8 == pytest.approx(2 * f4, rel=0.01)
    assert 1.0 < f8 / (6 * 155 * 8 * dense) < 1.3


@pytest.mark.slow
def test_bench_times_only_what_is_asked_of_the_bundled_model(capsys):
    assert main(["bench", "--checkpoint", "bundled", "--what", "latency"]) == 0
    text = capsys.readouterr().out
    params = sum(p.size for p in jax.tree.leaves(checkpoint.load().params))
    assert "checkpoint:bundled" in text and f"params                {params}" in text
    assert "decode1_p50_ms" in text and "train_samples_per_s" not in text and "sample_per_s" not in text


@pytest.mark.slow
def test_bench_times_a_changed_config_and_rejects_a_bad_change(capsys):
    assert main(["bench", "--config", "test", "--what", "train", "--set", "train.microbatch=2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["overrides"] == ["train.microbatch=2"] and out["train_samples_per_s"] > 0
    assert main(["bench", "--set", "model.width=3"]) == 2
    assert "bad override 'model.width=3'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_original_runs_both_and_prints_the_ratio():
    missing = [what for what, ok in ((str(TIMER), TIMER.is_file()), (SRC, os.path.isdir(SRC))) if not ok]
    try:
        import bitstruct, torch  # noqa: F401
    except ImportError as e:
        missing.append(f"{e.name} (pip install -e '.[original]')")
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"missing in CI: {', '.join(missing)}")
        pytest.skip(f"missing: {', '.join(missing)}")
    proc = subprocess.run([sys.executable, "tools/compare_original.py", "--torch-python", sys.executable,
                           "--timer", str(TIMER), "--config", "small", "--what", "latency"],
                          cwd=ROOT, capture_output=True, text=True, env={**os.environ, "NDX7_SRC": SRC})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    rows = {r["figure"]: r for r in result["rows"]}
    assert set(rows) == {"decode1_p50_ms", "decode1_p99_ms"}
    for r in rows.values():
        assert r["jax"] > 0 and r["torch"] > 0 and r["speedup"] == pytest.approx(r["torch"] / r["jax"])
    assert result["torch_runs"][0]["impl"] == "torch-original" and result["jax_runs"][0]["impl"] == "neuraldx7-jax"
    assert "decode1_p50_ms" in proc.stdout.splitlines()[0]


@pytest.mark.slow
def test_step_bound_times_the_step_with_and_without_attention():
    """tools/step_bound.py: the FLOPs it takes away are attention's: its six batched matmuls per
    layer (Q K^T, weights V, and their gradients) plus the softmax, nothing of the dense layers."""
    proc = subprocess.run([sys.executable, "tools/step_bound.py", "--batch", "4", "--rounds", "1"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.strip().splitlines()
    assert "attention free" in header
    cells = [float(c) for part in row.split("|") for c in part.split()]
    ceiling, rate, _, free_rate, _, attention_gflop, attention_rate, bound = cells[1:]
    m = config.preset("small").model
    matmuls = 3 * 2 * 2 * 4 * dx7.N_PARAMS ** 2 * m.features * 2 * m.layers / 1e9  # fwd + 2x bwd, enc + dec
    assert matmuls <= attention_gflop < 1.1 * matmuls
    assert min(ceiling, rate, free_rate, bound) > 0
    # attention's GFLOP/s (attention_rate) is its FLOPs over the difference of two step times timed
    # apart: on a shared CPU the step without attention can time slower than the one with it (-124.4
    # seen), so its sign is not asserted (speed is reported, never asserted)
    assert math.isfinite(attention_rate)
