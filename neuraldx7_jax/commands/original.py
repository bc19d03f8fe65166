"""`neuraldx7 import-original`: the original NeuralDX7's PyTorch weights -> a checkpoint here."""
from neuraldx7_jax.commands.options import Option, subcommand

OPTIONS = (
    Option("file", positional=True, metavar="FILE", help="the original checkpoint, e.g. model.box"),
    Option("out", required=True, help="the work directory to write (must not hold a checkpoint)"),
    Option("heads", int, None, "attention heads, used only if the file's config does not say (default: 8)"),
)


@subcommand("import-original", "Convert an original NeuralDX7 checkpoint (.box) into a checkpoint here.", (
    "Convert a checkpoint of the original PyTorch NeuralDX7 (a torch.save .box file: the model's "
    "state dict and its config) into a work directory that `neuraldx7` commands load like a "
    "trained one. The architecture is read from the tensor shapes; the original's field order is "
    "translated. Needs PyTorch (pip install \"neuraldx7-jax[original]\") but not the original's "
    "packages: nothing from the file is imported or run besides its tensors."), OPTIONS)
def import_original(args):
    from neuraldx7_jax.original import import_original

    done = import_original(args.file, args.out, args.heads)
    m = done["config"].model
    print(f"{args.file} -> {done['out']}: {m.features} features, {m.heads} heads "
          f"({done['heads_from']}), {m.layers} layers, latent {m.latent}, {m.flows} flows")
