"""`neuraldx7 bench`: training, sampling and single-decode speed, with the definitions of
`../shared/bench/torch_original.py` so the two can be compared side by side."""
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from neuraldx7_jax import config as config_lib
from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import devices, dx7, sample, train
from neuraldx7_jax.errors import Error


def random_voices(n, seed=0):
    """(n, 155) uniformly random valid voices."""
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 1 << 16, (n, dx7.N_PARAMS)) % (dx7.MAX.astype(np.int64) + 1)).astype(np.int32)


def time_train(cfg, batch, steps=10):
    """Samples per second of the full train step (forward, backward, AdamW), after warm-up."""
    cfg = cfg.replace(batch_size=batch)
    state = train.init_state(cfg, 0)
    step = train.make_train_step(cfg, devices.make_mesh(cfg.model))
    x, key = jnp.asarray(random_voices(batch)), jax.random.key(0)
    for _ in range(2):
        state, metrics = step(state, x, key)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, x, key)
    jax.block_until_ready(metrics)
    return steps * batch / (time.perf_counter() - t)


def matmul_rate(m, k, n, dtype=jnp.float32, calls=30, devices=None):
    """GFLOP/s of a lone jitted (m, k) @ (k, n) matmul (float32 accumulation), its rows split over
    `devices` (default: all) as the train step splits its batch: the ceiling its matmuls can reach."""
    mesh = Mesh(np.array(devices or jax.devices()), ("data",))
    a = jax.device_put(jnp.ones((m, k), dtype), NamedSharding(mesh, P("data")))
    b = jax.device_put(jnp.ones((k, n), dtype), NamedSharding(mesh, P()))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    f(a, b).block_until_ready()
    t = time.perf_counter()
    for _ in range(calls):
        out = f(a, b)
    out.block_until_ready()
    return 2 * m * k * n * calls / (time.perf_counter() - t) / 1e9


def time_sampling(model, sample_batch, *, seconds=10.0):
    """Prior samples decoded to argmax voices per second, over at least `seconds`."""
    chunks = sample.sample_prior_chunks(model, 1 << 62, batch=sample_batch)
    next(chunks)  # compile and warm up
    n, t = 0, time.perf_counter()
    for voices in chunks:
        n += len(voices)
        if time.perf_counter() - t >= seconds:
            break
    rate = n / (time.perf_counter() - t)
    chunks.close()  # waits for the chunk in flight, which would otherwise slow what is timed next
    return rate


def time_decode1(model, calls=100):
    """Host-to-host latency of one latent -> one voice, as live control calls it (AOT-compiled)."""
    z = np.zeros((1, model.config.model.latent), np.float32)
    decode = sample.make_decoder(model.config.model).lower(model.params, z).compile()
    rng = np.random.default_rng(0)
    for _ in range(5):
        np.asarray(decode(model.params, z))
    lat = []
    for _ in range(calls):
        z[:] = rng.standard_normal(z.shape)
        t = time.perf_counter()
        np.asarray(decode(model.params, z))
        lat.append(time.perf_counter() - t)
    lat = np.sort(lat) * 1e3
    return dict(decode1_p50_ms=float(np.percentile(lat, 50)), decode1_p99_ms=float(np.percentile(lat, 99)))


def run(config="small", *, batch=32, sample_batch=1024, sample_seconds=10.0, what=("train", "sample", "latency"),
        checkpoint=None, overrides=(), announce=None):
    """The benchmark figures as a dict: training at `batch` voices a step, sampling at `sample_batch`
    rows per device call (`sample`'s batch) for `sample_seconds`; `checkpoint` times that model instead of random weights
    ("bundled": the bundled model); `overrides` are `config.override` assignments. `announce(line)`,
    if given, hears each part as it starts."""
    announce = announce or (lambda line: None)
    loaded = checkpoint_lib.load(checkpoint) if checkpoint else None
    try:
        cfg = config_lib.override(loaded.config if loaded else config_lib.preset(config), overrides)
    except ValueError as e:  # a bad assignment: the user's mistake, reported before any work
        raise Error(str(e)) from None
    if loaded:
        model, config = loaded._replace(config=cfg), f"checkpoint:{checkpoint}"
    else:
        model = checkpoint_lib.Model(cfg, train.init_state(cfg, 0).params, None, None)
    out = dict(impl="neuraldx7-jax", config=config, overrides=list(overrides), jax=jax.__version__,
               backend=jax.default_backend(), devices=jax.device_count(),
               params=int(sum(p.size for p in jax.tree.leaves(model.params))))
    if "train" in what:
        announce(f"train: compiling the step, then timing 10 steps of batch {batch}")
        out["train_devices"] = devices.make_mesh(cfg.model).devices.size  # one for wide models on a CPU
        out["train_samples_per_s"] = time_train(cfg, batch)
        # how close the step comes to the machine: its arithmetic rate beside a lone matmul's at
        # the dense layers' shape (every voice's 155 rows, F -> 3F), rows split over the same devices
        flops = train.step_flops(cfg, model.params, batch)
        f = cfg.model.features
        out["train_gflop_per_step"] = flops / 1e9
        out["train_gflop_per_s"] = flops / batch * out["train_samples_per_s"] / 1e9
        out["matmul_shape"] = f"({batch * dx7.N_PARAMS} x {f}) @ ({f} x {3 * f})"
        out["matmul_gflop_per_s"] = matmul_rate(batch * dx7.N_PARAMS, f, 3 * f)
        out["train_of_matmul"] = out["train_gflop_per_s"] / out["matmul_gflop_per_s"]
    if "sample" in what:
        announce(f"sample: compiling, then sampling batches of {sample_batch} for {sample_seconds:g} s")
        out["sample_per_s"] = time_sampling(model, sample_batch, seconds=sample_seconds)
    if "latency" in what:
        announce("latency: compiling, then timing 100 single decodes")
        out.update(time_decode1(model))
    return out
