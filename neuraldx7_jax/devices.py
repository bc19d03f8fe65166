"""Which devices a job runs on, on one host or many: the 1-D `data` mesh that training and the
samplers shard their batches over, and the row helpers that keep a batch's pieces on their
devices.

Many hosts: every host runs the same command, joined by `initialize` (JAX's multi-controller
model: each process drives its own devices). Training runs on the mesh of every device of every
process; the samplers run on this process's devices only (`shardings`), each process drawing its
own rows (`share`) and the counts merged (`gather`).
"""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import neuraldx7_jax
from neuraldx7_jax.config import HEARTBEAT_S
from neuraldx7_jax.errors import Error

# From this width up, a model's matmuls already keep every core of a CPU busy, and one device
# trains faster than one per core (docs/performance.md).
ONE_DEVICE_FEATURES = 512


def make_mesh(model=None):
    """A 1-D mesh over every device of every host; the batch is split on its `data` axis. Given
    the `model` config to train, a CPU host where the device count was not set by the user
    (`neuraldx7_jax.CORES_CHOSEN`) gets a mesh of one device for a model of at least
    `ONE_DEVICE_FEATURES` features."""
    devices = jax.devices()
    if (model is not None and model.features >= ONE_DEVICE_FEATURES and neuraldx7_jax.CORES_CHOSEN
            and jax.default_backend() == "cpu" and jax.process_count() == 1):
        devices = devices[:1]
    return Mesh(np.array(devices), ("data",))


def pieces(rows, most):
    """The fewest equal pieces `rows` splits into with at most `most` rows each."""
    return next(k for k in range(1, rows + 1) if rows % k == 0 and rows // k <= most)


def split_rows(x, k):
    """(B, ...) -> (k, B / k, ...); piece i holds rows i, i + k, ..., so every piece of a
    batch-sharded array keeps its rows on their devices (B / k a multiple of the devices)."""
    return jnp.swapaxes(x.reshape(-1, k, *x.shape[1:]), 0, 1)


def join_rows(y):
    """The inverse of `split_rows`."""
    return jnp.swapaxes(y, 0, 1).reshape(-1, *y.shape[2:])


@functools.lru_cache(maxsize=None)
def shardings():
    """(rows split over this process's devices, replicated on them): where the samplers run."""
    mesh = Mesh(np.array(jax.local_devices()), ("data",))
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def initialize(distributed=False, coordinator=None, num_processes=None, process_id=None, heartbeat_s=HEARTBEAT_S):
    """Joins this process to a multi-process run (before any other JAX call): with `coordinator`
    ("HOST:PORT", where process 0 listens), `num_processes` and `process_id`; with `distributed`
    alone, as JAX detects them (SLURM, Open MPI, Cloud TPU, Kubernetes). Nothing without either.
    On CPU the processes exchange over gloo. A process that dies stops the others: JAX ends them
    with an error naming it, once it has been silent `heartbeat_s` seconds (at once for process 0)."""
    given = dict(num_processes=num_processes, process_id=process_id)
    if heartbeat_s < 1:
        raise Error(f"--heartbeat-timeout must be at least 1 second, got {heartbeat_s}")
    if coordinator is None and all(v is None for v in given.values()):
        if distributed:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_s)
        return
    missing = [k for k, v in dict(coordinator=coordinator, **given).items() if v is None]
    if missing:
        raise Error(f"--coordinator, --num-processes and --process-id go together; missing "
                    f"{', '.join('--' + k.replace('_', '-') for k in missing)}")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise Error(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise Error(f"--process-id must be in 0..{num_processes - 1} (--num-processes {num_processes}), "
                    f"got {process_id}")
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id, heartbeat_timeout_seconds=heartbeat_s)


def replicate(tree, mesh):
    """`tree` (arrays or typed keys holding the same values in every process) replicated on
    every device of `mesh`, including other processes' (which `jax.device_put` cannot reach).
    Leaves already so placed are kept."""
    sharding = NamedSharding(mesh, P())

    def put(a):
        a = jnp.asarray(a)  # a Python number too (a TrainState's step)
        if a.sharding == sharding:
            return a
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(put(jax.random.key_data(a)), impl=jax.random.key_impl(a))
        return jax.make_array_from_process_local_data(sharding, np.asarray(a))
    return jax.tree.map(put, tree)


def local(tree):
    """A replicated `tree`'s values on this process's first device (work each process repeats)."""
    return jax.tree.map(lambda a: a.addressable_data(0), tree)


def rows(mesh, x):
    """The global batch `x` (the same in every process) split over `mesh`'s `data` axis: each
    process places only its own rows."""
    sharding = NamedSharding(mesh, P("data"))
    per, p = len(x) // jax.process_count(), jax.process_index()
    return jax.make_array_from_process_local_data(sharding, x[p * per:(p + 1) * per])


def share(count, unit=1):
    """(first, count) of this process's part of `count` rows, cut in whole `unit`s: disjoint
    parts, in process order, that cover them all."""
    units, p, n = -(-count // unit), jax.process_index(), jax.process_count()
    first = min(count, p * units // n * unit)
    return first, min(count, (p + 1) * units // n * unit) - first


def gather(x):
    """The numpy arrays `x` (n_i, ...) of every process (the same dtype and trailing shape),
    concatenated in process order, in every process; `x` itself in a single process."""
    x = np.ascontiguousarray(x)
    if jax.process_count() == 1:
        return x
    from jax.experimental.multihost_utils import process_allgather
    row = math.prod(x.shape[1:])
    sizes = process_allgather(np.array([len(x)], np.int32))[:, 0]
    padded = np.zeros((int(sizes.max()), x.itemsize * row), np.uint8)  # as bytes: JAX would cut 64-bit types
    padded[:len(x)] = x.reshape(len(x), row).view(np.uint8)
    parts = process_allgather(padded)
    return np.concatenate([part[:k] for part, k in zip(parts, sizes)]).view(x.dtype).reshape(-1, *x.shape[1:])
