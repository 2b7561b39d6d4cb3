"""Generalised linear models written as ordinary Pyro models."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

__all__ = ["logistic_regression"]


def logistic_regression(x: torch.Tensor, y: torch.Tensor | None = None, *, prior_scale: float = 1.0,
                        subsample_size: int | None = None):
    """Bayesian logistic regression with Gaussian priors.

    .. math::

        \\alpha \\sim N(0, s^2),\\quad \\beta_j \\sim N(0, s^2),\\quad
        y_i \\mid x_i \\sim \\mathrm{Bernoulli}\\big(\\sigma(\\alpha + x_i^\\top \\beta)\\big).

    Written to broadcast over leading dimensions of the latent values, so
    :meth:`bayeskit.Target.from_pyro` evaluates all particles in one call.
    ``subsample_size`` turns on minibatching (an unbiased density estimate).
    """
    num_data, num_features = x.shape
    scale = torch.as_tensor(prior_scale, dtype=x.dtype, device=x.device)
    alpha = pyro.sample("alpha", dist.Normal(torch.zeros((), dtype=x.dtype, device=x.device), scale))
    beta = pyro.sample("beta", dist.Normal(torch.zeros(num_features, dtype=x.dtype, device=x.device),
                                           scale).to_event(1))
    with pyro.plate("data", num_data, subsample_size=subsample_size, device=x.device) as index:
        # Latent values broadcast over leading dims: with particles, beta is
        # (n, 1, p) and alpha (n, 1) against x[index] (B, p).
        logits = alpha + (x[index] * beta).sum(-1)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=None if y is None else y[index])
    return logits
