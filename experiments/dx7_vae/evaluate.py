"""Validity and model figures of voice files beside the per-parameter marginal baseline (same as
`neuraldx7 evaluate`, the same options as flags; the files are --file, repeatable).

    python experiments/dx7_vae/evaluate.py --checkpoint runs/small --file data.npz:validation
"""
from neuraldx7_jax.commands import generate, options

if __name__ == "__main__":
    options.launch(generate.EVALUATE, generate.evaluate)
