"""Fusion on constrained sites: fused posteriors of conjugate models against their closed forms.

Each shard takes 1/C of the prior *and* of its log-Jacobian (bayeskit.sharding); taking the
whole log-Jacobian in every shard put it C times into the product and biased every fused
posterior of a positive, unit-interval or simplex site (before the fix, Gamma-Poisson at
C = 8: D&C-GBF +0.6 posterior sd, Consensus MC +0.6 sd; Beta-Binomial +0.4; Dirichlet up to 0.4 per coordinate).

The shards are sampled exactly (inverse CDF on a grid of the shard's own unconstrained
density, ``shard.target()``), so that the only errors left are the fusion's and Monte Carlo's;
NUTS on a shard is checked against its closed form in test_sharding.py. This file uses only
Fusion's public API, so it runs unchanged against the code before the fix.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL

from bayeskit.inference.fusion import Fusion, ShardDensity, SubPosterior
from bayeskit.inference.fusion.shards import shard_density
from bayeskit.models import logistic_regression
from bayeskit.sharding import split_data

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

NUM_SAMPLES = 8000 if FULL else 2000
# The Monte Carlo tolerance: |fused mean - exact mean| < K sd / sqrt(ESS) on every coordinate, and
# |fused sd / exact sd - 1| < K / sqrt(2 ESS) (the sd's relative standard error), with ESS the fused weights'
# ESS capped at N / 2: fused particles descend from N draws per shard through resampling, so are not
# independent, and the cap keeps the bound from claiming more precision than the shards' draws hold.
# At CI size the mean tolerance is 0.126 posterior sd; before the fix the errors were 0.17 to 1.0 sd.
K = 4.0
ESS_CAP = NUM_SAMPLES / 2
# And floored: a run whose weights degenerate fails rather than earning a looser bound. GBF's and D&C-MCF's
# ESS/N measured 0.42 to 0.67 in every cell at CI size (C = 4 and 8, splits 0 and 1); CMC and MCF draw
# unweighted (ESS/N = 1). With the floor the mean tolerance is at most K / sqrt(0.3 N) = 0.16 sd at CI size.
ESS_FRACTION_FLOOR = 0.3
# D&C-MCF here uses the discretised (trapezoid, one step) path integral: it narrows the fused sd, a bias of
# the estimator, not of the sharding: by 5-8 % on splits 0-1 at N = 2000, and at full size (N = 8000, splits
# 0-2) by up to 11 % (fused sd / exact 0.896 and 0.902 on Gamma-Poisson split 2, C = 4 and 8; 0.905 and 0.889
# on Beta-Binomial split 0), which the earlier allowance of 0.05 (from the 5-8 %) did not cover. Consensus
# MC's Gaussian combination widened it by up to 15% on the Dirichlet at C = 8 (splits 0-2).
SD_ALLOWANCE = {"dc_mcf": 0.07, "consensus": 0.1}
# Every cell runs on three random splits of the rows into shards (the split decides how skewed each
# sub-posterior is). The approximate methods' own error depends on the split: over splits 0-2 (fusion seed
# 1; measured) D&C-MCF's fused mean was up to 0.20 sd off (discretisation) and Consensus MC's up to 0.50 sd
# (a Gaussian combination of skewed sub-posteriors: Dirichlet, C = 8), while D&C-GBF, exact, stayed
# within 0.105 sd everywhere. They get those allowances on the mean, so the tempering check that can fail
# rests on D&C-GBF in every cell (before the fix: +0.18 to +0.6 sd), on D&C-MCF at C = 8 (+0.34 to +0.59)
# and on Consensus MC at C = 8 on Gamma-Poisson (+0.59). Seed-tuned passes of the approximate methods on one
# split were what this file had before (found when the task seeds changed).
MEAN_ALLOWANCE = {"dc_mcf": 0.1, "consensus": 0.4}
SPLITS = (0, 1, 2) if FULL else (0, 1)  # CI: two splits (suite time); the allowances above come from three


# ------------------------------------------------------------------ models and closed forms
def gamma_poisson(y):
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0), torch.tensor(1.0)))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(lam), obs=y)


TRIALS = 4  # few trials per row: the log-Jacobian's weight against the likelihood is what the test must see


def beta_binomial(k):
    p = pyro.sample("p", dist.Beta(torch.tensor(2.0), torch.tensor(3.0)))
    with pyro.plate("data", len(k)):
        pyro.sample("k", dist.Binomial(TRIALS, p), obs=k)


def dirichlet_categorical(y):
    pi = pyro.sample("pi", dist.Dirichlet(torch.tensor([1.5, 2.0, 2.5])))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Categorical(pi), obs=y)


def problem(name):
    """(model, data, site, exact posterior): Gamma, Beta and Dirichlet by conjugacy."""
    generator = torch.Generator().manual_seed(0)
    if name == "gamma_poisson":
        y = torch.poisson(torch.full((40,), 3.0), generator=generator)
        return gamma_poisson, y, "lam", dist.Gamma(2.0 + y.sum(), 1.0 + len(y))
    if name == "beta_binomial":
        k = torch.binomial(torch.full((40,), float(TRIALS)), torch.full((40,), 0.3), generator=generator)
        return beta_binomial, k, "p", dist.Beta(2.0 + k.sum(), 3.0 + (TRIALS - k).sum())
    y = torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 150, replacement=True, generator=generator)
    posterior = dist.Dirichlet(torch.tensor([1.5, 2.0, 2.5]) + torch.bincount(y, minlength=3))
    return dirichlet_categorical, y, "pi", posterior


# ------------------------------------------------------------------ an exact sampler of a shard's own density
def _grid(lower, upper, points):
    axes = [torch.linspace(lo, hi, points) for lo, hi in zip(lower.tolist(), upper.tolist())]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, len(axes)), (upper - lower) / (points - 1)


def grid_sampler(shard, num_samples, seed):
    """Exact draws of ``shard.target()`` in 1 or 2 dimensions: a coarse grid finds the mass, a fine one samples it.

    A cell is picked with probability density x cell volume and the draw placed uniformly inside it:
    the error is O(cell width^2) in the moments, far below the Monte Carlo error here.
    """
    target = shard.target()
    points_per_axis = 241 if target.dim == 1 else 121
    coarse, _ = _grid(torch.full((target.dim,), -12.0), torch.full((target.dim,), 12.0), points_per_axis)
    with torch.no_grad():
        log_p = target.log_prob(coarse)
    mass = coarse[log_p > log_p.max() - 40]  # e^-40: nothing outside this box carries any mass we could see
    fine, width = _grid(mass.min(0).values - 0.5, mass.max(0).values + 0.5, 20001 if target.dim == 1 else 301)
    with torch.no_grad():
        weights = torch.softmax(target.log_prob(fine), 0)
    generator = torch.Generator().manual_seed(seed)
    cells = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
    return fine[cells] + (torch.rand(num_samples, target.dim, generator=generator) - 0.5) * width


# ------------------------------------------------------------------ a closed-form density with bounds, for MCF
class LogGammaDensity(ShardDensity):
    r"""The Gamma-Poisson shard on :math:`z = \log\lambda`: :math:`\log f(z) = \alpha z - \beta e^z`.

    With :math:`w = \beta e^z` and :math:`\Lambda = A^2`,
    :math:`\phi = \tfrac12\Lambda((\alpha - w)^2 - w)`, a convex quadratic in :math:`w`: on an interval of
    :math:`z` its maximum is at an end and its minimum at :math:`w = \alpha + 1/2` clamped into it.
    """

    has_bounds = True

    def __init__(self, alpha, beta, num_data):
        self.alpha, self.beta, self.num_data = float(alpha), float(beta), num_data

    def log_prob(self, z):
        return self.alpha * z[:, 0] - self.beta * z[:, 0].exp()

    def score(self, z):
        return self.alpha - self.beta * z.exp()

    def hessian_trace(self, z, scale):
        return -self.beta * z[:, 0].exp() * float(scale.square().sum())

    def _phi_of_w(self, w, scale):
        return 0.5 * float(scale.square().sum()) * ((self.alpha - w).square() - w)

    def phi_bounds(self, centre, radius, scale):
        reach = radius * float(scale.abs().sum())
        low, high = self.beta * (centre[:, 0] - reach).exp(), self.beta * (centre[:, 0] + reach).exp()
        ends = torch.stack([self._phi_of_w(low, scale), self._phi_of_w(high, scale)])
        inside = torch.minimum(torch.maximum(torch.full_like(low, self.alpha + 0.5), low), high)
        return self._phi_of_w(inside, scale), ends.max(0).values

    def phi_lower_bound(self, scale):
        return self._phi_of_w(torch.tensor(self.alpha + 0.5), scale)

    def combine(self, others):  # a product of log-Gamma densities is one: the tree's inner nodes keep bounds
        parts = [self, *others]
        return LogGammaDensity(sum(p.alpha for p in parts), sum(p.beta for p in parts), sum(p.num_data for p in parts))


def with_closed_form_densities(subposteriors, shards):
    """The same draws, each shard's density replaced by its closed form (MCF's rejection step needs bounds of phi).

    :math:`\\alpha_c = a/C + \\sum y_c` and :math:`\\beta_c = b/C + n_c`; that this is the density of
    ``shard.target()`` up to a constant is checked in test_sharding.py.
    """
    return [SubPosterior(sub.samples, LogGammaDensity(2.0 / len(shards) + float(shard.args[0].sum()),
                                                      1.0 / len(shards) + shard.num_data, shard.num_data))
            for sub, shard in zip(subposteriors, shards)]


# ------------------------------------------------------------------ checks
def fused_moments(posterior, site):
    draws = posterior.samples[site][0].reshape(NUM_SAMPLES, -1)
    if posterior.log_weights is None:
        weights = torch.full((NUM_SAMPLES,), 1.0 / NUM_SAMPLES, dtype=draws.dtype)
    else:
        weights = torch.softmax(posterior.log_weights[0], 0)
    mean = weights @ draws
    sd = (weights @ (draws - mean).square()).sqrt()
    return mean, sd, 1 / float(weights.square().sum())


def assert_matches(posterior, site, exact, *, sd_slack=0.0, mean_allowance=0.0, where=""):
    mean, sd, ess = fused_moments(posterior, site)
    assert ess / NUM_SAMPLES >= ESS_FRACTION_FLOOR, f"{where}: ESS/N {ess / NUM_SAMPLES:.3f} < {ESS_FRACTION_FLOOR}"
    ess = min(ess, ESS_CAP)
    exact_mean, exact_sd = exact.mean.reshape(-1), exact.stddev.reshape(-1)
    mean_error = ((mean - exact_mean) / exact_sd).abs()
    tolerance = K / math.sqrt(ess) + mean_allowance
    assert (mean_error < tolerance).all(), \
        f"{where}: fused mean off by {mean_error.tolist()} posterior sd (tolerance {tolerance:.3f}, ESS {ess:.0f})"
    ratio = sd / exact_sd
    assert ((ratio - 1).abs() < K / math.sqrt(2 * ess) + sd_slack).all(), \
        f"{where}: fused sd / exact sd = {ratio.tolist()}"


METHODS = ["gbf", "dc_mcf", "consensus"]


def sample_shards(model, data, num_shards, split):
    engine = Fusion(model, num_shards=num_shards, num_particles=NUM_SAMPLES, sampler=grid_sampler)
    shards = engine.shards(data, seed=split)
    return engine.sample_subposteriors(data, seed=split), shards, shards[0].target()


def assert_methods_match(model, data, site, exact, num_shards, split):
    subposteriors, shards, target = sample_shards(model, data, num_shards, split)
    for method in METHODS:
        fused = Fusion(method=method, tree="balanced", num_particles=NUM_SAMPLES).fuse(
            subposteriors, seed=1, target=target, progress=False)
        assert_matches(fused, site, exact, sd_slack=SD_ALLOWANCE.get(method, 0.0),
                       mean_allowance=MEAN_ALLOWANCE.get(method, 0.0), where=f"{method}, split {split}")
    return subposteriors, shards, target


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("num_shards", [4, 8])
def test_gamma_poisson_fused_posterior_matches_the_gamma(float64, num_shards, split):
    model, y, site, exact = problem("gamma_poisson")
    subposteriors, shards, target = assert_methods_match(model, y, site, exact, num_shards, split)
    fused = Fusion(method="mcf", tree="balanced", num_particles=NUM_SAMPLES).fuse(
        with_closed_form_densities(subposteriors, shards), seed=1, target=target, progress=False)
    assert fused.meta["estimator"] == "exact"
    assert_matches(fused, site, exact, where=f"mcf, split {split}")


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("num_shards", [4, 8])
@pytest.mark.parametrize("name", ["beta_binomial", "dirichlet_categorical"])
def test_unit_interval_and_simplex_fused_posteriors_match_the_closed_form(float64, name, num_shards, split):
    model, data, site, exact = problem(name)
    assert_methods_match(model, data, site, exact, num_shards, split)


def test_the_logistic_shard_density_takes_one_cth_of_the_prior(float64):
    """Fusion's closed-form density of a logistic-regression shard is p(theta)^(1/C) p(y_c | theta).

    Written out with torch.distributions: the Normal prior on (alpha, beta) scaled by 1/C, plus the
    shard's Bernoulli log-likelihood. Equal up to a constant, so the scores are equal.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.full((40,), 0.4, dtype=torch.float64), generator=generator)
    num_shards, prior_scale = 4, 1.5
    shard = split_data(logistic_regression, (x, y), {"prior_scale": prior_scale}, num_shards)[1]
    density = shard_density(shard)
    rows, responses = shard.args

    def expected(z):  # z = (alpha, beta_1..3), the flat vector's site order
        prior = dist.Normal(0.0, prior_scale).log_prob(z).sum(-1)
        likelihood = dist.Bernoulli(logits=z[:, :1] + z[:, 1:] @ rows.T).log_prob(responses).sum(-1)
        return prior / num_shards + likelihood

    z = torch.randn(6, 4, generator=generator, dtype=torch.float64).requires_grad_(True)
    truth = expected(z)
    (truth_score,) = torch.autograd.grad(truth.sum(), z)
    difference = density.log_prob(z.detach()) - truth.detach()
    torch.testing.assert_close(difference, difference[0].expand_as(difference), atol=1e-10, rtol=0)
    torch.testing.assert_close(density.score(z.detach()), truth_score, atol=1e-9, rtol=0)
