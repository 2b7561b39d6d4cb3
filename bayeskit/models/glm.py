"""Generalised linear models written as ordinary Pyro models."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from bayeskit.posterior import predictive_mixture

__all__ = ["logistic_regression", "logistic_regression_fisher", "linear_predictor", "predictive"]


def linear_predictor(x: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """``x @ beta`` for coefficients that may carry particle dimensions, as one matmul.

    ``beta`` is ``(p,)`` in a plain model run; under bayeskit's (or Pyro's)
    particle plate it is ``(n, 1, p)``, the 1 being the data plate's slot.
    Either way the particles stack into an ``(n, p)`` matrix and one GEMM gives
    ``(B,)`` or ``(n, B)``, without the ``(n, B, p)`` intermediate that
    ``(x * beta).sum(-1)`` would build.
    """
    lead = beta.shape[:-2]
    rows = beta.reshape(-1, beta.shape[-1])  # one row per particle: a single GEMM
    return (rows @ x.T).reshape(*lead, x.shape[0])


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
        rows = x if subsample_size is None else x[index]  # no copy of x without minibatching
        logits = alpha + linear_predictor(rows, beta)
        pyro.sample("y", dist.Bernoulli(logits=logits), obs=None if y is None else y[index])
    return logits


def logistic_regression_fisher(x: torch.Tensor):
    r"""The Fisher information of :func:`logistic_regression`'s likelihood: a metric for
    :class:`~bayeskit.inference.SVNG`.

    For the unconstrained vector ``z = (alpha, beta)`` and rows :math:`\tilde x_n = (1, x_n)`:
    :math:`F(z) = \sum_n p_n (1 - p_n)\, \tilde x_n \tilde x_n^\top` with
    :math:`p_n = \sigma(\tilde x_n^\top z)`.  Adding ``damping = 1 / prior_scale**2``
    in SVNG makes the metric the expected Hessian of the negative log posterior.

    Returns ``metric(z) -> (..., 1 + p, 1 + p)``.
    """
    design = torch.cat([torch.ones(len(x), 1, dtype=x.dtype, device=x.device), x], dim=-1)

    def metric(z):
        p = torch.sigmoid(z @ design.T)
        return torch.einsum("...n,nd,ne->...de", p * (1 - p), design, design)
    return metric


def predictive(posterior, x: torch.Tensor) -> torch.distributions.Distribution:
    r"""The posterior predictive of :func:`logistic_regression` at ``x`` ``(B, p)``: batch ``(B,)``.

    :math:`p(y_i \mid x_i, D) \approx \sum_s w_s\, \mathrm{Bernoulli}(y_i \mid \sigma(\alpha_s + x_i^\top\beta_s))`
    over the posterior's draws and their weights (SMC and Fusion posteriors are
    weighted), as a :class:`~torch.distributions.MixtureSameFamily`: ``mean``
    is the predictive probability, ``log_prob(y)`` the log predictive density.
    """
    draws, log_weights = posterior.flat_draws()
    missing = [name for name in ("alpha", "beta") if name not in draws]
    if missing:
        raise ValueError(f"the posterior lacks the sites {missing} of logistic_regression")
    alpha, beta = draws["alpha"].to(x), draws["beta"].to(x)
    if beta.shape[-1] != x.shape[-1]:
        raise ValueError(f"x has {x.shape[-1]} covariates but the posterior's beta has {beta.shape[-1]}")
    logits = alpha[:, None] + beta @ x.T  # (S, B)
    return predictive_mixture(log_weights.to(x), dist.Bernoulli(logits=logits.T))
