"""Train the DX7 VAE: the absl-flag launcher for GPU/TPU hosts.

Same options as `neuraldx7 train`, as flags (one table builds both); the logic is in the library.
    python experiments/dx7_vae/train.py --config original --data data.npz --workdir runs/original \
        --steps 200000
Multi-host: the same command on every host, with --distributed where JAX detects the cluster (SLURM,
Cloud TPU) or --coordinator HOST:PORT --num_processes N --process_id I (docs/multihost.md).
"""
from neuraldx7_jax.commands import options, train

if __name__ == "__main__":
    options.launch(train.OPTIONS, train.run_training)
