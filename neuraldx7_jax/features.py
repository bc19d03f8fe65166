"""What a model needs of its data, fitted after training: the latent summary (each dimension's
mean and std over the dataset, live control's ranges), the training latents themselves (the
posterior prior, generation's default, `priors.posterior_prior`), the priors fitted to them
(`priors.fit_mixture`, `priors.fit_prior`) and the training facts (`data.training_facts`), stored
beside its checkpoints.
"""
import io
from pathlib import Path

import numpy as np

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import files, priors, sample
from neuraldx7_jax import data as data_lib
from neuraldx7_jax.errors import Error


def compute(model, voices, *, batch=None):
    """Posterior of every voice, dict(mu, sigma, zk) (n, Z), and the per-dimension mean and std
    of zk, the flowed posterior mean: the decoder's input space, which live control spans."""
    post = sample.encode(model, voices, batch=batch)
    return dict(mu=post["mu"], sigma=post["sigma"], zk=post["zk"],
                mean=post["zk"].mean(0), std=post["zk"].std(0))


def write(checkpoint, data=None, *, out=None, batch=None):
    """What a model needs of its data, stored beside its checkpoints: features.json (the
    per-dimension mean and std of every voice's zk, for live control's ranges; the fitted
    Gaussian) and training.npz (`training_facts`, the training latents of the posterior prior,
    `checkpoint.posterior_latents`, and the mixture prior, `checkpoint.mixture_prior`). The
    training voices are the `train` split of a dataset .npz (`data`, default: the checkpoint's
    dataset) or all voices of a DX7 file; the summary covers both splits. `out` (optional) gets
    the per-voice arrays. Returns the summary.
    The model is `checkpoint_lib.load(checkpoint)`; `checkpoint` must name a work directory (the
    bundled model is read-only)."""
    checkpoint_lib.check_writable(checkpoint)
    if out is not None:
        files.check_writable(out)
    model = checkpoint_lib.load(checkpoint)
    data = data or checkpoint_lib.dataset_path(model)
    if data is None:
        raise Error("the checkpoint names no dataset; pass --data")
    voices = data_lib.load_voices(str(data))
    training = data_lib.load_voices(f"{data}:train") if str(data).lower().endswith(".npz") else voices
    if not len(voices) or not len(training):
        raise Error(f"{data}: no voices")
    feats = compute(model, voices, batch=batch)
    if out is not None:
        buffer = io.BytesIO()
        np.savez(buffer, voices=voices, **feats)
        files.write_atomic(out, buffer.getvalue())
    z = sample.training_latents(model, training)
    prior, (mixture, _) = priors.fit_prior(z), priors.fit_mixture(z)
    chol = prior.chols[0].astype(np.float64)
    summary = dict(mean=feats["mean"].tolist(), std=feats["std"].tolist(), dataset=Path(data).name,
                   count=len(voices), prior=dict(mean=prior.means[0].tolist(), cov=(chol @ chol.T).tolist(),
                                                 voices=len(training), draws=priors.PRIOR_DRAWS))
    facts = dict(data_lib.training_facts(training), prior_latents=z.astype(np.float32),
                 prior_weights=mixture.weights, prior_means=mixture.means, prior_chols=mixture.chols)
    checkpoint_lib.write_features(model, summary, facts)
    return summary
