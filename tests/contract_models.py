"""Conjugate models of the conformance matrix (tests/test_contract.py) and their closed-form posteriors.

One model per support type of a latent site: real, positive, unit interval,
simplex.  Each model takes its data ``y`` (rows first, so that Fusion can
split them and FSGLD/DSGLD can be handed row shards) and an optional
``batch_size``: ``pyro.plate("data", N, subsample_size=batch_size)`` gives
the SG-MCMC engines minibatches scaled by ``N / B``; ``None`` is full data.
Hyperparameters are module constants, so no model argument but ``y`` is a
tensor with a row per observation.

Ground truth comes from conjugate algebra evaluated with scipy.stats, never
from bayeskit.  Data sizes are chosen so that every posterior has a standard
deviation of about 0.1 in the engines' unconstrained coordinates (log, logit,
stick-breaking): one step size per engine then suits every model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import stats

__all__ = ["ConjugateModel", "MODELS", "lgssm_smoothing_marginals"]


@dataclass(frozen=True)
class ConjugateModel:
    """A model, its site, data and exact posterior moments per coordinate of the site (constrained space)."""

    name: str
    support: str
    model: Callable
    site: str
    data: Callable[[], torch.Tensor]
    exact: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray]]  # y -> (mean, sd), each flat


def _rows(batch_size, y):
    return pyro.plate("data", y.shape[0], subsample_size=batch_size)


def _generator(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------- real: mean of a 3-d Normal, known noise
NORMAL_PRIOR_LOC, NORMAL_PRIOR_SD, NORMAL_NOISE_SD = torch.tensor([0.5, -1.0, 0.0]), 2.0, 1.0


def normal_mean(y, batch_size=None):
    mu = pyro.sample("mu", dist.Normal(NORMAL_PRIOR_LOC.to(y.dtype), NORMAL_PRIOR_SD).to_event(1))
    with _rows(batch_size, y) as rows:
        pyro.sample("y", dist.Normal(mu, NORMAL_NOISE_SD).to_event(1), obs=y[rows])


def normal_mean_data():
    g = _generator(1)
    truth = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)
    return truth + NORMAL_NOISE_SD * torch.randn(100, 3, generator=g, dtype=torch.float64)


def normal_mean_exact(y):
    y = y.numpy()
    precision = 1 / NORMAL_PRIOR_SD**2 + len(y) / NORMAL_NOISE_SD**2
    mean = (NORMAL_PRIOR_LOC.numpy() / NORMAL_PRIOR_SD**2 + y.sum(0) / NORMAL_NOISE_SD**2) / precision
    return mean, np.full(3, precision**-0.5)


# ------------------------------------------------------------------ positive: Poisson rate, Gamma prior
GAMMA_A, GAMMA_B = 2.0, 0.5


def gamma_poisson(y, batch_size=None):
    rate = pyro.sample("rate", dist.Gamma(torch.tensor(GAMMA_A, dtype=y.dtype), GAMMA_B))
    with _rows(batch_size, y) as rows:
        pyro.sample("y", dist.Poisson(rate), obs=y[rows])


def gamma_poisson_data():
    return torch.poisson(torch.full((40,), 3.0, dtype=torch.float64), generator=_generator(2))


def gamma_poisson_exact(y):
    posterior = stats.gamma(GAMMA_A + float(y.sum()), scale=1 / (GAMMA_B + len(y)))
    return np.array([posterior.mean()]), np.array([posterior.std()])


# --------------------------------------------- positive: Normal precision with known mean, Gamma prior
PRECISION_A, PRECISION_B, PRECISION_LOC = 3.0, 2.0, 1.0


def normal_precision(y, batch_size=None):
    tau = pyro.sample("tau", dist.Gamma(torch.tensor(PRECISION_A, dtype=y.dtype), PRECISION_B))
    with _rows(batch_size, y) as rows:
        pyro.sample("y", dist.Normal(PRECISION_LOC, tau.rsqrt()), obs=y[rows])


def normal_precision_data():
    return PRECISION_LOC + 0.7 * torch.randn(200, generator=_generator(3), dtype=torch.float64)


def normal_precision_exact(y):
    shape = PRECISION_A + len(y) / 2
    rate = PRECISION_B + float(((y - PRECISION_LOC) ** 2).sum()) / 2
    posterior = stats.gamma(shape, scale=1 / rate)
    return np.array([posterior.mean()]), np.array([posterior.std()])


# --------------------------------------------------------- unit interval: Binomial probability, Beta prior
BETA_A, BETA_B, TRIALS = 2.0, 3.0, 4


def beta_binomial(y, batch_size=None):
    p = pyro.sample("p", dist.Beta(torch.tensor(BETA_A, dtype=y.dtype), BETA_B))
    with _rows(batch_size, y) as rows:
        pyro.sample("y", dist.Binomial(TRIALS, p), obs=y[rows])


def beta_binomial_data():
    probs = torch.full((100,), 0.35, dtype=torch.float64)
    return torch.binomial(torch.full_like(probs, TRIALS), probs, generator=_generator(4))


def beta_binomial_exact(y):
    successes = float(y.sum())
    posterior = stats.beta(BETA_A + successes, BETA_B + TRIALS * len(y) - successes)
    return np.array([posterior.mean()]), np.array([posterior.std()])


# ------------------------------------------------------ simplex: Categorical probabilities, Dirichlet prior
DIRICHLET_ALPHA = torch.tensor([1.0, 2.0, 1.5])


def dirichlet_categorical(y, batch_size=None):
    p = pyro.sample("p", dist.Dirichlet(DIRICHLET_ALPHA.to(y.dtype)))
    with _rows(batch_size, y) as rows:
        pyro.sample("y", dist.Categorical(p), obs=y[rows])


def dirichlet_categorical_data():
    probs = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    return torch.multinomial(probs, 300, replacement=True, generator=_generator(5)).to(torch.float64)


def dirichlet_categorical_exact(y):
    counts = np.bincount(y.long().numpy(), minlength=3)
    alpha = DIRICHLET_ALPHA.numpy().astype(float) + counts
    return stats.dirichlet.mean(alpha), np.sqrt(stats.dirichlet.var(alpha))


MODELS = {m.name: m for m in (
    ConjugateModel("normal_mean", "real", normal_mean, "mu", normal_mean_data, normal_mean_exact),
    ConjugateModel("gamma_poisson", "positive", gamma_poisson, "rate", gamma_poisson_data, gamma_poisson_exact),
    ConjugateModel("normal_precision", "positive", normal_precision, "tau", normal_precision_data,
                   normal_precision_exact),
    ConjugateModel("beta_binomial", "unit", beta_binomial, "p", beta_binomial_data, beta_binomial_exact),
    ConjugateModel("dirichlet_categorical", "simplex", dirichlet_categorical, "p", dirichlet_categorical_data,
                   dirichlet_categorical_exact),
)}


# ------------------------------------------------- a linear-Gaussian state-space model, for ParticleGibbs
def lgssm_smoothing_marginals(a, q, r, p0, y):
    """Smoothing means and sds of ``x_t = a x_{t-1} + N(0, q)``, ``y_t = x_t + N(0, r)``, ``x_0 ~ N(0, p0)``.

    By conditioning the joint Gaussian of ``(x_0..x_{T-1}, y)`` directly (numpy), independent of bayeskit's
    Kalman smoother: ``Cov(x_s, x_t) = a^|t-s| Var(x_min(s,t))`` with ``Var(x_t) = a^2 Var(x_{t-1}) + q``.
    """
    y = np.asarray(y, dtype=float).reshape(-1)
    steps = len(y)
    variance = np.empty(steps)
    variance[0] = p0
    for t in range(1, steps):
        variance[t] = a * a * variance[t - 1] + q
    index = np.arange(steps)
    lag = np.abs(index[:, None] - index[None, :])
    cov_x = a**lag * variance[np.minimum(index[:, None], index[None, :])]
    gain = np.linalg.solve(cov_x + r * np.eye(steps), cov_x).T  # Cov(x, y) Cov(y)^{-1}
    mean = gain @ y
    cov = cov_x - gain @ cov_x
    return mean, np.sqrt(np.diag(cov))
