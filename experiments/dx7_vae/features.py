"""Encode a dataset and store the latent summary live control uses (same as `neuraldx7 features`).

    python experiments/dx7_vae/features.py --checkpoint runs/small --out runs/small/features.npz
"""
import json

from absl import app, flags

from neuraldx7_jax import sample

flags.DEFINE_string("checkpoint", None, "work directory or checkpoints/ folder (default: the bundled model)")
flags.DEFINE_string("data", None, "dataset .npz or DX7 file (default: the checkpoint's dataset)")
flags.DEFINE_string("out", None, "the .npz of posteriors to write")
flags.DEFINE_integer("batch", None, "voices per device call (default: 256 on CPU, 4096 on GPU/TPU)")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = sample.load_model(FLAGS.checkpoint)
    print(json.dumps(sample.write_features(model, FLAGS.data, FLAGS.out, FLAGS.batch)))


if __name__ == "__main__":
    app.run(main)
