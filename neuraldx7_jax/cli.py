"""The `neuraldx7` command: argument parsing and printing only.

Each subcommand is registered with `@command` and calls one library function.
"""
import argparse
import os
import sys

from neuraldx7_jax.errors import Error

_COMMANDS = []


def command(name, help):
    """Registers `fn(sub_parser)` -> handler(args) as the subcommand `name`."""
    def register(fn):
        _COMMANDS.append((name, help, fn))
        return fn
    return register


def build_parser():
    parser = argparse.ArgumentParser(
        prog="neuraldx7",
        description="NeuralDX7 in JAX: read and write DX7 voices, train the VAE, "
                    "generate cartridges, and steer a synth live.")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help, fn in _COMMANDS:
        sub = subs.add_parser(name, help=help, description=help)
        sub.set_defaults(handler=fn(sub))
    return parser


def main(argv=None):
    import neuraldx7_jax.commands  # noqa: F401  (registers the subcommands)
    args = build_parser().parse_args(argv)
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
