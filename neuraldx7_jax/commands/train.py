"""`neuraldx7 train`; its options are shared with `experiments/dx7_vae/train.py` (as absl flags)."""
import json
import sys
from typing import NamedTuple

from neuraldx7_jax.cli import command
from neuraldx7_jax.config import PRESETS


class Option(NamedTuple):
    name: str  # flag name, with underscores
    type: type  # str, int, float, bool or list (repeated)
    default: object
    help: str
    choices: tuple = ()


OPTIONS = (
    Option("config", str, None, "model and training preset (default: the work directory's saved config "
           "when resuming, else 'small')", tuple(sorted(PRESETS))),
    Option("data", str, None, "dataset .npz from `neuraldx7 dataset build` (required)"),
    Option("workdir", str, None, "where checkpoints and metrics.jsonl go; an existing one is resumed (required)"),
    Option("steps", int, None, "train until this many steps in total; a larger value continues a "
           "finished run (required)"),
    Option("batch_size", int, None, "global batch size, split over all devices"),
    Option("learning_rate", float, None, "peak AdamW learning rate"),
    Option("warmup_steps", int, None, "linear learning-rate warm-up steps"),
    Option("lr_schedule", str, None, "learning-rate schedule", ("constant", "cosine")),
    Option("decay_steps", int, None, "length of the cosine schedule in steps; a larger value on resuming lengthens it (a warm restart)"),
    Option("set", list, [], "any other config field as SECTION.FIELD=VALUE, e.g. model.features=256 "
           "or train.masked_ce=true (repeatable)"),
    Option("init_from", str, None, "start a new run from the parameters of this trained model (a "
           "checkpoint directory, or 'bundled'), with a fresh optimizer and schedules; its model "
           "config must be this run's"),
    Option("seed", int, 0, "seed of the initialisation, noise and data order"),
    Option("checkpoint_every", int, 1000, "steps between checkpoints"),
    Option("keep", int, 3, "checkpoints kept"),
    Option("eval_every", int, 1000, "steps between validation runs"),
    Option("log_every", int, 50, "steps between metric lines"),
    Option("distributed", bool, False, "call jax.distributed.initialize() first (multi-host GPU/TPU runs)"),
)
REQUIRED = ("data", "workdir", "steps")


def run_training(a):
    """Resolves the config from the options `a` (argparse namespace or absl FLAGS), trains, stores
    what sampling needs of the data beside the checkpoints (`sample.write_features`: the fitted
    prior, the training facts), and prints the last validation metrics as JSON (progress and notes
    go to stderr)."""
    import jax

    from neuraldx7_jax import train
    if a.distributed:
        jax.distributed.initialize()
    cfg = train.resolve_config(a.workdir, a.config, a.set, batch_size=a.batch_size,
                               learning_rate=a.learning_rate, warmup_steps=a.warmup_steps,
                               lr_schedule=a.lr_schedule, decay_steps=a.decay_steps)
    result = train.train_and_evaluate(cfg, a.data, a.workdir, a.steps, seed=a.seed,
                                      checkpoint_every=a.checkpoint_every, keep=a.keep,
                                      eval_every=a.eval_every, log_every=a.log_every, init_from=a.init_from,
                                      announce=lambda line: print(line, file=sys.stderr, flush=True))
    if result is not None:
        if jax.process_index() == 0:  # what sampling needs of the data: the fitted prior, the facts
            from neuraldx7_jax import sample
            print("fitting the latent prior to the training voices...", file=sys.stderr, flush=True)
            sample.write_features(sample.load_model(a.workdir), a.data)
        print(json.dumps({"validation": result}))


@command("train", "Train the VAE on a dataset .npz; resumes an existing work directory.")
def _train(p):
    for o in OPTIONS:
        flag = "--" + o.name.replace("_", "-")
        if o.type is bool:
            p.add_argument(flag, action="store_true", help=o.help)
        elif o.type is list:
            p.add_argument(flag, action="append", default=[], metavar="SECTION.FIELD=VALUE", help=o.help)
        else:
            p.add_argument(flag, type=o.type, default=o.default, required=o.name in REQUIRED,
                           choices=o.choices or None, help=o.help)

    return run_training
