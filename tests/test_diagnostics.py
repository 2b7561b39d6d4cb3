"""Diagnostics against closed forms, scipy, torch autograd, NumPy by hand and ArviZ's definitions."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayeskit import diagnostics

F64 = torch.float64


# ------------------------------------------------------------------------------ KSD
def imq(a, b, c, beta, lengthscale):
    return (c ** 2 + ((a - b) ** 2).sum() / lengthscale ** 2) ** beta


def stein_matrix_by_autograd(x, score_fn, c=1.0, beta=-0.5, lengthscale=1.0):
    """k_p(x_i, x_j) from autograd derivatives of the IMQ kernel: a reference that shares no algebra."""
    n, d = x.shape
    out = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            a = x[i].clone().requires_grad_(True)
            b = x[j].clone().requires_grad_(True)
            k = imq(a, b, c, beta, lengthscale)
            grad_a, grad_b = torch.autograd.grad(k, (a, b), create_graph=True)
            trace = sum(torch.autograd.grad(grad_a[m], b, retain_graph=True)[0][m] for m in range(d))
            sa, sb = score_fn(a), score_fn(b)
            out[i, j] = (k * sa @ sb + sa @ grad_b + sb @ grad_a + trace).detach()
    return out


@pytest.mark.parametrize("c, beta, lengthscale", [(1.0, -0.5, 1.0), (0.7, -0.3, 1.8)])
def test_ksd_matches_a_stein_kernel_built_by_autograd(c, beta, lengthscale):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, generator=g, dtype=F64)
    precision = torch.tensor([[2.0, 0.3, 0.0], [0.3, 1.0, 0.1], [0.0, 0.1, 0.5]], dtype=F64)

    def score(v):  # N(0.5, precision^-1)
        return -(v - 0.5) @ precision

    weights = torch.rand(7, generator=g, dtype=F64)
    weights /= weights.sum()
    reference = stein_matrix_by_autograd(x, score, c, beta, lengthscale)
    expected = (weights @ reference @ weights).sqrt()
    got = diagnostics.kernel_stein_discrepancy(x, score(x), weights=weights, c=c, beta=beta,
                                               lengthscale=lengthscale)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    uniform = torch.full((7,), 1 / 7, dtype=F64)
    torch.testing.assert_close(diagnostics.kernel_stein_discrepancy(x, score(x), c=c, beta=beta,
                                                                    lengthscale=lengthscale),
                               (uniform @ reference @ uniform).sqrt(), rtol=1e-10, atol=1e-12)


def test_ksd_blocks_and_batches_agree_with_one_pass(monkeypatch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 2, generator=g, dtype=F64)
    weights = torch.rand(3, 40, generator=g, dtype=F64)
    whole = diagnostics.kernel_stein_discrepancy(x, -x, weights=weights)
    single = torch.stack([diagnostics.kernel_stein_discrepancy(x[i], -x[i], weights=weights[i]) for i in range(3)])
    torch.testing.assert_close(whole, single, rtol=1e-12, atol=1e-14)
    monkeypatch.setattr(diagnostics, "PAIRWISE_BLOCK_ELEMENTS", 100)  # many small row blocks
    torch.testing.assert_close(diagnostics.kernel_stein_discrepancy(x, -x, weights=weights), whole,
                               rtol=1e-12, atol=1e-14)


def test_ksd_separates_exact_from_shifted_draws_and_shrinks_with_n():
    g = torch.Generator().manual_seed(0)
    ksd = diagnostics.kernel_stein_discrepancy
    small = torch.randn(200, 2, generator=g, dtype=F64)
    large = torch.randn(3000, 2, generator=g, dtype=F64)
    shifted = small + 0.5
    good = ksd(small, -small)  # true score of N(0, I) is -x
    assert ksd(shifted, -shifted) > 3 * good
    assert ksd(large, -large) < good
    # for exact draws the V-statistic is O(1/n): KSD ~ n^-1/2 (up to the diagonal term)
    assert float(ksd(large, -large)) < 0.6 * float(good)


def test_ksd_rejects_bad_input():
    x = torch.randn(5, 2, dtype=F64)
    with pytest.raises(ValueError, match="score must have the shape"):
        diagnostics.kernel_stein_discrepancy(x, x[:4])
    with pytest.raises(ValueError, match="beta"):
        diagnostics.kernel_stein_discrepancy(x, -x, beta=0.5)
    with pytest.raises(ValueError, match="weights must have shape"):
        diagnostics.kernel_stein_discrepancy(x, -x, weights=torch.ones(4))
    with pytest.raises(ValueError, match="weights must be finite and non-negative"):
        diagnostics.kernel_stein_discrepancy(x, -x, weights=-torch.ones(5))


# -------------------------------------------------------------------------- energy
def test_energy_distance_is_the_square_of_scipys_in_one_dimension():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=80), rng.normal(0.7, 1.5, size=120)
    wu, wv = rng.random(80), rng.random(120)
    # scipy: sqrt(2) * ||F - G||_2 = sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) in 1-D
    got = diagnostics.energy_distance(torch.from_numpy(u), torch.from_numpy(v),
                                      weights_x=torch.from_numpy(wu), weights_y=torch.from_numpy(wv))
    assert float(got) == pytest.approx(stats.energy_distance(u, v, wu, wv) ** 2, rel=1e-10)
    unweighted = diagnostics.energy_distance(torch.from_numpy(u)[:, None], torch.from_numpy(v)[:, None])
    assert float(unweighted) == pytest.approx(stats.energy_distance(u, v) ** 2, rel=1e-10)
    assert float(diagnostics.energy_distance(torch.from_numpy(u), torch.from_numpy(u))) == 0.0


def test_energy_distance_in_several_dimensions_by_hand():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(30, 3)), rng.normal(0.3, 1.0, size=(45, 3))
    wx = rng.random(30)
    wx /= wx.sum()
    wy = np.full(45, 1 / 45)

    def mean_norm(a, b, wa, wb):
        return wa @ np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1) @ wb

    expected = 2 * mean_norm(x, y, wx, wy) - mean_norm(x, x, wx, wx) - mean_norm(y, y, wy, wy)
    got = diagnostics.energy_distance(torch.from_numpy(x), torch.from_numpy(y), weights_x=torch.from_numpy(wx))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="same dimension"):
        diagnostics.energy_distance(torch.from_numpy(x), torch.from_numpy(y[:, :2]))


# ----------------------------------------------------------------------- weighted ESS
def test_weighted_ess_equal_dominating_and_by_hand():
    assert float(diagnostics.weighted_ess(torch.zeros(50, dtype=F64))) == pytest.approx(50, rel=1e-14)
    dominated = torch.tensor([0.0, -30.0, -30.0, -30.0], dtype=F64)
    assert float(diagnostics.weighted_ess(dominated)) == pytest.approx(1, abs=1e-10)
    rng = np.random.default_rng(0)
    log_w = rng.normal(size=(3, 20)) * 2 + 700.0  # exp(700 + ...) overflows in float64 if done naively
    w = np.exp(log_w - log_w.max(axis=1, keepdims=True))
    expected = w.sum(1) ** 2 / (w ** 2).sum(1)
    np.testing.assert_allclose(diagnostics.weighted_ess(torch.from_numpy(log_w)).numpy(), expected, rtol=1e-12)
    all_w = np.exp(log_w - log_w.max())
    assert float(diagnostics.weighted_ess(torch.from_numpy(log_w), dim=None)) == pytest.approx(
        all_w.sum() ** 2 / (all_w ** 2).sum(), rel=1e-12)
    with_zero = torch.tensor([0.0, 0.0, -math.inf], dtype=F64)  # a zero weight is not a draw
    assert float(diagnostics.weighted_ess(with_zero)) == pytest.approx(2, rel=1e-14)


# ------------------------------------------------------------------------ r_hat, ESS
def test_rhat_and_ess_flag_mixing():
    g = torch.Generator().manual_seed(0)
    mixed = torch.randn(4, 500, 2, generator=g, dtype=F64)
    stuck = mixed + torch.arange(4.0, dtype=F64)[:, None, None]
    assert diagnostics.rhat(mixed).shape == (2,)
    assert (diagnostics.rhat(mixed) < 1.01).all()
    assert (diagnostics.rhat(stuck) > 1.1).all()
    bulk = diagnostics.ess(mixed)
    assert ((bulk > 1500) & (bulk < 2600)).all()  # i.i.d.: about chain * draw = 2000
    assert torch.isfinite(diagnostics.ess(mixed, method="tail")).all()
    ar1 = torch.zeros(4, 1000, dtype=F64)
    noise = torch.randn(4, 1000, generator=g, dtype=F64)
    for t in range(1, 1000):
        ar1[:, t] = 0.9 * ar1[:, t - 1] + noise[:, t]
    # AR(1) with phi = 0.9: ESS of the mean ~ N (1 - phi) / (1 + phi)
    assert float(diagnostics.ess(ar1, method="mean")) == pytest.approx(4000 * 0.1 / 1.9, rel=0.35)


def test_rhat_and_ess_are_arviz_values():
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(3)
    draws = rng.normal(size=(3, 200))
    assert float(diagnostics.rhat(torch.from_numpy(draws))) == array_stats.rhat(draws, chain_axis=0, draw_axis=1)
    assert float(diagnostics.ess(torch.from_numpy(draws), method="tail")) == array_stats.ess(
        draws, chain_axis=0, draw_axis=1, method="tail", prob=(0.05, 0.95))
    with pytest.raises(ValueError, match="chain, draw"):
        diagnostics.rhat(torch.zeros(10))


# ----------------------------------------------------------------------------- IAD
def test_iad_matches_total_variation_of_two_normals():
    g = torch.Generator().manual_seed(0)
    mu = 1.0
    x = torch.randn(20000, 1, generator=g, dtype=F64)
    y = torch.randn(20000, 1, generator=g, dtype=F64) + mu
    exact = 2 * stats.norm.cdf(mu / 2) - 1  # TV(N(0, 1), N(mu, 1)) = (1/2) int |f - g|
    assert float(diagnostics.integrated_absolute_distance(x, y)) == pytest.approx(exact, abs=0.02)
    assert float(diagnostics.integrated_absolute_distance(x, y, bandwidth="scott")) == pytest.approx(exact, abs=0.02)
    assert float(diagnostics.integrated_absolute_distance(x, x)) == 0.0


def test_iad_averages_the_marginals():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(20000, 2, generator=g, dtype=F64)
    y = torch.randn(20000, 2, generator=g, dtype=F64) + torch.tensor([2.0, 0.0], dtype=F64)
    exact = (2 * stats.norm.cdf(1.0) - 1 + 0.0) / 2  # shifted marginal, identical marginal
    assert float(diagnostics.integrated_absolute_distance(x, y)) == pytest.approx(exact, abs=0.02)
    far = diagnostics.integrated_absolute_distance(x[:, :1], x[:, :1] + 50.0, bandwidth=0.2)
    assert float(far) == pytest.approx(1.0, abs=1e-6)  # disjoint densities: TV is one


def test_iad_rejects_a_sample_without_spread():
    with pytest.raises(ValueError, match="no spread"):
        diagnostics.integrated_absolute_distance(torch.zeros(10), torch.randn(10))
    with pytest.raises(ValueError, match="bandwidth"):
        diagnostics.integrated_absolute_distance(torch.randn(10), torch.randn(10), bandwidth="wide")


def test_iad_binned_kde_matches_scipys_exact_kde():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(300, 2)), rng.standard_t(4, size=(200, 2)) * 0.8 + 0.3
    h = 0.3
    grid = np.linspace(-12.0, 12.0, 40001)  # covers both samples plus 10 bandwidths, finely
    terms = []
    for j in range(2):
        # scipy's bandwidth is bw_method * the sample sd: ask it for exactly h
        f = stats.gaussian_kde(x[:, j], bw_method=h / x[:, j].std(ddof=1))(grid)
        g = stats.gaussian_kde(y[:, j], bw_method=h / y[:, j].std(ddof=1))(grid)
        terms.append(np.trapezoid(np.abs(f - g), grid))
    expected = sum(terms) / (2 * 2)
    got = diagnostics.integrated_absolute_distance(torch.from_numpy(x), torch.from_numpy(y), bandwidth=h)
    assert float(got) == pytest.approx(expected, abs=2e-5)  # binning error is O((step / h)^2)


# ------------------------------------------------------------------ sliced Wasserstein
@pytest.mark.parametrize("n, m", [(40, 40), (30, 75), (64, 2048)])
def test_wasserstein_1d_matches_scipy_for_unequal_sizes(n, m):
    g = torch.Generator().manual_seed(n + m)
    x = torch.randn(n, generator=g, dtype=F64)
    y = 0.5 + 2 * torch.rand(m, generator=g, dtype=F64)
    ours = diagnostics.wasserstein_1d(x, y, p=1)
    assert float(ours) == pytest.approx(stats.wasserstein_distance(x.numpy(), y.numpy()), rel=1e-10)
    # p = 2 with equal sizes is the mean squared difference of the sorted samples
    if n == m:
        by_hand = ((x.sort().values - y.sort().values) ** 2).mean()
        assert float(diagnostics.wasserstein_1d(x, y, p=2)) == pytest.approx(float(by_hand), rel=1e-12)


@pytest.mark.parametrize("dtype, p", [(F64, 2.0), (torch.float32, 2.0), (F64, 1.5)])
def test_wasserstein_1d_gradient_is_the_quantile_couplings(dtype, p):
    # Rows of equal sizes couple the k-th smallest x with the k-th smallest y, so
    # d W_p^p / d x_i = p |x_i - y_(rank i)|^(p - 1) sign(x_i - y_(rank i)) / n: the sort's order must
    # carry each gradient back to the value it came from (on the CPU the order comes from NumPy).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 300, generator=g, dtype=F64).to(dtype).requires_grad_()
    y = (1 + 3 * torch.rand(4, 300, generator=g, dtype=F64)).to(dtype)
    distance = diagnostics.wasserstein_1d(x, y, p=p)
    distance.sum().backward()
    ranks = x.detach().argsort(-1).argsort(-1)
    partner = y.sort(-1).values.gather(-1, ranks)
    gap = x.detach() - partner
    expected = p * gap.abs() ** (p - 1) * gap.sign() / x.shape[-1]
    tolerance = 1e-12 if dtype == F64 else 1e-5
    assert torch.allclose(x.grad, expected, rtol=tolerance, atol=tolerance)
    assert torch.allclose(distance, (gap.abs() ** p).mean(-1), rtol=tolerance)


def test_wasserstein_1d_runs_under_torch_func_transforms():
    # NumPy cannot read a tensor inside vmap or grad: the sort must fall back to torch's there
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(3, 50, generator=g, dtype=F64), torch.randn(3, 40, generator=g, dtype=F64)
    assert torch.allclose(torch.func.vmap(diagnostics.wasserstein_1d)(x, y), diagnostics.wasserstein_1d(x, y))
    x.requires_grad_()
    diagnostics.wasserstein_1d(x, y).sum().backward()
    assert torch.allclose(torch.func.grad(lambda a: diagnostics.wasserstein_1d(a, y).sum())(x.detach()), x.grad)


def isotropic_gaussians(d, n, shift, scale, seed):
    g = torch.Generator().manual_seed(seed)
    mean = torch.zeros(d, dtype=F64)
    mean[0] = shift
    return torch.randn(n, d, generator=g, dtype=F64), mean + scale * torch.randn(n // 2, d, generator=g, dtype=F64)


def test_sliced_wasserstein_of_two_gaussians_matches_the_closed_form():
    # On direction theta, N(0, I) and N(m, s^2 I) project to N(0, 1) and N(theta'm, s^2):
    # W_2^2 = (theta'm)^2 + (1 - s)^2, whose mean over the sphere is |m|^2 / d + (1 - s)^2.
    d, shift, scale = 6, 2.0, 1.5
    x, y = isotropic_gaussians(d, 10_000, shift, scale, seed=0)
    g = torch.Generator().manual_seed(1)
    directions = torch.randn(1000, d, generator=g, dtype=F64)
    directions /= directions.norm(dim=-1, keepdim=True)
    per_direction = diagnostics.wasserstein_1d(directions @ x.T, directions @ y.T)
    closed_form = shift**2 / d + (1 - scale) ** 2
    estimate = diagnostics.sliced_wasserstein(x, y, directions=directions) ** 2
    assert float(estimate) == pytest.approx(float(per_direction.mean()), rel=1e-10)
    # Monte Carlo error over directions, plus the O(1/sqrt(n)) bias of empirical 1-D distances
    tolerance = 4 * float(per_direction.std()) / math.sqrt(len(directions)) + 0.02
    assert abs(float(estimate) - closed_form) < tolerance


def test_dswd_lies_between_the_sliced_and_the_max_sliced_distance():
    # The mean offset lies along one axis: uniform directions see |m|^2 / d of it, the best
    # single direction all of it; DSWD's spread-out direction distribution sits in between.
    torch.manual_seed(0)
    d, shift, scale = 8, 2.0, 1.0
    x, y = isotropic_gaussians(d, 2000, shift, scale, seed=2)
    sliced = float(diagnostics.sliced_wasserstein(x, y, num_projections=2000)) ** 2
    dswd = diagnostics.DistributionalSlicedWasserstein(d, num_projections=200, num_steps=100, lr=0.02,
                                                       diversity=1.0).to(F64)
    value = float(dswd(x, y)) ** 2
    max_sliced = shift**2 + (1 - scale) ** 2
    assert sliced == pytest.approx(shift**2 / d, abs=0.05)
    assert 2 * sliced < value < max_sliced + 0.05
    # and it is differentiable in the samples
    y = y.clone().requires_grad_(True)
    dswd(x, y).backward()
    assert y.grad is not None and bool(torch.isfinite(y.grad).all()) and float(y.grad.abs().sum()) > 0


def test_sliced_wasserstein_rejects_mismatched_dimensions():
    with pytest.raises(ValueError, match="same dimension"):
        diagnostics.sliced_wasserstein(torch.zeros(5, 2), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="num_projections"):
        diagnostics.DistributionalSlicedWasserstein(3, num_projections=1)
