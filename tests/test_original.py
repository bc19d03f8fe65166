"""Parity with the original PyTorch NeuralDX7: build it from its source with random weights,
save it as it saved checkpoints, import that with `neuraldx7 import-original` in a process where
the original's packages cannot be imported, and compare both models on the same inputs.

Needs torch (`pip install -e ".[original]"`) and the original's source (neuraldx7==0.0.8) at
$NDX7_SRC or ~/.cache/neuraldx7-original/neuralDX7-0.0.8; skipped without them, failed in CI.
"""
import dataclasses
import os
import subprocess
import sys
import types
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from neuraldx7_jax import checkpoint, cli, config, dx7, model, original, sample, train
from neuraldx7_jax.errors import Error

SRC = Path(os.environ.get("NDX7_SRC") or Path.home() / ".cache/neuraldx7-original/neuralDX7-0.0.8")
TOL = 1e-4
BATCH = 3
STEP = 100_000  # beta(STEP) is about 0.5, so the KL term counts
ORIGINAL_PACKAGES = ("neuralDX7", "agoge")


def _unavailable(reason):
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def torch():
    try:
        import torch
    except ImportError:
        _unavailable('torch is not installed: pip install -e ".[original]"')
    return torch


def test_missing_torch_gives_the_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(Error, match=r"neuraldx7-jax\[original\]"):
        original.read_box(tmp_path / "model.box")


def test_original_order_is_a_permutation_with_the_documented_swaps():
    order = model.original_order()
    assert sorted(order) == list(range(dx7.N_PARAMS))
    names = [dx7.PARAMS[i].name for i in order]
    assert names[11:14] == ["OP6 RC", "OP6 LC", "OP6 DET"] and names[18:21] == ["OP6 FC", "OP6 MODE", "OP6 FF"]
    assert names[134:137] == ["ALG", "OKS", "FB"] and names[141:144] == ["LPMS", "LFW", "LKS"]


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_reading_a_box_imports_and_runs_nothing_from_it(torch, monkeypatch, tmp_path, zip_format):
    marker = tmp_path / "ran"

    class Sneaky:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    fake = types.ModuleType("agoge")
    fake.Tracker = type("Tracker", (), {"__module__": "agoge"})
    monkeypatch.setitem(sys.modules, "agoge", fake)
    tracker = fake.Tracker()
    tracker.metrics = ["kl"]
    worker = dict(model=dict(encoder=dict(attention_layer=dict(attention=dict(n_heads=4)))),
                  tracker=tracker, sneaky=Sneaky(), cls=fake.Tracker)
    box = tmp_path / "model.box"
    torch.save(dict(model={"w": torch.arange(6.0).reshape(2, 3)}, worker=worker), box,
               _use_new_zipfile_serialization=zip_format)
    state, stored = original.read_box(box)
    assert not marker.exists()
    np.testing.assert_array_equal(state["w"], np.arange(6.0).reshape(2, 3))
    assert isinstance(stored["sneaky"], original.NotLoaded) and stored["sneaky"].args == (str(marker),)
    assert stored["tracker"].reference == "agoge.Tracker" and stored["tracker"].state == {"metrics": ["kl"]}
    assert issubclass(stored["cls"], original.NotLoaded)
    assert original.stored_heads(stored) == 4


def _stub_modules():
    """The original imports agoge (its trainer) and bitstruct; the model code needs neither."""
    import torch.nn
    agoge = types.ModuleType("agoge")
    for name, base in (("AbstractModel", torch.nn.Module), ("AbstractSolver", object), ("Tracker", object)):
        setattr(agoge, name, type(name, (base,), {"__module__": "agoge"}))
    agoge.DEFAULTS = {"ARTIFACTS_ROOT": "/tmp"}
    agoge.defaults_f = lambda d, parent=None: dict(d)
    stubs = {"agoge": agoge}
    try:
        import bitstruct  # noqa: F401
    except ImportError:
        stubs["bitstruct"] = types.SimpleNamespace(compile=lambda *a, **k: None)
    return stubs


@pytest.fixture(scope="module")
def parity(torch, tmp_path_factory):
    """The original at the `small` preset with seeded random weights, its reference outputs, and
    its checkpoint imported by the CLI in a subprocess that cannot import the original."""
    if not (SRC / "neuralDX7").is_dir():
        _unavailable(f"the original's source is not at {SRC}: set NDX7_SRC to an extracted "
                     f"neuraldx7==0.0.8 sdist (docs/parity.md says how to fetch it)")
    tmp = tmp_path_factory.mktemp("original")
    stubs = {k: v for k, v in _stub_modules().items() if k not in sys.modules}
    sys.modules.update(stubs)
    sys.path.insert(0, str(SRC))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # an invalid escape in its docstring
            ns = _original_reference(torch, config.small().model)
        ns.box, ns.out = tmp / "model.box", tmp / "imported"
        torch.save(dict(model=ns.state_dict, worker=ns.worker), ns.box)  # as the original's trainer did
    finally:
        sys.path.remove(str(SRC))
        for name in [*stubs, *(n for n in sys.modules if n.partition(".")[0] == "neuralDX7")]:
            del sys.modules[name]
    blocker = (
        "import importlib.abc, sys\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {ORIGINAL_PACKAGES!r}:\n"
        "            raise ImportError('blocked import of ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from neuraldx7_jax.cli import main\n"
        "rc = main(sys.argv[1:])\n"
        f"assert not [n for n in sys.modules if n.partition('.')[0] in {ORIGINAL_PACKAGES!r}]\n"
        "sys.exit(rc)\n")
    run = subprocess.run([sys.executable, "-c", blocker, "import-original", str(ns.box), "--out", str(ns.out)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    ns.cli_output = run.stdout
    return ns


def _original_reference(torch, m):
    from neuralDX7.constants import VOICE_KEYS
    from neuralDX7.models.dx7_vae import DX7VAE
    from neuralDX7.solvers.dx7_vae import DX7VAE as Solver
    from neuralDX7.utils import mask_parameters
    import agoge

    torch.manual_seed(0)
    attention = dict(n_features=m.features, n_hidden=m.features // m.heads, n_heads=m.heads)
    layer = dict(attention=attention, features=m.features, hidden_dim=3 * m.features)
    encoder = dict(features=m.features, attention_layer=layer, max_len=155, n_layers=m.layers)
    decoder = dict(encoder, c_features=m.latent)
    net = DX7VAE(m.features, m.latent, encoder, decoder, num_flows=m.flows).eval()
    with torch.no_grad():  # LayerNorms start at (1, 0): move them so a swapped mapping would show
        for name, p in net.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    tracker = agoge.Tracker()
    tracker.metrics = ["kl", "reconstruction_loss"]
    worker = dict(  # as the original's experiment.py built it; the trainer saved it beside the weights
        model=dict(Model=DX7VAE, features=m.features, latent_dim=m.latent, encoder=encoder, decoder=decoder,
                   num_flows=m.flows, deterministic_path_drop_rate=0.8),
        solver=dict(Solver=Solver, beta_temp=6e-5, max_beta=0.5), tracker=tracker)

    rng = np.random.default_rng(0)
    x = rng.integers(0, dx7.MAX.astype(int) + 1, (BATCH, dx7.N_PARAMS))  # canonical order
    eps, z = rng.standard_normal((2, BATCH, m.latent)).astype(np.float32)
    order = model.original_order()
    x_orig = torch.from_numpy(x[:, order])
    eps_t, z_t = torch.from_numpy(eps), torch.from_numpy(z)
    every = torch.ones(BATCH, 155, 155, dtype=torch.bool)
    with torch.no_grad():
        encode, flow = net._latent_encoder
        h = encode(net.embedder(x_orig), every).mean(-2)
        q = flow.q_z(h)
        flowed = flow(h, z=q.loc + q.scale * eps_t)
        logits = net.logits(net.decoder(torch.ones(BATCH, 155, m.features), every,
                                        net.z_to_c(z_t).view(BATCH, 155, -1)))
        noise = lambda self, sample_shape=torch.Size(): self.loc + self.scale * eps_t  # noqa: E731
        with mock.patch.object(torch.distributions.Normal, "rsample", noise):
            out = net(X=x_orig)
        solver = Solver(net, beta_temp=6e-5, max_beta=0.5)
        solver.iter = STEP
        loss, terms = solver.loss(x_orig, **out)
    reference = dict(mu=q.loc, sigma=q.scale, z0=flowed.z_0, zk=flowed.z_k, log_det=flowed.log_det,
                     logits=logits, masked_logits=mask_parameters(logits), loss=loss,
                     ce=terms["reconstruction_loss"], kl=terms["kl"])
    return types.SimpleNamespace(
        x=x, eps=eps, z=z, order=order, voice_keys=list(VOICE_KEYS), worker=worker,
        state_dict=net.state_dict(), reference={k: np.asarray(v, np.float64) for k, v in reference.items()},
        original_mask=np.asarray(mask_parameters(torch.zeros(155, 128))) == 0)


@pytest.mark.slow
def test_field_order_and_value_mask_match_the_original(parity):
    ours = {"M": "MODE", **{f"NAME CHAR {i}": f"NAME{i}" for i in range(1, 11)}}
    names = []
    for key in parity.voice_keys:
        op, _, field = key.partition("_")
        names.append(f"OP{6 - int(op)} {ours.get(field, field)}" if op.isdigit() else ours.get(key, key))
    assert names == [dx7.PARAMS[i].name for i in parity.order]
    np.testing.assert_array_equal(parity.original_mask, dx7.value_mask()[parity.order])


@pytest.mark.slow
def test_imported_model_computes_what_the_original_does(parity):
    import jax.numpy as jnp
    loaded = checkpoint.load(parity.out)
    vae, p = model.VAE(loaded.config.model), {"params": loaded.params}
    x, eps, z = jnp.asarray(parity.x), jnp.asarray(parity.eps), jnp.asarray(parity.z)
    posterior = vae.apply(p, x, eps, method=vae.encode)
    terms = train.loss_terms(vae.apply(p, x, eps), x)
    t = loaded.config.train
    ce, kl = terms["ce"].mean(), terms["kl"].mean()
    ours = dict(posterior, ce=ce, kl=kl, loss=ce + t.max_beta * train.beta(STEP, t.beta_temp) * kl,
                logits=vae.apply(p, z, method=vae.raw_logits)[:, parity.order],  # to the original's order
                masked_logits=vae.apply(p, z, method=vae.decode)[:, parity.order])
    diffs = {k: float(np.max(np.abs(np.asarray(ours[k], np.float64) - ref))) for k, ref in parity.reference.items()}
    print("max |ours - original|:", " ".join(f"{k}={v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs
    assert parity.reference["loss"] > parity.reference["ce"] + 1e-3  # the KL term is in play


@pytest.mark.slow
def test_imported_checkpoint_loads_and_decodes_valid_voices(parity):
    loaded = checkpoint.load(parity.out)
    assert loaded.config.model == dataclasses.replace(config.small().model, position_order="original")
    assert loaded.meta.source == dict(original=str(parity.box), heads_from="from the file's config")
    assert "4 heads (from the file's config), 4 layers" in parity.cli_output
    voices = sample.decode(loaded, parity.z)
    assert voices.shape == (BATCH, dx7.N_PARAMS) and dx7.is_valid(voices).all()


@pytest.mark.slow
def test_import_refuses_a_conflicting_head_count_and_an_existing_checkpoint(parity, tmp_path):
    with pytest.raises(Error, match="its config says 4 heads, not 8"):
        original.import_original(parity.box, tmp_path / "a", heads=8)
    with pytest.raises(Error, match="already holds a checkpoint"):
        original.import_original(parity.box, parity.out)


def _zip_box(path, payload=b"\x00" * 4096):
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:  # torch.save's layout: stored records
        z.writestr("model/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("model/data/0", payload)
    return path


def test_a_damaged_box_is_one_line_naming_it_before_reading(tmp_path):
    import struct
    good = _zip_box(tmp_path / "good.box")
    original.check_box(good)
    cut = tmp_path / "cut.box"
    cut.write_bytes(good.read_bytes()[:3000])
    with pytest.raises(Error, match=r"cut\.box: a damaged zip archive") as e:
        original.check_box(cut)
    assert "\n" not in str(e.value)
    big = bytearray(good.read_bytes())
    entry = big.rindex(b"PK\x01\x02")  # the central directory entry of model/data/0
    struct.pack_into("<II", big, entry + 20, 1 << 30, 1 << 30)  # claims a 1 GB record
    (tmp_path / "big.box").write_bytes(bytes(big))
    with pytest.raises(Error, match=r"big\.box: record 'model/data/0' claims 1,073,741,824 bytes"):
        original.check_box(tmp_path / "big.box")


def test_a_truncated_box_through_torch_names_the_file(torch, tmp_path, capsys):
    torch.save(dict(model={"w": torch.zeros(1000)}), tmp_path / "m.box")
    (tmp_path / "cut.box").write_bytes((tmp_path / "m.box").read_bytes()[:2000])
    assert cli.main(["import-original", str(tmp_path / "cut.box"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "cut.box" in err and err.count("\n") == 1


def test_a_torch_file_that_is_not_neuraldx7_names_the_file(torch, tmp_path, capsys):
    torch.save(dict(model={"fc.weight": torch.zeros(3, 4)}), tmp_path / "other.box")
    assert cli.main(["import-original", str(tmp_path / "other.box"), "--out", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err == (f"neuraldx7 import-original: error: {tmp_path / 'other.box'}: not an original NeuralDX7 "
                   "state dict: 'embedder.weight' is missing\n")
