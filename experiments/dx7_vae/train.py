"""Train the DX7 VAE: the absl-flag launcher for GPU/TPU hosts.

Same options as `neuraldx7 train`, as flags; kept short on purpose, the logic is in the library.
    python experiments/dx7_vae/train.py --config original --data data.npz --workdir runs/original \
        --steps 200000
Multi-host (TPU pods, SLURM): add --distributed on every host.
"""
from absl import app, flags

from neuraldx7_jax.commands.train import OPTIONS, REQUIRED, run_training

_DEFINE = {str: flags.DEFINE_string, int: flags.DEFINE_integer, float: flags.DEFINE_float,
           bool: flags.DEFINE_bool, list: flags.DEFINE_multi_string}
for _o in OPTIONS:
    if _o.choices:
        flags.DEFINE_enum(_o.name, _o.default, list(_o.choices), _o.help)
    else:
        _DEFINE[_o.type](_o.name, _o.default, _o.help)
flags.mark_flags_as_required(REQUIRED)


def main(argv):
    del argv
    run_training(flags.FLAGS)


if __name__ == "__main__":
    app.run(main)
