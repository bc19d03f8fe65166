"""Import the original NeuralDX7's PyTorch weights (a `.box` checkpoint) into this project's format.

The `.box` file is a `torch.save` pickle: dict(model=state_dict, worker=config), where the
config holds references to the original's classes (`neuralDX7.*`, `agoge.*`). It is read with a
restricted unpickler: tensors and plain containers are rebuilt, any other class or function the
file names becomes an inert `NotLoaded` placeholder, so nothing of the original is imported or run
(its packages need not be installed). PyTorch is needed only to read the file.

The original orders the 155 fields differently (`model.original_order`). The attention layers are
permutation-equivariant and the encoder averages over positions, so only two things depend on the
order: the positional table, whose rows `ModelConfig(position_order="original")` assigns to fields
as the original did, and the per-position output blocks of `z_to_c`, whose rows are permuted here.
The value mask is already in our order. See docs/parity.md for the measured agreement.
"""
import dataclasses
import importlib
import pickle
import re
import types
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from neuraldx7_jax import config as config_lib
from neuraldx7_jax import checkpoint, train
from neuraldx7_jax.errors import Error
from neuraldx7_jax.config import ModelConfig
from neuraldx7_jax.model import N, V, VAE, original_order, positional_table

INSTALL_HINT = 'reading an original checkpoint needs PyTorch: pip install "neuraldx7-jax[original]"'
DEFAULT_HEADS = 8  # the original run's; the file's weights cannot tell the head count

_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "complex"), ("builtins", "slice"),
    ("torch", "Size"), ("torch", "device"),
    ("torch._utils", "_rebuild_tensor"), ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
}


class NotLoaded:
    """Stands in for a class or function the checkpoint names but this loader does not import.
    Constructing one (as unpickling does) only records its arguments and state."""
    reference = "?"  # "module.name" of what it replaces

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state

    def __setitem__(self, key, value):
        self.items.append((key, value))

    def append(self, value):
        self.items.append(value)

    def extend(self, values):
        self.items.extend(values)

    def __repr__(self):
        return f"<not loaded: {self.reference}>"


_placeholders = {}


def _placeholder(module, name):
    reference = f"{module}.{name}"
    if reference not in _placeholders:
        _placeholders[reference] = type(f"NotLoaded[{reference}]", (NotLoaded,), dict(reference=reference))
    return _placeholders[reference]


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        import torch
        if (module, name) in _SAFE_GLOBALS:
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        return _placeholder(module, name)


# The `pickle_module` given to torch.load (which subclasses its Unpickler and calls its load).
_restricted_pickle = types.ModuleType("neuraldx7_jax.original.restricted_pickle")
_restricted_pickle.Unpickler = _RestrictedUnpickler
_restricted_pickle.load = lambda f, **kwargs: _RestrictedUnpickler(f, **kwargs).load()


ZIP_RATIO = 1000  # a compressed record may not claim more than this many times its stored size


def check_box(path):
    """Raises Error naming `path` when it is a damaged zip archive (torch.save's format since 1.6)
    or one whose records claim more bytes than the file holds: checked from the directory alone,
    before anything is read, so a small file cannot make the reader allocate gigabytes."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        return  # the legacy format (a pickle stream), or not a checkpoint: torch.load says which
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            records = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise Error(f"{path}: a damaged zip archive, truncated perhaps ({e})") from None
    for r in records:
        end = r.header_offset + r.compress_size
        if end > size or r.file_size > max(r.compress_size, 1) * ZIP_RATIO or (
                r.compress_type == zipfile.ZIP_STORED and r.file_size != r.compress_size):
            raise Error(f"{path}: record {r.filename!r} claims {r.file_size:,} bytes "
                        f"({r.compress_size:,} stored), the file has {size:,}: damaged or not a checkpoint")


def read_box(path):
    """(state dict as {name: numpy array, floats as float32}, worker config) of an original `.box`.
    Imports nothing of the original; classes it references come back as `NotLoaded`."""
    try:
        import torch
    except ImportError:
        raise Error(INSTALL_HINT) from None
    check_box(path)
    try:
        box = torch.load(path, map_location="cpu", pickle_module=_restricted_pickle, weights_only=False)
    except OSError as e:
        raise Error(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception as e:
        raise Error(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(box, dict) or not isinstance(box.get("model"), dict):
        raise Error(f"{path}: not an original NeuralDX7 checkpoint (expected a dict with a 'model' state dict)")
    state = {}
    for key, value in box["model"].items():
        if not isinstance(value, torch.Tensor):
            raise Error(f"{path}: entry {key!r} of the state dict is not a tensor")
        state[key] = value.detach().to(torch.float32).numpy() if value.is_floating_point() else value.numpy()
    return state, box.get("worker")


def _lookup(obj, *keys):
    for key in keys:
        if isinstance(obj, NotLoaded):
            obj = obj.state
        if not isinstance(obj, dict) or key not in obj:
            return None
        obj = obj[key]
    return obj


def stored_heads(worker):
    """The head count in the original's config (worker.model.encoder.attention_layer.attention),
    or None where it is missing or not a plain int."""
    heads = _lookup(worker, "model", "encoder", "attention_layer", "attention", "n_heads")
    return heads if type(heads) is int and heads > 0 else None


def _count(state, prefix):
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for key in state if (m := pattern.match(key))})


def infer_config(state, heads):
    """The ModelConfig of an original state dict: sizes from tensor shapes, `heads` as given."""
    def shape(key):
        if key not in state:
            raise Error(f"not an original NeuralDX7 state dict: {key!r} is missing")
        return state[key].shape

    values, features = shape("embedder.weight")
    latent = shape("z_to_c.weight")[1]
    layers = _count(state, "decoder.layers.")
    encoder_layers = _count(state, "_latent_encoder.0.layers.")
    flow_size = shape("_latent_encoder.1._flow_params.weight")[0]
    flows, rest = divmod(flow_size, latent * (latent + 3))
    if values != V or shape("z_to_c.weight")[0] != N * latent or rest:
        raise Error(f"unexpected shapes: embedder {values}x{features}, z_to_c {shape('z_to_c.weight')}, "
                    f"flow parameters {flow_size} (expected {V} values, {N} positions)")
    if encoder_layers != layers:
        raise Error(f"the encoder has {encoder_layers} layers and the decoder {layers}; "
                    f"this project's ModelConfig has one layer count for both")
    if features % heads:
        raise Error(f"{features} features are not divisible into {heads} heads; pass --heads")
    return ModelConfig(features=features, heads=heads, layers=layers, latent=latent, flows=flows,
                       position_order="original")


def _dense(state, prefix):
    return dict(linear=dict(kernel=state[prefix + ".weight"].T, bias=state[prefix + ".bias"]))


def _ff(state, prefix):
    """A torch Sequential(Linear, GELU, Linear) at `prefix` -> our FeedForwardGELU."""
    return dict(fc1=_dense(state, prefix + ".0"), fc2=_dense(state, prefix + ".2"))


def _layer(state, prefix):
    return dict(
        attention=dict(qkv=_dense(state, prefix + ".attention.QKV")),
        attention_norm=dict(scale=state[prefix + ".attention_norm.weight"],
                            bias=state[prefix + ".attention_norm.bias"]),
        feedforward=_ff(state, prefix + ".feedforward"))


def _check_positional(state, prefix, features):
    table = state.get(prefix + ".positional_encoding")
    if table is not None and not np.allclose(table, positional_table(N, features), atol=1e-6):
        raise Error(f"{prefix}.positional_encoding is not the original's sinusoid table of {N} rows")


class _Tracking(dict):
    """A dict that remembers which keys were read."""
    def __init__(self, items):
        super().__init__(items)
        self.used = set()

    def __getitem__(self, key):
        self.used.add(key)
        return super().__getitem__(key)


def _unused(state):
    dead = re.compile(r"encoder\.|.*\.positional_encoding$|_latent_encoder\.1\.flip_idx$")
    return sorted(k for k in state if k not in state.used and not dead.match(k))


def convert(state, heads):
    """(ModelConfig, params) from an original state dict (name -> numpy array). The dead
    `encoder.*` weights are skipped; `z_to_c`'s per-position rows are put in our field order."""
    cfg = infer_config(state, heads)
    state = _Tracking(state)
    try:
        params = _params(state, cfg)
    except KeyError as e:
        raise Error(f"not an original NeuralDX7 state dict of {cfg.layers} layers: {e} is missing") from None
    if unused := _unused(state):
        raise Error(f"the state dict has weights this model has no place for: {', '.join(unused[:5])}")
    _check_tree(cfg, params)
    return cfg, jax.tree.map(lambda a: np.ascontiguousarray(a, np.float32), params)


def _params(state, cfg):
    z = cfg.latent
    by_original = state["z_to_c.weight"].reshape(N, z, z), state["z_to_c.bias"].reshape(N, z)
    rows = np.argsort(original_order())  # original position of each canonical field
    z_to_c = dict(linear=dict(kernel=by_original[0][rows].reshape(N * z, z).T,
                              bias=by_original[1][rows].reshape(N * z)))
    for prefix in ("_latent_encoder.0", "decoder"):
        _check_positional(state, prefix, cfg.features)
    encoder = {f"layer_{i}": _layer(state, f"_latent_encoder.0.layers.{i}") for i in range(cfg.layers)}
    encoder["positional"] = dict(p2x=_dense(state, "_latent_encoder.0.p2x"))
    decoder = {f"layer_{i}": _layer(state, f"decoder.layers.{i}") for i in range(cfg.layers)}
    decoder.update({f"film_{i}": _ff(state, f"decoder.c_layers.{i}.net") for i in range(cfg.layers)})
    decoder["positional"] = dict(p2x=_dense(state, "decoder.p2x"))
    return dict(
        embedder=dict(embedding=state["embedder.weight"]),
        latent_encoder=encoder,
        q_hidden=_dense(state, "_latent_encoder.1.q_z.net.0"),
        q_out=_dense(state, "_latent_encoder.1.q_z.net.2"),
        flow_params=_dense(state, "_latent_encoder.1._flow_params"),
        z_to_c=z_to_c,
        decoder=decoder,
        logits=_ff(state, "logits.net"))


def _check_tree(cfg, params):
    """Raises unless `params` has exactly the names and shapes `VAE(cfg)` expects."""
    x, eps = jnp.zeros((1, N), jnp.int32), jnp.zeros((1, cfg.latent))
    expected = jax.eval_shape(VAE(cfg).init, jax.random.key(0), x, eps)["params"]
    want = {jax.tree_util.keystr(p): s.shape for p, s in jax.tree_util.tree_leaves_with_path(expected)}
    got = {jax.tree_util.keystr(p): np.shape(a) for p, a in jax.tree_util.tree_leaves_with_path(params)}
    bad = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if bad:
        raise Error(f"the original weights do not fit {cfg}: " + ", ".join(
            f"{k} is {got.get(k)}, expected {want.get(k)}" for k in bad[:5]))


def import_original(path, out, heads=None):
    """Converts the original checkpoint `path` into a checkpoint in the work directory `out`
    (readable by `checkpoint.load(out)`), at step 0. `heads` is used when the file's config does
    not say; default 8. Returns the Config and where the head count came from."""
    path, out = Path(path), Path(out)
    if not path.is_file():
        raise Error(f"{path}: no such file")
    state, worker = read_box(path)
    found = stored_heads(worker)
    if found is not None and heads is not None and found != heads:
        raise Error(f"{path}: its config says {found} heads, not {heads}; leave out --heads")
    heads_from = ("from the file's config" if found is not None
                  else "from --heads" if heads is not None else "the default")
    heads = found or heads or DEFAULT_HEADS
    try:
        model_cfg, params = convert(state, heads)
    except Error as e:
        raise Error(f"{path}: {e}") from None
    cfg = dataclasses.replace(config_lib.original(), model=model_cfg)
    params = jax.tree.map(jnp.asarray, params)
    meta = checkpoint.Meta(config=cfg, step=0, source=dict(original=str(path.absolute()), heads_from=heads_from))
    checkpoint.create(out, meta, params, train.make_optimizer(cfg).init(params))
    return dict(config=cfg, heads_from=heads_from, out=out)
