"""NeuralDX7 in JAX/Flax: an attention VAE with triangular Sylvester flows over DX7 voices."""
import os

__version__ = "0.1.0"

# On a CPU host, one JAX device per core, so that training and sampling run data-parallel over
# every core (XLA alone keeps this model's small ops on about one; docs/performance.md). Set
# before JAX is imported; JAX_NUM_CPU_DEVICES (JAX_NUM_CPU_DEVICES=1: one device) or a forced
# device count in XLA_FLAGS overrides it. Accelerator hosts are not affected. CORES_CHOSEN says
# the count was chosen here: only then does `devices.make_mesh` train wide models on one device.
CORES_CHOSEN = "JAX_NUM_CPU_DEVICES" not in os.environ and "device_count" not in os.environ.get("XLA_FLAGS", "")
if CORES_CHOSEN:
    os.environ["JAX_NUM_CPU_DEVICES"] = str(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                            else os.cpu_count() or 1)
