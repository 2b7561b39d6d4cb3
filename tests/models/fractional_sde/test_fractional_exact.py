"""Exact fBM (bayeskit.models.fractional_sde.exact) against ground truth that is not ours.

- Riemann-Liouville covariance: the hypergeometric closed form against mpmath quadrature of the
  defining integral.
- Mandelbrot-van Ness covariance: symmetry, PSD, Var = t^{2H}, stationary increments.
- Samplers: sample covariance of many paths against the exact covariance, entry by entry, as z-scores
  with the standard error of a sample covariance of zero-mean Gaussians, sqrt((S_tt S_ss + S_ts^2) / n).
- The `fbm` package (a peer, optional) run side by side.
"""

import math

import mpmath
import numpy as np
import pytest
import torch

from bayeskit.models.fractional_sde import exact
from bayeskit.models.fractional_sde.exact import (
    fbm_covariance,
    fgn_autocovariance,
    sample_fbm_cholesky,
    sample_fbm_davies_harte,
)

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64
NUM_PATHS = 20_000
Z_BOUND = 5.0


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def max_abs_z(paths, cov):
    """Largest |z| over the entries (t, s), t <= s, of the zero-mean sample covariance of ``paths``."""
    keep = cov.diagonal() > 0  # B_0 = 0 has no sampling error to compare
    paths, cov = paths[:, keep], cov[keep][:, keep]
    n = paths.shape[0]
    sample = paths.T @ paths / n
    variance = cov.diagonal()
    stderr = torch.sqrt((variance[:, None] * variance[None, :] + cov ** 2) / n)
    z = (sample - cov) / stderr
    return float(z.triu().abs().max())


def rl_covariance_by_quadrature(t, s, hurst):
    """(1/Gamma(H+1/2)^2) int_0^s (t-u)^{H-1/2} (s-u)^{H-1/2} du for s < t, by tanh-sinh quadrature.

    In v = s - u the integrand v^a (d + v)^a (d = t - s) has its singularity at v = 0, where quadrature
    nodes keep full relative precision, and varies on the scale d: break points at d, 10 d, 100 d, ...
    """
    with mpmath.workdps(20):
        a = mpmath.mpf(hurst) - mpmath.mpf(1) / 2
        t, s = mpmath.mpf(t), mpmath.mpf(s)
        d = t - s
        points, x = [mpmath.mpf(0)], d
        while x < s:
            points.append(x)
            x *= 10
        points.append(s)
        value = mpmath.quad(lambda v: v ** a * (d + v) ** a, points)
        return float(value / mpmath.gamma(mpmath.mpf(hurst) + mpmath.mpf(1) / 2) ** 2)


# --- Riemann-Liouville covariance ---------------------------------------------------------------------

RL_PAIRS = [(1.0, 0.3), (3.0, 0.01), (0.2, 0.19), (2.0, 1.999), (1.0, 1.0 - 1e-6), (1.0, 1.0 - 1e-10)]


@pytest.mark.parametrize("hurst", [0.1, 0.3, 0.7, 0.9])
def test_riemann_liouville_covariance_matches_quadrature(hurst):
    worst = 0.0
    for t, s in RL_PAIRS:
        closed = fbm_covariance(torch.tensor([t, s], dtype=F64), hurst, "riemann_liouville")
        reference = rl_covariance_by_quadrature(t, s, hurst)
        assert closed[0, 1] == closed[1, 0]
        worst = max(worst, abs(float(closed[1, 0]) - reference) / abs(reference))
    # Measured: <= 3e-15 for all H here; the unstable argument -s/(t-s) would lose digits as s -> t.
    assert worst < 1e-12, worst


@pytest.mark.parametrize("hurst", [0.1, 0.3, 0.5, 0.7, 0.9])
def test_riemann_liouville_variance_is_the_diagonal(hurst):
    times = torch.tensor([0.0, 1e-3, 0.4, 1.0, 7.5], dtype=F64)
    cov = fbm_covariance(times, hurst, "II")
    expected = times ** (2 * hurst) / (2 * hurst * math.gamma(hurst + 0.5) ** 2)
    torch.testing.assert_close(cov.diagonal(), expected, rtol=1e-14, atol=0.0)
    # Off the diagonal (hypergeometric series at z = s/t -> 1), Var(B_t) - Cov(B_t, B_s) = E[B_t (B_t - B_s)]
    # vanishes like (t - s)^{min(2H, 1)}: the (t-u)^{2a} part over [s, t] gives (t-s)^{2H} / 2H, the rest is O(t-s).
    t = 1.3
    gaps = []
    for gap in (1e-7, 1e-9):
        near = fbm_covariance(torch.tensor([t, t - gap], dtype=F64), hurst, "II")
        gaps.append(float(near[0, 0] - near[0, 1]))
    assert abs(math.log(gaps[0] / gaps[1]) / math.log(100.0) - min(2 * hurst, 1.0)) < 0.02, gaps
    # Row and column of B_0 = 0 vanish; the matrix is symmetric positive definite on t > 0.
    assert bool((cov[0] == 0).all() and (cov[:, 0] == 0).all())
    torch.testing.assert_close(cov, cov.T, rtol=0.0, atol=0.0)
    assert float(torch.linalg.eigvalsh(cov[1:, 1:]).min()) > 0


@pytest.mark.parametrize("kind", ["mandelbrot_van_ness", "riemann_liouville"])
def test_half_hurst_covariance_is_brownian(kind):
    times = torch.tensor([0.0, 0.1, 0.25, 1.0, 3.0], dtype=F64)
    cov = fbm_covariance(times, 0.5, kind)
    torch.testing.assert_close(cov, torch.minimum(times[:, None], times[None, :]), rtol=1e-14, atol=1e-15)


# --- Mandelbrot-van Ness covariance -------------------------------------------------------------------

@pytest.mark.parametrize("hurst", [0.1, 0.3, 0.7, 0.9])
def test_mandelbrot_van_ness_covariance_properties(hurst):
    times = torch.tensor([0.0, 0.05, 0.3, 0.31, 0.9, 1.0, 2.5], dtype=F64)
    cov = fbm_covariance(times, hurst)
    torch.testing.assert_close(cov, cov.T, rtol=0.0, atol=0.0)
    torch.testing.assert_close(cov.diagonal(), times ** (2 * hurst), rtol=1e-15, atol=0.0)
    assert float(torch.linalg.eigvalsh(cov[1:, 1:]).min()) > 0

    # Stationary increments: Cov(B_{t+d} - B_t, B_{s+d} - B_s) is unchanged by shifting t and s together.
    def increment_cov(t, s, d):
        c = fbm_covariance(torch.tensor([t, t + d, s, s + d], dtype=F64), hurst)
        return float(c[1, 3] - c[1, 2] - c[0, 3] + c[0, 2])

    for t, s, d in [(0.0, 0.4, 0.1), (0.2, 0.25, 0.3), (1.0, 3.0, 0.5)]:
        base = increment_cov(t, s, d)
        for shift in (0.7, 5.0):
            assert abs(increment_cov(t + shift, s + shift, d) - base) < 1e-12 * max(1.0, abs(base))


@pytest.mark.parametrize("hurst", [0.2, 0.5, 0.8])
def test_fgn_autocovariance_is_the_covariance_of_unit_increments(hurst):
    cov = fbm_covariance(torch.arange(12, dtype=F64), hurst)
    increments = cov[1:, 1:] - cov[1:, :-1] - cov[:-1, 1:] + cov[:-1, :-1]  # Cov(B_{i+1}-B_i, B_{j+1}-B_j)
    gamma = fgn_autocovariance(10, hurst)
    lags = (torch.arange(11)[:, None] - torch.arange(11)[None, :]).abs()
    torch.testing.assert_close(increments, gamma[lags], rtol=1e-12, atol=1e-12)


def test_mandelbrot_van_ness_covariance_is_differentiable_in_hurst():
    times = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=F64)
    hurst = torch.tensor(0.3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda h: fbm_covariance(times, h), (hurst,))
    with pytest.raises(ValueError, match="hurst"):
        fbm_covariance(times, hurst, "riemann_liouville")


# --- Davies-Harte -------------------------------------------------------------------------------------

@pytest.mark.parametrize("hurst", [0.1, 0.3, 0.7, 0.9])
def test_davies_harte_sample_covariance(hurst):
    num_steps, horizon = 64, 2.0
    paths = sample_fbm_davies_harte(num_steps, hurst, NUM_PATHS, horizon=horizon, generator=seeded(1))
    assert paths.shape == (NUM_PATHS, num_steps + 1) and paths.dtype == F64
    assert bool((paths[:, 0] == 0).all())
    grid = torch.linspace(0.0, horizon, num_steps + 1, dtype=F64)
    # Measured max |z| over the 2080 entries: 1.8-2.8 (the entries are strongly correlated).
    assert max_abs_z(paths, fbm_covariance(grid, hurst)) < Z_BOUND


def test_davies_harte_z_test_has_power():
    """The same z-test flags a neighbouring H: the sampler tests above can fail."""
    paths = sample_fbm_davies_harte(64, 0.7, NUM_PATHS, generator=seeded(2))
    grid = torch.linspace(0.0, 1.0, 65, dtype=F64)
    assert max_abs_z(paths, fbm_covariance(grid, 0.7)) < Z_BOUND
    assert max_abs_z(paths, fbm_covariance(grid, 0.67)) > 3 * Z_BOUND  # measured 22.5 (2.0 at the true H)


def test_davies_harte_half_hurst_is_brownian_motion():
    num_steps = 50
    eigenvalues = exact.circulant_eigenvalues(num_steps, 0.5, "cpu")
    torch.testing.assert_close(eigenvalues, torch.ones(2 * num_steps, dtype=F64), rtol=0.0, atol=1e-14)
    paths = sample_fbm_davies_harte(num_steps, 0.5, NUM_PATHS, horizon=3.0, generator=seeded(3))
    grid = torch.linspace(0.0, 3.0, num_steps + 1, dtype=F64)
    assert max_abs_z(paths, torch.minimum(grid[:, None], grid[None, :])) < Z_BOUND


def test_circulant_embedding_is_nonnegative_for_all_hurst():
    for hurst in [0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999]:
        for num_steps in [1, 2, 3, 17, 64, 1000, 4096]:
            gamma = fgn_autocovariance(num_steps, hurst)
            eigenvalues = torch.fft.fft(torch.cat([gamma, gamma[1:-1].flip(0)])).real
            assert float(eigenvalues.min()) >= -1e-10 * float(eigenvalues.max()), (hurst, num_steps)
            assert float(exact.circulant_eigenvalues(num_steps, hurst, "cpu").min()) >= 0


def test_davies_harte_refuses_an_indefinite_embedding(monkeypatch):
    # A sequence that is no autocovariance at all (|gamma(1)| > gamma(0)) must be refused, not clipped.
    monkeypatch.setattr(exact, "fgn_autocovariance", lambda num_lags, hurst, **kw: torch.tensor(
        [1.0] + [1.5] + [0.0] * (num_lags - 1), dtype=F64))
    with pytest.raises(ValueError, match="negative eigenvalue"):
        sample_fbm_davies_harte(8, 0.3, 4, generator=seeded(0))


def test_davies_harte_seeding_self_similarity_and_odd_path_counts():
    a = sample_fbm_davies_harte(32, 0.3, 7, generator=seeded(5))
    b = sample_fbm_davies_harte(32, 0.3, 7, generator=seeded(5))
    torch.testing.assert_close(a, b, rtol=0.0, atol=0.0)
    # Same noise, horizon T: B(T u) = T^H B(u) path by path.
    c = sample_fbm_davies_harte(32, 0.3, 7, horizon=4.0, generator=seeded(5))
    torch.testing.assert_close(c, 4.0 ** 0.3 * a, rtol=1e-13, atol=1e-14)
    # Real and imaginary parts are independent paths: no two rows coincide.
    assert float(torch.pdist(a[:, 1:]).min()) > 1e-3
    assert sample_fbm_davies_harte(1, 0.9, 1).shape == (1, 2)


# --- Cholesky -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["mandelbrot_van_ness", "riemann_liouville"])
@pytest.mark.parametrize("hurst", [0.15, 0.85])
def test_cholesky_sample_covariance(kind, hurst):
    gen = seeded(11)
    times = torch.cat([torch.zeros(1, dtype=F64),
                       torch.sort(2.0 * torch.rand(40, generator=gen, dtype=F64) + 1e-3).values])
    paths = sample_fbm_cholesky(times, hurst, NUM_PATHS, kind=kind, generator=seeded(12))
    assert paths.shape == (NUM_PATHS, 41) and bool((paths[:, 0] == 0).all())
    # Measured max |z| over the 820 entries: 2.5-3.1.
    assert max_abs_z(paths, fbm_covariance(times, hurst, kind)) < Z_BOUND


def test_cholesky_half_hurst_is_brownian_motion():
    times = torch.tensor([0.0, 0.5, 0.1, 2.0, 1.0], dtype=F64)  # unsorted on purpose
    paths = sample_fbm_cholesky(times, 0.5, NUM_PATHS, kind="II", generator=seeded(13))
    assert max_abs_z(paths, torch.minimum(times[:, None], times[None, :])) < Z_BOUND


def test_cholesky_repeated_times_get_jitter_not_failure():
    times = torch.tensor([0.5, 0.5, 1.0], dtype=F64)  # exactly singular covariance
    paths = sample_fbm_cholesky(times, 0.3, 1000, generator=seeded(14))
    assert bool(torch.isfinite(paths).all())
    # Columns at the same time coincide up to the square root of the (tiny) jitter.
    assert float((paths[:, 0] - paths[:, 1]).abs().max()) < 1e-3 * float(paths[:, 0].abs().max())
    # Only zeros: a single t = 0 gives a zero path and no factorisation.
    assert bool((sample_fbm_cholesky(torch.zeros(2, dtype=F64), 0.3, 3) == 0).all())


def test_dtype_and_device_follow_the_inputs():
    times32 = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float32)
    for kind in ("I", "II"):
        assert fbm_covariance(times32, 0.4, kind).dtype == torch.float32
        assert sample_fbm_cholesky(times32, 0.4, 3, kind=kind, generator=seeded(0)).dtype == torch.float32
    assert fbm_covariance([0.0, 1.0], 0.4).dtype == F64  # lists become float64
    assert fbm_covariance(torch.tensor([0, 1, 2]), 0.4).dtype == F64  # so do integer tensors
    assert sample_fbm_davies_harte(4, torch.tensor(0.4, dtype=torch.float32), 2).dtype == torch.float32
    assert sample_fbm_davies_harte(4, 0.4, 2).dtype == F64


# --- peer library -------------------------------------------------------------------------------------

def test_increment_variances_agree_with_the_fbm_package():
    import fbm  # the [test] extra installs it
    hurst, num_steps, num_paths = 0.3, 32, 2000
    state = np.random.get_state()  # the fbm package draws from numpy's global generator
    try:
        np.random.seed(21)
        peer = np.stack([fbm.FBM(num_steps, hurst, length=1.0, method="daviesharte").fbm()
                         for _ in range(num_paths)])
    finally:
        np.random.set_state(state)
    ours = sample_fbm_davies_harte(num_steps, hurst, num_paths, generator=seeded(22)).numpy()
    lags = np.arange(1, num_steps + 1)
    truth = (lags / num_steps) ** (2 * hurst)  # Var(B_{lag h}) = (lag h)^{2H}
    # Zero-mean variance estimates of B(lag h), each with standard error sqrt(2/n) * truth.
    var_peer, var_ours = (peer[:, 1:] ** 2).mean(0), (ours[:, 1:] ** 2).mean(0)
    stderr = truth * math.sqrt(2 / num_paths)
    assert np.abs((var_peer - truth) / stderr).max() < Z_BOUND
    assert np.abs((var_ours - truth) / stderr).max() < Z_BOUND
    assert np.abs((var_ours - var_peer) / (stderr * math.sqrt(2))).max() < Z_BOUND


# --- bad inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, name", [
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), 0.0), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), 1.0), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), -0.2), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), float("nan")), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), torch.tensor([0.3])), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), "0.3"), "hurst"),
    (lambda: fbm_covariance(torch.tensor([0.0, -1.0]), 0.3), "times"),
    (lambda: fbm_covariance(torch.tensor([0.0, float("inf")]), 0.3), "times"),
    (lambda: fbm_covariance(torch.ones(2, 2), 0.3), "times"),
    (lambda: fbm_covariance(torch.tensor([0.0, 1.0]), 0.3, kind="type_III"), "kind"),
    (lambda: sample_fbm_cholesky(torch.tensor([1.0]), 0.3, 0), "num_paths"),
    (lambda: sample_fbm_cholesky(torch.tensor([1.0]), 1.3, 2), "hurst"),
    (lambda: sample_fbm_cholesky(torch.tensor([1.0]), 0.3, 2, kind="fractional"), "kind"),
    (lambda: sample_fbm_davies_harte(0, 0.3, 2), "num_steps"),
    (lambda: sample_fbm_davies_harte(2.5, 0.3, 2), "num_steps"),
    (lambda: sample_fbm_davies_harte(8, 0.3, -1), "num_paths"),
    (lambda: sample_fbm_davies_harte(8, 1.0, 2), "hurst"),
    (lambda: sample_fbm_davies_harte(8, 0.3, 2, horizon=0.0), "horizon"),
    (lambda: sample_fbm_davies_harte(8, 0.3, 2, horizon=float("inf")), "horizon"),
])
def test_bad_inputs_raise_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
