"""The trained model on disk: the only code that knows how a checkpoint lies there.

A work directory holds `checkpoints/<step>/` (orbax: `params`, `opt_state` and `meta`, the
JSON of a `Meta`) and beside the steps `features.json` (the latent summary and the fitted
Gaussian prior, written by `neuraldx7 features`) and `training.npz` (`data.training_facts`
and the mixture prior: `prior_weights`, `prior_means`, `prior_chols`). The
bundled model is such a folder inside the package. Everything else asks this module for a
`Model`.
"""
import dataclasses
import io
import json
import logging
import shutil
import sys
import traceback
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from neuraldx7_jax import dx7, files, names
from neuraldx7_jax.config import CHECKPOINT_EVERY, KEEP, LATENT_SPAN, Config
from neuraldx7_jax.errors import Error

BUNDLED = Path(__file__).resolve().parent / "bundled"
FEATURES_FILE = "features.json"  # per-dimension latent summary and fitted Gaussian prior, beside the checkpoints
TRAINING_FILE = "training.npz"  # facts of the training set (no voices) and the mixture prior, beside the checkpoints
VERSION = 2  # of `Meta`; version 1 (no `version` key: the bundled model, imports) still loads


@dataclasses.dataclass(frozen=True)
class Dataset:
    """What a run records of its dataset."""
    path: str | None  # the .npz it trained on (absolute; a bare file name in the bundled model)
    train: int  # voices in each split
    validation: int


@dataclasses.dataclass(frozen=True)
class Schedule:
    """How a run was asked to go: what `neuraldx7 train` took besides the config."""
    steps: int  # train until this step
    checkpoint_every: int
    keep: int  # checkpoints kept
    eval_every: int
    log_every: int


@dataclasses.dataclass(frozen=True)
class Meta:
    """What a checkpoint says of itself besides its parameters."""
    config: Config
    step: int = 0
    seed: int | None = None  # None: not trained here (an imported model)
    dataset: Dataset | None = None
    schedule: Schedule | None = None  # None in checkpoints written before the schedule was saved
    init_from: str | None = None  # the model a fine-tuning run started from
    source: dict | None = None  # an imported model's origin: {"original": path, "heads_from": ...}
    version: int = VERSION

    def to_dict(self):
        return dict(dataclasses.asdict(self), config=self.config.to_dict())

    @classmethod
    def from_dict(cls, d):
        """From `to_dict`'s JSON, or a version 1 one (no version, schedule or init_from key)."""
        dataset, schedule = d.get("dataset"), d.get("schedule")
        return cls(config=Config.from_dict(d["config"]), step=d.get("step", 0), seed=d.get("seed"),
                   dataset=Dataset(**dataset) if dataset else None,
                   schedule=Schedule(**schedule) if schedule else None,
                   init_from=d.get("init_from"), source=d.get("source"), version=d.get("version", 1))


class Model(NamedTuple):
    """A trained model: its config, parameters, `Meta`, where it lies, its latent features (or
    None) and the facts of its training set (or None)."""
    config: Config
    params: Any
    meta: Meta | None  # None: random weights (`neuraldx7 bench`)
    path: Path | None
    features: dict | None = None  # features.json: {"mean": [Z], "std": [Z], "prior", "dataset", "count"}
    training: dict | None = None  # training.npz: `data.training_facts` of its training voices


def directory(path):
    """The orbax folder of `path` (a work directory or that folder itself; None or "bundled":
    the bundled model)."""
    path = BUNDLED if path is None or str(path) == "bundled" else Path(path)
    path = path.absolute()
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def check_writable(workdir, option="--checkpoint"):
    """Raises Error unless `workdir` is a directory a command may write a model into: named
    explicitly (not None), and not the bundled model, which is read-only (only `bundle` replaces it)."""
    if workdir is None or str(workdir) == "bundled" or directory(workdir).resolve().is_relative_to(BUNDLED):
        raise Error(f"the bundled model is read-only; give {option} DIR, a work directory to write to")


def features_path(path):
    """Where `neuraldx7 features` stores the latent summary of the model in `path`."""
    return directory(path) / FEATURES_FILE


def training_path(path):
    """Where the facts of the training set the model needs (`data.training_facts`) are stored."""
    return directory(path) / TRAINING_FILE


_HANDLERS = dict(params=ocp.StandardCheckpointHandler, opt_state=ocp.StandardCheckpointHandler,
                 meta=ocp.JsonCheckpointHandler)


class Run:
    """The checkpoints of a training work directory: `with Run(workdir) as run: run.meta()`."""

    def __init__(self, workdir, *, keep=KEEP, interval=CHECKPOINT_EVERY, create=True):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=interval, create=create)
        self._mngr = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", options=options,
                                           item_handlers={k: h() for k, h in _HANDLERS.items()})

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def latest_step(self):
        return self._mngr.latest_step()

    def meta(self, step=None):
        """The `Meta` of `step` (default: the latest), or None when there is no checkpoint."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        return Meta.from_dict(self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, step, params, opt_state):
        """(params, opt_state) of `step`, shaped and placed like the given ones."""
        got = self._mngr.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(params), opt_state=ocp.args.StandardRestore(opt_state)))
        return got["params"], got["opt_state"]

    def save(self, meta, params, opt_state, *, force=False):
        """Saves at `meta.step` (when the interval says so, or `force`)."""
        return self._mngr.save(meta.step, force=force, args=ocp.args.Composite(
            params=ocp.args.StandardSave(params), opt_state=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta.to_dict())))

    def close(self):
        self._mngr.wait_until_finished()
        self._mngr.close()


def read_meta(workdir):
    """The latest `Meta` saved in the work directory `workdir`, or None when it holds none."""
    if not (Path(workdir) / "checkpoints").is_dir():
        return None
    with Run(workdir, create=False) as run:
        return run.meta()


def create(workdir, meta, params, opt_state):
    """A new work directory holding one checkpoint, at `meta.step` (an imported model)."""
    check_writable(workdir, "--out")
    with Run(workdir, keep=1, interval=1) as run:
        if run.latest_step() is not None:
            raise Error(f"{workdir} already holds a checkpoint; choose a new --out")
        run.save(meta, params, opt_state, force=True)


def _drop_closed_loop_noise():
    """orbax reads a checkpoint's arrays concurrently. When one read fails it closes its event loop
    while TensorStore's other reads still run; each of those then reports `RuntimeError: Event loop
    is closed` as an unraisable error, and a read whose failure nobody awaited reports it from its
    orbax coroutine, or through asyncio's logger ("Task exception was never retrieved"): dozens of
    tracebacks around the one-line error. They say nothing the error does not: this process drops
    them (other unraisable errors and asyncio's other messages still print)."""
    if getattr(sys.unraisablehook, "drops_closed_loop", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable):
        closed = unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
        code = getattr(unraisable.object, "cr_code", None)  # a coroutine's
        if not (closed or "orbax" in getattr(code, "co_filename", "")):
            previous(unraisable)
    hook.drops_closed_loop = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_orbax_read_left_unawaited)


def _orbax_read_left_unawaited(record):
    """False (drop it) for asyncio's report of a failed orbax read nobody awaited."""
    if "exception was never retrieved" not in record.getMessage() or not record.exc_info:
        return True
    return not any("orbax" in frame.f_code.co_filename
                   for e in _causes(record.exc_info[1]) for frame, _ in traceback.walk_tb(e.__traceback__))


def _causes(e):
    """`e`, then what caused it, and so on to the innermost cause."""
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _reason(e):
    """The first line of the innermost cause of `e`: TensorStore's reason (`OUT_OF_RANGE: ...`),
    not orbax's wrapper around it."""
    *_, e = _causes(e)
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:600]}"


def _restore(path, step=None):
    """(Meta, params) of the latest (or given) step in `path`; a damaged checkpoint is an Error
    naming it, in one line."""
    folder = directory(path)
    if not folder.is_dir():
        if path is None or str(path) == "bundled":
            raise Error("no bundled model in this installation; pass --checkpoint DIR")
        raise Error(f"{path}: no such checkpoint directory")
    _drop_closed_loop_noise()
    try:
        handlers = {k: h() for k, h in _HANDLERS.items()}
        alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                   active_processes={jax.process_index()})
        options = ocp.CheckpointManagerOptions(create=False, multiprocessing_options=alone)
        with ocp.CheckpointManager(folder, options=options, item_handlers=handlers) as mngr:
            step = mngr.latest_step() if step is None else step
            if step is None:
                raise Error(f"{path}: no checkpoint found in {folder}")
            # onto this process's first device, whatever devices the run that saved it had; read
            # by this process alone (every process of a multi-host run loads its own copy)
            here = SingleDeviceSharding(jax.local_devices()[0])
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
                                  mngr.item_metadata(step)["params"])
            restored = mngr.restore(step, args=ocp.args.Composite(
                params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        return Meta.from_dict(dict(restored["meta"], step=restored["meta"].get("step", step))), restored["params"]
    except Error:
        raise
    except Exception as e:  # orbax and tensorstore raise many kinds, with pages of detail
        raise Error(f"{folder if step is None else folder / str(step)}: damaged or unreadable checkpoint "
                    f"({_reason(e)})") from None


def load(path=None, *, step=None):
    """The `Model` in `path` (a work directory or its checkpoints folder; None or "bundled": the
    bundled model), with its features and training facts when they are stored."""
    meta, params = _restore(path, step)
    features = training = None
    if features_path(path).is_file():
        try:
            features = json.loads(features_path(path).read_text())
        except ValueError:
            raise Error(f"{features_path(path)}: not JSON; run `neuraldx7 features` again") from None
    if training_path(path).is_file():
        training = load_training_facts(training_path(path))
    where = BUNDLED if path is None or str(path) == "bundled" else Path(path)
    return Model(meta.config, jax.tree.map(jnp.asarray, params), meta, where, features, training)


def write_features(model, summary, facts):
    """Stores `summary` (features.json) and the training `facts` (training.npz) beside the model."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **facts)
    files.write_atomic(training_path(model.path), buffer.getvalue())
    files.write_atomic(features_path(model.path), json.dumps(summary, indent=1).encode())


_FACTS = dict(value_counts=((dx7.N_PARAMS, dx7.N_VALUES), np.int32), voice_keys=((None,), np.uint64),
              name_trigrams=((None, 4), np.int32), count=((), np.int64))


def load_training_facts(path):
    """The `data.training_facts` stored at `path` (checked: shapes, types, symbol ranges)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            facts = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise Error(f"{path}: not a training-facts .npz ({e}); run `neuraldx7 features` again") from None
    for name, (shape, dtype) in _FACTS.items():
        a = facts.get(name)
        if (a is None or a.dtype != dtype or a.ndim != len(shape)
                or any(want is not None and got != want for got, want in zip(a.shape, shape))):
            raise Error(f"{path}: no {name} array of shape {shape} and type {np.dtype(dtype)}; "
                        "run `neuraldx7 features` again")
    tri = facts["name_trigrams"]
    if len(tri) and (tri[:, :2].min() < 0 or tri[:, :2].max() > names.START or tri[:, 2].min() < 0
                     or tri[:, 2].max() >= names.SYMBOLS or tri[:, 3].min() < 0):
        raise Error(f"{path}: name_trigrams out of range; run `neuraldx7 features` again")
    return facts


def dataset_path(model):
    """The dataset the model was trained on, as its checkpoint records it, or None."""
    return model.meta.dataset.path if model.meta is not None and model.meta.dataset is not None else None


def latent_summary(model):
    """(mean (Z,), std (Z,)) of the decoder latent over the dataset: the model's `features`
    summary, or None when the model has none (then the prior, N(0, 1), stands in; `latent_ranges`)."""
    features = getattr(model, "features", None)
    if features is None:
        return None
    latent = model.config.model.latent
    mean, std = (np.asarray(features[k], np.float64) for k in ("mean", "std"))
    if mean.shape != (latent,) or std.shape != (latent,) or not (np.all(std > 0) and np.all(np.isfinite(mean))):
        raise Error(f"features.json of the model in {getattr(model, 'path', None)}: the latent summary needs "
                    f"{latent} finite means and {latent} positive stds; run `neuraldx7 features` again")
    return mean, std


def latent_ranges(model, span=LATENT_SPAN):
    """(low (Z,), center (Z,), high (Z,), source) a controller sweeps: mean -/+ `span` std from the
    model's `latent_summary` (source "features"), or -/+ `span` around 0, the prior, without one."""
    summary = latent_summary(model)
    if summary is None:
        latent = model.config.model.latent
        return -span * np.ones(latent), np.zeros(latent), span * np.ones(latent), "prior"
    mean, std = summary
    return mean - span * std, mean, mean + span * std, "features"


def fitted_prior(model):
    """(mean (Z,), cov (Z, Z)) float64 of the fitted prior stored with the model, or None."""
    stored = (model.features or {}).get("prior")
    if stored is None:
        return None
    latent = model.config.model.latent
    mean, cov = np.asarray(stored["mean"], np.float64), np.asarray(stored["cov"], np.float64)
    if mean.shape != (latent,) or cov.shape != (latent, latent) or not np.all(np.isfinite(cov)):
        raise Error(f"{features_path(model.path)}: the fitted prior needs a mean of {latent} numbers "
                    f"and a {latent}x{latent} covariance; run `neuraldx7 features` again")
    return mean, cov


def mixture_prior(model):
    """(weights (K,), means (K, Z), chols (K, Z, Z)) float64 of the mixture prior stored with the
    model (in training.npz), or None."""
    facts = model.training or {}
    if "prior_weights" not in facts:
        return None
    latent = model.config.model.latent
    weights, means, chols = (np.asarray(facts[k], np.float64) for k in ("prior_weights", "prior_means", "prior_chols"))
    k = len(weights)
    if (weights.shape != (k,) or means.shape != (k, latent) or chols.shape != (k, latent, latent) or not k
            or not all(np.all(np.isfinite(a)) for a in (weights, means, chols)) or weights.min() < 0
            or abs(weights.sum() - 1) > 1e-3 or np.diagonal(chols, axis1=1, axis2=2).min() <= 0):
        raise Error(f"{training_path(model.path)}: the mixture prior needs K weights summing to 1, K x {latent} "
                    f"means and K lower-triangular {latent}x{latent} factors; run `neuraldx7 features` again")
    return weights / weights.sum(), means, np.tril(chols)


def posterior_latents(model):
    """(n, Z) float64 training latents stored with the model (in training.npz) for the posterior
    prior (`priors.posterior_prior`), or None."""
    facts = model.training or {}
    if "prior_latents" not in facts:
        return None
    z = np.asarray(facts["prior_latents"], np.float64)
    if z.ndim != 2 or z.shape[1] != model.config.model.latent or not len(z) or not np.all(np.isfinite(z)):
        raise Error(f"{training_path(model.path)}: the posterior prior needs n x {model.config.model.latent} "
                    f"finite latents, not {z.shape}; run `neuraldx7 features` again")
    return z


def bundle(workdir, out=BUNDLED):
    """Makes the model in `workdir` the bundled one: its last checkpoint's parameters and meta (no
    optimizer state; the dataset's and `init_from`'s paths cut to their last part, so no machine
    path ships) with its features.json and training.npz, written to `out` (replacing what is there)."""
    model = load(workdir)
    for path in (features_path(workdir), training_path(workdir)):
        if not path.is_file():
            raise Error(f"{path} is missing; run `neuraldx7 features --checkpoint {workdir}` first")
    meta = model.meta
    if meta.dataset is not None:
        meta = dataclasses.replace(meta, dataset=dataclasses.replace(
            meta.dataset, path=Path(meta.dataset.path).name if meta.dataset.path else None))
    if meta.init_from is not None:
        meta = dataclasses.replace(meta, init_from=Path(meta.init_from).name)
    out = Path(out)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    with ocp.CheckpointManager((tmp / "checkpoints").absolute(), item_names=("params", "meta")) as mngr:
        mngr.save(meta.step, args=ocp.args.Composite(params=ocp.args.StandardSave(model.params),
                                                     meta=ocp.args.JsonSave(meta.to_dict())))
    for path in (features_path(workdir), training_path(workdir)):
        shutil.copy(path, tmp / "checkpoints" / path.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
