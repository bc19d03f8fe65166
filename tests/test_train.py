import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import checkpoint, cli, config, data, devices, priors, train
from neuraldx7_jax.errors import Error


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "data.npz"
    np.savez(path, train=random_voices(64, 0), validation=random_voices(16, 1))
    return path


def train_losses(workdir):
    lines = [json.loads(x) for x in open(workdir / "metrics.jsonl")]
    return {r["step"]: r["loss"] for r in lines if r["split"] == "train"}


def test_beta_follows_the_original_annealing():
    assert float(train.beta(0, 6e-5)) == 0.0
    x0 = 1 / (1 + np.exp(6))
    expected = (1 / (1 + np.exp(-(10_000 * 6e-5 - 6))) - x0) / (1 - x0)
    np.testing.assert_allclose(float(train.beta(10_000, 6e-5)), expected, rtol=1e-5)
    assert float(train.beta(10_000_000, 6e-5)) == pytest.approx(1.0)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_memorises_a_few_voices(dtype):
    cfg = config.override(config.test(), ["model.features=32", "model.layers=2", "train.batch_size=4",
                                          "train.learning_rate=3e-3", f"model.compute_dtype={dtype}"])
    voices = jnp.asarray(random_voices(4, 2), jnp.int32)
    state = train.init_state(cfg, 0)
    step = train.make_train_step(cfg, devices.make_mesh())
    key = jax.random.key(0)
    for _ in range(300):
        state, metrics = step(state, voices, key)
    assert float(metrics["accuracy"]) > 0.97, metrics
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(state.params))  # float32 master weights


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(dataset, tmp_path):
    common = ["--config", "test", "--data", str(dataset), "--checkpoint-every", "5", "--log-every", "1",
              "--eval-every", "100"]
    assert cli.main(["train", *common, "--workdir", str(tmp_path / "a"), "--steps", "12"]) == 0
    assert cli.main(["train", *common, "--workdir", str(tmp_path / "b"), "--steps", "5"]) == 0
    assert cli.main(["train", *common, "--workdir", str(tmp_path / "b"), "--steps", "12"]) == 0
    a, b = train_losses(tmp_path / "a"), train_losses(tmp_path / "b")
    assert sorted(b) == list(range(1, 13))
    for s in range(1, 13):
        assert b[s] == pytest.approx(a[s], rel=1e-6), s
    meta = checkpoint.load(tmp_path / "b").meta
    assert meta.config == config.test() and meta.step == 12 and meta.dataset.train == 64
    assert meta.schedule == checkpoint.Schedule(steps=12, checkpoint_every=5, keep=3, eval_every=100, log_every=1)
    with pytest.raises(Error, match="another config"):
        train.train_and_evaluate(config.small(), dataset, tmp_path / "b", 13)


@pytest.mark.slow
def test_a_longer_decay_on_resuming_restarts_a_finished_cosine_run(dataset, tmp_path):
    """A cosine run ends at learning rate 0, so continuing it with a larger --steps alone leaves the
    weights where they are; a longer --decay-steps lengthens the schedule and training moves on."""
    common = ["--data", str(dataset), "--log-every", "1", "--eval-every", "100", "--checkpoint-every", "6"]
    norms = {}
    for name, more in (("same", []), ("longer", ["--decay-steps", "12"])):
        workdir = str(tmp_path / name)
        assert cli.main(["train", *common, "--workdir", workdir, "--steps", "6", "--config", "test",
                         "--lr-schedule", "cosine", "--decay-steps", "6"]) == 0
        assert cli.main(["train", *common, "--workdir", workdir, "--steps", "9", *more]) == 0
        records = [json.loads(x) for x in open(tmp_path / name / "metrics.jsonl")]
        norms[name] = [r["param_norm"] for r in records if r["split"] == "train" and r["step"] >= 7]
    assert len(set(norms["same"])) == 1 and len(set(norms["longer"])) == 3
    assert json.load(open(tmp_path / "longer" / "checkpoints" / "9" / "meta" / "metadata"))[
        "config"]["train"]["decay_steps"] == 12
    assert cli.main(["train", *common, "--workdir", str(tmp_path / "longer"), "--steps", "10",
                     "--decay-steps", "8"]) == 2  # a shorter schedule is another run


@pytest.mark.slow
def test_a_resumed_run_logs_each_step_once(dataset, tmp_path):
    """A run that stopped after its last checkpoint (step 5) had logged steps 6 and 7; resuming
    from step 5 logs them again, so the earlier records of those steps go."""
    common = ["--config", "test", "--data", str(dataset), "--workdir", str(tmp_path), "--log-every", "1",
              "--eval-every", "100", "--checkpoint-every", "5"]
    assert cli.main(["train", *common, "--steps", "7"]) == 0
    shutil.rmtree(tmp_path / "checkpoints" / "7")  # the run had stopped before its step-7 checkpoint
    with open(tmp_path / "metrics.jsonl", "a") as log:
        log.write('{"step": 8, "split": "tr')  # and had been killed while writing a line
    assert cli.main(["train", *common, "--steps", "9"]) == 0
    records = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 10))


@pytest.mark.slow
def test_an_interrupted_save_leaves_the_last_good_checkpoint(dataset, tmp_path):
    """Orbax writes into a temporary folder and renames it on commit; an unfinished one is ignored."""
    train.train_and_evaluate(config.test(), dataset, tmp_path, 4, checkpoint_every=2, progress=False)
    partial = tmp_path / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "params").mkdir()
    assert checkpoint.load(tmp_path).meta.step == 4


@pytest.mark.slow
def test_microbatches_give_the_step_of_the_whole_batch():
    voices, key = jnp.asarray(random_voices(8, 3), jnp.int32), jax.random.key(0)
    runs = {}
    for microbatch in (8, 2, 1):  # one pass of 8 voices, 4 of 2, 8 of 1
        cfg = config.override(config.test(), [f"train.microbatch={microbatch}"])
        state, step = train.init_state(cfg, 0), train.make_train_step(cfg, devices.make_mesh())
        losses = []
        for _ in range(3):
            state, metrics = step(state, voices, key)
            losses.append(float(metrics["loss"]))
        runs[microbatch] = losses, state.params
    for microbatch in (2, 1):
        np.testing.assert_allclose(runs[microbatch][0], runs[8][0], rtol=1e-5)
        # Adam divides by sqrt(v): rounding in near-zero gradients moves a parameter by up to
        # ~3e-5 here, against steps of up to 3e-3 (3 steps at learning rate 1e-3).
        for a, b in zip(jax.tree.leaves(runs[microbatch][1]), jax.tree.leaves(runs[8][1])):
            np.testing.assert_allclose(a, b, atol=2e-4)


def test_pieces_split_rows_evenly_and_join_back():
    assert [devices.pieces(8, m) for m in (8, 4, 3, 1)] == [1, 2, 4, 8]
    assert devices.pieces(6, 4) == 2 and devices.pieces(7, 4) == 7
    x = jnp.arange(24).reshape(12, 2)
    split = devices.split_rows(x, 3)
    assert split.shape == (3, 4, 2) and split[1, :, 0].tolist() == [2, 8, 14, 20]
    assert (devices.join_rows(split) == x).all()


@pytest.mark.slow
def test_four_devices_give_the_same_loss_as_one(dataset, tmp_path):
    """One device in one pass of 8 voices against 4 devices in two passes of one voice each."""
    script = (
        "import json, sys; from neuraldx7_jax import config, train\n"
        "cfg = config.override(config.test(), [f'train.microbatch={sys.argv[3]}'])\n"
        "train.train_and_evaluate(cfg, sys.argv[1], sys.argv[2], 6, log_every=1, progress=False)\n"
    )
    runs = {}
    for n, microbatch in ((1, 8), (4, 1)):
        env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(n), JAX_PLATFORMS="cpu")
        workdir = tmp_path / f"dev{n}"
        subprocess.run([sys.executable, "-c", script, str(dataset), str(workdir), str(microbatch)], env=env,
                       check=True)
        runs[n] = train_losses(workdir)
    for s in range(1, 7):
        assert runs[4][s] == pytest.approx(runs[1][s], rel=1e-4), s
    # a checkpoint saved by 4 devices loads in a process with another number of them (here: one
    # per core), and holds the same parameters as the 1-device run's
    four, one = (checkpoint.load(tmp_path / f"dev{n}").params for n in (4, 1))
    for a, b in zip(jax.tree.leaves(four), jax.tree.leaves(one)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=5e-4)  # float sums regroup


def test_bad_options_are_clear_errors(dataset, tmp_path, capsys):
    assert cli.main(["train", "--data", str(dataset), "--workdir", str(tmp_path), "--steps", "1",
                     "--set", "model.bogus=1"]) == 2
    assert "bad override" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tmp_path / "none.npz"), "--workdir", str(tmp_path),
                     "--steps", "1"]) == 2
    assert "no such dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_the_command_says_it_compiles_and_a_finished_run_says_so(dataset, tmp_path, capsys):
    common = ["train", "--config", "test", "--data", str(dataset), "--workdir", str(tmp_path), "--steps", "3",
              "--log-every", "1", "--eval-every", "100", "--checkpoint-every", "3"]
    assert cli.main(common) == 0
    out = capsys.readouterr()
    assert "compiling the train step" in out.err and "compiled and ran the first step" in out.err
    assert "validation" in json.loads(out.out)
    records = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
    rates = [r["steps_per_s"] for r in records if r["split"] == "train"]
    assert rates[0] is None and all(r > 0 for r in rates[1:])  # the compilation is in none of them
    model = checkpoint.load(tmp_path)  # the command stored the fitted priors and the training facts
    assert priors.prior_of(model).name == "posterior" and model.training["count"] == len(data.load_dataset(dataset)["train"])
    assert cli.main(common) == 0
    out = capsys.readouterr()
    assert out.out == "" and "already at step 3 (--steps 3): nothing to train" in out.err


@pytest.mark.slow
def test_a_damaged_checkpoint_is_one_line_naming_it(dataset, tmp_path, capsys):
    train.train_and_evaluate(config.test(), dataset, tmp_path, 2, checkpoint_every=2, progress=False)
    files = sorted(p for p in (tmp_path / "checkpoints" / "2" / "params").rglob("*")
                   if p.is_file() and p.parent.name == "d")
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:len(f.read_bytes()) // 2])  # truncated
    code = cli.main(["generate", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "x.syx")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"{tmp_path / 'checkpoints' / '2'}: damaged or unreadable checkpoint" in err
    (tmp_path / "checkpoints" / "2" / "meta" / "metadata").write_text("{not json")
    with pytest.raises(Error, match="damaged or unreadable checkpoint"):
        checkpoint.load(tmp_path)


@pytest.mark.slow
def test_init_from_starts_a_new_run_from_a_trained_models_parameters(dataset, tmp_path, capsys):
    train.train_and_evaluate(config.test(), dataset, tmp_path / "a", 6, checkpoint_every=6, progress=False)
    # warm-up from 0: the first step's learning rate is 0, so step 1 holds exactly the parameters started from
    common = ["train", "--config", "test", "--data", str(dataset), "--steps", "1", "--warmup-steps", "5"]
    assert cli.main([*common, "--workdir", str(tmp_path / "b"), "--init-from", str(tmp_path / "a")]) == 0
    assert "starting from the parameters of" in capsys.readouterr().err
    a = checkpoint.load(tmp_path / "a").params
    b, meta = checkpoint.load(tmp_path / "b")[1:3]
    fresh = train.init_state(config.test(), 0).params  # where a new run of this seed starts
    assert meta.step == 1 and meta.init_from == str(tmp_path / "a")
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(fresh)))
    # resuming it (without --init-from) keeps where it started in its checkpoints' record
    assert cli.main([*common, "--steps", "2", "--workdir", str(tmp_path / "b")]) == 0  # the last --steps counts
    meta = checkpoint.load(tmp_path / "b")[2]
    assert meta.step == 2 and meta.init_from == str(tmp_path / "a")
    capsys.readouterr()
    # another model config is refused in one line naming the checkpoint and the field
    code = cli.main([*common, "--workdir", str(tmp_path / "d"), "--init-from", str(tmp_path / "a"),
                     "--set", "model.features=32"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and str(tmp_path / "a") in err and "features 16 there, 32 here" in err, err


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores: one device per core")
def test_wide_models_train_on_one_cpu_device_unless_the_user_chose():
    """With one device per core chosen by the package, a model of F >= 512 trains on one device
    (its matmuls already use every core; docs/performance.md); narrower ones on all of them. A
    device count the user set is kept for every width."""
    script = ("import json; from neuraldx7_jax import config, devices\n"
              "print(json.dumps([devices.make_mesh(config.preset(p).model).devices.size\n"
              "                  for p in ('original', 'small', 'bundled')] + [devices.make_mesh().devices.size]))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_NUM_CPU_DEVICES", "XLA_FLAGS")}
    chosen = subprocess.run([sys.executable, "-c", script], env=dict(env, JAX_PLATFORMS="cpu"), check=True,
                            capture_output=True, text=True).stdout
    cores = len(os.sched_getaffinity(0))
    assert json.loads(chosen) == [1, cores, cores, cores]
    user = subprocess.run([sys.executable, "-c", script], env=dict(env, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2"),
                          check=True, capture_output=True, text=True).stdout
    assert json.loads(user) == [2, 2, 2, 2]
