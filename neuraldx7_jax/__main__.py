"""`python -m neuraldx7_jax` is the `neuraldx7` command."""
import sys

from neuraldx7_jax.cli import main

sys.exit(main())
