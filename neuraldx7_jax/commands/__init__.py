"""The subcommands of `neuraldx7`, one module per area; importing registers them."""
from neuraldx7_jax.commands import formats  # noqa: F401
