"""The original's uniqueness study (same as `neuraldx7 duplicates`, the same options as flags): ~99.9%
of 65,536 prior samples were unique for the original model.

    python experiments/dx7_vae/duplicate_test.py --checkpoint runs/original --samples 65536 --json
Over several processes, as `train.py`: each draws its share, process 0 prints (docs/multihost.md).
"""
from neuraldx7_jax.commands import generate, options

if __name__ == "__main__":
    options.launch(generate.DUPLICATES, generate.duplicates)
