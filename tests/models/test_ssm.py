"""State-space models: the Kalman filter/smoother against a dense joint-Gaussian computation and against the
particles library; the densities of the nonlinear models against scipy; parameters, validation, simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayeskit.models.ssm import KalmanResult, LinearGaussianSSM, NonlinearGrowth, StochasticVolatility

TOL = dict(rtol=1e-8, atol=1e-8)


# ------------------------------------------------------------------ dense ground truth
def _random_spd(rng, n, scale=1.0):
    B = rng.normal(size=(n, n))
    return scale * (B @ B.T / n + 0.3 * np.eye(n))


def _random_lgssm(rng, obs_dim, state_dim=2):
    """Parameters with a non-symmetric A, correlated Q and R, a non-zero m0 and a P0 other than Q."""
    A = rng.normal(size=(state_dim, state_dim))
    A *= 0.9 / max(abs(np.linalg.eigvals(A)))
    return dict(A=A, C=rng.normal(size=(obs_dim, state_dim)), Q=_random_spd(rng, state_dim, 0.5),
                R=_random_spd(rng, obs_dim, 0.3), m0=rng.normal(size=state_dim), P0=_random_spd(rng, state_dim, 2.0))


def _dense_joint(A, C, Q, R, m0, P0, T):
    """Mean and covariance of the stacked states x_{0:T-1} and of y_{0:T-1}, and the observation map.

    The states are x = mu_x + M e with e = (e_0, ..., e_{T-1}) independent, e_0 ~ N(0, P0), e_t ~ N(0, Q),
    and M the block lower-triangular matrix with blocks A^{t-s}; y = H x + w, H = I_T (x) C.
    """
    d = A.shape[0]
    powers = [np.linalg.matrix_power(A, k) for k in range(T)]
    M = np.zeros((T * d, T * d))
    for t in range(T):
        for s in range(t + 1):
            M[t * d:(t + 1) * d, s * d:(s + 1) * d] = powers[t - s]
    mu_x = np.concatenate([powers[t] @ m0 for t in range(T)])
    E = np.zeros((T * d, T * d))
    for t in range(T):
        E[t * d:(t + 1) * d, t * d:(t + 1) * d] = P0 if t == 0 else Q
    Sxx = M @ E @ M.T
    H = np.kron(np.eye(T), C)
    Syy = H @ Sxx @ H.T + np.kron(np.eye(T), R)
    return mu_x, Sxx, H, Syy


def _dense_posterior(params, y):
    """E[x | y], Cov(x | y) (stacked) and log p(y), by conditioning the joint Gaussian directly."""
    T = y.shape[0]
    mu_x, Sxx, H, Syy = _dense_joint(**params, T=T)
    Sxy = Sxx @ H.T
    residual = y.reshape(-1) - H @ mu_x
    mean = mu_x + Sxy @ np.linalg.solve(Syy, residual)
    cov = Sxx - Sxy @ np.linalg.solve(Syy, Sxy.T)
    _, logdet = np.linalg.slogdet(Syy)
    log_lik = -0.5 * (residual @ np.linalg.solve(Syy, residual) + logdet + len(residual) * math.log(2 * math.pi))
    return mean, cov, log_lik


def _model(params, **kw):
    return LinearGaussianSSM(*(torch.tensor(params[k]) for k in ("A", "C", "Q", "R")),
                             m0=torch.tensor(params["m0"]), P0=torch.tensor(params["P0"]), **kw)


def _simulated(params, T, seed):
    rng = np.random.default_rng(seed + 1000)
    mu_x, Sxx, H, Syy = _dense_joint(**params, T=T)
    p = params["C"].shape[0]
    return rng.multivariate_normal(H @ mu_x, Syy).reshape(T, p)


# ---------------------------------------------------------------------- Kalman tests
@pytest.mark.parametrize("obs_dim, T, seed", [(1, 7, 0), (2, 6, 1), (2, 8, 2)])
def test_kalman_against_dense_conditioning(float64, obs_dim, T, seed):
    params = _random_lgssm(np.random.default_rng(seed), obs_dim)
    y = _simulated(params, T, seed)
    d = 2
    mean, cov, log_lik = _dense_posterior(params, y)
    result = _model(params).kalman(torch.tensor(y))
    assert isinstance(result, KalmanResult)
    assert result.smoothed_means.shape == (T, d) and result.smoothed_covs.shape == (T, d, d)
    assert result.lag_one_covs.shape == (T - 1, d, d)

    np.testing.assert_allclose(float(result.log_likelihood), log_lik, **TOL)
    _, _, H, Syy = _dense_joint(**params, T=T)
    mu_y = H @ _dense_joint(**params, T=T)[0]
    np.testing.assert_allclose(float(result.log_likelihood),
                               stats.multivariate_normal(mu_y, Syy).logpdf(y.reshape(-1)), **TOL)

    np.testing.assert_allclose(result.smoothed_means.numpy(), mean.reshape(T, d), **TOL)
    blocks = cov.reshape(T, d, T, d)
    np.testing.assert_allclose(result.smoothed_covs.numpy(), np.stack([blocks[t, :, t] for t in range(T)]), **TOL)
    # Cov(x_t, x_{t+1} | y): rows index x_t, columns x_{t+1} (A is not symmetric, so orientation matters)
    lag_one = np.stack([blocks[t, :, t + 1] for t in range(T - 1)])
    assert np.abs(lag_one - lag_one.transpose(0, 2, 1)).max() > 1e-3
    np.testing.assert_allclose(result.lag_one_covs.numpy(), lag_one, **TOL)

    # filtering laws: the dense posterior of x_t given y_{0:t} only
    for t in range(T):
        mean_t, cov_t, _ = _dense_posterior(params, y[:t + 1])
        np.testing.assert_allclose(result.filtered_means[t].numpy(), mean_t[t * d:(t + 1) * d], **TOL)
        np.testing.assert_allclose(result.filtered_covs[t].numpy(), cov_t[t * d:(t + 1) * d, t * d:(t + 1) * d],
                                   **TOL)

    # the smoothing functionals that PaRIS estimates
    np.testing.assert_allclose(result.state_sum().numpy(), mean.reshape(T, d).sum(0), **TOL)
    second = cov + np.outer(mean, mean)  # E[x x^T | y], stacked
    cross = sum(second.reshape(T, d, T, d)[t, :, t + 1] for t in range(T - 1))
    np.testing.assert_allclose(result.cross_sum().numpy(), cross, **TOL)


def test_kalman_default_initial_law_and_single_step(float64):
    params = _random_lgssm(np.random.default_rng(3), 1)
    model = LinearGaussianSSM(*(torch.tensor(params[k]) for k in ("A", "C", "Q", "R")))  # m0 = 0, P0 = Q
    y = _simulated({**params, "m0": np.zeros(2), "P0": params["Q"]}, 5, 3)
    mean, _, log_lik = _dense_posterior({**params, "m0": np.zeros(2), "P0": params["Q"]}, y)
    result = model.kalman(torch.tensor(y[:, 0]))  # (T,) is accepted when obs_dim is 1
    np.testing.assert_allclose(float(result.log_likelihood), log_lik, **TOL)
    np.testing.assert_allclose(result.smoothed_means.numpy().reshape(-1), mean, **TOL)

    one = model.kalman(torch.tensor(y[:1]))
    assert one.lag_one_covs.shape == (0, 2, 2)
    torch.testing.assert_close(one.cross_sum(), torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(one.smoothed_means, one.filtered_means)


def test_kalman_is_float64_from_a_float32_model():
    params = _random_lgssm(np.random.default_rng(4), 2)
    y = _simulated(params, 6, 4)
    result = _model({k: v.astype(np.float32) for k, v in params.items()}).kalman(torch.tensor(y, dtype=torch.float32))
    assert result.log_likelihood.dtype == torch.float64
    _, _, log_lik = _dense_posterior(params, y)
    np.testing.assert_allclose(float(result.log_likelihood), log_lik, rtol=1e-5)


def test_kalman_rejects_bad_observations(float64):
    model = _model(_random_lgssm(np.random.default_rng(5), 2))
    with pytest.raises(TypeError, match="y"):
        model.kalman(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="y"):
        model.kalman(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="non-finite"):
        model.kalman(torch.tensor([[0.0, 1.0], [math.nan, 0.0]]))


def _particles_kalman(ssm, y):
    kalman = pytest.importorskip("particles.kalman")
    kf = kalman.Kalman(ssm=ssm, data=y)
    kf.smoother()
    return kf


def test_kalman_against_particles_1d(float64):
    kalman = pytest.importorskip("particles.kalman")
    rho, sigma_x, sigma_y, sigma_0 = 0.8, 0.7, 0.5, 1.3
    y = np.random.default_rng(6).normal(size=(8, 1))
    kf = _particles_kalman(kalman.LinearGauss(rho=rho, sigmaX=sigma_x, sigmaY=sigma_y, sigma0=sigma_0), y)
    result = LinearGaussianSSM(rho, 1.0, sigma_x ** 2, sigma_y ** 2, P0=sigma_0 ** 2).kalman(torch.tensor(y))
    np.testing.assert_allclose(float(result.log_likelihood), sum(float(np.sum(v)) for v in kf.logpyt), **TOL)
    np.testing.assert_allclose(result.filtered_means.numpy(), np.stack([f.mean for f in kf.filt]), **TOL)
    np.testing.assert_allclose(result.filtered_covs.numpy(), np.stack([f.cov for f in kf.filt]), **TOL)
    np.testing.assert_allclose(result.smoothed_means.numpy(), np.stack([s.mean for s in kf.smth]), **TOL)
    np.testing.assert_allclose(result.smoothed_covs.numpy(), np.stack([s.cov for s in kf.smth]), **TOL)


def test_kalman_against_particles_multivariate(float64):
    kalman = pytest.importorskip("particles.kalman")
    params = _random_lgssm(np.random.default_rng(7), 2)
    y = _simulated(params, 7, 7)
    ssm = kalman.MVLinearGauss(F=params["A"], G=params["C"], covX=params["Q"], covY=params["R"],
                               mu0=params["m0"], cov0=params["P0"])
    kf = _particles_kalman(ssm, y)
    result = _model(params).kalman(torch.tensor(y))
    np.testing.assert_allclose(float(result.log_likelihood), sum(float(np.sum(v)) for v in kf.logpyt), **TOL)
    np.testing.assert_allclose(result.smoothed_means.numpy(), np.stack([s.mean for s in kf.smth]), **TOL)
    np.testing.assert_allclose(result.smoothed_covs.numpy(), np.stack([s.cov for s in kf.smth]), **TOL)


# --------------------------------------------------- densities of the nonlinear models
def _points(shape, seed, scale=1.5):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_stochastic_volatility_densities(float64):
    mu, phi, sigma = -0.7, 0.93, 0.25
    model = StochasticVolatility(mu=mu, phi=phi, sigma=sigma)
    x_prev, x = _points((3, 5, 1), 0) + mu, _points((3, 5, 1), 1) + mu
    y_t = torch.tensor([0.4])
    xp, xn = x_prev.numpy()[..., 0], x.numpy()[..., 0]

    log_q = model.transition(4, x_prev).log_prob(x)
    assert log_q.shape == (3, 5)
    np.testing.assert_allclose(log_q.numpy(), stats.norm.logpdf(xn, mu + phi * (xp - mu), sigma), **TOL)
    np.testing.assert_allclose(model.transition_log_prob(4, x_prev, x).numpy(), log_q.numpy(), **TOL)
    np.testing.assert_allclose(model.observation(4, x).log_prob(y_t).numpy(),
                               stats.norm.logpdf(0.4, 0.0, np.exp(xn / 2)), **TOL)
    stationary_sd = sigma / math.sqrt(1 - phi ** 2)
    np.testing.assert_allclose(model.initial().log_prob(x).numpy(), stats.norm.logpdf(xn, mu, stationary_sd), **TOL)
    assert model.initial().event_shape == (1,) and model.initial().batch_shape == ()
    assert model.state_dim == model.obs_dim == 1


def test_stochastic_volatility_matches_particles_stochvol(float64):
    ssms = pytest.importorskip("particles.state_space_models")
    mu, rho, sigma = -1.02, 0.9702, 0.178
    reference = ssms.StochVol(mu=mu, rho=rho, sigma=sigma)
    model = StochasticVolatility(mu=mu, phi=rho, sigma=sigma)
    x_prev, x = _points((40, 1), 2) + mu, _points((40, 1), 3) + mu
    xp, xn = x_prev.numpy()[:, 0], x.numpy()[:, 0]
    np.testing.assert_allclose(model.initial().log_prob(x).numpy(), reference.PX0().logpdf(xn), **TOL)
    np.testing.assert_allclose(model.transition(1, x_prev).log_prob(x).numpy(), reference.PX(1, xp).logpdf(xn), **TOL)
    np.testing.assert_allclose(model.observation(1, x).log_prob(torch.tensor([-0.8])).numpy(),
                               reference.PY(1, xp, xn).logpdf(-0.8), **TOL)


def test_nonlinear_growth_densities(float64):
    sigma_v, sigma_w = 2.5, 0.7
    model = NonlinearGrowth(sigma_v=sigma_v, sigma_w=sigma_w)
    x_prev, x = _points((3, 5, 1), 4, 5.0), _points((3, 5, 1), 5, 5.0)
    xp, xn = x_prev.numpy()[..., 0], x.numpy()[..., 0]
    t = 3
    loc = xp / 2 + 25 * xp / (1 + xp ** 2) + 8 * np.cos(1.2 * t)
    log_q = model.transition(t, x_prev).log_prob(x)
    assert log_q.shape == (3, 5)
    np.testing.assert_allclose(log_q.numpy(), stats.norm.logpdf(xn, loc, sigma_v), **TOL)
    np.testing.assert_allclose(model.observation(t, x).log_prob(torch.tensor([2.0])).numpy(),
                               stats.norm.logpdf(2.0, xn ** 2 / 20, sigma_w), **TOL)
    np.testing.assert_allclose(model.initial().log_prob(x).numpy(), stats.norm.logpdf(xn, 0.0, math.sqrt(5.0)), **TOL)


def test_stochastic_volatility_initial_law_is_stationary(float64):
    phi, sigma, mu = 0.9, 0.3, -1.0
    model = StochasticVolatility(mu=mu, phi=phi, sigma=sigma)
    v = float(model.initial().variance)
    assert phi ** 2 * v + sigma ** 2 == pytest.approx(v, rel=1e-12)
    assert v == pytest.approx(sigma ** 2 / (1 - phi ** 2), rel=1e-12)
    # Monte Carlo: the law of x_t stays N(mu, v) along the chain (20,000 independent chains, 25 steps)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        x = model.initial().sample((20000,))
        for t in range(1, 26):
            x = model.transition(t, x).sample()
    assert float(x.mean()) == pytest.approx(mu, abs=0.03)
    assert float(x.var()) == pytest.approx(v, rel=0.05)


@pytest.mark.parametrize("model", [
    StochasticVolatility(mu=-0.5, phi=0.95, sigma=0.2),
    NonlinearGrowth(sigma_v=1.7, sigma_w=0.5),
    LinearGaussianSSM([[0.5, 0.2], [-0.1, 0.8]], [[1.0, 0.0]], [[0.6, 0.2], [0.2, 0.3]], 0.4),
], ids=["sv", "growth", "lgssm"])
def test_transition_log_bound_is_the_supremum(model):
    d = model.state_dim
    x_prev, x = _points((4, 50, d), 6, 3.0), _points((4, 50, d), 7, 3.0)
    bound = model.transition_log_bound(2)
    assert torch.all(model.transition_log_prob(2, x_prev, x) <= bound + 1e-6)
    # attained at the mode, x = E[x_t | x_prev]
    law = model.transition(2, x_prev)
    torch.testing.assert_close(law.log_prob(law.mean), bound.expand(4, 50), rtol=1e-6, atol=1e-6)


def test_linear_gaussian_bound_with_a_factor_of_negative_diagonal(float64):
    model = LinearGaussianSSM(np.eye(2) * 0.5, np.ones((1, 2)), [[0.6, 0.2], [0.2, 0.3]], 0.4, learn=("Q",))
    with torch.no_grad():
        model.Q[:, 1].mul_(-1.0)  # flipping a column of L keeps Q = L L^T, with a negative diagonal entry
    assert float(model.Q.detach()[1, 1]) < 0
    np.testing.assert_allclose(model.covariance("Q").detach().numpy(), [[0.6, 0.2], [0.2, 0.3]], **TOL)
    x_prev = _points((3, 2), 8)
    with torch.no_grad():
        law = model.transition(1, x_prev)
        torch.testing.assert_close(law.log_prob(law.mean), model.transition_log_bound(1).expand(3))
        np.testing.assert_allclose(law.log_prob(x_prev).numpy(), stats.multivariate_normal(
            np.zeros(2), [[0.6, 0.2], [0.2, 0.3]]).logpdf(x_prev.numpy() - law.mean.numpy()), **TOL)


# --------------------------------------------------------------------- log_joint
def test_log_joint_stochastic_volatility_by_hand(float64):
    mu, phi, sigma = -0.3, 0.8, 0.4
    model = StochasticVolatility(mu=mu, phi=phi, sigma=sigma)
    x, y = _points((3, 6, 1), 9) + mu, _points((6, 1), 10)
    xn, yn = x.numpy()[..., 0], y.numpy()[:, 0]
    expected = (stats.norm.logpdf(xn[:, 0], mu, sigma / math.sqrt(1 - phi ** 2))
                + stats.norm.logpdf(xn[:, 1:], mu + phi * (xn[:, :-1] - mu), sigma).sum(1)
                + stats.norm.logpdf(yn, 0.0, np.exp(xn / 2)).sum(1))
    np.testing.assert_allclose(model.log_joint(x, y).numpy(), expected, **TOL)


def test_log_joint_nonlinear_growth_by_hand(float64):
    model = NonlinearGrowth(sigma_v=1.5, sigma_w=0.8)
    x, y = _points((2, 5, 1), 11, 4.0), _points((5, 1), 12, 2.0)
    xn, yn = x.numpy()[..., 0], y.numpy()[:, 0]
    t = np.arange(1, 5)
    loc = xn[:, :-1] / 2 + 25 * xn[:, :-1] / (1 + xn[:, :-1] ** 2) + 8 * np.cos(1.2 * t)
    expected = (stats.norm.logpdf(xn[:, 0], 0.0, math.sqrt(5.0)) + stats.norm.logpdf(xn[:, 1:], loc, 1.5).sum(1)
                + stats.norm.logpdf(yn, xn ** 2 / 20, 0.8).sum(1))
    np.testing.assert_allclose(model.log_joint(x, y).numpy(), expected, **TOL)
    # a single time step has no transition term
    np.testing.assert_allclose(model.log_joint(x[:, :1], y[:1]).numpy(),
                               stats.norm.logpdf(xn[:, 0], 0.0, math.sqrt(5.0))
                               + stats.norm.logpdf(yn[0], xn[:, 0] ** 2 / 20, 0.8), **TOL)


def test_log_joint_linear_gaussian_against_dense_joint(float64):
    params = _random_lgssm(np.random.default_rng(13), 2)
    T, d = 5, 2
    mu_x, Sxx, H, _ = _dense_joint(**params, T=T)
    x, y = _points((3, T, d), 14), _points((T, 2), 15)
    expected = [stats.multivariate_normal(mu_x, Sxx).logpdf(xi.reshape(-1))
                + stats.multivariate_normal(H @ xi.reshape(-1), np.kron(np.eye(T), params["R"])).logpdf(
                    y.numpy().reshape(-1)) for xi in x.numpy()]
    np.testing.assert_allclose(_model(params).log_joint(x, y).numpy(), expected, **TOL)


# ------------------------------------------------------------ learnable parameters
def test_learnable_parameters_and_gradients(float64):
    model = StochasticVolatility(learn=("phi", "sigma"))
    names = dict(model.named_parameters())
    assert set(names) == {"phi_raw", "log_sigma"} and all(p.requires_grad for p in names.values())
    assert "mu" in dict(model.named_buffers())
    x, y = _points((2, 6, 1), 16) - 1.0, _points((6, 1), 17)
    model.log_joint(x, y).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad) and p.grad != 0 for p in names.values())
    assert set(StochasticVolatility().parameter_values()) == {"mu", "phi", "sigma"}
    assert len(list(StochasticVolatility().parameters())) == 0

    lgssm = LinearGaussianSSM(np.eye(2) * 0.5, np.ones((1, 2)), np.eye(2), 1.0, learn=("A", "R"))
    assert set(dict(lgssm.named_parameters())) == {"A", "R"}
    lgssm.log_joint(_points((4, 2), 18), _points((4, 1), 19)).backward()
    assert lgssm.A.grad.abs().sum() > 0 and lgssm.R.grad.abs().sum() > 0


def test_nonlinear_growth_gradient_in_closed_form(float64):
    # d/d log sigma_v of sum_{t>=1} log N(x_t; f_t(x_{t-1}), sigma_v^2) = sum_t (r_t^2 / sigma_v^2 - 1)
    sigma_v = 1.3
    model = NonlinearGrowth(sigma_v=sigma_v, learn=("sigma_v", "sigma_w"))
    assert set(dict(model.named_parameters())) == {"log_sigma_v", "log_sigma_w"}
    x, y = _points((6, 1), 20, 4.0), _points((6, 1), 21)
    model.log_joint(x, y).backward()
    xn = x.numpy()[:, 0]
    t = np.arange(1, 6)
    r = xn[1:] - (xn[:-1] / 2 + 25 * xn[:-1] / (1 + xn[:-1] ** 2) + 8 * np.cos(1.2 * t))
    np.testing.assert_allclose(float(model.log_sigma_v.grad), np.sum(r ** 2 / sigma_v ** 2 - 1), **TOL)
    r_obs = y.numpy()[:, 0] - xn ** 2 / 20
    np.testing.assert_allclose(float(model.log_sigma_w.grad), np.sum(r_obs ** 2 - 1), **TOL)


# --------------------------------------------------------------------- validation
@pytest.mark.parametrize("make, argument", [
    (lambda: StochasticVolatility(learn=("rho",)), "learn"),
    (lambda: NonlinearGrowth(learn=("sigma",)), "learn"),
    (lambda: LinearGaussianSSM(0.5, 1.0, 1.0, 1.0, learn=("B",)), "learn"),
    (lambda: StochasticVolatility(phi=1.0), "phi"),
    (lambda: StochasticVolatility(phi=-1.2), "phi"),
    (lambda: StochasticVolatility(sigma=0.0), "sigma"),
    (lambda: StochasticVolatility(sigma=-0.1), "sigma"),
    (lambda: NonlinearGrowth(sigma_v=0.0), "sigma_v"),
    (lambda: NonlinearGrowth(sigma_w=-1.0), "sigma_w"),
    (lambda: LinearGaussianSSM(np.eye(2), np.ones((1, 2)), [[1.0, 2.0], [2.0, 1.0]], 1.0), r"\bQ\b"),
    (lambda: LinearGaussianSSM(np.eye(2), np.ones((1, 2)), np.eye(2), -1.0), r"\bR\b"),
    (lambda: LinearGaussianSSM(np.eye(2), np.ones((1, 2)), np.eye(2), 1.0, P0=np.zeros((2, 2))), "P0"),
    (lambda: LinearGaussianSSM(np.eye(2), np.ones((2, 3)), np.eye(2), 1.0), "shapes"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_invalid_arguments_raise_value_error(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_non_symmetric_covariance_is_refused():
    with pytest.raises(ValueError, match=r"\bQ\b"):
        LinearGaussianSSM(np.eye(2), np.ones((1, 2)), [[1.0, 0.9], [0.0, 1.0]], 1.0)


def test_nan_scale_is_refused():
    with pytest.raises(ValueError, match="sigma"):
        StochasticVolatility(sigma=math.nan)


# --------------------------------------------------------------------- simulation
@pytest.mark.parametrize("model", [
    StochasticVolatility(), NonlinearGrowth(),
    LinearGaussianSSM(np.eye(2) * 0.5, np.ones((3, 2)), np.eye(2), np.eye(3)),
], ids=["sv", "growth", "lgssm"])
def test_simulate_is_reproducible_and_leaves_the_global_rng_alone(model):
    state = torch.get_rng_state()
    x, y = model.simulate(12, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (12, model.state_dim) and y.shape == (12, model.obs_dim)
    x2, y2 = model.simulate(12, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(model.simulate(12, seed=4)[0], x)
    with pytest.raises(ValueError, match="num_steps"):
        model.simulate(0)


def test_unseeded_simulations_differ():
    model = StochasticVolatility()
    assert not torch.equal(model.simulate(10)[0], model.simulate(10)[0])


def test_simulated_lgssm_paths_have_the_dense_joint_law(one_thread):
    """simulate's law, which every SMC test's data come from: the stacked (x, y) of 1,500 seeded paths of a
    two-state model (non-symmetric A, correlated Q and R, m0 != 0, P0 != Q) against the dense joint Gaussian.
    Means within 4.5 standard errors; each covariance entry within 4.5 of its standard error
    sqrt((S_ii S_jj + S_ij^2) / n) (Gaussian fourth moments), over the 24 means and 300 entries."""
    params = _random_lgssm(np.random.default_rng(11), obs_dim=1)
    model = _model(params)
    num_steps, num_paths = 8, 1500
    paths = [torch.cat([x.reshape(-1), y.reshape(-1)]) for x, y in
             (model.simulate(num_steps, seed=seed) for seed in range(num_paths))]
    draws = torch.stack(paths).double().numpy()
    mu_x, Sxx, H, Syy = _dense_joint(*(params[k] for k in ("A", "C", "Q", "R", "m0", "P0")), num_steps)
    mean = np.concatenate([mu_x, H @ mu_x])
    covariance = np.block([[Sxx, Sxx @ H.T], [H @ Sxx, Syy]])
    sd = np.sqrt(np.diag(covariance))
    assert (np.abs(draws.mean(0) - mean) / (sd / math.sqrt(num_paths))).max() < 4.5
    entry_se = np.sqrt((np.outer(sd ** 2, sd ** 2) + covariance ** 2) / num_paths)
    assert (np.abs(np.cov(draws, rowvar=False) - covariance) / entry_se).max() < 4.5
