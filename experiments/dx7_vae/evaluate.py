"""Validity and model figures of a voice file beside the per-parameter marginal baseline
(same as `neuraldx7 evaluate`).

    python experiments/dx7_vae/evaluate.py --checkpoint runs/small --file data.npz:validation
"""
import json

from absl import app, flags

from neuraldx7_jax import sample

flags.DEFINE_string("checkpoint", None, "work directory or checkpoints/ folder (default: the bundled model)")
flags.DEFINE_string("file", None, "a DX7 file, DATASET.npz or DATASET.npz:SPLIT")
flags.DEFINE_string("data", None, "training dataset .npz for the baseline (default: the checkpoint's)")
flags.mark_flag_as_required("file")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = sample.load_model(FLAGS.checkpoint)
    training, path, why = sample.training_voices(model, FLAGS.data)
    report = sample.evaluate_voices(model, sample.load_voices(FLAGS.file), training)
    print(json.dumps(dict(report, dataset=path, note=why)))


if __name__ == "__main__":
    app.run(main)
