"""Training: the loss, the jitted data-parallel train step, the loop and its metrics.

A work directory holds the run's checkpoints (`checkpoint.Run`) and `metrics.jsonl`. Running
again with the same work directory resumes exactly where the last checkpoint stopped.
"""
import dataclasses
import functools
import json
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import flax
import optax
from flax.training import train_state
from jax.sharding import NamedSharding, PartitionSpec as P

from neuraldx7_jax import checkpoint, devices, dx7, features
from neuraldx7_jax import config as config_lib
from neuraldx7_jax.config import Config
from neuraldx7_jax.errors import Error
from neuraldx7_jax.model import VAE

LOG_2PI = math.log(2 * math.pi)


def beta(step, temp):
    """The original's sigmoidal KL annealing: 0 at step 0, -> 1."""
    x0 = jax.nn.sigmoid(-6.0)
    return (jax.nn.sigmoid(step * temp - 6.0) - x0) / (1.0 - x0)


def random_hidden(key, rows):
    """(rows, 155) bool: per voice a uniformly random count k in 1..155 of hidden values, at
    uniformly random places. With CE averaged over the hidden values, the loss is the any-order
    autoregressive bound: 155 times its expectation bounds -log p(x | z) (the masked decoder)."""
    count_key, place_key = jax.random.split(key)
    count = jax.random.randint(count_key, (rows, 1), 1, dx7.N_PARAMS + 1)
    rank = jnp.argsort(jnp.argsort(jax.random.uniform(place_key, (rows, dx7.N_PARAMS)), -1), -1)
    return rank < count


def loss_terms(out, x_BxN, masked_ce=False, hidden_BxN=None):
    """Per-voice CE (mean over the 155 positions, or over the hidden ones), accuracy, and KL / Z,
    from a forward pass."""
    logits = out["logits"]
    if masked_ce:
        logits = jnp.where(jnp.asarray(dx7.value_mask()), logits, -1e9)
    ce_BxN = optax.softmax_cross_entropy_with_integer_labels(logits, x_BxN)
    right_BxN = logits.argmax(-1) == x_BxN
    if hidden_BxN is None:
        ce_B, acc_B = ce_BxN.mean(-1), right_BxN.mean(-1)
    else:
        count_B = hidden_BxN.sum(-1)
        ce_B = jnp.where(hidden_BxN, ce_BxN, 0.0).sum(-1) / count_B
        acc_B = (right_BxN & hidden_BxN).sum(-1) / count_B
    z0, zk, mu, sigma = out["z0"], out["zk"], out["mu"], out["sigma"]
    log_q_B = jnp.sum(-0.5 * ((z0 - mu) / sigma) ** 2 - jnp.log(sigma) - 0.5 * LOG_2PI, -1)
    log_p_B = jnp.sum(-0.5 * zk ** 2 - 0.5 * LOG_2PI, -1)
    kl_B = (log_q_B - log_p_B - out["log_det"]) / zk.shape[-1]
    return dict(ce=ce_B, accuracy=acc_B, kl=kl_B, log_det=out["log_det"])


@functools.lru_cache(maxsize=None)
def make_optimizer(cfg):
    t = cfg.train
    if t.lr_schedule == "cosine":
        lr = optax.warmup_cosine_decay_schedule(0.0, t.learning_rate, t.warmup_steps, t.decay_steps)
    elif t.warmup_steps:
        lr = optax.linear_schedule(0.0, t.learning_rate, t.warmup_steps)
    else:
        lr = t.learning_rate
    return optax.adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=t.weight_decay)


@functools.lru_cache(maxsize=None)
def _vae(model_cfg):
    """One module per config: a state's `apply_fn` and `tx` are the same objects in every run of
    a config, so the cached train step (`make_train_step`) is not traced again for a new state."""
    return VAE(model_cfg)


@functools.lru_cache(maxsize=None)
def _init_fn(model_cfg):
    return jax.jit(_vae(model_cfg).init)


def init_state(cfg, seed):
    """Fresh parameters and optimizer state for `cfg` (deterministic in `seed`)."""
    x = jnp.zeros((1, dx7.N_PARAMS), jnp.int32)
    eps = jnp.zeros((1, cfg.model.latent))
    params = _init_fn(cfg.model)(jax.random.key(seed), x, eps)["params"]
    return train_state.TrainState.create(apply_fn=_vae(cfg.model).apply, params=params, tx=make_optimizer(cfg))


CPU_MICROBATCH = 4  # voices per forward/backward pass on a CPU when the config leaves it at 0


def _grad_fn(cfg):
    """`(params, x_BxN, eps_BxZ, hidden_BxN, beta) -> ((loss, means), grads)` of the training
    loss; `hidden_BxN` is None but for the masked decoder."""
    model, t = VAE(cfg.model), cfg.train

    def loss_fn(params, x_BxN, eps, hidden, b):
        out = model.apply({"params": params}, x_BxN, eps, hidden)
        terms = loss_terms(out, x_BxN, t.masked_ce, hidden)
        means = jax.tree.map(jnp.mean, terms)
        return means["ce"] + t.max_beta * b * means["kl"], means

    return jax.value_and_grad(loss_fn, has_aux=True)


def _hidden(cfg, key, rows):
    """The values the masked decoder does not see in a training step (None for the independent
    one): `random_hidden`, with every value hidden for a `TrainConfig.hidden_all` share of rows."""
    if cfg.model.decoder != "masked":
        return None
    hidden_key, all_key = jax.random.split(key)
    all_hidden = jax.random.uniform(all_key, (rows, 1)) < cfg.train.hidden_all
    return random_hidden(hidden_key, rows) | all_hidden


def step_flops(cfg, params, batch):
    """Floating-point operations of one train step's forward and backward passes over `batch`
    voices, as XLA counts them (the optimizer's update, a few per parameter, is left out)."""
    x = jax.ShapeDtypeStruct((batch, dx7.N_PARAMS), jnp.int32)
    eps = jax.ShapeDtypeStruct((batch, cfg.model.latent), jnp.float32)
    hidden = None if cfg.model.decoder != "masked" else jax.ShapeDtypeStruct((batch, dx7.N_PARAMS), bool)
    return float(jax.jit(_grad_fn(cfg)).lower(params, x, eps, hidden, 1.0).cost_analysis()["flops"])


@functools.lru_cache(maxsize=None)
def make_train_step(cfg, mesh):
    """The jitted `train_step(state, batch, key) -> (state, metrics)`; state donated. The batch's
    gradient is the mean of its microbatches' (`TrainConfig.microbatch` voices per device each).
    One per config and mesh, so a process compiles each once (runs resumed in it, tests)."""
    t = cfg.train
    per_device = t.batch_size // mesh.devices.size
    most = t.microbatch or (CPU_MICROBATCH if jax.default_backend() == "cpu" else per_device)
    k = devices.pieces(per_device, most)
    grad_fn = _grad_fn(cfg)

    def train_step(state, x_BxN, key):
        step_key = jax.random.fold_in(key, state.step)
        eps = jax.random.normal(step_key, (x_BxN.shape[0], cfg.model.latent))
        hidden = _hidden(cfg, jax.random.fold_in(step_key, 1), x_BxN.shape[0])
        b = beta(state.step, t.beta_temp)
        xs, epss = devices.split_rows(x_BxN, k), devices.split_rows(eps, k)
        hiddens = None if hidden is None else devices.split_rows(hidden, k)

        def add(total, piece):
            return jax.tree.map(lambda a, o: a + o / k, total, grad_fn(state.params, *piece, b)), None

        first = (xs[0], epss[0], None if hidden is None else hiddens[0])
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(grad_fn, state.params, *first, b))
        ((loss, means), grads), _ = jax.lax.scan(add, zeros, (xs, epss, hiddens))
        new_state = state.apply_gradients(grads=grads)
        metrics = dict(means, loss=loss, beta=b, grad_norm=optax.tree.norm(grads),
                       param_norm=optax.tree.norm(state.params))
        return new_state, metrics

    replicated = NamedSharding(mesh, P())
    return jax.jit(train_step, donate_argnums=0,
                   in_shardings=(replicated, NamedSharding(mesh, P("data")), replicated),
                   out_shardings=(replicated, replicated))


FEW_HIDDEN = 10  # values hidden per voice for the masked decoder's `ce_few_hidden`


@functools.lru_cache(maxsize=None)
def make_eval_step(model_cfg):
    """Jitted `(params, x, eps) -> per-voice terms` plus argmax accuracy of the posterior mean.
    Logits are masked as in generation: the figures describe the voices the model makes."""
    model = VAE(model_cfg)

    @jax.jit
    def eval_step(params, x_BxN, eps_BxZ, hidden_key):
        hidden = None if model_cfg.decoder != "masked" else random_hidden(hidden_key, x_BxN.shape[0])
        sampled = loss_terms(model.apply({"params": params}, x_BxN, eps_BxZ, hidden), x_BxN, True, hidden)
        mean = loss_terms(model.apply({"params": params}, x_BxN, jnp.zeros_like(eps_BxZ)), x_BxN,
                          masked_ce=True)
        terms = dict(ce=mean["ce"], accuracy=mean["accuracy"], kl=sampled["kl"],
                     neg_elbo_per_param=sampled["ce"] + sampled["kl"] * model_cfg.latent / dx7.N_PARAMS)
        if hidden is not None:  # how much the decoder reads: CE of 10 values with the other 145 shown
            u = jax.random.uniform(jax.random.fold_in(hidden_key, 1), x_BxN.shape)
            few = jnp.argsort(jnp.argsort(u, -1), -1) < FEW_HIDDEN
            shown = model.apply({"params": params}, x_BxN, jnp.zeros_like(eps_BxZ), few)
            terms["ce_few_hidden"] = loss_terms(shown, x_BxN, True, few)["ce"]
        return terms

    return eval_step


def evaluate(model_cfg, params, voices, *, seed=0, batch_size=256):
    """Validation figures over `voices` (n, 155): CE and accuracy of the posterior mean decoded
    from z alone (every value hidden), KL per latent dimension, and -ELBO per parameter (nats; one
    posterior sample per voice, and for the masked decoder one random hidden set: the any-order
    bound); for the masked decoder also `ce_few_hidden`, the CE of FEW_HIDDEN random values given
    z and the other values (below `ce` by what the decoder reads)."""
    eval_step = make_eval_step(model_cfg)
    key, hidden_key = jax.random.key(seed), jax.random.fold_in(jax.random.key(seed), 1 << 30)
    sums, n = {}, len(voices)
    for i in range(0, n, batch_size):
        x = np.asarray(voices[i:i + batch_size], np.int32)
        pad = batch_size - len(x)  # fixed shapes: one compilation
        eps = jax.random.normal(jax.random.fold_in(key, i), (batch_size, model_cfg.latent))
        terms = eval_step(params, np.pad(x, ((0, pad), (0, 0))), eps, jax.random.fold_in(hidden_key, i))
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(np.asarray(v)[:len(x)].sum())
    return {k: v / n for k, v in sums.items()}


def resolve_config(workdir, preset=None, overrides=(), **train_fields):
    """The run's config: `preset` with `overrides` and TrainConfig fields (None = keep), or, when
    resuming with no preset given, the config saved in `workdir`."""
    saved = checkpoint.read_meta(workdir)
    if saved is not None and preset is None:
        cfg = saved.config
    else:
        cfg = config_lib.preset(preset or "small")
    try:
        return config_lib.override(cfg, overrides).replace(**train_fields)
    except ValueError as e:
        raise Error(str(e)) from None


def run(*, data, workdir, steps, config=None, overrides=(), seed=0,
        checkpoint_every=config_lib.CHECKPOINT_EVERY, keep=config_lib.KEEP, eval_every=config_lib.EVAL_EVERY,
        log_every=config_lib.LOG_EVERY, init_from=None, distributed=False, coordinator=None, num_processes=None,
        process_id=None, heartbeat_s=config_lib.HEARTBEAT_S, progress=True, announce=None, **train_fields):
    """What `neuraldx7 train` does: `resolve_config(workdir, config, overrides, **train_fields)`,
    `train_and_evaluate`, then what sampling needs of the data stored beside the checkpoints
    (`features.write`: the fitted priors, the training facts; by process 0). A multi-process run
    first joins its processes (`devices.initialize(distributed, coordinator, num_processes,
    process_id, heartbeat_s)`). Returns the last validation metrics, or None when there was
    nothing to train."""
    announce = announce or (lambda line: None)
    devices.initialize(distributed, coordinator, num_processes, process_id, heartbeat_s)
    cfg = resolve_config(workdir, config, overrides, **train_fields)
    result = train_and_evaluate(cfg, data, workdir, steps, seed=seed, checkpoint_every=checkpoint_every, keep=keep,
                                eval_every=eval_every, log_every=log_every, init_from=init_from,
                                progress=progress, announce=announce)
    if result is not None and jax.process_index() == 0:
        announce("fitting the latent prior to the training voices...")
        features.write(workdir, data)
    return result


def train_and_evaluate(cfg: Config, data, workdir, steps, *, seed=0,
                       checkpoint_every=config_lib.CHECKPOINT_EVERY, keep=config_lib.KEEP,
                       eval_every=config_lib.EVAL_EVERY, log_every=config_lib.LOG_EVERY, progress=True,
                       announce=None, init_from=None):
    """Trains `cfg` on the dataset .npz `data` for `steps` steps in `workdir`, resuming from its
    latest checkpoint if there is one. A new run starts from the parameters of the trained model
    `init_from` (a checkpoint path, or "bundled"), if given, with a fresh optimizer and schedules
    (step 0: warm-up, cosine and KL annealing start again); its model config must be `cfg.model`.
    Returns the last evaluation metrics, or None when the run is already at `steps` or beyond.
    `announce(line)`, if given, hears what happens between steps (compilation, a finished run)."""
    announce = announce or (lambda line: None)
    checkpoint.check_writable(workdir, "--workdir")
    config_lib.check_seed(seed)
    for name, value in (("steps", steps), ("checkpoint_every", checkpoint_every), ("keep", keep),
                        ("eval_every", eval_every), ("log_every", log_every)):
        if value < 1:
            raise Error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    from neuraldx7_jax import data as data_lib

    dataset = data_lib.load_dataset(data)
    train_voices, val_voices = dataset["train"], dataset["validation"]
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = devices.make_mesh(cfg.model)
    n_dev = mesh.devices.size
    if n_dev < jax.device_count():
        announce(f"training on one of the {jax.device_count()} CPU devices: a model this wide "
                 f"(F={cfg.model.features}) is faster there (JAX_NUM_CPU_DEVICES=N chooses for yourself)")
    if cfg.train.batch_size % n_dev:
        raise Error(f"batch size {cfg.train.batch_size} is not a multiple of the {n_dev} devices")

    run = checkpoint.Run(workdir, keep=keep, interval=checkpoint_every)
    state = init_state(cfg, seed)
    meta = checkpoint.Meta(
        config=cfg, seed=seed,
        dataset=checkpoint.Dataset(str(Path(data).absolute()), len(train_voices), len(val_voices)),
        schedule=checkpoint.Schedule(steps, checkpoint_every, keep, eval_every, log_every))
    if run.latest_step() is not None:
        start = run.latest_step()
        saved = run.meta(start)
        was = saved.config.train.decay_steps
        if cfg.train.decay_steps > was and cfg.train.lr_schedule == "cosine":  # a longer schedule
            saved = dataclasses.replace(saved, config=saved.config.replace(decay_steps=cfg.train.decay_steps))
            announce(f"the cosine schedule now ends at step {cfg.train.decay_steps} (was {was}): the "
                     f"learning rate rises again from step {start} (a warm restart)")
        diff = [f"{k}: saved {theirs}, now {ours}" for k, theirs, ours in (
            ("config", saved.config.to_dict(), cfg.to_dict()), ("seed", saved.seed, seed)) if theirs != ours]
        if diff:
            run.close()
            raise Error(f"{workdir} holds a run with another config or seed ({'; '.join(diff)}); "
                        "resume it without --config (a longer --decay-steps is allowed), or use a new --workdir")
        state = devices.replicate(state, mesh)  # restored in place, on every process's devices
        params, opt_state = run.restore(start, state.params, state.opt_state)
        state = state.replace(step=jnp.asarray(start), params=params, opt_state=opt_state)
        meta = dataclasses.replace(meta, init_from=saved.init_from)
    elif init_from is not None:
        state, meta = _init_from(state, cfg, init_from), dataclasses.replace(meta, init_from=str(init_from))
        announce(f"starting from the parameters of {init_from} (fresh optimizer and schedules)")
    state = devices.replicate(state, mesh)
    step_fn = make_train_step(cfg, mesh)
    key = devices.replicate(jax.random.key(seed + 1), mesh)

    def batch(s):  # the order is a function of seed and step; each process places its own rows
        x = train_voices[data_lib.batch_indices(len(train_voices), cfg.train.batch_size, seed, s)].astype(np.int32)
        return devices.rows(mesh, x)

    start = int(state.step)
    if start >= steps:
        run.close()
        announce(f"{workdir} is already at step {start} (--steps {steps}): nothing to train; "
                 "a larger --steps continues it")
        return None
    log = _metrics_log(workdir / "metrics.jsonl", start)
    announce(f"compiling the train step (a minute or more for large presets), then training "
             f"steps {start + 1}-{steps}")
    bar = _progress(start, steps, progress and jax.process_index() == 0)
    last_eval, t0, t_steps = {}, time.perf_counter(), 0
    next_batch = batch(start)
    for s in range(start, steps):
        x, next_batch = next_batch, (batch(s + 1) if s + 1 < steps else None)
        state, metrics = step_fn(state, x, key)
        t_steps += 1
        done = s + 1
        if s == start:  # the rates leave the compilation out
            jax.block_until_ready(metrics)
            announce(f"compiled and ran the first step in {time.perf_counter() - t0:.1f} s")
            t0, t_steps = time.perf_counter(), 0
        if done % log_every == 0 or done == steps:
            m = {k: float(v) for k, v in jax.device_get(metrics).items()}
            if not all(map(math.isfinite, m.values())):
                raise FloatingPointError(f"non-finite metrics at step {done}: {m}")
            rate = t_steps / (time.perf_counter() - t0) if t_steps else None
            t0, t_steps = time.perf_counter(), 0
            _write(log, dict(step=done, split="train", steps_per_s=rate, **m))
            bar.set_postfix_str(f"loss {m['loss']:.3f} acc {m['accuracy']:.3f}")  # the bar shows the rate
        if done % eval_every == 0 or done == steps:
            if len(val_voices):
                last_eval = evaluate(cfg.model, devices.local(state.params), val_voices, seed=seed)
                _write(log, dict(step=done, split="validation", **last_eval))
                t0, t_steps = time.perf_counter(), 0  # nor evaluations
        run.save(dataclasses.replace(meta, step=done), state.params, state.opt_state, force=done == steps)
        bar.update(1)
    bar.close()
    run.close()
    log.close()
    return last_eval


def _init_from(state, cfg, path):
    """`state` with the parameters of the trained model at `path` ("bundled": the bundled model)."""
    trained = checkpoint.load(path)
    saved_cfg, params = trained.config, trained.params
    if dataclasses.replace(saved_cfg.model, decoder=cfg.model.decoder) != cfg.model:
        ours, theirs = dataclasses.asdict(cfg.model), dataclasses.asdict(saved_cfg.model)
        diff = "; ".join(f"{k} {theirs[k]} there, {ours[k]} here" for k in ours if ours[k] != theirs[k])
        raise Error(f"{path}: its model config differs from this run's ({diff}); give the --config "
                    "and --set model.* options it was trained with")
    return state.replace(params=merge_params(state.params, params))


def merge_params(ours, theirs):
    """`ours` with every parameter that `theirs` also has taken from `theirs`. An independent
    decoder's parameters are all of a masked decoder's but its value and mask embeddings, which
    keep their initial values: the masked decoder starts as the independent one (every value
    hidden, it computes what that computes) and learns to read values from there."""
    flat = flax.traverse_util.flatten_dict(theirs)
    merged = {k: jnp.asarray(flat.get(k, v), v.dtype) for k, v in flax.traverse_util.flatten_dict(ours).items()}
    return flax.traverse_util.unflatten_dict(merged)


def _metrics_log(path, start):
    """`path` opened for appending, holding only the records of steps up to `start`: a run that
    stopped after its last checkpoint logged steps that the resumed run logs again (an unfinished
    last line goes too). Rewritten through a temporary file. Only the first host writes it."""
    if jax.process_index():
        return open(os.devnull, "a")
    if path.exists():
        kept = []
        for line in path.read_text().splitlines(keepends=True):
            try:
                if line.endswith("\n") and json.loads(line)["step"] <= start:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):
                pass
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(kept))
        os.replace(tmp, path)
    return open(path, "a")


def _write(log, record):
    log.write(json.dumps(record) + "\n")
    log.flush()


def _progress(start, total, enabled):
    from tqdm import tqdm
    return tqdm(initial=start, total=total, disable=not enabled, unit="step", dynamic_ncols=True)
