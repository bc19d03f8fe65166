"""Decode the line between two voices' latents into a cartridge (same as `neuraldx7 interpolate`,
the same options as flags; the voices are --a and --b).

    python experiments/dx7_vae/interpolate.py --checkpoint runs/small \
        --a factory/rom1a.syx:1 --b data.npz:validation:12 --out line.syx --steps 32 --slerp
"""
from neuraldx7_jax.commands import generate, options

if __name__ == "__main__":
    options.launch(generate.INTERPOLATE, generate.interpolate)
