"""Where latents are drawn: N(0, I) (`standard`, the original's prior), the priors made from a
model's training latents and stored with it (`posterior`, the default: the aggregate posterior
itself, a narrow Gaussian around each training voice's latent; `mixture`: a Gaussian mixture
fitted to them; `gaussian`: one Gaussian over them) and the density of given voices (`like`).
Samplers (`sample`) draw from a `Prior`; the latents to fit one to come from
`sample.training_latents` (`sample` imports this module, not the reverse).
"""
from typing import NamedTuple

import numpy as np

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax.config import PRIORS
from neuraldx7_jax.errors import Error


class Prior(NamedTuple):
    """A Gaussian mixture over the decoder's latent z_K: component c with probability weights[c],
    z = means[c] + chols[c] @ eps with eps ~ N(0, I) (chols[0] for every c when one factor is
    shared). One component: a Gaussian (`gaussian`)."""
    weights: np.ndarray  # (K,), summing to 1
    means: np.ndarray  # (K, Z)
    chols: np.ndarray  # (K, Z, Z), or (1, Z, Z) shared; lower-triangular: covariance chols[c] @ chols[c].T
    name: str  # "posterior", "mixture", "gaussian" (from the training set's latents), "standard" (N(0, I)) or "like"


PRIOR_DRAWS = 1  # posterior draws per training voice that the stored priors are fitted to
MIXTURE_COMPONENTS = 128  # components of the stored mixture prior
# The posterior prior's std around each training latent, as a share of each dimension's std over
# them: 0.1 and 0 drew equally real voices (MODEL_CARD.md); 0.1 keeps it a density with no gaps.
POSTERIOR_BANDWIDTH = 0.1
LIKE_FLOOR = 0.2  # smallest std of a --like density along any direction (latent units)
LIKE_DRAWS = 16  # posterior draws per voice for a --like density


def gaussian(mean, chol, name):
    """The one-component Prior N(mean, chol @ chol.T)."""
    return Prior(np.ones(1, np.float32), np.asarray(mean, np.float32)[None], np.asarray(chol, np.float32)[None], name)


def standard_prior(latent):
    """N(0, I), the original's prior."""
    return gaussian(np.zeros(latent), np.eye(latent), "standard")


def fit_prior(z, *, floor=0.0, name="gaussian"):
    """The Gaussian with the mean and covariance of latents `z` (n, Z), its covariance raised by
    floor**2 * I (so that a handful of points, even one, gives a usable density)."""
    z = _latents(z)
    cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
    return gaussian(z.mean(0), np.linalg.cholesky(cov + (floor ** 2 + 1e-9) * np.eye(z.shape[1])), name)


def posterior_prior(z, bandwidth=POSTERIOR_BANDWIDTH):
    """The aggregate posterior: latents `z` (n, Z) (one flowed posterior draw of each training
    voice) with equal weights, each blurred by a Gaussian of `bandwidth` times each dimension's std
    over them (a kernel density; one factor shared by all n components)."""
    z = _latents(z)
    chol = np.diag(np.maximum(bandwidth * z.std(0), 1e-6))[None]
    return Prior(np.full(len(z), 1.0 / len(z), np.float32), z.astype(np.float32), chol.astype(np.float32),
                 "posterior")


def _latents(z):
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or not len(z) or not np.all(np.isfinite(z)):
        raise Error(f"cannot fit a prior to latents of shape {z.shape}")
    return z


def _component_log_p(z, means, chols):
    """(n, K) log N(z | means[c], chols[c] @ chols[c].T)."""
    out = np.empty((len(z), len(means)))
    for c, (mean, chol) in enumerate(zip(means, chols)):
        y = np.linalg.solve(chol, (z - mean).T)  # (Z, n)
        out[:, c] = -0.5 * (y ** 2).sum(0) - np.log(np.diag(chol)).sum() - 0.5 * z.shape[1] * np.log(2 * np.pi)
    return out


def fit_mixture(z, components=MIXTURE_COMPONENTS, *, seed=0, iterations=200, tolerance=1e-4, floor=1e-3,
                name="mixture"):
    """A full-covariance Gaussian mixture of `components` fitted to latents `z` (n, Z) by EM:
    started from distinct random points with the covariance of all, stopped when the mean
    log-likelihood gains less than `tolerance` (nats per point) or after `iterations`; each
    covariance raised by floor**2 * I. Returns (Prior, mean log-likelihood per point)."""
    z = _latents(z)
    n, width = z.shape
    k = min(components, n)
    rng = np.random.default_rng(seed)
    means = z[rng.choice(n, k, replace=False)]
    chols = np.repeat(np.linalg.cholesky(np.cov(z, rowvar=False) + floor ** 2 * np.eye(width))[None], k, 0)
    weights, last = np.full(k, 1.0 / k), -np.inf
    for _ in range(iterations):
        log_p = _component_log_p(z, means, chols) + np.log(weights)
        top = log_p.max(1, keepdims=True)
        log_z = top[:, 0] + np.log(np.exp(log_p - top).sum(1))
        r = np.exp(log_p - log_z[:, None])  # responsibilities (n, K)
        mass = r.sum(0) + 1e-12
        weights, means = mass / n, (r.T @ z) / mass[:, None]
        for c in range(k):
            d = z - means[c]
            chols[c] = np.linalg.cholesky((r[:, c, None] * d).T @ d / mass[c] + floor ** 2 * np.eye(width))
        if log_z.mean() - last < tolerance:
            break
        last = log_z.mean()
    return Prior(weights.astype(np.float32), means.astype(np.float32), chols.astype(np.float32), name), float(last)


def prior_of(model, prior=None):
    """The Prior to sample `model` from: a Prior itself, "standard" (N(0, I)), or one stored with
    the model ("posterior", "mixture", "gaussian"; `neuraldx7 features` stores them), or None: the
    first of those the model has, else N(0, I)."""
    if isinstance(prior, Prior):
        return prior
    if prior not in (None, *PRIORS):
        raise Error(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    stored = dict(posterior=checkpoint_lib.posterior_latents(model), mixture=checkpoint_lib.mixture_prior(model),
                  gaussian=checkpoint_lib.fitted_prior(model))
    if prior is None:
        prior = next((name for name, found in stored.items() if found is not None), "standard")
    if prior == "standard":
        return standard_prior(model.config.model.latent)
    if stored[prior] is None:
        raise Error(f"the model in {model.path} has no {prior} prior; run `neuraldx7 features "
                    f"--checkpoint {model.path}` (or use --prior standard)")
    if prior == "posterior":
        return posterior_prior(stored[prior])
    if prior == "mixture":
        return Prior(*(a.astype(np.float32) for a in stored[prior]), "mixture")
    mean, cov = stored[prior]
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise Error(f"{checkpoint_lib.features_path(model.path)}: the fitted prior's covariance is not positive definite; "
                    "run `neuraldx7 features` again") from None
    return gaussian(mean, chol, "gaussian")
