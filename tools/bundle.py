"""Make a trained model the bundled one: the parameters and meta of its last checkpoint (no optimizer
state; the dataset path cut to its file name, so no machine path ships) with its features.json and
training.npz, written to neuraldx7_jax/bundled (replacing what is there).

    neuraldx7 features --checkpoint runs/mine --data dx7.npz    # if training did not write them
    python tools/bundle.py runs/mine
"""
import argparse
import shutil
import sys
from pathlib import Path

import orbax.checkpoint as ocp

from neuraldx7_jax import sample
from neuraldx7_jax.errors import Error


def bundle(workdir, out=sample.BUNDLED):
    model = sample.load_model(workdir)
    for path in (sample.features_path(workdir), sample.training_path(workdir)):
        if not path.is_file():
            raise Error(f"{path} is missing; run `neuraldx7 features --checkpoint {workdir}` first")
    meta = dict(model.meta)
    meta["dataset"] = dict(meta.get("dataset") or {}, path=Path(sample.dataset_of(model) or "").name or None)
    out = Path(out)
    tmp = out.with_name(out.name + ".new")
    shutil.rmtree(tmp, ignore_errors=True)
    with ocp.CheckpointManager((tmp / "checkpoints").absolute(), item_names=("params", "meta")) as mngr:
        mngr.save(meta["step"], args=ocp.args.Composite(params=ocp.args.StandardSave(model.params),
                                                        meta=ocp.args.JsonSave(meta)))
    for path in (sample.features_path(workdir), sample.training_path(workdir)):
        shutil.copy(path, tmp / "checkpoints" / path.name)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdir", help="the training work directory")
    parser.add_argument("--out", default=str(sample.BUNDLED), help="where to write (default: the package's bundled/)")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {bundle(args.workdir, args.out)}")
    except Error as e:
        print(f"bundle: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
