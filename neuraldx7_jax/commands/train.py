"""`neuraldx7 train`; its options are shared with `experiments/dx7_vae/train.py` (as absl flags)."""
import json
import sys

from neuraldx7_jax.commands.options import PROCESSES, SET, Option, processes, subcommand
from neuraldx7_jax.config import CHECKPOINT_EVERY, EVAL_EVERY, KEEP, LOG_EVERY, PRESETS


OPTIONS = (
    Option("config", str, None, "model and training preset (default: the work directory's saved config "
           "when resuming, else 'small')", tuple(sorted(PRESETS))),
    Option("data", str, None, "dataset .npz from `neuraldx7 dataset build` (required)", required=True),
    Option("workdir", str, None, "where checkpoints and metrics.jsonl go; an existing one is resumed (required)",
           required=True),
    Option("steps", int, None, "train until this many steps in total; a larger value continues a "
           "finished run (required)", required=True),
    Option("batch_size", int, None, "global batch size, split over all devices"),
    Option("learning_rate", float, None, "peak AdamW learning rate"),
    Option("warmup_steps", int, None, "linear learning-rate warm-up steps"),
    Option("lr_schedule", str, None, "learning-rate schedule", ("constant", "cosine")),
    Option("decay_steps", int, None, "length of the cosine schedule in steps; a larger value on resuming lengthens it (a warm restart)"),
    SET,
    Option("init_from", str, None, "start a new run from the parameters of this trained model (a "
           "checkpoint directory, or 'bundled'), with a fresh optimizer and schedules; its model "
           "config must be this run's"),
    Option("seed", int, 0, "seed of the initialisation, noise and data order"),
    Option("checkpoint_every", int, CHECKPOINT_EVERY, "steps between checkpoints"),
    Option("keep", int, KEEP, "checkpoints kept"),
    Option("eval_every", int, EVAL_EVERY, "steps between validation runs"),
    Option("log_every", int, LOG_EVERY, "steps between metric lines"),
    *PROCESSES,
)


@subcommand("train", "Train the VAE on a dataset .npz; resumes an existing work directory.",
            "Train the VAE on a dataset .npz in a work directory, resuming it if it holds a run, and "
            "store what sampling needs of the data beside the checkpoints (the fitted priors, the "
            "training facts). Prints the last validation metrics as JSON; progress and notes go to stderr.",
            OPTIONS)
def run_training(a):
    """Trains with the options `a` (argparse namespace or absl FLAGS): `train.run`."""
    import jax

    from neuraldx7_jax import train

    result = train.run(data=a.data, workdir=a.workdir, steps=a.steps, config=a.config, overrides=a.set,
                       seed=a.seed, checkpoint_every=a.checkpoint_every, keep=a.keep, eval_every=a.eval_every,
                       log_every=a.log_every, init_from=a.init_from, **processes(a),
                       announce=lambda line: print(line, file=sys.stderr, flush=True),
                       batch_size=a.batch_size, learning_rate=a.learning_rate, warmup_steps=a.warmup_steps,
                       lr_schedule=a.lr_schedule, decay_steps=a.decay_steps)
    if result is not None and jax.process_index() == 0:
        print(json.dumps({"validation": result}))
