"""MA-fBM weights, solvers and the fractional-SDE ELBO, against mpmath quadrature and exact Gaussian results."""

import math

import mpmath as mp
import pytest
import torch
from conftest import FULL

import bayeskit as bk
from bayeskit.models.fractional_sde import (
    MarkovFBM,
    optimal_weights,
    sample_fbm_davies_harte,
    sample_fou,
    solve,
    speed_grid,
)
from bayeskit.models.fractional_sde.linear import (
    fou_covariance,
    fou_log_likelihood,
    fou_system,
    gaussian_conditional,
    gaussian_log_likelihood,
    transition,
)
from bayeskit.models.fractional_sde.markov import (
    approximation_error,
    mvn_variance_factor,
    regularized_gamma_p,
    scaled_gamma_q,
)
from bayeskit.models.fractional_sde.model import (
    AffineControl,
    ConstantDiffusion,
    FractionalSDE,
    OrnsteinUhlenbeckDrift,
    gaussian_kl,
)

pytestmark = pytest.mark.usefixtures("one_thread")

GAMMAS = [0.05, 0.223606797749979, 1.0, 4.47213595499958, 20.0]  # K = 5, gamma_max = 20


# ----------------------------------------------------------------------------- mpmath references
def _mp_kernel(H, t, s):
    """The fBM kernels with 1/Gamma(H + 1/2): Riemann-Liouville on [0, t], Mandelbrot-van Ness on (-inf, t]."""
    a = H - mp.mpf(0.5)
    value = (t - s) ** a if s < t else 0
    if s < 0:
        value -= (-s) ** a
    return value / mp.gamma(H + mp.mpf(0.5))


def _mp_ou(gamma, t, s, kind):
    """Integrand of Y(t) - Y(0) (type I, stationary OU) or Y(t) (type II) against dW(s)."""
    value = mp.e ** (-gamma * (t - s)) if s <= t else 0
    if kind == "I" and s <= 0:
        value -= mp.e ** (gamma * s)
    return value


def _mp_quad_singular_at_0(f, T, power=5):
    """int_0^T f(u) du with u = w^power, which smooths the u^(2H - 1) singularity that tanh-sinh misjudges."""
    return mp.quad(lambda w: f(w**power) * power * w ** (power - 1), [0, T ** (1 / mp.mpf(power))])


def mp_normal_equations(H, T, kind):
    """A, b, c of the least-squares problem by quadrature of the defining integrals (no closed forms)."""
    H, T = mp.mpf(H), mp.mpf(T)
    lower = [-mp.inf, -1, 0] if kind == "I" else [0]

    def over_time(integrand):  # int_0^T int_{-inf or 0}^t integrand(t, s) ds dt, the noise integral inside
        return mp.quad(lambda t: mp.quad(lambda s: integrand(t, s), lower + [t]), [0, T])

    g = [mp.mpf(v) for v in GAMMAS]
    if kind == "I":  # the OU part is smooth: integrate its covariance over t in closed form inside
        A = mp.matrix(5, 5)
        for i in range(5):
            for j in range(5):
                A[i, j] = mp.quad(lambda t: (2 - mp.e ** (-g[i] * t) - mp.e ** (-g[j] * t)) / (g[i] + g[j]), [0, T])
    else:
        A = mp.matrix([[mp.quad(lambda u: (T - u) * mp.e ** (-(gi + gj) * u), [0, T]) for gj in g] for gi in g])
    if kind == "II":  # int_0^T int_0^t e^{-g(t-s)} k(t, s) ds dt = int_0^T (T - u) e^{-g u} u^a du / Gamma
        b = mp.matrix([_mp_quad_singular_at_0(lambda u: (T - u) * mp.e ** (-gk * u) * _mp_kernel(H, u, 0), T)
                       for gk in g])
        c = _mp_quad_singular_at_0(lambda u: (T - u) * _mp_kernel(H, u, 0) ** 2, T)
    else:
        b = mp.matrix([over_time(lambda t, s, gk=gk: _mp_ou(gk, t, s, "I") * _mp_kernel(H, t, s)) for gk in g])
        c = over_time(lambda t, s: _mp_kernel(H, t, s) ** 2)
    return A, b, c


@pytest.mark.parametrize("kind,hurst", [("II", 0.1), ("II", 0.3), ("II", 0.7), ("II", 0.9), ("I", 0.3),
                                        ("I", 0.7)])
def test_optimal_weights_match_mpmath_quadrature(kind, hurst):
    mp.mp.dps = 15 if kind == "II" else 10  # the type-I double integrals cost seconds at 15 digits
    A, b, c = mp_normal_equations(hurst, 1, kind)
    reference = mp.lu_solve(A, b)
    reference = torch.tensor([float(v) for v in reference], dtype=torch.float64)
    ours = optimal_weights(hurst, speed_grid(5, 20.0), 1.0, kind, normalize=False)
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=1e-7)
    # the relative integrated error 1 - b^T w / c, from the same quadrature
    error = 1 - float(mp.fsum(b[k] * reference[k].item() for k in range(5)) / c)
    assert float(approximation_error(hurst, speed_grid(5, 20.0), 1.0, kind)) == pytest.approx(error, rel=1e-5,
                                                                                               abs=1e-9)
    if kind == "I":  # c = V_H T^{2H+1} / (2H + 1): the variance factor of type-I fBM
        assert float(mvn_variance_factor(torch.tensor(hurst, dtype=torch.float64))) == pytest.approx(
            float(c) * (2 * hurst + 1), rel=1e-7)


def test_relative_error_of_the_authors_settings():
    """Type II at H = 0.7 is of order 1e-4 (K = 5, gamma_max = 20, T = 1); rougher paths are harder."""
    grid = speed_grid(5, 20.0)
    errors = {H: float(approximation_error(H, grid, 1.0, "II")) for H in (0.1, 0.3, 0.7)}
    assert 5e-5 < errors[0.7] < 5e-4
    assert errors[0.1] > errors[0.3] > errors[0.7]
    # more processes over a wider range help type I, which must capture the infinite past
    assert float(approximation_error(0.7, speed_grid(10, 200.0), 1.0, "I")) < float(
        approximation_error(0.7, grid, 1.0, "I"))


@pytest.mark.parametrize("a", [0.6, 1.2, 1.45])
@pytest.mark.parametrize("x", [0.3, 12.0, 99.0, 101.0, 700.0, 5000.0])
def test_scaled_upper_gamma_matches_mpmath(a, x):
    mp.mp.dps = 30
    reference = mp.gammainc(a, x, mp.inf, regularized=True) * mp.e**x
    at = torch.tensor(a, dtype=torch.float64, requires_grad=True)
    value = scaled_gamma_q(at, torch.tensor(x, dtype=torch.float64))
    assert float(value.detach()) == pytest.approx(float(reference), rel=1e-10)
    value.backward()
    slope = mp.diff(lambda s: mp.gammainc(s, x, mp.inf, regularized=True) * mp.e**x, a)
    assert float(at.grad) == pytest.approx(float(slope), rel=1e-6)


def test_regularized_lower_gamma_gradients_match_mpmath():
    mp.mp.dps = 30
    a = torch.tensor([0.8, 1.2, 2.2], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.05, 1.0, 20.0], dtype=torch.float64, requires_grad=True)
    regularized_gamma_p(a, x).sum().backward()
    for k in range(3):
        ak, xk = float(a[k]), float(x[k])
        assert float(a.grad[k]) == pytest.approx(float(mp.diff(lambda s: mp.gammainc(s, 0, xk, regularized=True), ak)),
                                                 rel=1e-6)
        assert float(x.grad[k]) == pytest.approx(float(mp.diff(lambda s: mp.gammainc(ak, 0, s, regularized=True), xk)),
                                                 rel=1e-8)


@pytest.mark.parametrize("kind", ["I", "II"])
def test_weights_are_differentiable_in_hurst(kind):
    grid = speed_grid(5, 20.0)
    check = lambda h: optimal_weights(h, grid, 2.0, kind)  # noqa: E731
    hurst = torch.tensor(0.62, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(check, (hurst,), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_optimal_weights_match_the_values_in_the_reference_notes():
    """A regression check against the weights quoted in the project's reference notes for K = 5, gamma_max = 20,
    T = 1 (fractional_sde_and_bae.md: evaluated there from the authors' formulas, not by this code, and not
    printed in the paper). The ground truth from first principles is the mpmath quadrature test of
    test_fractional_exact.py."""
    grid = speed_grid(5, 20.0)
    torch.testing.assert_close(optimal_weights(0.7, grid, 1.0, "II"),
                               torch.tensor([-0.93484, 3.26805, -1.77131, 0.11563, -0.31547], dtype=torch.float64),
                               atol=2e-5, rtol=0)
    torch.testing.assert_close(optimal_weights(0.7, grid, 1.0, "I", normalize=False),
                               torch.tensor([2.26197, -1.42064, 0.01979, -0.31070, -0.17701], dtype=torch.float64),
                               atol=2e-5, rtol=0)


def test_speed_grid_and_bad_input():
    torch.testing.assert_close(speed_grid(5, 20.0), torch.tensor(GAMMAS, dtype=torch.float64))
    with pytest.raises(ValueError, match="hurst"):
        optimal_weights(1.2, speed_grid(), 1.0)
    with pytest.raises(ValueError, match="kind"):
        MarkovFBM(0.5, kind="III")
    with pytest.raises(ValueError, match="num_processes"):
        speed_grid(0)
    with pytest.raises(ValueError, match="horizon"):
        MarkovFBM(0.5, horizon=0.0)


# ----------------------------------------------------------------------------- covariances and solvers
@pytest.mark.parametrize("kind", ["I", "II"])
def test_closed_form_covariance_equals_the_linear_sde_covariance(kind):
    """Two routes to Cov(B(t), B(s)): OU covariances in closed form, and Van Loan's exact transition."""
    fbm = MarkovFBM(0.35, kind=kind, horizon=2.0)
    times = torch.arange(41, dtype=torch.float64) * 0.05
    torch.testing.assert_close(fou_covariance(40, 0.05, 0.0, 1.0, fbm, scheme="exact"), fbm.covariance(times),
                               rtol=1e-9, atol=1e-11)


def _sample_covariance_z(samples, reference):
    """Entry-wise z-scores of a sample covariance of Gaussians against the true one."""
    n = samples.shape[0]
    centred = samples - samples.mean(0)
    sample_cov = centred.T @ centred / (n - 1)
    se = ((reference.diagonal()[:, None] * reference.diagonal()[None, :] + reference**2) / n).sqrt()
    return (sample_cov - reference) / se


@pytest.mark.parametrize("kind,method", [("I", "heun"), ("II", "euler"), ("I", "euler")])
def test_solver_paths_have_the_covariance_of_their_scheme(kind, method):
    """fOU paths (theta = 1.5, sigma = 0.7) from the solver against the exact covariance of the same chain."""
    fbm = MarkovFBM(0.7, kind=kind, horizon=1.0)
    num_paths, steps, dt = 20000, 40, 0.025
    generator = torch.Generator().manual_seed(1)
    x0 = torch.zeros(num_paths, 1, dtype=torch.float64)
    y0 = fbm.sample_initial((num_paths, 1), generator=generator)
    times = torch.arange(steps + 1, dtype=torch.float64) * dt
    paths = solve(lambda t, x: -1.5 * x, 0.7, fbm.weights(), fbm.gammas, x0, y0, times, method=method,
                  generator=generator)
    keep = torch.tensor([4, 10, 20, 40])
    reference = fou_covariance(steps, dt, 1.5, 0.7, fbm, scheme=method)[keep][:, keep]
    z = _sample_covariance_z(paths.x[keep, :, 0].T, reference)
    assert z.abs().max() < 4.5, z


def test_mafbm_approximates_exact_fbm_where_the_error_is_small():
    """Type II at H = 0.7 (relative integrated error 1e-4): MA-fBM covariance within 1% of Riemann-Liouville fBM,
    and the sample covariance of its paths matches fBM's; type I at H = 0.7 (error 10%) falls visibly short of
    standard fBM, as its error says."""
    from bayeskit.models.fractional_sde.exact import fbm_covariance

    times = torch.linspace(0.05, 1.0, 20, dtype=torch.float64)
    close = MarkovFBM(0.7, kind="II", horizon=1.0).covariance(times)
    exact = fbm_covariance(times, 0.7, kind="riemann_liouville")
    assert ((close - exact).abs() / exact.diagonal().max()).max() < 0.01
    # paths from the solver, against the exact fBM covariance itself: the approximation error is below the
    # Monte Carlo error of 20,000 paths
    fbm = MarkovFBM(0.7, kind="II", horizon=1.0)
    grid = torch.arange(101, dtype=torch.float64) * 0.01
    paths = solve(lambda t, x: torch.zeros_like(x), 1.0, fbm.weights(), fbm.gammas,
                  torch.zeros(20000, 1, dtype=torch.float64), torch.zeros(20000, 1, 5, dtype=torch.float64), grid,
                  generator=torch.Generator().manual_seed(5))
    keep = torch.tensor([10, 30, 60, 100])
    z = _sample_covariance_z(paths.x[keep, :, 0].T, fbm_covariance(grid[keep], 0.7, kind="riemann_liouville"))
    assert z.abs().max() < 4.5, z
    coarse = MarkovFBM(0.7, kind="I", horizon=1.0).covariance(times)
    ratio = coarse.diagonal() / fbm_covariance(times, 0.7, kind="mandelbrot_van_ness").diagonal()
    assert 0.8 < float(ratio.mean()) < 0.97


def test_heun_solves_the_stratonovich_equation_and_euler_the_ito_one():
    """dX = X o dB: the Stratonovich solution is exp(B) path by path; Ito's is exp(B - [B]/2)."""
    fbm = MarkovFBM(0.6, kind="II", horizon=1.0)
    num_paths, steps = 4000, 400
    times = torch.arange(steps + 1, dtype=torch.float64) / steps
    noise = torch.randn(steps, num_paths, 1, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ones, zeros = torch.ones(num_paths, 1, dtype=torch.float64), torch.zeros(num_paths, 1, 5, dtype=torch.float64)
    w, g = fbm.weights(), fbm.gammas
    driving = solve(lambda t, x: torch.zeros_like(x), 1.0, w, g, 0 * ones, zeros, times, noise=noise).x[-1]
    stratonovich = solve(lambda t, x: torch.zeros_like(x), lambda t, x: x, w, g, ones, zeros, times, noise=noise,
                         method="heun").x[-1]
    ito = solve(lambda t, x: torch.zeros_like(x), lambda t, x: x, w, g, ones, zeros, times, noise=noise,
                method="euler").x[-1]
    assert (stratonovich.log() - driving).abs().max() < 0.02
    quadratic_variation = float(w.sum()) ** 2  # [B](1) of the semimartingale sum_k w_k Y_k
    assert float((ito.log() - driving).mean()) == pytest.approx(-0.5 * quadratic_variation, rel=0.05)


def test_solver_refuses_bad_input():
    fbm = MarkovFBM(0.5)
    x0, y0 = torch.zeros(3, 1), torch.zeros(3, 1, 5)
    zero = lambda t, x: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="gamma_max"):
        solve(zero, 1.0, fbm.weights(), fbm.gammas, x0, y0, torch.linspace(0, 1, 11))
    with pytest.raises(ValueError, match="method"):
        solve(zero, 1.0, fbm.weights(), fbm.gammas, x0, y0, torch.linspace(0, 1, 101), method="rk4")
    with pytest.raises(ValueError, match="y0"):
        solve(zero, 1.0, fbm.weights(), fbm.gammas, x0, torch.zeros(3, 1, 4), torch.linspace(0, 1, 101))


# ----------------------------------------------------------------------------- the ELBO
def test_gaussian_kl_matches_torch():
    generator = torch.Generator().manual_seed(0)
    loc, prior_loc = torch.randn(4, 3, generator=generator), torch.randn(3, generator=generator)
    tril = torch.randn(4, 3, 3, generator=generator).tril() + 2 * torch.eye(3)
    root = torch.randn(3, 3, generator=generator)
    prior_cov = root @ root.T + torch.eye(3)
    expected = torch.distributions.kl_divergence(torch.distributions.MultivariateNormal(loc, scale_tril=tril),
                                                 torch.distributions.MultivariateNormal(prior_loc, prior_cov))
    torch.testing.assert_close(gaussian_kl(loc, tril, prior_loc, prior_cov), expected)


def _bridge(hurst=0.7, theta=1.0, steps=100, horizon=2.0, noise_scale=0.1, control=None, method="euler"):
    fbm = MarkovFBM(hurst, kind="I", horizon=horizon)
    model = FractionalSDE(OrnsteinUhlenbeckDrift(theta, learn_theta=False), ConstantDiffusion(1.0, learn=False),
                          fbm, control=control, observation_scale=noise_scale, dt=horizon / steps, method=method)
    return model.double(), fbm


def _set_optimal_bridge_posterior(model, fbm, theta, y, steps, dt, noise_scale):
    """The exact posterior of the Euler chain given one observation at the end, in the model's family.

    The chain is z' = Phi z + G (dW + u dt). Given z_n, the posterior of dW is Gaussian with mean
    a (y - r^T Phi z) / (v + a^2 dt) * dt, where r^T = e_0^T Phi^(N-n-1), v = Var(x_N | z_{n+1}) + s^2
    and a = r^T G; its variance dt / (1 + a^2 dt / v) is below dt, so a mean-shift control matches the
    mean exactly and leaves a known KL per step: (eps - log(1 + eps)) / 2 with eps = a^2 dt / v.
    Returns that total gap.
    """
    F, G = fou_system(theta, 1.0, fbm)
    phi, Q = transition(F, G, dt, "euler")
    e0 = torch.eye(F.shape[0], dtype=torch.float64)[0]
    rows, remaining = [e0], [torch.zeros((), dtype=torch.float64)]  # e_0^T Phi^k and e_0^T Q_k e_0
    for _ in range(steps):
        remaining.append(remaining[-1] + rows[-1] @ Q @ rows[-1])
        rows.append(rows[-1] @ phi)
    gap = 0.0
    with torch.no_grad():
        for n in range(steps):
            k = steps - n - 1
            r, v = rows[k], remaining[k] + noise_scale**2
            a = r @ G
            model.control.offset[0, n, 0] = a * y / (v + a**2 * dt)
            model.control.gain[n, 0] = -a * (r @ phi) / (v + a**2 * dt)
            eps = a**2 * dt / v
            gap += 0.5 * float(eps - torch.log1p(eps))
        # q(Y0) = p(Y0 | y): Y0 is stationary N(0, S); y = r_N^T z_0 + (chain noise) + (observation noise)
        S = fbm.initial_covariance()
        r = rows[steps][1:]
        variance = r @ S @ r + remaining[steps] + noise_scale**2
        cov = S - torch.outer(S @ r, S @ r) / variance
        model.initial_loc[0, 0] = S @ r * y / variance
        model.initial_tril[0, 0] = torch.linalg.cholesky(cov)
    return gap


def test_elbo_at_the_exact_posterior_equals_the_exact_log_likelihood_minus_the_known_gap(float64):
    """Girsanov term, likelihood, initial KL and controlled solver together: with the exact posterior mean
    control the ELBO is log p(y) (exact, Gaussian) minus a deterministic gap, within Monte Carlo error."""
    steps, horizon, theta, noise_scale, y = 100, 2.0, 1.0, 0.1, 0.8
    dt = horizon / steps
    model, fbm = _bridge(theta=theta, steps=steps, control=AffineControl(steps, 1, 5))
    gap = _set_optimal_bridge_posterior(model, fbm, theta, y, steps, dt, noise_scale)
    observations, times = torch.tensor([[[y]]]), torch.tensor([horizon])
    with torch.no_grad():
        draws = torch.stack([model.elbo(observations, times, num_samples=1024,
                                        generator=torch.Generator().manual_seed(s))["elbo"][0] for s in range(4)])
    cov = fou_covariance(steps, dt, theta, 1.0, fbm, scheme="euler")
    exact = float(gaussian_log_likelihood(cov, torch.tensor([steps]), torch.tensor([y]), noise_scale))
    se = float(draws.std()) / 2  # four means of 1024 paths each
    assert 0 < gap < 0.5
    assert abs(float(draws.mean()) - (exact - gap)) < 4 * se + 1e-3, (float(draws.mean()), exact, gap, se)
    # a control that is off by 20% gives a visibly lower ELBO
    with torch.no_grad():
        model.control.offset.mul_(0.8)
        worse = model.elbo(observations, times, num_samples=1024, generator=torch.Generator().manual_seed(9))
    assert float(worse["elbo"][0]) < exact - gap - 10 * se


def test_exact_posterior_control_gives_the_gaussian_conditional_sd(float64):
    """Paths under the optimal control of the bridge have the sd of the analytic Gaussian-process conditional."""
    steps, horizon, theta, noise_scale = 200, 2.0, 0.5, 0.1
    dt = horizon / steps
    model, fbm = _bridge(theta=theta, steps=steps, control=AffineControl(steps, 1, 5))
    _set_optimal_bridge_posterior(model, fbm, theta, 0.0, steps, dt, noise_scale)
    post = model.posterior_paths(torch.zeros(1, 1, 1), torch.tensor([horizon]), num_paths=4096)
    sd = post.samples["x"][0, :, 0, :, 0].std(0)
    cov = fou_covariance(steps, dt, theta, 1.0, fbm, scheme="exact")
    _, exact_sd = gaussian_conditional(cov, torch.tensor([steps]), torch.zeros(1), noise_scale)
    inside = slice(10, steps - 10)  # the last steps carry the mean-shift family's O(dt) variance gap
    ratio = sd[inside] / exact_sd[inside]
    assert (ratio - 1).abs().max() < 0.05, ratio


def test_model_refuses_bad_input():
    model = FractionalSDE(OrnsteinUhlenbeckDrift(), 1.0, MarkovFBM(0.5), dt=0.01)
    with pytest.raises(ValueError, match="multiple of dt"):
        model.elbo(torch.zeros(1, 1, 1), torch.tensor([0.015]))
    with pytest.raises(ValueError, match="observations must be"):
        model.elbo(torch.zeros(2, 1, 1), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="NaN"):
        model.elbo(torch.full((1, 1, 1), math.nan), torch.tensor([0.5]))
    with pytest.raises(TypeError, match="MarkovFBM"):
        FractionalSDE(OrnsteinUhlenbeckDrift(), 1.0, 0.7)
    with pytest.raises(ValueError, match="theta"):
        OrnsteinUhlenbeckDrift(-1.0)


def _driftless_data(hurst, num_series, *, dt=0.01, every=5, horizon=2.0, noise=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    steps = round(horizon / dt)
    paths = sample_fbm_davies_harte(steps, hurst, num_series, horizon=horizon, generator=generator)
    index = torch.arange(every, steps + 1, every)
    y = paths[:, index] + noise * torch.randn(num_series, len(index), generator=generator, dtype=torch.float64)
    return y, index


@pytest.mark.parametrize("hurst", [0.3, 0.7])
def test_the_guide_alone_is_nearly_the_exact_posterior_of_a_driftless_model(float64, hurst):
    """Before any training, the default control's guide gives an ELBO within a nat or so of the exact
    log-likelihood of the simulated (Euler) chain, and never above it: 2 series of 40 noisy observations."""
    y, index = _driftless_data(hurst, 2)
    fbm = MarkovFBM(hurst, kind="I", horizon=2.0)
    model = FractionalSDE(lambda t, x: torch.zeros_like(x), ConstantDiffusion(1.0, learn=False), fbm, num_series=2,
                          observation_scale=0.05, dt=0.01, method="euler")
    with torch.no_grad():
        draws = torch.stack([model.elbo(y.unsqueeze(-1), index * 0.01, num_samples=256,
                                        generator=torch.Generator().manual_seed(s))["elbo"].sum() for s in range(4)])
    exact = float(fou_log_likelihood(y, index, 0.01, 0.0, 1.0, fbm, 0.05, scheme="euler"))
    se = float(draws.std()) / 2
    gap = exact - float(draws.mean())
    assert gap > -4 * se  # a lower bound
    assert gap < 2.0, (gap, se)  # against 35 nats (H = 0.7) and 700 (H = 0.3) for the guide without its narrowed step


@pytest.mark.slow
@pytest.mark.parametrize("hurst,theta", [(0.3, 0.0), (0.7, 1.0)])
def test_fitted_bridge_has_the_exact_conditional_sd(hurst, theta):
    """The authors' fOU bridge (X(0) = 0, X(2) = 0 observed with sd 0.1, type I, K = 5, gamma_max = 20, T = 6):
    the sd of the fitted posterior paths follows the analytic Gaussian-process conditional (mean relative
    error over the interior within 5%), and the ELBO comes within a few tenths of a nat of log p(y)."""
    torch.manual_seed(0)
    steps = 100
    fbm = MarkovFBM(hurst, kind="I", horizon=6.0)
    drift = OrnsteinUhlenbeckDrift(theta, learn_theta=False) if theta else (lambda t, x: torch.zeros_like(x))
    model = FractionalSDE(drift, ConstantDiffusion(1.0, learn=False), fbm, observation_scale=0.1, dt=0.02,
                          method="euler").double()
    y, at = torch.zeros(1, 1, 1, dtype=torch.float64), torch.tensor([2.0], dtype=torch.float64)
    fit = model.fit(y, at, num_steps=1000 if FULL else 120, num_samples=32, lr=1e-2, seed=0, progress=False)
    # 2,048 paths, not 256: the sd of 256 carries a 4.4% Monte Carlo error of its own (tutorial 07 reports both)
    sd = model.posterior_paths(y, at, num_paths=2048, seed=1).samples["x"][0, :, 0, :, 0].std(0)
    cov = fou_covariance(steps, 0.02, theta, 1.0, fbm, scheme="exact")
    _, exact_sd = gaussian_conditional(cov, torch.tensor([steps]), torch.zeros(1, dtype=torch.float64), 0.1)
    ratio = sd[5:95] / exact_sd[5:95]
    # 120 steps (CI) leave the fit short of its optimum: over fit seeds 0-3 the mean error was 1-12% (7% with
    # lr 0.03), so CI asserts 15%; the full 1,000 steps assert the 5% of the docstring.
    assert float((ratio - 1).abs().mean()) < (0.05 if FULL else 0.15), ratio
    exact = float(gaussian_log_likelihood(fou_covariance(steps, 0.02, theta, 1.0, fbm, scheme="euler"),
                                          torch.tensor([steps]), torch.zeros(1), 0.1))
    assert exact - float(-fit.trace["loss"][-40:].mean()) < 0.5


def _fou_data(hurst, num_series, *, theta=1.0, sigma=1.0, horizon=2.0, dt=0.01, every=5, noise=0.05, seed=0):
    """fOU paths driven by exact Riemann-Liouville fBM, observed with noise on a grid."""
    generator = torch.Generator().manual_seed(seed)
    steps = round(horizon / dt)
    x = sample_fou(num_series, hurst, theta=theta, sigma=sigma, horizon=horizon, num_steps=steps, generator=generator)
    index = torch.arange(every, steps + 1, every)
    return x[:, index] + noise * torch.randn(num_series, len(index), generator=generator, dtype=torch.float64), index


def _exact_hurst_estimate(y, index, scheme):
    """Maximum of the exact MA-fBM likelihood (of the continuous model, or of the Euler chain) over H, theta, sigma."""
    fbm = MarkovFBM(0.5, kind="II", horizon=2.0, learn_hurst=True)
    logs = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # log theta, log sigma
    optimizer = torch.optim.LBFGS([fbm.hurst_logit, logs], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = -fou_log_likelihood(y, index, 0.01, logs[0].exp(), logs[1].exp(), fbm, 0.05, scheme=scheme)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(fbm.hurst.detach())


@pytest.mark.slow
@pytest.mark.parametrize("true_hurst", [0.3, 0.7])
def test_hurst_index_is_recovered_from_fou_data(true_hurst):
    """H, theta and sigma learnt by the ELBO (type II, K = 5, gamma_max = 20, Euler steps of 0.01) from fOU
    paths driven by exact fBM, observed every 0.05 on [0, 2] with noise sd 0.05. The estimate agrees with the
    exact maximum-likelihood estimate of the same discretised model on the same data (the best the ELBO can
    do), and at full size (32 series) lies within 0.05 of the truth."""
    num_series, steps = (32, 300) if FULL else (16, 40)
    y, index = _fou_data(true_hurst, num_series)
    model = FractionalSDE(OrnsteinUhlenbeckDrift(0.5), ConstantDiffusion(0.5),
                          MarkovFBM(0.5, kind="II", horizon=2.0, learn_hurst=True), num_series=num_series,
                          observation_scale=0.05, dt=0.01, method="euler")
    fit = model.fit(y.unsqueeze(-1).float(), index * 0.01, num_steps=steps, num_samples=4, lr=1e-2, prior_lr=0.05,
                    seed=0, progress=False)
    estimate = float(fit.trace["hurst"][-20:].mean())
    reference = _exact_hurst_estimate(y, index, "euler")
    assert abs(estimate - reference) < 0.05, (estimate, reference)
    assert abs(estimate - true_hurst) < (0.05 if FULL else 0.1), (estimate, reference)


def test_posterior_paths_export_to_arviz_and_netcdf(tmp_path):
    fbm = MarkovFBM(0.6, horizon=1.0)
    model = FractionalSDE(OrnsteinUhlenbeckDrift(), ConstantDiffusion(0.8), fbm, num_series=2, dt=0.02)
    y, times = torch.zeros(2, 5, 1), torch.arange(1, 6) * 0.2
    post = model.posterior_paths(y, times, num_paths=16, seed=3)
    assert post.samples["x"].shape == (1, 16, 2, 51, 1)
    assert post.coords["time"][-1] == pytest.approx(1.0)
    tree = post.to_arviz()
    assert set(tree["posterior"]["x"].dims) == {"chain", "draw", "series", "time", "state"}
    post.save(tmp_path / "paths.nc")
    back = bk.load(tmp_path / "paths.nc")
    torch.testing.assert_close(back.samples["x"], post.samples["x"])
    assert back.meta["hurst"] == pytest.approx(0.6)
    # the same seed gives the same paths; the prior paths start from X(0) = 0
    torch.testing.assert_close(model.posterior_paths(y, times, num_paths=16, seed=3).samples["x"], post.samples["x"])
    assert float(model.prior_paths(1.0, num_paths=8).samples["x"][0, :, 0, 0].abs().max()) == 0.0


def test_sample_fou_is_the_ou_recursion_on_exact_fbm():
    from bayeskit.models.fractional_sde import sample_fbm_cholesky

    grid = torch.arange(41, dtype=torch.float64) * 0.05
    driving = sample_fbm_cholesky(grid, 0.3, 6, kind="riemann_liouville", generator=torch.Generator().manual_seed(4))
    paths = sample_fou(6, 0.3, theta=2.0, sigma=0.5, horizon=2.0, num_steps=40,
                       generator=torch.Generator().manual_seed(4))
    expected = torch.zeros(6, dtype=torch.float64)
    for k in range(40):
        expected = expected * (1 - 2.0 * 0.05) + 0.5 * (driving[:, k + 1] - driving[:, k])
    torch.testing.assert_close(paths[:, -1], expected)
    torch.testing.assert_close(paths[:, 0], torch.zeros(6, dtype=torch.float64))
