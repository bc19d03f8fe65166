"""Steer a DX7 synth live: the same as `neuraldx7 live` (its options, see docs/live.md).

    python tools/live.py --controller nanoKONTROL --synth Dexed [--checkpoint WORKDIR]
"""
import sys

from neuraldx7_jax import cli

if __name__ == "__main__":
    sys.exit(cli.main(["live", *sys.argv[1:]]))
