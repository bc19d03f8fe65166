"""The `neuraldx7` command: argument parsing and printing only.

Each subcommand (`neuraldx7_jax.commands`, registered in `commands.options.COMMANDS`) parses its
options, calls one library function and prints. Nothing here imports JAX: `--help`, `info` and
argument errors start in a fraction of a second.
"""
import argparse
import os
import sys

from neuraldx7_jax import files
from neuraldx7_jax.errors import Error


def build_parser():
    from neuraldx7_jax import commands

    parser = argparse.ArgumentParser(
        prog="neuraldx7",
        description="NeuralDX7 in JAX: read and write DX7 voices, train the VAE, "
                    "generate cartridges, and steer a synth live.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help, setup in commands.COMMANDS:
        sub = subs.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=setup(sub))
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    out = getattr(args, "out", None)
    if isinstance(out, str) and files.is_stdout(out):  # `--out /dev/stdout | ...`: the file alone there
        sys.stdout = sys.stderr
    try:
        return args.handler(args) or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (Error, OSError) as e:
        print(f"neuraldx7 {args.command}: error: {e}", file=sys.stderr)
        return 2
