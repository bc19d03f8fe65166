"""Serve command: the local "this DX7 cartridge does not exist" page."""
from neuraldx7_jax.commands.options import CHECKPOINT, Option, subcommand
from neuraldx7_jax.webserver import HOST, PORT

OPTIONS = (
    Option("port", int, PORT, f"TCP port, 0 for any free one (default: {PORT})"),
    Option("host", str, HOST, f"address to listen on (default: {HOST}, this machine only)"),
    CHECKPOINT,
)


@subcommand("serve", "Serve a local page that generates cartridges, plays their voices and steers the latent.", (
    f"Serve a page (by default on http://{HOST}:{PORT}/) that samples a fresh 32-voice cartridge "
    "on each load or click, lists its voices, plays them (rendered on this machine; needs the "
    'audio extra: pip install "neuraldx7-jax[audio]"), downloads the .syx and moves a voice '
    "through the latent with sliders. A cartridge depends only on its seed and temperature, both "
    "in the page's URL. See docs/serve.md."), OPTIONS)
def serve(args):
    from neuraldx7_jax import serve as serve_lib

    serve_lib.run(args.checkpoint, host=args.host, port=args.port, announce=lambda line: print(line, flush=True))
