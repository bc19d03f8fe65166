"""Where latents are drawn: N(0, I) (`standard`, the original's prior), the fitted prior stored
with a model (`fitted`: the density of its training voices' latents) and the density of given
voices (`like`). Samplers (`sample`) draw from a `Prior`; fitting one to voices encodes them with
`sample.encode`, imported where it is used (`sample` imports this module).
"""
from typing import NamedTuple

import numpy as np

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import dx7
from neuraldx7_jax.errors import Error


class Prior(NamedTuple):
    """A Gaussian over the decoder's latent z_K: z = mean + chol @ eps with eps ~ N(0, I)."""
    mean: np.ndarray  # (Z,)
    chol: np.ndarray  # (Z, Z) lower-triangular: the covariance is chol @ chol.T
    name: str  # "fitted" (the training set's latents), "standard" (N(0, I)) or "like"


PRIORS = ("fitted", "standard")


PRIOR_DRAWS = 1  # posterior draws per training voice that the fitted prior is fitted to
LIKE_FLOOR = 0.2  # smallest std of a --like density along any direction (latent units)


def standard_prior(latent):
    """N(0, I), the original's prior."""
    return Prior(np.zeros(latent, np.float32), np.eye(latent, dtype=np.float32), "standard")


def fit_prior(z, *, floor=0.0, name="fitted"):
    """The Gaussian with the mean and covariance of latents `z` (n, Z), its covariance raised by
    floor**2 * I (so that a handful of points, even one, gives a usable density)."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or not len(z) or not np.all(np.isfinite(z)):
        raise Error(f"cannot fit a prior to latents of shape {z.shape}")
    cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
    chol = np.linalg.cholesky(cov + (floor ** 2 + 1e-9) * np.eye(z.shape[1]))
    return Prior(z.mean(0).astype(np.float32), chol.astype(np.float32), name)


def prior_of(model, prior=None):
    """The Prior to sample `model` from: a Prior itself, "standard", "fitted" (the density of the
    training set's latents stored with the model), or None: fitted when the model has one."""
    if isinstance(prior, Prior):
        return prior
    if prior not in (None, *PRIORS):
        raise Error(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    stored = checkpoint_lib.fitted_prior(model)
    if prior == "standard" or (prior is None and stored is None):
        return standard_prior(model.config.model.latent)
    if stored is None:
        raise Error(f"the model in {model.path} has no fitted prior; run `neuraldx7 features "
                    f"--checkpoint {model.path}` (or use --prior standard)")
    mean, cov = stored
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise Error(f"{checkpoint_lib.features_path(model.path)}: the fitted prior's covariance is not positive definite; "
                    "run `neuraldx7 features` again") from None
    return Prior(mean.astype(np.float32), chol.astype(np.float32), "fitted")


def fit_training_prior(model, voices, *, draws=PRIOR_DRAWS, floor=0.0, name="fitted", seed=0):
    """`fit_prior` to `draws` posterior draws of each of `voices`, flowed: z_K = flow(mu + sigma
    eps), the latents the decoder saw in training (the aggregate posterior)."""
    from neuraldx7_jax.sample import encode

    voices = dx7.check_voices(voices).astype(np.int32)
    if not len(voices):
        raise Error("no voices to fit a prior to")
    z = encode(model, np.repeat(voices, draws, axis=0), spread=1.0, seed=seed)["zk"]
    return fit_prior(z, floor=floor, name=name)


LIKE_DRAWS = 16  # posterior draws per voice for a --like density


def like_prior(model, voices, *, seed=0):
    """The density of `voices`' latents (`fit_training_prior` with LIKE_DRAWS draws each and a
    LIKE_FLOOR std floor): new voices in their neighbourhood."""
    return fit_training_prior(model, voices, draws=LIKE_DRAWS, floor=LIKE_FLOOR, name="like", seed=seed)
