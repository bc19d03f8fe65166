"""Decode the line between two voices' latents into a cartridge (same as `neuraldx7 interpolate`).

    python experiments/dx7_vae/interpolate.py --checkpoint runs/small \
        --a factory/rom1a.syx:1 --b data.npz:validation:12 --out line.syx --steps 32 --slerp
"""
from absl import app, flags

from neuraldx7_jax import sample

flags.DEFINE_string("checkpoint", None, "work directory or checkpoints/ folder (default: the bundled model)")
flags.DEFINE_string("a", None, "first voice: FILE:INDEX or DATASET.npz:SPLIT:INDEX (from 1)")
flags.DEFINE_string("b", None, "last voice, same form")
flags.DEFINE_string("out", None, "the .syx to write")
flags.DEFINE_integer("steps", 32, "voices from A to B, ends included (filled up to a multiple of 32 with B)")
flags.DEFINE_bool("slerp", False, "spherical instead of linear interpolation")
flags.mark_flags_as_required(["a", "b", "out"])
FLAGS = flags.FLAGS


def main(argv):
    del argv
    model = sample.load_model(FLAGS.checkpoint)
    voices, _ = sample.interpolate(model, sample.load_voice(FLAGS.a), sample.load_voice(FLAGS.b),
                                   FLAGS.steps, FLAGS.slerp)
    print(f"wrote {FLAGS.out}: {sample.save_voices(FLAGS.out, voices)} voices")


if __name__ == "__main__":
    app.run(main)
