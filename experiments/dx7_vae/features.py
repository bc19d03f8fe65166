"""Encode a dataset and store the latent summary and fitted prior beside the checkpoints (same as
`neuraldx7 features`, the same options as flags).

    python experiments/dx7_vae/features.py --checkpoint runs/small --out runs/small/features.npz
"""
from neuraldx7_jax.commands import generate, options

if __name__ == "__main__":
    options.launch(generate.FEATURES, generate.features)
