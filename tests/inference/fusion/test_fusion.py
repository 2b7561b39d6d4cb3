"""Fusion: path-space estimators against closed forms, fused posteriors against closed-form products and NUTS."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL

from bayeskit.health import HealthWarning
from bayeskit.inference.fusion import (
    EngineSampler,
    Fusion,
    GaussianDensity,
    LogDensity,
    LogisticDensity,
    NUTSSampler,
    SubPosterior,
    bridges,
    build_tree,
    core,
    split_data,
)
from bayeskit.inference.fusion.baselines import check_rejection_budget
from bayeskit.models import logistic_regression

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ bridges
def test_stay_probability_one_sided_limit_is_the_reflection_formula(float64):
    x, y, upper, tau = torch.tensor(0.3), torch.tensor(-0.2), torch.tensor(1.1), torch.tensor(0.8)
    far = torch.tensor(-1e3)
    expected = 1 - math.exp(-2 * (1.1 - 0.3) * (1.1 + 0.2) / 0.8)  # P(max of the bridge < upper)
    assert float(bridges.stay_probability(x, y, far, upper, tau)) == pytest.approx(expected, rel=1e-12)


def test_stay_probability_matches_simulated_bridges(float64):
    generator = torch.Generator().manual_seed(0)
    steps, reps, tau = 2000, 10000, 1.0
    increments = torch.randn(reps, steps, generator=generator) * math.sqrt(tau / steps)
    motion = torch.cat([torch.zeros(reps, 1), increments.cumsum(1)], 1)
    u = torch.linspace(0, 1, steps + 1)
    path = 0.2 + motion - u * motion[:, -1:] + u * (0.5 - 0.2)  # bridges from 0.2 to 0.5
    lower, upper = -0.6, 1.2
    simulated = ((path > lower) & (path < upper)).all(1).double().mean()
    exact = bridges.stay_probability(torch.tensor(0.2), torch.tensor(0.5), torch.tensor(lower), torch.tensor(upper),
                                     torch.tensor(tau))
    # a discrete grid misses excursions between its points: it overstates the probability by O(sqrt(tau/steps))
    assert 0 <= float(simulated - exact) < 0.02 + 4 * math.sqrt(0.25 / reps)


def _levy_expectation(a, x, y, tau):
    r"""E[exp(-\int_0^tau phi(W_u) du) | W_0 = x, W_tau = y] for phi(w) = (a^2 w^2 - a) / 2, in closed form.

    Levy's area formula (the Mehler kernel over the heat kernel), the phi of N(0, 1/a) with Lambda = 1.
    """
    s, c = math.sinh(a * tau), math.cosh(a * tau)
    log_value = (0.5 * math.log(a * tau / s) - a / (2 * s) * ((x * x + y * y) * c - 2 * x * y)
                 + (x - y) ** 2 / (2 * tau) + a * tau / 2)
    return math.exp(log_value)


@pytest.mark.parametrize("tau", [0.3, 1.5])
def test_exact_estimator_is_unbiased_for_the_gaussian_path_integral(float64, tau):
    a, x, y, reps = 1.7, 0.4, -0.9, 40000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    generator = torch.Generator().manual_seed(1)
    log_q, info = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau, generator)
    q = log_q.exp()
    truth = _levy_expectation(a, x, y, tau)
    assert abs(float(q.mean()) - truth) < 4 * float(q.std()) / math.sqrt(reps)
    assert info["phi_evaluations"] > 0
    # the trapezoid rule is visibly biased over a long step
    discretised = math.exp(float(bridges.log_discretised_estimate(density.phi(start[:1], torch.eye(1)),
                                                                  density.phi(end[:1], torch.eye(1)), tau)))
    if tau > 1:
        assert abs(discretised - truth) > 10 * float(q.std()) / math.sqrt(reps)


def test_top_up_keeps_the_estimator_unbiased(float64):
    """A dominating layer of 2 forces the rejection top-up on about 2% of the rows; the mean must not move."""
    a, x, y, tau, reps = 1.7, 0.4, -0.9, 1.0, 10000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    log_q, info = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau,
                                             torch.Generator().manual_seed(2), dominating_layer=2)
    q = log_q.exp()
    assert info["top_ups"] > reps / 200
    assert abs(float(q.mean()) - _levy_expectation(a, x, y, tau)) < 4 * float(q.std()) / math.sqrt(reps)


@pytest.mark.parametrize("tau", [0.3, 1.5])
def test_negative_binomial_estimator_is_unbiased_for_the_gaussian_path_integral(float64, tau):
    a, x, y, reps = 1.7, 0.4, -0.9, 40000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    log_q, info = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau, torch.Generator().manual_seed(4),
                                             counts="negative_binomial")
    q, truth = log_q.exp(), _levy_expectation(a, x, y, tau)
    assert abs(float(q.mean()) - truth) < 4 * float(q.std()) / math.sqrt(reps)
    # a wrong count weight inflates the spread by orders of magnitude, and with it the tolerance above: the
    # relative sd measured 0.36 (tau 0.3) and 0.69 (tau 1.5), the Poisson estimator's 0.19 and 0.61
    assert float(q.std()) < truth
    assert info["phi_evaluations"] > 2 * reps


@pytest.mark.parametrize("counts", ["poisson", "negative_binomial"])
def test_exact_estimators_stay_unbiased_when_loose_bounds_split_the_rows_into_blocks(float64, counts):
    """A curvature of 8 over a unit step gives about 350 dominating-layer points a bridge: 3,000 bridges run in
    two blocks of rows (measured), whose estimates must land back on their own rows."""
    a, x, y, tau, reps = 8.0, 0.1, -0.2, 1.0, 3000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    start = start + torch.linspace(0, 1.5, reps)[:, None]  # rows differ, so a block written to wrong rows shows
    log_q, _ = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau, torch.Generator().manual_seed(1),
                                          counts=counts)
    q = log_q.exp()
    truth = torch.tensor([_levy_expectation(a, float(s), y, tau) for s in start[:, 0]])
    ratio = q / truth  # mean 1 for every row if each estimate is of its own row's path integral
    assert abs(float(ratio.mean()) - 1) < 4 * float(ratio.std()) / math.sqrt(reps)
    # the rows' estimates follow their own truths: the first and last thirds' means differ as theirs do
    thirds = [ratio[: reps // 3].mean(), ratio[-reps // 3:].mean()]
    assert all(abs(float(m) - 1) < 4 * float(ratio.std()) / math.sqrt(reps / 3) for m in thirds)


def test_negative_binomial_estimator_is_unbiased_on_short_steps(float64):
    """A short step leaves most bridges with fewer skeleton points than their count (the finer meshes of rare
    events), so the count reaches into the rows' padding: those slots are not points of the path. Counting them
    once made the estimate 4% too high here (z = +20) and, at tau = 0.05, its sd 6,700 times the truth."""
    a, x, y, tau, reps = 8.0, 0.3, 0.5, 0.01, 40000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    log_q, info = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau, torch.Generator().manual_seed(3),
                                             counts="negative_binomial")
    q, truth = log_q.exp(), _levy_expectation(a, x, y, tau)
    assert info["top_ups"] > reps / 100
    assert abs(float(q.mean()) - truth) < 4 * float(q.std()) / math.sqrt(reps)
    assert float(q.std()) < 0.2 * truth  # measured 0.086, the Poisson estimator's 0.081


def test_negative_binomial_estimator_tops_up_beyond_the_skeleton(float64):
    """A dominating layer of 1 leaves the skeleton short of the negative-binomial count on many rows."""
    a, x, y, tau, reps = 1.7, 0.4, -0.9, 1.0, 10000
    density = GaussianDensity(torch.zeros(1), precision=torch.tensor([[a]]))
    start, end = torch.full((reps, 1), x), torch.full((reps, 1), y)
    log_q, info = bridges.log_exact_estimate(density, torch.eye(1), start, end, tau, torch.Generator().manual_seed(5),
                                             dominating_layer=1, counts="negative_binomial")
    q = log_q.exp()
    assert info["top_ups"] > reps / 20
    assert abs(float(q.mean()) - _levy_expectation(a, x, y, tau)) < 4 * float(q.std()) / math.sqrt(reps)


# ------------------------------------------------------------------ densities
def _simulated_logistic(n=400, seed=0):
    generator = torch.Generator().manual_seed(seed)
    beta = torch.tensor([-3.0, 1.2, -0.5, 0.8, 3.0])  # the authors' simulated design: intercept and 4 slopes
    x = torch.randn(n, 4, generator=generator)
    y = torch.bernoulli(torch.sigmoid(beta[0] + x @ beta[1:]), generator=generator)
    return x, y


def test_logistic_density_matches_the_pyro_model_by_autograd(float64):
    x, y = _simulated_logistic(200)
    shard = split_data(logistic_regression, (x, y), {"prior_scale": 1.5}, 4)[1]
    target = shard.target()
    closed = LogisticDensity(*shard.args, prior_scale=1.5, prior_weight=0.25)
    autograd = LogDensity(target.log_prob)
    z = torch.randn(7, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    scale = torch.linalg.cholesky(torch.eye(5) + 0.3 * torch.ones(5, 5))
    difference = closed.log_prob(z) - target.log_prob(z)
    assert torch.allclose(difference, difference[0].expand(7), atol=1e-10)  # equal up to the normaliser
    assert torch.allclose(closed.score(z), autograd.score(z), atol=1e-9)
    assert torch.allclose(closed.phi(z, scale), autograd.phi(z, scale), atol=1e-8)


@pytest.mark.parametrize("kind", ["gaussian", "logistic"])
def test_phi_bounds_hold_on_random_balls(float64, kind):
    generator = torch.Generator().manual_seed(3)
    if kind == "gaussian":
        root = torch.randn(3, 3, generator=generator)
        density = GaussianDensity(torch.randn(3, generator=generator), root @ root.T + torch.eye(3))
        dim = 3
    else:
        x, y = _simulated_logistic(300)
        density, dim = LogisticDensity(x, y, prior_weight=0.5), 5
    root = torch.randn(dim, dim, generator=generator) * 0.2
    scale = torch.linalg.cholesky(root @ root.T + 0.1 * torch.eye(dim))
    centre = torch.randn(50, dim, generator=generator)
    radius = torch.rand(50, generator=generator) * 2
    low, high = density.phi_bounds(centre, radius, scale)
    directions = torch.randn(50, 200, dim, generator=generator)
    directions = directions / directions.norm(dim=-1, keepdim=True) * radius[:, None, None]
    directions = directions * torch.rand(50, 200, 1, generator=generator)
    points = centre[:, None] + directions @ scale.T
    phi = density.phi(points.reshape(-1, dim), scale).reshape(50, 200)
    assert (phi >= low[:, None] - 1e-9).all() and (phi <= high[:, None] + 1e-9).all()
    assert (phi.min(1).values >= density.phi_lower_bound(scale) - 1e-9).all()


# ------------------------------------------------------------ Gaussian products
def _gaussian_subposteriors(num, dim=2, shards=4, seed=0, spread=0.4):
    """Exact draws of C Gaussian sub-posteriors (covariances (I + spread G)(I + spread G)^T) and their product."""
    generator = torch.Generator().manual_seed(seed)
    subposteriors, densities = [], []
    for _ in range(shards):
        mean = 0.6 * torch.randn(dim, generator=generator)
        root = spread * torch.randn(dim, dim, generator=generator) + torch.eye(dim)
        covariance = root @ root.T
        density = GaussianDensity(mean, covariance)
        draws = mean + torch.randn(num, dim, generator=generator) @ torch.linalg.cholesky(covariance).T
        subposteriors.append(SubPosterior(draws, density))
        densities.append(density)
    precision = sum(d.precision for d in densities)
    product_mean = torch.linalg.solve(precision, sum(d.precision @ d.mean for d in densities))
    return subposteriors, product_mean, torch.linalg.inv(precision)


def _weighted_moments(posterior):
    x = posterior.samples["theta"][0]
    w = torch.ones(len(x)) / len(x) if posterior.log_weights is None else torch.softmax(posterior.log_weights[0], 0)
    mean = w @ x
    centred = x - mean
    return mean, (centred.T * w) @ centred, 1 / float(w.square().sum())


# The error a fused posterior may have beyond Monte Carlo: 0.1 product sd on the means, 10% on the
# (co)variances (in units of sd_i sd_j), plus Z Monte Carlo standard errors from the weights' ESS
# (sd / sqrt(ESS) for a mean, sqrt(2 / ESS) relative for a variance). The ESS is floored per method
# (ESS_FRACTION_FLOOR), so that a run whose weights degenerate fails instead of earning a looser bound.
MEAN_BUDGET, COVARIANCE_BUDGET, Z = 0.1, 0.1, 4.0
# ESS/N floors, measured on these sub-posteriors (seeds 0 and 1, N = 3000): GBF 0.35 to 0.76 on every tree,
# D&C-MCF (one long step: its weights degenerate, the method's known weakness) 0.022 and 0.044; MCF draws exactly.
ESS_FRACTION_FLOOR = {"gbf": 0.3, "dc_mcf": 0.015, "mcf": 0.999}


def assert_matches_the_product(posterior, mean, covariance, ess_floor):
    """The fused (weighted) draws against the closed-form product N(mean, covariance), with an ESS floor."""
    fused_mean, fused_covariance, ess = _weighted_moments(posterior)
    num = posterior.samples["theta"].shape[1]
    assert ess / num >= ess_floor, f"ESS/N {ess / num:.3f} below the floor {ess_floor}"
    sd = covariance.diagonal().sqrt()
    mean_error = float(((fused_mean - mean).abs() / sd).max())
    assert mean_error < MEAN_BUDGET + Z / math.sqrt(ess), f"mean off by {mean_error:.3f} sd (ESS {ess:.0f})"
    covariance_error = float(((fused_covariance - covariance).abs() / (sd[:, None] * sd[None, :])).max())
    assert covariance_error < COVARIANCE_BUDGET + Z * math.sqrt(2 / ess), \
        f"covariance off by {covariance_error:.3f} sd_i sd_j (ESS {ess:.0f})"


@pytest.mark.parametrize("method,tree,estimator,adaptive", [
    ("gbf", "fork_and_join", "auto", False), ("gbf", "balanced", "auto", False), ("gbf", "progressive", "auto", False),
    ("dc_mcf", "fork_and_join", "auto", False), ("mcf", "balanced", "auto", False),
    ("gbf", "balanced", "discretised", False), ("gbf", "balanced", "negative_binomial", False),
    ("gbf", "fork_and_join", "negative_binomial", True), ("gbf", "balanced", "exact", True)])
def test_fused_gaussians_match_the_closed_form_product(float64, method, tree, estimator, adaptive):
    """Exact Gaussian sub-posterior draws: the fused posterior is the closed-form product, up to the budgets."""
    num = 400 if method == "mcf" else 3000
    subposteriors, mean, covariance = _gaussian_subposteriors(num)
    posterior = Fusion(method=method, tree=tree, num_particles=num, estimator=estimator,
                       adaptive_mesh=adaptive).fuse(subposteriors, seed=0, progress=False)
    assert_matches_the_product(posterior, mean, covariance, ESS_FRACTION_FLOOR[method])
    assert posterior.meta["approximate"] is (estimator == "discretised")
    nodes = posterior.meta["nodes"]
    if estimator == "negative_binomial":
        assert all(node["estimator"] == "exact (negative_binomial)" for node in nodes)
    if adaptive:
        assert all(node["adaptive_mesh"] for node in nodes)
    if method != "mcf":
        assert {"ess", "cess", "time", "node", "height"} <= set(posterior.trace)
        assert ((posterior.trace["cess"] > 0) & (posterior.trace["cess"] <= 1 + 1e-9)).all()


def test_identity_preconditioner_on_an_explicit_mesh_matches_the_product(float64):
    """``preconditioner="identity"``, ``time_horizon`` and ``num_mesh_steps`` given: the same closed form, and
    every node ran on the mesh asked for (not the guidance's)."""
    # Near-isotropic sub-posteriors, where Lambda_c = I is a sensible choice: on the poorly scaled ones above
    # (spread 0.4) the exact estimator's Poisson counts explode and the weights collapse (measured: ESS/N 0.002
    # after 104 s at N = 500, T = 0.5), which is why the covariance is the default preconditioner.
    subposteriors, mean, covariance = _gaussian_subposteriors(2000, spread=0.1)
    horizon, steps = 1.0, 4  # the guidance would take T = 1.0 to 1.3 and 2 steps per node here
    posterior = Fusion(method="gbf", tree="balanced", num_particles=2000, preconditioner="identity",
                       time_horizon=horizon, num_mesh_steps=steps).fuse(subposteriors, seed=0, progress=False)
    assert all(node["time_horizon"] == horizon and node["mesh_steps"] == steps for node in posterior.meta["nodes"])
    assert_matches_the_product(posterior, mean, covariance, ESS_FRACTION_FLOOR["gbf"])


# C = 32 sub-posteriors in d = 10 (the trust issue's failing case: fork-and-join 0.45 sd off) costs minutes,
# so CI runs C = 8 in d = 4 (balanced 3.8 s, fork-and-join 3.4 s of CPU); BAYESKIT_FULL=1 runs C = 32, d = 10.
MANY_SHARDS, MANY_DIM, MANY_PARTICLES = (32, 10, 1000) if FULL else (8, 4, 1000)
MANY_SHARDS_FULL_GAP = (
    "C = 32 in d = 10 with 1,000 particles: the balanced tree's final ESS/N is 0.188, below the floor of 0.3 "
    "(measured once, 292 s); a run with 2,000 particles did not finish in 23 minutes on two busy cores")


@pytest.mark.slow
@pytest.mark.xfail(FULL, strict=True, reason=MANY_SHARDS_FULL_GAP)
def test_many_shards_balanced_matches_and_fork_and_join_matches_or_warns(float64):
    """The balanced tree fuses many shards to the product within the budgets; fork-and-join either does too,
    or its health report says so (a node whose particles descend from few of its children's draws)."""
    subposteriors, mean, covariance = _gaussian_subposteriors(MANY_PARTICLES, dim=MANY_DIM, shards=MANY_SHARDS)
    balanced = Fusion(method="gbf", tree="balanced", num_particles=MANY_PARTICLES).fuse(
        subposteriors, seed=0, progress=False)
    assert_matches_the_product(balanced, mean, covariance, ESS_FRACTION_FLOOR["gbf"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", HealthWarning)
        fork_and_join = Fusion(method="gbf", tree="fork_and_join", num_particles=MANY_PARTICLES).fuse(
            subposteriors, seed=0, progress=False)
    warned = [str(w.message) for w in caught if issubclass(w.category, HealthWarning)]
    try:
        assert_matches_the_product(fork_and_join, mean, covariance, ESS_FRACTION_FLOOR["gbf"])
    except AssertionError as error:
        assert warned, f"fork-and-join is off ({error}) and its health report is silent"


def _gaussian_product(means, covariances):
    """Mean and covariance of the normalised product of N(means[c], covariances[c])."""
    precisions = torch.linalg.inv(covariances)
    covariance = torch.linalg.inv(precisions.sum(0))
    return covariance @ (precisions @ means.unsqueeze(-1)).sum(0).squeeze(-1), covariance


def _z_scores(draws, mean, covariance, inverse_n):
    """The largest |error| / standard error of the draws' mean and covariance entries (Gaussian fourth moments)."""
    variances = covariance.diagonal()
    mean_z = ((draws.mean(0) - mean).abs() / (variances * inverse_n).sqrt()).max()
    entry_se = ((variances[:, None] * variances[None] + covariance.square()) * inverse_n).sqrt()
    return float(mean_z), float(((torch.cov(draws.T) - covariance).abs() / entry_se).max())


def test_consensus_is_exact_for_gaussians_and_weierstrass_samples_its_transforms(float64):
    """Consensus MC is exact for Gaussian sub-posteriors; the Weierstrass sampler draws the product of the
    transforms N(m_c, S_c + h^2 D), D the pooled within-set variances, h the bandwidth it reports (closed form).

    5 standard errors, as in test_fusion_baselines.py: N draws for consensus; for Weierstrass, accepted draws
    reuse the N draws of each set, so 1/N + 1/M (that file's calibrated rule)."""
    subposteriors, _, _ = _gaussian_subposteriors(3000)
    means = torch.stack([sub.density.mean for sub in subposteriors])
    covariances = torch.stack([torch.linalg.inv(sub.density.precision) for sub in subposteriors])
    mean, covariance = _gaussian_product(means, covariances)
    consensus = Fusion(method="consensus", num_particles=3000).fuse(subposteriors, seed=0, progress=False)
    assert max(_z_scores(consensus.samples["theta"][0], mean, covariance, 1 / 3000)) < 5
    weierstrass = Fusion(method="weierstrass", num_particles=500).fuse(subposteriors, seed=0, progress=False)
    h = weierstrass.meta["bandwidth"]
    pooled = torch.stack([sub.samples.var(0) for sub in subposteriors]).mean(0)
    transformed_mean, transformed_covariance = _gaussian_product(means, covariances + h**2 * torch.diag(pooled))
    z = _z_scores(weierstrass.samples["theta"][0], transformed_mean, transformed_covariance, 1 / 500 + 1 / 500)
    assert max(z) < 5, f"Weierstrass draws at h = {h:.3g} off the product of transforms by {z} standard errors"
    assert weierstrass.meta["approximate"]


def test_consensus_on_skewed_subposteriors_reaches_its_closed_form_limit_not_the_posterior(float64):
    """Consensus MC averages draws with the inverse sample covariances, so with many draws its answer is the
    inverse-variance average of the sub-posterior means, which differs from the posterior when they are skewed.
    With log-Gamma sub-posteriors (a precision's log; shape a_c, rate b_c) that limit has a closed form
    (mean digamma(a_c) - log b_c, variance trigamma(a_c)); the posterior of log tau is log-Gamma(sum a_c, sum b_c)
    for shapes and rates that add up, as tempered shards' do. 40,000 exact draws per shard: the fused mean
    within 5 SE of the limit, and the limit itself clearly off the posterior (the bias Consensus is known for)."""
    from scipy import special

    shapes, rates = [1.5, 2.0, 3.0, 6.0], [1.0, 3.0, 1.5, 4.0]
    with torch.random.fork_rng():
        torch.manual_seed(2)
        # Consensus reads only the draws; the density is a placeholder
        subposteriors = [SubPosterior(torch.distributions.Gamma(torch.tensor(a), torch.tensor(b)).sample((40_000, 1))
                                      .log(), GaussianDensity(torch.zeros(1), torch.eye(1)))
                         for a, b in zip(shapes, rates)]
    weights = torch.tensor([1 / float(special.polygamma(1, a)) for a in shapes])
    means = torch.tensor([float(special.digamma(a)) - math.log(b) for a, b in zip(shapes, rates)])
    limit, limit_var = float(weights @ means / weights.sum()), float(1 / weights.sum())
    fused = Fusion(method="consensus", num_particles=40_000).fuse(subposteriors, seed=0, progress=False)
    draws = fused.samples["theta"][0, :, 0]
    assert abs(float(draws.mean()) - limit) < 5 * math.sqrt(limit_var / 40_000)
    assert float(draws.var()) == pytest.approx(limit_var, rel=0.05)
    posterior_mean = float(special.digamma(sum(shapes))) - math.log(sum(rates))
    print(f"consensus {float(draws.mean()):.4f}, limit {limit:.4f} (sd {math.sqrt(limit_var):.4f}), "
          f"posterior {posterior_mean:.4f}")
    assert abs(limit - posterior_mean) > 10 * math.sqrt(limit_var / 40_000)


def test_rejection_budget_stops_when_even_an_optimistic_rate_cannot_suffice():
    """Monte Carlo Fusion and Weierstrass share the budget rule: stop when max_proposals are spent, or when
    even the Poisson upper bound on the rate, (k + 3 sqrt(k) + 9) / n after k acceptances in n proposals,
    would need more than max_proposals in all (by hand: k = 0 in 5,000 gives 9 / 5,000, so 1,000 draws need
    5,000 + 1,000 * 5,000 / 9 = 560,556 > 100,000)."""
    check_rejection_budget("MCF", 0, 1000, 1000, 200_000, "advice")  # 1,000 + 111,111 would be needed: go on
    check_rejection_budget("MCF", 50, 1000, 5000, 100_000, "advice")  # (50 + 21.2 + 9) / 5,000: 64,200 needed
    with pytest.raises(RuntimeError, match=r"MCF accepted 0 of the 1000 draws wanted in 5000 proposals \(acceptance "
                                           r"rate 0\): max_proposals = 100000 cannot suffice, at least about 5.6e\+05 "
                                           r"would be needed. advice"):
        check_rejection_budget("MCF", 0, 1000, 5000, 100_000, "advice")
    with pytest.raises(RuntimeError, match="max_proposals = 100000 were spent"):
        check_rejection_budget("MCF", 999, 1000, 100_000, 100_000, "advice")


def test_fuse_is_reproducible_from_its_seed(float64):
    subposteriors, _, _ = _gaussian_subposteriors(500)
    engine = Fusion(method="gbf", tree="balanced", num_particles=500)
    first, again = (engine.fuse(subposteriors, seed=4, progress=False) for _ in range(2))
    other = engine.fuse(subposteriors, seed=5, progress=False)
    assert torch.equal(first.samples["theta"], again.samples["theta"])
    assert not torch.equal(first.samples["theta"], other.samples["theta"])


# ---------------------------------------------------------------- Pyro models
def gaussian_mean_model(x):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(()), 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(theta, 1.0), obs=x)


def test_shards_temper_the_prior(float64):
    x = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shards = split_data(gaussian_mean_model, (x,), {}, 4)
    z = torch.tensor([[0.3]])
    theta = torch.tensor(0.3, dtype=torch.float64)
    expected = 0.25 * dist.Normal(0.0, 1.0).log_prob(theta) + dist.Normal(theta, 1.0).log_prob(shards[2].args[0]).sum()
    assert float(shards[2].target().log_prob(z)) == pytest.approx(float(expected), rel=1e-12)
    assert sum(len(s.args[0]) for s in shards) == 40


def normal_mean_posterior(x):
    """The closed form of ``gaussian_mean_model``: prior N(0, 1), unit noise, so N(sum x / (n + 1), 1 / (n + 1))."""
    return float(x.sum() / (len(x) + 1)), 1 / math.sqrt(len(x) + 1)


def assert_matches_the_normal_mean(posterior, x, *, ess_floor):
    """Weighted fused draws of theta against the closed form: ESS/N above ``ess_floor``, then the mean within
    0.1 sd + 4 sd / sqrt(ESS) and the sd within 10% + 4 sqrt(1 / (2 ESS)) (its relative standard error)."""
    mean, sd = normal_mean_posterior(x)
    draws = posterior.samples["theta"][0]
    w = torch.full((len(draws),), 1 / len(draws)) if posterior.log_weights is None \
        else torch.softmax(posterior.log_weights[0], 0)
    ess = 1 / float(w.square().sum())
    assert ess / len(draws) >= ess_floor, f"ESS/N {ess / len(draws):.3f} below the floor {ess_floor}"
    mean_error = abs(float(w @ draws) - mean) / sd
    assert mean_error < MEAN_BUDGET + Z / math.sqrt(ess), f"mean off by {mean_error:.3f} sd (ESS {ess:.0f})"
    sd_ratio = math.sqrt(float(w @ (draws - float(w @ draws)) ** 2)) / sd
    assert abs(sd_ratio - 1) < COVARIANCE_BUDGET + Z * math.sqrt(1 / (2 * ess)), f"sd ratio {sd_ratio:.3f}"


def test_run_on_a_conjugate_model_matches_the_closed_form(float64):
    """A model without bounds: NUTS on each shard, autograd phi, the discretised estimator, labelled approximate.
    ESS/N floor 0.3 (GBF's; measured 0.67 here, mean 0.03 sd off, sd ratio 0.97)."""
    x = 0.7 + torch.randn(60, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    posterior = Fusion(gaussian_mean_model, num_shards=3, num_particles=800, method="gbf",
                       sampler=NUTSSampler(num_warmup=150)).run(x, seed=0, progress=False)
    assert_matches_the_normal_mean(posterior, x, ess_floor=ESS_FRACTION_FLOOR["gbf"])
    assert posterior.meta["approximate"] and "discretised" in posterior.meta["estimator"]


def exact_normal_mean_sampler(shard, num_samples, seed):
    """Exact draws of ``gaussian_mean_model``'s sub-posterior N(0, 1)^(1/C) x likelihood, a Gaussian."""
    data = shard.args[0]
    precision = shard.prior_exponent + len(data)
    noise = torch.randn(num_samples, 1, generator=torch.Generator().manual_seed(seed), dtype=data.dtype)
    return data.sum() / precision + noise / math.sqrt(precision)


def test_shuffle_false_keeps_the_rows_in_order_and_true_only_permutes_them():
    x = torch.arange(40.0)  # each value is its row number: a shard's contents say which rows it holds
    in_order = Fusion(gaussian_mean_model, num_shards=4, shuffle=False).shards(x, seed=0)
    assert [shard.args[0].tolist() for shard in in_order] == [x[10 * c:10 * (c + 1)].tolist() for c in range(4)]
    shuffled, again, other = (Fusion(gaussian_mean_model, num_shards=4).shards(x, seed=seed) for seed in (0, 0, 1))
    pooled = torch.cat([shard.args[0] for shard in shuffled])
    assert [shard.num_data for shard in shuffled] == [10] * 4
    assert torch.equal(pooled.sort().values, x) and not torch.equal(pooled, x)  # every row once, in a new order
    assert all(torch.equal(a.args[0], b.args[0]) for a, b in zip(shuffled, again))  # the seed fixes the split
    assert not all(torch.equal(a.args[0], b.args[0]) for a, b in zip(shuffled, other))


def consensus_mean_se(shards, num_draws):
    """Standard error of Consensus MC's fused mean for exact Gaussian sub-posterior draws.

    The draws' own error, sd / sqrt(N), and that of the weights: each shard's weight is its estimated precision
    over their sum, the precision from N draws (relative error sqrt(2 / N)), so the fused mean
    sum_c W_c m_c moves by sum_c W_c (dP_c / P_c) (m_c - m), which matters when the shards disagree."""
    precisions = torch.tensor([shard.prior_exponent + shard.num_data for shard in shards])
    means = torch.stack([shard.args[0].sum() for shard in shards]) / precisions
    weights = precisions / precisions.sum()
    fused = float(weights @ means)
    weight_variance = float((weights.square() * (means - fused).square()).sum()) * 2 / num_draws
    return math.sqrt(1 / float(precisions.sum()) / num_draws + weight_variance)


@pytest.mark.parametrize("shuffle", [True, False])
def test_shuffle_changes_the_shards_not_the_fused_law(float64, shuffle):
    """Rows with a trend, so that in-order shards disagree (sub-posterior means from -1.6 to 2.6) and shuffled
    ones do not: both fuse to the same closed form. Exact shard draws and Consensus MC, exact for Gaussian
    sub-posteriors, leave only Monte Carlo error: N = 40000 draws (cheap: no path estimates), 4 standard errors
    (consensus_mean_se). An untempered prior (exponent 1, not 1/4; mean 0.14 sd off) fails the shuffled case;
    in order, the weights' own error (4 SE = 0.17 sd) hides it."""
    x = torch.linspace(-2.0, 3.0, 60) + torch.randn(60, generator=torch.Generator().manual_seed(0))
    engine = Fusion(gaussian_mean_model, num_shards=4, num_particles=40000, method="consensus",
                    sampler=exact_normal_mean_sampler, shuffle=shuffle)
    draws = engine.run(x, seed=0, progress=False).samples["theta"][0]
    mean, sd = normal_mean_posterior(x)
    assert abs(float(draws.mean()) - mean) < 4 * consensus_mean_se(engine.shards(x, seed=0), len(draws))
    assert abs(float(draws.std()) / sd - 1) < 4 * math.sqrt(1 / (2 * len(draws)))


# IAD above the floor (two independent 1000-draw NUTS runs of the full posterior, measured in the test) that a
# fusion may add: measured 0.023 for D&C-GBF and 0.018 for Consensus MC (floor 0.037; IAD 0.060 and 0.055).
# With 2,000 rows each sub-posterior is close to Gaussian, so Consensus MC is held to the same bound.
IAD_MARGIN = 0.04


def _nuts_reference(x, y, sampler, seed):
    """1000 full-data NUTS draws (one shard of all rows: the prior untempered)."""
    return Fusion(logistic_regression, num_shards=1, num_particles=1000, sampler=sampler) \
        .sample_subposteriors(x, y, seed=seed)[0].samples


@pytest.mark.slow
def test_logistic_regression_fusion_is_close_to_full_data_nuts(float64):
    """D&C-GBF and Consensus MC on 4 shards against full-data NUTS: IAD < the NUTS-to-NUTS floor + IAD_MARGIN."""
    # real data, 2,000 flights: the authors' simulated design (rare positives, large slopes) makes the bounds
    # of phi wide and the exact estimator slow (see the closing note of the Fusion issue)
    from bayeskit.datasets import load_flight_delays
    from bayeskit.diagnostics import integrated_absolute_distance

    data = load_flight_delays(dtype=torch.float64).standardized().subset(torch.arange(2000))
    x, y = data.x, data.y
    sampler = NUTSSampler(num_warmup=200, jit_compile=True)
    reference = _nuts_reference(x, y, sampler, seed=1)
    floor = float(integrated_absolute_distance(_nuts_reference(x, y, sampler, seed=2), reference))
    engine = Fusion(logistic_regression, num_shards=4, num_particles=1000, sampler=sampler, tree="balanced")
    subposteriors = engine.sample_subposteriors(x, y, seed=0)
    target = engine.shards(x, y, seed=0)[0].target()
    iad = {}
    for method in ("gbf", "consensus"):
        fused = Fusion(method=method, tree="balanced", num_particles=1000).fuse(subposteriors, seed=0, target=target,
                                                                                progress=False)
        draws = torch.cat([fused.samples["alpha"][0, :, None], fused.samples["beta"][0]], -1)
        if fused.log_weights is not None:
            assert fused.meta["estimator"] == "exact" and not fused.meta["approximate"]
            index = torch.multinomial(torch.softmax(fused.log_weights[0], 0), 1000, replacement=True,
                                      generator=torch.Generator().manual_seed(0))
            draws = draws[index]
        iad[method] = float(integrated_absolute_distance(draws, reference))
    assert all(value < floor + IAD_MARGIN for value in iad.values()), f"IAD {iad} against a floor of {floor:.3f}"


def _grid_draws(log_density, num, generator, grid):
    """Exact draws of a 1-D density by inversion on a fine grid (jittered within a cell)."""
    cdf = torch.softmax(log_density(grid), 0).cumsum(0)
    index = torch.searchsorted(cdf, torch.rand(num, generator=generator)).clamp_max(len(grid) - 1)
    return (grid[index] + (torch.rand(num, generator=generator) - 0.5) * (grid[1] - grid[0]))[:, None]


# Rare events, 32 shards of 20 rows with about one positive each: the sub-posteriors of the intercept are
# skewed (most are the tempered prior's tail on one side), where Consensus MC is biased. Measured (seeds 0 / 1):
# D&C-GBF 0.037 / 0.042, on the adaptive mesh 0.049 / 0.067, Consensus MC 0.184 / 0.34, against exact grid
# draws whose own IAD floor was 0.046 / 0.024 (the exact Poisson estimator: 0.047 on seed 0, in 175 s).
RARE_EVENT_MARGIN = {"discretised": 0.05, "adaptive": 0.06}


@pytest.mark.parametrize("mesh", ["discretised", "adaptive"])
def test_rare_events_separate_dc_gbf_from_consensus_mc(float64, mesh):
    """Exact (grid) sub-posterior draws of a rare-event intercept on 32 shards: D&C-GBF stays within the IAD
    floor + a margin of the exact posterior; Consensus MC does not."""
    from bayeskit.diagnostics import integrated_absolute_distance

    generator = torch.Generator().manual_seed(0)
    rows, shards, num = 640, 32, 1000
    y = torch.bernoulli(torch.full((rows,), math.exp(-3) / (1 + math.exp(-3))), generator=generator)
    x, grid = torch.zeros(rows, 0), torch.linspace(-30, 10, 40001)
    subposteriors = []
    for c in range(shards):
        density = LogisticDensity(x[c::shards], y[c::shards], prior_weight=1 / shards)
        subposteriors.append(SubPosterior(_grid_draws(lambda a: density.log_prob(a[:, None]), num, generator, grid),
                                          density))
    full = LogisticDensity(x, y)
    reference = _grid_draws(lambda a: full.log_prob(a[:, None]), 4 * num, generator, grid)
    floor = float(integrated_absolute_distance(_grid_draws(lambda a: full.log_prob(a[:, None]), num, generator,
                                                           grid), reference))
    iad = {}
    for label, settings in {"gbf": dict(method="gbf", estimator="discretised", adaptive_mesh=mesh == "adaptive"),
                            "consensus": dict(method="consensus")}.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", HealthWarning)  # the leaves' parents resample hard: expected here
            post = Fusion(num_particles=num, tree="balanced", **settings).fuse(subposteriors, seed=0,
                                                                              progress=False)
        draws = post.samples["theta"][0]
        if post.log_weights is not None:
            draws = draws[torch.multinomial(torch.softmax(post.log_weights[0], 0), num, replacement=True,
                                            generator=torch.Generator().manual_seed(0))]
        iad[label] = float(integrated_absolute_distance(draws, reference))
    assert iad["gbf"] < floor + RARE_EVENT_MARGIN[mesh], (iad, floor)
    assert iad["consensus"] > iad["gbf"] + 0.1, (iad, floor)


# SVGD's variance shrinkage with 100 particles in 1-D: the sd 1.3% narrow (0.987 on both shards, seeds 0-2);
# the mean off by < 4e-4 sd.
SVGD_SD_TOLERANCE = 0.05


def test_engine_sampler_runs_a_bayeskit_engine(float64):
    """SVGD through EngineSampler on each shard: the sub-posterior N(0, 1)^(1/2) x likelihood is
    N(sum x_c / (n_c + 1/2), 1 / (n_c + 1/2)). 100 particles of a 1-D Gaussian: mean within 0.1 sd, sd within
    SVGD_SD_TOLERANCE (its stated shrinkage allowance)."""
    from bayeskit.inference import SVGD

    x = 0.7 + torch.randn(30, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    engine = Fusion(gaussian_mean_model, num_shards=2, num_particles=100,
                    sampler=EngineSampler(SVGD, num_steps=300, options={"num_particles": 100}))
    subposteriors = engine.sample_subposteriors(x, seed=0)
    for sub, shard in zip(subposteriors, engine.shards(x, seed=0)):
        data = shard.args[0]
        precision = len(data) + 0.5  # prior N(0, 1) raised to 1/2
        exact_mean, exact_sd = float(data.sum() / precision), 1 / math.sqrt(precision)
        assert abs(float(sub.samples.mean()) - exact_mean) < 0.1 * exact_sd
        assert float(sub.samples.std()) / exact_sd == pytest.approx(1, abs=SVGD_SD_TOLERANCE)


def test_ray_backend_gives_the_in_process_result(float64, ray_cluster):
    x = 0.7 + torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    settings = dict(num_shards=4, num_particles=100, method="gbf", tree="balanced",
                    sampler=NUTSSampler(num_warmup=50))
    local = Fusion(gaussian_mean_model, **settings).run(x, seed=3, progress=False)
    remote = Fusion(gaussian_mean_model, backend="ray", **settings).run(x, seed=3, progress=False)
    assert torch.equal(local.samples["theta"], remote.samples["theta"])
    assert torch.equal(local.log_weights, remote.log_weights)


# ----------------------------------------------------------------- structure
def test_trees_hold_every_leaf_once():
    def leaves(node):
        return [node] if isinstance(node, int) else [leaf for child in node for leaf in leaves(child)]

    for kind in core.TREES:
        for count in (2, 5, 8):
            assert sorted(leaves(build_tree(kind, count))) == list(range(count))
    assert build_tree("fork_and_join", 4) == (0, 1, 2, 3)
    assert build_tree("balanced", 4) == ((0, 1), (2, 3))
    assert build_tree("progressive", 3) == ((0, 1), 2)
    assert len(core.tree_levels(build_tree("balanced", 8))) == 3


def test_guidance_follows_the_formulas():
    mesh = core.mesh_guidance(2.0, num_children=4, dim=5, cess_step=0.05)
    step = math.sqrt(-math.log(0.05) / (2 * 4 * 5))
    assert len(mesh) - 1 == math.ceil(2.0 / step) and float(mesh[-1]) == 2.0
    subposteriors, _, _ = _gaussian_subposteriors(20000, dim=3, shards=2)
    children = [core.ParticleSet(s.samples, s.density) for s in subposteriors]
    scales = torch.stack([core.preconditioner_scale(c, "covariance") for c in children])
    horizon = core.time_horizon_guidance(children, scales, cess0=0.2)
    generator = torch.Generator().manual_seed(0)
    x = torch.stack([core.equal_weight_draws(c, 20000, generator) for c in children])
    inverses, combined, _ = core.combine_preconditioners(scales)
    log_rho = core.log_rho(x, core.consensus_mean(x, inverses, combined), inverses, horizon)
    # the guidance's second-order approximation of the weights' CESS errs on the safe side: above its
    # target (0.2; measured 0.63 here), yet T is not so long that the weights carry no information
    assert 0.2 < float(core.ess_fraction(log_rho)) < 0.9


def test_regular_mesh_bounds_the_trajectories_variation_as_the_authors(float64):
    """Their BF_guidance: max E[nu] = max(1.05 x the children's draws' variation, the consensus's), weighted by
    rho_0; the regular step is the adaptive formula's at that bound, so far-apart children get a finer mesh."""
    subposteriors, _, _ = _gaussian_subposteriors(300, dim=3, shards=4, spread=0.4)
    children = [core.ParticleSet(sub.samples, sub.density) for sub in subposteriors]
    scales = torch.stack([core.preconditioner_scale(c, "covariance") for c in children])
    inverses, combined, _ = core.combine_preconditioners(scales)
    means = torch.stack([c.particles.mean(0) for c in children])
    x = torch.stack([c.particles for c in children])
    horizon = 0.7
    log_weights = core.log_rho(x, core.consensus_mean(x, inverses, combined), inverses, horizon)
    weights = torch.softmax(log_weights, 0)
    start = end = 0.0
    for n in range(x.shape[1]):  # the authors' loop over particles and children
        consensus = combined @ sum(inverses[c] @ x[c, n] for c in range(4))
        start += float(weights[n]) * sum(float((x[c, n] - means[c]) @ inverses[c] @ (x[c, n] - means[c]))
                                         for c in range(4)) / 4
        end += float(weights[n]) * sum(float((consensus - means[c]) @ inverses[c] @ (consensus - means[c]))
                                       for c in range(4)) / 4
    bound = max(1.05 * start, end)
    consensus = core.consensus_mean(x, inverses, combined)
    assert core.max_trajectory_variation(x, log_weights, means, inverses, consensus) == pytest.approx(bound, rel=1e-10)
    assert bound > 1  # the children's draws are about d = 3 from their means: the E[nu] term is not idle here
    step = core.mesh_step(bound, 4, 3, 0.05)
    assert step < 0.95 * core.mesh_step(0.0, 4, 3, 0.05)
    # fuse_gbf's regular mesh is this one (its draws are the children's, resampled: the bound moves a little)
    result = core.fuse_gbf(children, num_particles=300, generator=torch.Generator().manual_seed(0), horizon=horizon,
                           exact=False)
    assert result.summary["mesh_steps"] in {math.ceil(horizon / core.mesh_step(bound * f, 4, 3, 0.05))
                                            for f in (0.9, 0.95, 1.0, 1.05, 1.1)}
    assert result.summary["mesh_steps"] > math.ceil(horizon / core.mesh_step(0.0, 4, 3, 0.05))


def test_adaptive_mesh_step_follows_the_authors_formulas():
    """min(k3 / (C E[nu]), sqrt(k4 / (2 C d))) with k3 + k4 = -log CESS_j, the two terms equal."""
    generator = torch.Generator().manual_seed(0)
    num_children, num, dim, cess_step = 3, 500, 4, 0.05
    x = torch.randn(num_children, num, dim, generator=generator, dtype=torch.float64)
    log_weights = torch.randn(num, generator=generator, dtype=torch.float64)
    means = torch.randn(num_children, dim, generator=generator, dtype=torch.float64)
    roots = torch.randn(num_children, dim, dim, generator=generator, dtype=torch.float64)
    inverses = roots @ roots.transpose(1, 2) + torch.eye(dim, dtype=torch.float64)
    weights = torch.softmax(log_weights, 0)
    variation = sum(float(weights[n] * sum((x[c, n] - means[c]) @ inverses[c] @ (x[c, n] - means[c])
                                           for c in range(num_children))) / num_children for n in range(num))
    step = core.adaptive_mesh_step(x, log_weights, means, inverses, cess_step)
    # the two terms meet at the step: solve for k4 from the second term, and the first must agree
    k4 = 2 * num_children * dim * step ** 2
    k3 = -math.log(cess_step) - k4
    assert 0 < k4 < -math.log(cess_step)
    assert step == pytest.approx(k3 / (num_children * variation), rel=1e-10)
    # an adaptive mesh past its step budget stops with a clear error rather than running on
    subposteriors, _, _ = _gaussian_subposteriors(200)
    children = [core.ParticleSet(sub.samples, sub.density) for sub in subposteriors[:2]]
    with pytest.raises(RuntimeError, match="adaptive mesh reached 2 steps"):
        core.fuse_gbf(children, num_particles=200, generator=torch.Generator().manual_seed(0), adaptive_mesh=True,
                      exact=False, max_mesh_steps=2)
    # trajectories at their means: the regular mesh's step, not zero
    at_means = means[:, None].expand(num_children, num, dim)
    assert core.adaptive_mesh_step(at_means, log_weights, means, inverses, cess_step) == pytest.approx(
        math.sqrt(-math.log(cess_step) / (2 * num_children * dim)), rel=1e-12)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="method"):
        Fusion(method="nope")
    with pytest.raises(ValueError, match="tree"):
        Fusion(tree="star")
    with pytest.raises(ValueError, match="num_shards"):
        Fusion(logistic_regression, num_shards=0)
    with pytest.raises(ValueError, match="num_shards"):
        split_data(logistic_regression, (torch.randn(3, 2), torch.ones(3)), {}, 5)
    with pytest.raises(ValueError, match="mcf"):
        Fusion(method="mcf", estimator="discretised")
    with pytest.raises(ValueError, match="mcf"):
        Fusion(method="mcf", estimator="negative_binomial")
    with pytest.raises(ValueError, match="estimator"):
        Fusion(estimator="poison")
    with pytest.raises(ValueError, match="adaptive_mesh"):
        Fusion(adaptive_mesh=True, num_mesh_steps=4)
    with pytest.raises(ValueError, match="adaptive_mesh"):
        Fusion(method="dc_mcf", adaptive_mesh=True)
    with pytest.raises(ValueError, match="run\\(\\) needs"):
        Fusion(method="gbf").run(torch.randn(3))
    with pytest.raises(TypeError, match="SubPosterior"):
        Fusion().fuse([torch.randn(3, 2)])
    generator = torch.Generator().manual_seed(0)
    no_bounds = [SubPosterior(torch.randn(50, 2, generator=generator), LogDensity(lambda z: -z.square().sum(-1)))
                 for _ in range(2)]
    with pytest.raises(ValueError, match="bounds"):
        Fusion(method="mcf", num_particles=50).fuse(no_bounds, seed=0)
    with pytest.raises(ValueError, match="non-finite"):
        SubPosterior(torch.tensor([[float("nan"), 0.0]]), LogDensity(lambda z: z.sum(-1)))
