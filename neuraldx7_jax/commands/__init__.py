"""The subcommands of `neuraldx7`, one module per area; importing them registers them in
`options.COMMANDS`, in the order `neuraldx7 --help` lists them."""
from neuraldx7_jax.commands import formats  # noqa: F401
from neuraldx7_jax.commands import train  # noqa: F401
from neuraldx7_jax.commands import generate  # noqa: F401
from neuraldx7_jax.commands import original  # noqa: F401
from neuraldx7_jax.commands import audio  # noqa: F401
from neuraldx7_jax.commands import midi  # noqa: F401
from neuraldx7_jax.commands import live  # noqa: F401
from neuraldx7_jax.commands import serve  # noqa: F401
from neuraldx7_jax.commands import bench  # noqa: F401
from neuraldx7_jax.commands.options import COMMANDS  # noqa: F401
