"""Which devices a job runs on, on one host or many: the 1-D `data` mesh that training and the
samplers shard their batches over, and the row helpers that keep a batch's pieces on their
devices."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import neuraldx7_jax

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
    """(rows split over every device, replicated) on `make_mesh()`."""
    mesh = make_mesh()
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
