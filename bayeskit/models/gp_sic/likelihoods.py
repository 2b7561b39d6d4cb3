"""Observation models of the latent GP: ``y_i | f_i`` independent, with ``q(f_i) = N(m_i, v_i)``.

Each likelihood gives the expected log-likelihood ``E_q log p(y_i | f_i)`` of the ELBO (closed form for the Gaussian
and Poisson ones, Gauss-Hermite quadrature otherwise: deterministic, unlike Monte Carlo), the gradient and a
positive curvature of ``log p(y | f)`` for the Newton (Laplace) initialisation, and the predictive distribution of
a new ``y`` given ``q(f)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import distributions as dist

from bayeskit._checks import check_finite, check_support, positive

_QUADRATURE_POINTS = 32


def _hermite(mean, var):
    """Gauss-Hermite nodes ``f`` (..., Q) of ``N(mean, var)`` and their weights (Q,), which sum to one."""
    nodes, weights = np.polynomial.hermite.hermgauss(_QUADRATURE_POINTS)
    nodes = torch.as_tensor(nodes, dtype=mean.dtype, device=mean.device)
    weights = torch.as_tensor(weights / math.sqrt(math.pi), dtype=mean.dtype, device=mean.device)
    return mean.unsqueeze(-1) + math.sqrt(2.0) * var.clamp_min(0).sqrt().unsqueeze(-1) * nodes, weights


class Likelihood(torch.nn.Module):
    """Base class: subclasses define ``log_prob(y, f)``; the rest has quadrature defaults."""

    name = "likelihood"

    def log_prob(self, y, f):
        raise NotImplementedError

    def expected_log_prob(self, y, mean, var):
        nodes, weights = _hermite(mean, var)
        return (self.log_prob(y.unsqueeze(-1), nodes) * weights).sum(-1)

    def newton_terms(self, y, f):
        """``(d/df log p(y | f), w)`` with ``w > 0`` the (expected) negative curvature, for Newton steps."""
        raise NotImplementedError

    def check(self, y):
        check_finite("y", y)
        return y

    def predictive(self, mean, var) -> dist.Distribution:
        raise NotImplementedError

    def initial_mean(self, y) -> float:
        return 0.0


class GaussianLikelihood(Likelihood):
    """``y = f + N(0, noise)``; ``noise`` (a variance) is learnt on a log scale."""

    name = "gaussian"

    def __init__(self, noise: float = 0.1):
        super().__init__()
        self.log_noise = torch.nn.Parameter(torch.tensor(math.log(positive("noise", noise))))

    @property
    def noise(self):
        return self.log_noise.exp()

    def log_prob(self, y, f):
        return dist.Normal(f, self.noise.sqrt()).log_prob(y)

    def expected_log_prob(self, y, mean, var):
        noise = self.noise
        return -0.5 * (math.log(2 * math.pi) + noise.log() + ((y - mean).square() + var) / noise)

    def newton_terms(self, y, f):
        noise = self.noise.detach()
        return (y - f) / noise, torch.full_like(f, 1.0) / noise

    def predictive(self, mean, var):
        return dist.Normal(mean, (var + self.noise).sqrt())

    def initial_mean(self, y):
        return float(y.mean())


class StudentTLikelihood(Likelihood):
    """``y = f + scale * t_df``; ``df`` and ``scale`` are learnt on a log scale."""

    name = "student_t"

    def __init__(self, df: float = 4.0, scale: float = 0.1):
        super().__init__()
        self.log_df = torch.nn.Parameter(torch.tensor(math.log(positive("df", df))))
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(positive("scale", scale))))

    @property
    def df(self):
        return self.log_df.exp()

    @property
    def scale(self):
        return self.log_scale.exp()

    def log_prob(self, y, f):
        return dist.StudentT(self.df, f, self.scale).log_prob(y)

    def newton_terms(self, y, f):
        # Fisher information instead of the curvature, which turns negative in the tails
        df, scale = self.df.detach(), self.scale.detach()
        residual = y - f
        grad = (df + 1) * residual / (df * scale.square() + residual.square())
        return grad, torch.full_like(f, 1.0) * (df + 1) / ((df + 3) * scale.square())

    def predictive(self, mean, var):
        nodes, weights = _hermite(mean, var)
        return dist.MixtureSameFamily(dist.Categorical(probs=weights.expand(nodes.shape)),
                                      dist.StudentT(self.df, nodes, self.scale))

    def initial_mean(self, y):
        return float(y.median())


class BernoulliLikelihood(Likelihood):
    """``y ~ Bernoulli(sigmoid(f))``, ``y`` in {0, 1}."""

    name = "bernoulli"

    def log_prob(self, y, f):
        return y * f - F.softplus(f)

    def newton_terms(self, y, f):
        p = torch.sigmoid(f)
        return y - p, (p * (1 - p)).clamp_min(1e-6)

    def check(self, y):
        check_support("y", y, dist.constraints.boolean, what="argument", distribution="a Bernoulli likelihood")
        return y

    def predictive(self, mean, var):
        nodes, weights = _hermite(mean, var)
        return dist.Bernoulli(probs=(torch.sigmoid(nodes) * weights).sum(-1))


class PoissonLikelihood(Likelihood):
    """``y ~ Poisson(exp(f))``: ``E_q log p = y m - exp(m + v / 2) - log y!``."""

    name = "poisson"

    def log_prob(self, y, f):
        return y * f - f.exp() - torch.lgamma(y + 1)

    def expected_log_prob(self, y, mean, var):
        return y * mean - (mean + 0.5 * var).exp() - torch.lgamma(y + 1)

    def newton_terms(self, y, f):
        rate = f.exp()
        return y - rate, rate.clamp_min(1e-6)

    def check(self, y):
        check_support("y", y, dist.constraints.nonnegative_integer, what="argument",
                      distribution="a Poisson likelihood")
        return y

    def predictive(self, mean, var):
        nodes, weights = _hermite(mean, var)
        return dist.MixtureSameFamily(dist.Categorical(probs=weights.expand(nodes.shape)), dist.Poisson(nodes.exp()))

    def initial_mean(self, y):
        return math.log(max(float(y.mean()), 1e-3))


LIKELIHOODS = {cls.name: cls for cls in (GaussianLikelihood, StudentTLikelihood, BernoulliLikelihood,
                                         PoissonLikelihood)}


def make_likelihood(likelihood) -> Likelihood:
    if isinstance(likelihood, Likelihood):
        return likelihood
    if isinstance(likelihood, str) and likelihood in LIKELIHOODS:
        return LIKELIHOODS[likelihood]()
    raise ValueError(f"likelihood must be one of {sorted(LIKELIHOODS)} or a Likelihood, got {likelihood!r}")
