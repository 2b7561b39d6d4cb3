"""Diagnostics against closed forms, scipy, autograd and ArviZ."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayeskit import diagnostics


def stein_kernel_by_autograd(x, score_fn, c=1.0, beta=-0.5):
    """k_p(x_i, x_j) built from torch autograd of the IMQ kernel: an independent reference."""
    n, d = x.shape
    out = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            a = x[i].clone().requires_grad_(True)
            b = x[j].clone().requires_grad_(True)
            k = (c**2 + ((a - b) ** 2).sum()) ** beta
            grad_a, grad_b = torch.autograd.grad(k, (a, b), create_graph=True)
            trace = sum(torch.autograd.grad(grad_a[m], b, retain_graph=True)[0][m] for m in range(d))
            out[i, j] = (k * score_fn(a) @ score_fn(b) + score_fn(a) @ grad_b + score_fn(b) @ grad_a
                         + trace).detach()
    return out


def test_ksd_matches_an_autograd_stein_kernel(float64):
    x = torch.randn(6, 3)

    def score(v):
        return -(v - 0.5)

    weights = torch.rand(6)
    weights /= weights.sum()
    reference = stein_kernel_by_autograd(x, score)
    expected = (weights @ reference @ weights).sqrt()
    got = diagnostics.kernel_stein_discrepancy(x, score(x), weights=weights)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_ksd_separates_good_from_bad_samples_and_shrinks_with_n(float64):
    g = torch.Generator().manual_seed(0)
    exact_small = torch.randn(200, 2, generator=g)
    exact_large = torch.randn(2000, 2, generator=g)
    shifted = exact_small + 0.5
    ksd = diagnostics.kernel_stein_discrepancy
    good, bad = ksd(exact_small, -exact_small), ksd(shifted, -shifted)
    assert bad > 3 * good
    assert ksd(exact_large, -exact_large) < good


def test_ksd_is_batched_over_leading_dims(float64):
    x = torch.randn(3, 10, 2)
    batched = diagnostics.kernel_stein_discrepancy(x, -x)
    single = torch.stack([diagnostics.kernel_stein_discrepancy(x[i], -x[i]) for i in range(3)])
    torch.testing.assert_close(batched, single)


def test_energy_distance_matches_scipy(float64):
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=80), rng.normal(0.7, 1.5, size=120)
    wu, wv = rng.random(80), rng.random(120)
    # scipy returns sqrt(2 E|X-Y| - E|X-X'| - E|Y-Y'|) for 1-D samples
    expected = stats.energy_distance(u, v, wu, wv) ** 2
    got = diagnostics.energy_distance(torch.from_numpy(u), torch.from_numpy(v),
                                      weights_x=torch.from_numpy(wu), weights_y=torch.from_numpy(wv))
    assert float(got) == pytest.approx(expected, rel=1e-10)
    assert float(diagnostics.energy_distance(torch.from_numpy(u), torch.from_numpy(u))) == pytest.approx(0, abs=1e-12)


def test_weighted_ess_by_hand():
    log_weights = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)) + 7.0
    w = np.array([0.1, 0.2, 0.3, 0.4])
    assert float(diagnostics.weighted_ess(log_weights)) == pytest.approx(w.sum() ** 2 / (w**2).sum())
    assert float(diagnostics.weighted_ess(torch.zeros(50))) == pytest.approx(50)
    assert float(diagnostics.weighted_ess(torch.tensor([0.0, -1e4, -1e4]))) == pytest.approx(1)


def test_iad_matches_total_variation_of_two_normals(float64):
    g = torch.Generator().manual_seed(0)
    mu = 1.0
    x = torch.randn(20000, 1, generator=g)
    y = torch.randn(20000, 1, generator=g) + mu
    exact = 2 * stats.norm.cdf(mu / 2) - 1  # total variation between N(0, 1) and N(mu, 1)
    assert diagnostics.integrated_absolute_distance(x, y) == pytest.approx(exact, abs=0.02)
    assert diagnostics.integrated_absolute_distance(x, x) == pytest.approx(0, abs=1e-12)


def test_rhat_and_ess_flag_mixing():
    g = torch.Generator().manual_seed(0)
    mixed = torch.randn(4, 500, generator=g)
    stuck = mixed + torch.arange(4.0)[:, None]
    assert float(diagnostics.rhat(mixed)) < 1.01
    assert float(diagnostics.rhat(stuck)) > 1.1
    assert 1500 < float(diagnostics.ess(mixed)) < 2500
    ar1 = torch.zeros(4, 500)
    noise = torch.randn(4, 500, generator=g)
    for t in range(1, 500):
        ar1[:, t] = 0.9 * ar1[:, t - 1] + noise[:, t]
    # AR(1) with phi = 0.9: ESS ~ n (1 - phi) / (1 + phi) = 2000 / 19
    assert float(diagnostics.ess(ar1)) == pytest.approx(2000 * 0.1 / 1.9, rel=0.5)
    assert math.isfinite(float(diagnostics.ess(ar1, method="tail")))
