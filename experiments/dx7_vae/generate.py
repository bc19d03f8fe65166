"""Sample 32-voice cartridges from a trained model (same as `neuraldx7 generate`, the same options
as flags).

    python experiments/dx7_vae/generate.py --checkpoint runs/small --out carts/cart.syx --count 8 \
        --temperature 0.5 --seed 1
"""
from neuraldx7_jax.commands import generate, options

if __name__ == "__main__":
    options.launch(generate.GENERATE, generate.generate)
