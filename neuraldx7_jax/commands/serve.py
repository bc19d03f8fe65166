"""Serve command: the local "this DX7 cartridge does not exist" page."""
from neuraldx7_jax.commands.options import command


@command("serve", "Serve a local page that generates cartridges, plays their voices and steers the latent.")
def serve(parser):
    parser.description = (
        "Serve a page (by default on http://127.0.0.1:8000/) that samples a fresh 32-voice cartridge "
        "on each load or click, lists its voices, plays them (rendered on this machine; needs the "
        'audio extra: pip install "neuraldx7-jax[audio]"), downloads the .syx and moves a voice '
        "through the latent with sliders. A cartridge depends only on its seed and temperature, both "
        "in the page's URL. See docs/serve.md.")
    parser.add_argument("--port", type=int, default=8000, help="TCP port, 0 for any free one (default: 8000)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: 127.0.0.1, this machine only)")
    parser.add_argument("--checkpoint", metavar="DIR",
                        help="a training work directory or its checkpoints/ folder (default: the bundled model)")

    def run(args):
        from neuraldx7_jax import serve as serve_lib

        serve_lib.run(args.checkpoint, host=args.host, port=args.port, announce=lambda line: print(line, flush=True))
    return run
