"""Make a trained model the bundled one: the parameters and meta of its last checkpoint (no optimizer
state; the dataset and init-from paths cut to their last part, so no machine path ships) with its features.json and
training.npz, written to neuraldx7_jax/bundled (replacing what is there).

    neuraldx7 features --checkpoint runs/mine --data dx7.npz    # if training did not write them
    python tools/bundle.py runs/mine
"""
import argparse
import sys

from neuraldx7_jax import checkpoint
from neuraldx7_jax.errors import Error


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="the training work directory")
    parser.add_argument("--out", default=str(checkpoint.BUNDLED), help="where to write (default: the package's bundled/)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {checkpoint.bundle(args.workdir, args.out)}")
    except Error as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
