"""Consensus Monte Carlo and the Weierstrass rejection sampler against closed-form products.

Ground truth is algebra, not the code under test:

- Gaussian sub-posteriors ``N(m_c, S_c)`` multiply to ``N(A sum_c S_c^-1 m_c, A)`` with
  ``A = (sum_c S_c^-1)^-1``.  The Weierstrass sampler with bandwidth ``h`` targets the product of the
  transforms ``N(m_c, S_c + h^2 D)``, which is the same formula with ``S_c + h^2 D``; the gap between
  the two is the method's bias, known exactly here.
- Gamma sub-posteriors ``Gamma(a_c, b_c)`` (shape, rate) multiply to
  ``Gamma(sum_c (a_c - 1) + 1, sum_c b_c)``.  The product of their Weierstrass transforms is a 1-D
  integral, done on a grid.

Monte Carlo tolerances are ``Z = 5`` standard errors.  A mean of ``n`` independent draws with
covariance ``A`` has standard error ``sqrt(A_jj / n)``; their sample covariance has entry standard
errors ``sqrt((A_jj A_kk + A_jk^2) / n)`` (Gaussian fourth moments).  Weierstrass draws reuse the
sets' ``N`` draws: the error of the product of kernel estimates built on them adds ``1/N`` to the
``1/M`` of ``M`` accepted draws, so its standard errors use ``1/N + 1/M`` (12 fresh sets of draws of
this file's Gaussian case at h = 0.5, M = 2500 gave z-scores with sd 0.95 for the means and 0.83 for
the covariance entries under this rule).
"""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import signal, stats

from bayeskit.inference.fusion.baselines import consensus_monte_carlo, default_bandwidth, weierstrass

pytestmark = pytest.mark.usefixtures("one_thread")

C, D, N = 4, 3, 20_000
Z = 5.0
BANDWIDTH = 0.5  # in pooled sds: 1.5e-4 of the Gaussian test's tuples are accepted, 1.5e-2 at h = 1
DRAWS = 2500  # Weierstrass draws at BANDWIDTH: about 1.7e7 proposals


# ============================================================ closed forms and tolerances
def gaussian_product(covariances, means):
    """Mean and covariance of the normalised product of N(means[c], covariances[c])."""
    precisions = torch.linalg.inv(covariances)
    covariance = torch.linalg.inv(precisions.sum(0))
    return covariance @ (precisions @ means.unsqueeze(-1)).sum(0).squeeze(-1), covariance


def mean_se(covariance, inverse_n):
    return (covariance.diagonal() * inverse_n).sqrt()


def covariance_se(covariance, inverse_n):
    variances = covariance.diagonal()
    return ((variances[:, None] * variances[None] + covariance.square()) * inverse_n).sqrt()


def excess(estimate, target, se, allowance=0.0):
    """Largest |estimate - target| beyond ``allowance``, in standard errors."""
    return ((estimate - target).abs() - allowance).div(se).max().item()


def pooled_variance(x):
    """What the Weierstrass sampler scales coordinates by: the mean over sets of each set's variance."""
    return x.var(1).mean(0)


@pytest.fixture(scope="module")
def gaussian(one_thread):
    """C = 4 Gaussian sub-posteriors in d = 3 with random SPD covariances and spread-out means, N exact draws each."""
    g = torch.Generator().manual_seed(0)
    factors = torch.randn(C, D, D, generator=g, dtype=torch.float64)
    # Eigenvalues from about 0.3 to 3.7: sub-posteriors of different shapes, so weighting matters.
    covariances = factors @ factors.mT / D + 0.3 * torch.eye(D, dtype=torch.float64)
    means = 0.5 * torch.randn(C, D, generator=g, dtype=torch.float64)
    noise = torch.randn(C, N, D, generator=g, dtype=torch.float64)
    x = means.unsqueeze(1) + noise @ torch.linalg.cholesky(covariances).mT
    mean, covariance = gaussian_product(covariances, means)
    return SimpleNamespace(x=x, means=means, covariances=covariances, mean=mean, covariance=covariance)


# ============================================================ Consensus Monte Carlo
def test_cmc_covariance_weighting_is_exact_for_gaussians(gaussian):
    out = consensus_monte_carlo(list(gaussian.x))
    assert out.shape == (N, D) and out.dtype == torch.float64
    truth = gaussian.covariance
    assert excess(out.mean(0), gaussian.mean, mean_se(truth, 1 / N)) <= Z
    assert excess(torch.cov(out.T), truth, covariance_se(truth, 1 / (N - 1))) <= Z


def test_cmc_equal_weighting_is_wrong_when_covariances_differ(gaussian):
    out = consensus_monte_carlo(gaussian.x, weighting="equal")
    # The plain average of independent draws: N(mean_c m_c, sum_c S_c / C^2), which is not the product.
    limit_mean, limit_covariance = gaussian.means.mean(0), gaussian.covariances.sum(0) / C**2
    assert torch.equal(out, gaussian.x.mean(0))
    assert excess(out.mean(0), limit_mean, mean_se(limit_covariance, 1 / N)) <= Z
    truth = gaussian.covariance
    assert excess(out.mean(0), gaussian.mean, mean_se(truth, 1 / N)) > 20 * Z
    assert excess(torch.cov(out.T), truth, covariance_se(truth, 1 / (N - 1))) > 20 * Z


# ============================================================ Weierstrass, Gaussian sub-posteriors
@pytest.fixture(scope="module")
def weierstrass_gaussian(gaussian):
    """Draws at h = 0.5 and h = 1, with the closed-form product of the transforms each one targets."""
    runs = {}
    for h, m in ((BANDWIDTH, DRAWS), (1.0, DRAWS)):
        out = weierstrass(gaussian.x, bandwidth=h, num_samples=m, generator=torch.Generator().manual_seed(1))
        kernel = h**2 * torch.diag(pooled_variance(gaussian.x))
        mean, covariance = gaussian_product(gaussian.covariances + kernel, gaussian.means)
        runs[h] = SimpleNamespace(out=out, mean=mean, covariance=covariance, inverse_n=1 / N + 1 / m)
    return runs


def test_weierstrass_samples_the_product_of_transforms(weierstrass_gaussian):
    run = weierstrass_gaussian[BANDWIDTH]
    assert run.out.shape == (DRAWS, D) and run.out.dtype == torch.float64
    assert excess(run.out.mean(0), run.mean, mean_se(run.covariance, run.inverse_n)) <= Z
    assert excess(torch.cov(run.out.T), run.covariance, covariance_se(run.covariance, run.inverse_n)) <= Z


def test_weierstrass_is_close_to_the_product_up_to_its_known_bias(gaussian, weierstrass_gaussian):
    # The allowance is the exact O(h^2) gap between the product of transforms and the product.
    run = weierstrass_gaussian[BANDWIDTH]
    mean_bias = (run.mean - gaussian.mean).abs()
    covariance_bias = (run.covariance - gaussian.covariance).abs()
    assert excess(run.out.mean(0), gaussian.mean, mean_se(run.covariance, run.inverse_n), mean_bias) <= Z
    assert excess(torch.cov(run.out.T), gaussian.covariance, covariance_se(run.covariance, run.inverse_n),
                  covariance_bias) <= Z
    # The gap is not small here: at h = 0.5 the means are off by up to 0.21 product sds and the variances
    # inflated 1.4 to 1.9 times, because the sub-posteriors (pooled sds 0.97 to 1.31) are much wider than
    # the product (sds 0.36 to 0.51) and the acceptance rate falls as h^9 (C = 4, d = 3).
    product_sd = gaussian.covariance.diagonal().sqrt()
    assert 0.1 < (mean_bias / product_sd).max() < 0.25
    assert 1.3 < (run.covariance.diagonal() / gaussian.covariance.diagonal()).min()
    assert (run.covariance.diagonal() / gaussian.covariance.diagonal()).max() < 2.0


def test_weierstrass_error_shrinks_with_the_bandwidth(gaussian, weierstrass_gaussian):
    def errors(run):
        return ((run.out.mean(0) - gaussian.mean).norm().item(),
                (torch.cov(run.out.T) - gaussian.covariance).norm().item())
    (mean_small, cov_small), (mean_large, cov_large) = errors(weierstrass_gaussian[BANDWIDTH]), \
        errors(weierstrass_gaussian[1.0])
    assert mean_small < 0.75 * mean_large and cov_small < 0.5 * cov_large


def test_weierstrass_is_reproducible_by_seed(gaussian):
    def draw(seed):
        return weierstrass(gaussian.x, bandwidth=1.0, num_samples=2000, generator=torch.Generator().manual_seed(seed))
    first = draw(3)
    assert torch.equal(first, draw(3))
    assert not torch.allclose(first, draw(4))


def test_weierstrass_defaults(gaussian):
    x = gaussian.x[:, :2000, :1]  # 1-D, where the default bandwidth is cheap
    out = weierstrass(x, generator=torch.Generator().manual_seed(5))
    assert out.shape == (2000, 1)
    h = default_bandwidth(2000, 1)
    assert h == pytest.approx((4 / 3) ** 0.2 * 2000 ** -0.2)
    assert torch.equal(out, weierstrass(list(x), bandwidth=torch.tensor([h], dtype=torch.float64),
                                        generator=torch.Generator().manual_seed(5)))


def test_weierstrass_follows_float32(gaussian):
    out = weierstrass([s.float() for s in gaussian.x], bandwidth=1.0, num_samples=500,
                      generator=torch.Generator().manual_seed(0))
    assert out.dtype == torch.float32 and out.shape == (500, D)
    assert consensus_monte_carlo(gaussian.x.float()).dtype == torch.float32


def test_weierstrass_says_what_to_change_when_proposals_run_out(gaussian):
    with pytest.raises(RuntimeError, match="max_proposals = 10000 were spent.*Raise `bandwidth`"):
        weierstrass(gaussian.x, bandwidth=0.7, max_proposals=10_000, generator=torch.Generator().manual_seed(0))


def test_weierstrass_gives_up_early_at_a_hopeless_bandwidth(gaussian):
    # The default h = 0.235 in d = 3 accepts 2.8e-7 of the tuples here (closed form): 7e10 proposals for N draws.
    # One batch of 80,000 proposals is enough to tell that the default 1e8 cannot suffice.
    with pytest.raises(RuntimeError, match="in 80000 proposals .*max_proposals = 100000000 cannot suffice"):
        weierstrass(gaussian.x, generator=torch.Generator().manual_seed(0))


@pytest.mark.gpu
def test_weierstrass_on_cuda_with_a_cpu_generator(gaussian):
    x = gaussian.x[:, :5000].cuda()
    out = weierstrass(x, bandwidth=1.0, generator=torch.Generator().manual_seed(2))
    assert out.device == x.device and out.dtype == x.dtype
    expected = weierstrass(gaussian.x[:, :5000], bandwidth=1.0, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out.cpu(), expected)
    torch.testing.assert_close(consensus_monte_carlo(x).cpu(), consensus_monte_carlo(gaussian.x[:, :5000]))


# ============================================================ Gamma sub-posteriors: CMC's bias
SHAPES, RATES = np.array([1.5, 2.0, 3.0, 2.5]), np.array([1.0, 0.5, 2.0, 1.0])
QUANTILES = np.array([0.05, 0.25, 0.5, 0.75, 0.95])


def transformed_gamma_product(h_sd):
    """Mean, sd and quantiles of prod_c (Gamma(a_c, b_c) * N(0, h_sd^2)), on a grid."""
    step = 1e-3
    grid = np.arange(-3.0, 15.0, step)
    offsets = np.arange(-8 * h_sd, 8 * h_sd + step / 2, step)
    kernel = stats.norm(0, h_sd).pdf(offsets) * step
    log_density = sum(np.log(signal.fftconvolve(stats.gamma(a, scale=1 / b).pdf(grid), kernel, mode="same")
                             .clip(1e-300)) for a, b in zip(SHAPES, RATES))
    p = np.exp(log_density - log_density.max())
    p /= p.sum()
    mean = (p * grid).sum()
    return mean, np.sqrt((p * (grid - mean) ** 2).sum()), np.interp(QUANTILES, p.cumsum(), grid)


def test_gamma_subposteriors_weierstrass_beats_cmc(one_thread):
    rng = np.random.default_rng(0)
    x = torch.from_numpy(np.stack([rng.gamma(a, 1 / b, size=(N, 1)) for a, b in zip(SHAPES, RATES)]))
    truth = stats.gamma((SHAPES - 1).sum() + 1, scale=1 / RATES.sum())  # Gamma(6, 4.5): mean 1.333
    true_quantiles = truth.ppf(QUANTILES)

    cmc = consensus_monte_carlo(x)[:, 0].numpy()
    # CMC's limit: the precision-weighted average of the sub-posterior means, 1.786, not 1.333.
    weights = RATES**2 / SHAPES
    cmc_limit = (weights * SHAPES / RATES).sum() / weights.sum()
    assert abs(cmc.mean() - cmc_limit) <= Z * cmc.std() / np.sqrt(N)
    assert abs(cmc.mean() - truth.mean()) > 20 * Z * truth.std() / np.sqrt(N)

    h = 0.1
    draws = weierstrass(x, bandwidth=h, generator=torch.Generator().manual_seed(1))[:, 0].numpy()
    mean, sd, quantiles = transformed_gamma_product(h * np.sqrt(pooled_variance(x).item()))
    se = sd * np.sqrt(2 / N)  # N accepted draws built on N draws per set
    assert abs(draws.mean() - mean) <= Z * se
    assert abs(draws.mean() - truth.mean()) <= abs(mean - truth.mean()) + Z * se
    # Weierstrass at h = 0.1 is far closer to the true product than CMC, in the mean and every quantile.
    assert abs(draws.mean() - truth.mean()) < 0.2 * abs(cmc.mean() - truth.mean())
    weierstrass_errors = np.abs(np.quantile(draws, QUANTILES) - true_quantiles)
    cmc_errors = np.abs(np.quantile(cmc, QUANTILES) - true_quantiles)
    assert (weierstrass_errors < 0.2 * cmc_errors).all()
    assert np.abs(np.quantile(draws, QUANTILES) - quantiles).max() < 0.05


# ============================================================ bad inputs
def _sets(n=10, d=2, c=2, dtype=torch.float64):
    return [torch.randn(n, d, dtype=dtype, generator=torch.Generator().manual_seed(i)) for i in range(c)]


BAD_SAMPLES = {
    "one set": _sets(c=1),
    "no sets": [],
    "not a sequence": 3.0,
    "not tensors": [np.zeros((10, 2)), np.zeros((10, 2))],
    "1-D": [torch.zeros(10, dtype=torch.float64), torch.zeros(10, dtype=torch.float64)],
    "integer": [torch.zeros(10, 2, dtype=torch.long)] * 2,
    "different N": [_sets()[0], _sets(n=11)[0]],
    "different d": [_sets()[0], _sets(d=3)[0]],
    "different dtype": [_sets()[0], _sets(dtype=torch.float32)[0]],
    "nan": [_sets()[0], _sets()[1].index_fill(0, torch.tensor([3]), float("nan"))],
    "inf": [_sets()[0], _sets()[1].index_fill(0, torch.tensor([0]), float("inf"))],
    "one draw": _sets(n=1),
    "4-D tensor": torch.zeros(2, 10, 2, 1),
}


@pytest.mark.parametrize("method", [consensus_monte_carlo, weierstrass])
@pytest.mark.parametrize("case", list(BAD_SAMPLES))
def test_bad_samples_raise(method, case):
    with pytest.raises(ValueError, match="samples"):
        method(BAD_SAMPLES[case])


def test_singular_covariance_raises_for_cmc_only():
    x = _sets(n=10, d=2)
    x[1] = x[1].index_fill(1, torch.tensor([1]), 3.0)  # a constant coordinate in one set only
    with pytest.raises(ValueError, match=r"samples\[1\].*singular"):
        consensus_monte_carlo(x)
    assert consensus_monte_carlo(x, weighting="equal").shape == (10, 2)


@pytest.mark.parametrize("kwargs, name", [
    ({"num_samples": 0}, "num_samples"), ({"num_samples": 2.5}, "num_samples"), ({"num_samples": True}, "num_samples"),
    ({"bandwidth": 0.0}, "bandwidth"), ({"bandwidth": -1.0}, "bandwidth"), ({"bandwidth": float("nan")}, "bandwidth"),
    ({"bandwidth": float("inf")}, "bandwidth"), ({"bandwidth": "wide"}, "bandwidth"),
    ({"bandwidth": torch.ones(3)}, "bandwidth"), ({"bandwidth": torch.tensor([1.0, 0.0])}, "bandwidth"),
    ({"max_proposals": 0}, "max_proposals"), ({"max_proposals": 1e6}, "max_proposals"),
    ({"generator": 0}, "generator"),
])
def test_bad_weierstrass_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        weierstrass(_sets(), **kwargs)


def test_bad_weighting_raises():
    with pytest.raises(ValueError, match="weighting"):
        consensus_monte_carlo(_sets(), weighting="precision")


def test_constant_coordinate_raises_for_weierstrass():
    x = [s.index_fill(1, torch.tensor([0]), 1.0) for s in _sets()]
    with pytest.raises(ValueError, match="samples.*coordinate 0"):
        weierstrass(x)
