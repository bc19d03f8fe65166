"""Sample 32-voice cartridges from a trained model's prior (same as `neuraldx7 generate`).

    python experiments/dx7_vae/generate.py --checkpoint runs/small --out carts/cart.syx --count 8 \
        --temperature 0.5 --seed 1
"""
from absl import app, flags

from neuraldx7_jax import dx7, sample

flags.DEFINE_string("checkpoint", None, "work directory or checkpoints/ folder (default: the bundled model)")
flags.DEFINE_string("out", None, "the .syx to write; numbered OUT_001.syx ... when --count > 1")
flags.DEFINE_integer("count", 1, "number of cartridges")
flags.DEFINE_float("temperature", 0.0, "0 = argmax, > 0 samples softmax(logits / T)")
flags.DEFINE_integer("seed", 0, "random seed")
flags.DEFINE_enum("prior", None, ["fitted", "standard"], "where latents are drawn (default: fitted when the model has one)")
flags.DEFINE_bool("allow_silent", False, "keep voices whose estimated loudness is silent")
flags.mark_flag_as_required("out")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = sample.load_model(FLAGS.checkpoint)
    for path, cart in sample.generate_cartridges(model, FLAGS.out, FLAGS.count, FLAGS.temperature, FLAGS.seed,
                                                 prior=FLAGS.prior, allow_silent=FLAGS.allow_silent):
        print(f"wrote {path}: redrew {cart.redrawn}: {', '.join(dx7.voice_name(v) for v in cart.voices)}")


if __name__ == "__main__":
    app.run(main)
