"""The trained model on disk: Meta, save and load, imported and old checkpoints, the bundled model."""
import json

import jax
import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import checkpoint, cli, config, features, train
from neuraldx7_jax.errors import Error


def write(workdir, meta):
    """A checkpoint of the test preset's initial parameters with `meta`, as `import_original` writes one."""
    params = jax.device_get(train.init_state(meta.config, 0).params)
    checkpoint.create(workdir, meta, params, train.make_optimizer(meta.config).init(params))
    return params


def test_meta_round_trips_and_the_version_1_dict_still_reads():
    meta = checkpoint.Meta(config=config.test(), step=7, seed=3, dataset=checkpoint.Dataset("/d.npz", 10, 2),
                           schedule=checkpoint.Schedule(7, 5, 3, 100, 1), init_from="bundled")
    assert checkpoint.Meta.from_dict(json.loads(json.dumps(meta.to_dict()))) == meta
    old = dict(config=config.bundled().to_dict(), seed=0, dataset=dict(path="dx7.npz", train=5, validation=1),
               step=12000)  # what the bundled model's meta holds
    got = checkpoint.Meta.from_dict(old)
    assert got.version == 1 and got.schedule is None and got.dataset.path == "dx7.npz" and got.step == 12000
    assert checkpoint.load().meta.version == 1 and checkpoint.load("bundled").path == checkpoint.BUNDLED


def test_a_checkpoint_reads_back_and_a_second_create_is_refused(tmp_path):
    meta = checkpoint.Meta(config=config.test(), source=dict(original="x.box"))
    params = write(tmp_path / "w", meta)
    model = checkpoint.load(tmp_path / "w")
    assert model.meta == meta and model.config == config.test() and model.features is None
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(model.params)))
    assert checkpoint.load(tmp_path / "w" / "checkpoints").meta == meta
    with pytest.raises(Error, match="already holds a checkpoint"):
        write(tmp_path / "w", meta)
    with pytest.raises(Error, match="no such checkpoint directory"):
        checkpoint.load(tmp_path / "nothing")


def test_a_model_that_names_no_dataset_is_one_line_not_a_traceback(tmp_path, capsys):
    """An imported model's meta has `dataset: None`; the studies once raised AttributeError on it."""
    write(tmp_path / "w", checkpoint.Meta(config=config.test()))
    work = str(tmp_path / "w")
    assert cli.main(["duplicates", "--checkpoint", work, "--samples", "32", "--batch", "32"]) == 0
    assert "the checkpoint names no dataset; pass --data; novelty not measured" in capsys.readouterr().out
    assert cli.main(["features", "--checkpoint", work]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "names no dataset" in err


def test_bundle_keeps_params_meta_and_features_and_cuts_the_machine_paths(tmp_path):
    voices = random_voices(40)
    np.savez(tmp_path / "data.npz", train=voices[:32], validation=voices[32:])
    meta = checkpoint.Meta(config=config.test(), step=3, seed=0,
                           dataset=checkpoint.Dataset(str(tmp_path / "data.npz"), 32, 8),
                           init_from=str(tmp_path / "previous"))
    write(tmp_path / "w", meta)
    with pytest.raises(Error, match="features.json is missing"):
        checkpoint.bundle(tmp_path / "w", tmp_path / "b")
    features.write(tmp_path / "w")
    out = checkpoint.bundle(tmp_path / "w", tmp_path / "b")
    got, was = checkpoint.load(out), checkpoint.load(tmp_path / "w")
    assert got.meta.dataset.path == "data.npz" and got.meta.step == 3 and got.features == was.features
    assert got.meta.init_from == "previous" and str(tmp_path) not in (out / "checkpoints").joinpath(
        "3", "meta", "metadata").read_text()
    assert got.training["count"] == 32
