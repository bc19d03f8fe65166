"""The original's uniqueness study (same as `neuraldx7 duplicates`): ~99.9% of 65,536 prior
samples were unique for the original model.

    python experiments/dx7_vae/duplicate_test.py --checkpoint runs/original --samples 65536
"""
import json

from absl import app, flags

from neuraldx7_jax import sample

flags.DEFINE_string("checkpoint", None, "work directory or checkpoints/ folder (default: the bundled model)")
flags.DEFINE_integer("samples", 65536, "voices to sample")
flags.DEFINE_integer("batch", None, "voices per device call (default: 256 on CPU, 4096 on GPU/TPU)")
flags.DEFINE_float("temperature", 0.0, "0 = argmax, > 0 samples softmax(logits / T)")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_string("data", None, "training dataset .npz for novelty (default: the checkpoint's)")
flags.DEFINE_enum("prior", None, ["fitted", "standard"], "where latents are drawn (default: fitted when the model has one)")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = sample.load_model(FLAGS.checkpoint)
    training, path, why = sample.training_voices(model, FLAGS.data)
    result = sample.duplicates_study(model, FLAGS.samples, FLAGS.batch, FLAGS.temperature, FLAGS.seed, training,
                                     prior=FLAGS.prior)
    print(json.dumps(dict(result, dataset=path, note=why)))


if __name__ == "__main__":
    app.run(main)
