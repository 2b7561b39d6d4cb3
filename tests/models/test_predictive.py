"""``predictive(posterior, x)`` of the model families: mixtures over the posterior's weighted draws.

Each check computes the mixture by hand from the draws and their weights, so a predictive that drops
the weights, mixes over the wrong
axis or uses the wrong link fails.
"""

import math

import pytest
import torch

from bayeskit import Posterior
from bayeskit.inference import ParticleFilter
from bayeskit.models import BayesianAutoencoder, VariationalAutoencoder, bnn, glm
from bayeskit.models.fractional_sde import (
    ConstantDiffusion,
    FractionalSDE,
    LatentFractionalSDE,
    MarkovFBM,
    OrnsteinUhlenbeckDrift,
)
from bayeskit.models.fractional_sde.linear import fou_covariance
from bayeskit.models.ssm import LinearGaussianSSM, NonlinearGrowth, StochasticVolatility


def weighted_posterior(samples, seed=0):
    """Samples ``(2, 5, ...)`` with random log-weights that put most mass on a few draws."""
    log_weights = 3.0 * torch.randn(2, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Posterior(samples, log_weights=log_weights)


def draws_and_weights(post):
    draws = {name: value.reshape(-1, *value.shape[2:]) for name, value in post.samples.items()}
    weights = post.weights.reshape(-1)
    return draws, weights


@pytest.mark.parametrize("weighted", [False, True])
def test_logistic_regression_predictive_mixes_the_weighted_draws(float64, weighted):
    g = torch.Generator().manual_seed(1)
    samples = {"alpha": torch.randn(2, 5, generator=g), "beta": torch.randn(2, 5, 3, generator=g)}
    post = weighted_posterior(samples) if weighted else Posterior(samples)
    x = torch.randn(7, 3, generator=g)
    y = torch.tensor([0.0, 1, 1, 0, 1, 0, 0])
    predictive = glm.predictive(post, x)
    draws, w = draws_and_weights(post)
    probs = torch.sigmoid(draws["alpha"][:, None] + draws["beta"] @ x.T)  # (S, B)
    assert predictive.batch_shape == (7,)
    torch.testing.assert_close(predictive.mean, w @ probs)
    by_hand = torch.log(w @ torch.where(y.bool(), probs, 1 - probs))
    torch.testing.assert_close(predictive.log_prob(y), by_hand)


def test_a_weight_on_one_draw_gives_that_draws_prediction(float64):
    g = torch.Generator().manual_seed(2)
    samples = {"alpha": torch.randn(1, 4, generator=g), "beta": torch.randn(1, 4, 2, generator=g)}
    log_weights = torch.tensor([[-1e9, 0.0, -1e9, -1e9]], dtype=torch.float64)
    x = torch.randn(3, 2, generator=g)
    predictive = glm.predictive(Posterior(samples, log_weights=log_weights), x)
    torch.testing.assert_close(predictive.mean, torch.sigmoid(samples["alpha"][0, 1] + x @ samples["beta"][0, 1]))


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "gaussian"])
def test_bnn_predictive_mixes_the_weighted_draws(float64, likelihood):
    g = torch.Generator().manual_seed(3)
    outputs = 3 if likelihood == "categorical" else 1
    samples = {"w0": torch.randn(2, 5, 4, 6, generator=g), "b0": torch.randn(2, 5, 6, generator=g),
               "w1": torch.randn(2, 5, 6, outputs, generator=g), "b1": torch.randn(2, 5, outputs, generator=g)}
    if likelihood == "gaussian":
        samples["noise"] = torch.rand(2, 5, generator=g) + 0.1
    post = weighted_posterior(samples, seed=4)
    x = torch.randn(8, 4, generator=g)
    predictive = bnn.predictive(post, x, likelihood=likelihood)
    draws, w = draws_and_weights(post)
    out = torch.relu(x @ draws["w0"] + draws["b0"][:, None]) @ draws["w1"] + draws["b1"][:, None]  # (S, B, O)
    assert predictive.batch_shape == (8,)
    if likelihood == "bernoulli":
        torch.testing.assert_close(predictive.mean, w @ torch.sigmoid(out[..., 0]))
    elif likelihood == "categorical":
        probs = torch.einsum("s,sbk->bk", w, torch.softmax(out, -1))
        labels = torch.arange(8) % 3
        torch.testing.assert_close(predictive.log_prob(labels), probs[torch.arange(8), labels].log())
    else:
        mean = w @ out[..., 0]
        second = w @ (out[..., 0] ** 2 + draws["noise"][:, None] ** 2)
        torch.testing.assert_close(predictive.mean, mean)
        torch.testing.assert_close(predictive.variance, second - mean ** 2)


def test_bad_predictive_inputs_are_refused(float64):
    post = Posterior({"alpha": torch.zeros(1, 2), "beta": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="covariates"):
        glm.predictive(post, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="alpha"):
        glm.predictive(Posterior({"beta": torch.zeros(1, 2, 3)}), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="likelihood"):
        bnn.predictive(post, torch.zeros(4, 3), likelihood="normal")


# ------------------------------------------------------------------------------ state-space models
def linear_gaussian(obs_dim=2):
    A = torch.tensor([[0.9, 0.2], [-0.1, 0.7]])
    C = torch.tensor([[1.0, 0.5], [0.0, 1.0]])[:obs_dim]
    Q = torch.tensor([[0.3, 0.1], [0.1, 0.2]])
    R = torch.tensor([[0.4, 0.1], [0.1, 0.3]])[:obs_dim, :obs_dim]
    return LinearGaussianSSM(A, C, Q, R)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("layout", ["states", "trajectories"])
def test_linear_gaussian_ssm_predictive_is_the_weighted_mixture_of_exact_forecasts(float64, weighted, steps,
                                                                                     layout):
    model = linear_gaussian()
    g = torch.Generator().manual_seed(5)
    y = torch.randn(4, 2, generator=g)
    x = torch.randn(2, 5, 4, 2, generator=g) if layout == "trajectories" else torch.randn(2, 5, 2, generator=g)
    post = (weighted_posterior({"x": x}) if weighted else Posterior({"x": x}))
    post.observed_data = {"y": y}
    predictive = model.predictive(post, steps)
    draws, w = draws_and_weights(post)
    last = draws["x"][:, -1] if layout == "trajectories" else draws["x"]  # (S, 2)
    A, C = model.A, model.C
    Ak = torch.linalg.matrix_power(A, steps)
    # Sigma_k = sum_{j<k} A^j Q A^j^T, written as the sum (the model uses the recursion)
    sigma = sum(torch.linalg.matrix_power(A, j) @ model.covariance("Q") @ torch.linalg.matrix_power(A, j).T
                for j in range(steps))
    means = last @ (C @ Ak).T  # (S, 2)
    cov = C @ sigma @ C.T + model.covariance("R")
    assert predictive.batch_shape == () and predictive.event_shape == (2,)
    mean = w @ means
    torch.testing.assert_close(predictive.mean, mean)
    torch.testing.assert_close(predictive.variance, w @ (means ** 2) + cov.diagonal() - mean ** 2)
    point = torch.tensor([0.3, -1.2])
    by_hand = torch.logsumexp(w.log() + torch.distributions.MultivariateNormal(means, cov).log_prob(point), 0)
    torch.testing.assert_close(predictive.log_prob(point), by_hand)


def test_particle_filter_predictive_matches_the_kalman_one_step_predictive(float64):
    """A ParticleFilter posterior at many particles: the mixture's moments and density are the Kalman
    filter's one-step-ahead predictive N(C A m, C (A P A^T + Q) C^T + R) within Monte Carlo error. The last
    observation is made surprising, so the final weights move the cloud far: dropping them fails."""
    model = linear_gaussian()
    _, y = model.simulate(15, seed=2)
    y[-1] += torch.tensor([2.0, -1.0])
    post = ParticleFilter(model, num_particles=20000, num_chains=2).run(y, seed=0, progress=False)
    kalman = model.kalman(y)
    m, P = kalman.filtered_means[-1], kalman.filtered_covs[-1]
    A, C = model.A, model.C
    mean = C @ A @ m
    spread = C @ A @ P @ A.T @ C.T  # the part of the predictive variance that the particles carry
    cov = spread + C @ model.covariance("Q") @ C.T + model.covariance("R")
    predictive = model.predictive(post)
    tolerance = 5 * (spread.diagonal() / post.ess).sqrt()
    assert ((predictive.mean - mean).abs() < tolerance).all(), (predictive.mean, mean)
    torch.testing.assert_close(predictive.variance, cov.diagonal(), rtol=0.03, atol=0)
    points = mean + torch.tensor([[0.0, 0.0], [1.0, -0.5], [-1.5, 1.0]])
    torch.testing.assert_close(predictive.log_prob(points),
                               torch.distributions.MultivariateNormal(mean, cov).log_prob(points), rtol=0, atol=0.02)
    unweighted = model.predictive(Posterior(post.samples, observed_data=post.observed_data))
    assert ((unweighted.mean - mean).abs() > 3 * tolerance).any()  # the check above would catch dropped weights


def nonlinear_growth_posterior(num_draws=20000, seed=6, trajectories=False):
    """One chain of draws of x_{T-1} (T = 5) whose log-weights grow with x, so weighting matters."""
    g = torch.Generator().manual_seed(seed)
    x = 4 * torch.randn(1, num_draws, 1, generator=g)
    log_weights = 0.15 * x[..., 0]  # ESS about 0.7 N
    if trajectories:  # the same last states, behind four earlier ones
        x = torch.cat([torch.randn(1, num_draws, 4, 1, generator=g), x.unsqueeze(2)], 2)
        return Posterior({"x": x}, log_weights=log_weights)
    return Posterior({"x": x}, log_weights=log_weights, observed_data={"y": torch.zeros(5, 1)})


@pytest.mark.parametrize("trajectories", [False, True])
def test_nonlinear_growth_predictive_propagates_each_draw_at_the_right_time(float64, trajectories):
    """y_T = x_T^2 / 20 + w, x_T ~ N(m_T(x_{T-1}), s_v^2) with m_t(x) = x/2 + 25x/(1 + x^2) + 8 cos(1.2 t):
    E[y_T] = sum_s w_s (m_T(x_s)^2 + s_v^2) / 20, the time T = 5 read from the posterior."""
    model = NonlinearGrowth()
    post = nonlinear_growth_posterior(trajectories=trajectories)
    draws, w = draws_and_weights(post)
    last = draws["x"][:, -1, 0] if trajectories else draws["x"][:, 0]

    def expected_mean(t, weights):
        m = last / 2 + 25 * last / (1 + last ** 2) + 8 * math.cos(1.2 * t)
        return weights @ (m ** 2 + 10.0) / 20

    predictive = model.predictive(post, seed=1)
    assert predictive.event_shape == (1,)
    tolerance = 0.03 * float(expected_mean(5, w))  # Monte Carlo error about 0.5%
    assert abs(float(predictive.mean) - float(expected_mean(5, w))) < tolerance
    uniform = torch.full_like(w, 1 / w.numel())
    for wrong in (expected_mean(4, w), expected_mean(6, w), expected_mean(5, uniform)):
        assert abs(float(wrong - expected_mean(5, w))) > 3 * tolerance  # a wrong time or weights would fail
    # the same seed gives the same forward paths; last_time moves the time
    torch.testing.assert_close(model.predictive(post, seed=1).mean, predictive.mean)
    assert abs(float(model.predictive(post, seed=1, last_time=3).mean) - float(expected_mean(4, w))) < tolerance


def test_stochastic_volatility_predictive_two_steps_ahead(float64):
    """y = e^{x/2} w: Var y_{T+1} = E[e^{x_{T+1}}] = sum_s w_s exp(mu + phi^2 (x_s - mu) + sigma^2 (1 + phi^2) / 2)."""
    model = StochasticVolatility(mu=-1.0, phi=0.9, sigma=0.3)
    post = nonlinear_growth_posterior(seed=7)
    post = Posterior({"x": 0.25 * post.samples["x"] - 1}, log_weights=post.log_weights,
                     observed_data=post.observed_data)
    draws, w = draws_and_weights(post)
    x = draws["x"][:, 0]
    phi, mu, sigma = 0.9, -1.0, 0.3
    expected = w @ torch.exp(mu + phi ** 2 * (x - mu) + sigma ** 2 * (1 + phi ** 2) / 2)
    predictive = model.predictive(post, steps=2, seed=0)
    torch.testing.assert_close(predictive.mean, torch.zeros(1))
    torch.testing.assert_close(predictive.variance, expected.reshape(1), rtol=0.04, atol=0)  # MC error < 1.5%
    one_step = w @ torch.exp(mu + phi * (x - mu) + sigma ** 2 / 2)
    unweighted = torch.exp(mu + phi ** 2 * (x - mu) + sigma ** 2 * (1 + phi ** 2) / 2).mean()
    for wrong in (one_step, unweighted):  # one step instead of two, or the weights dropped, would fail
        assert abs(float(wrong / expected) - 1) > 0.08


def test_bad_ssm_predictive_inputs_are_refused(float64):
    model = linear_gaussian()
    with pytest.raises(ValueError, match="'x'"):
        model.predictive(Posterior({"z": torch.zeros(1, 3, 2)}))
    with pytest.raises(ValueError, match="samples\\['x'\\]"):
        model.predictive(Posterior({"x": torch.zeros(1, 3, 3)}, observed_data={"y": torch.zeros(4, 2)}))
    with pytest.raises(ValueError, match="last_time"):
        model.predictive(Posterior({"x": torch.zeros(1, 3, 2)}))
    with pytest.raises(ValueError, match="steps"):
        model.predictive(Posterior({"x": torch.zeros(1, 3, 4, 2)}), steps=0)
    with pytest.raises(TypeError, match="Posterior"):
        model.predictive({"x": torch.zeros(1, 3, 2)})


# ------------------------------------------------------------------------------ fractional SDEs
def path_posterior(num_times, width, dt, weighted, seed=8):
    """Paths ``(2, 5, series = 3, time, width)`` on the grid 0, dt, ..., as the path methods lay them out."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 5, 3, num_times, width, generator=g)
    log_weights = 3.0 * torch.randn(2, 5, generator=g) if weighted else None
    return Posterior({"x": x}, log_weights=log_weights, coords={"time": (torch.arange(num_times) * dt).tolist()})


@pytest.mark.parametrize("weighted", [False, True])
def test_fractional_sde_predictive_mixes_the_weighted_paths(float64, weighted):
    model = FractionalSDE(OrnsteinUhlenbeckDrift(), ConstantDiffusion(0.8), MarkovFBM(0.6), state_dim=2,
                          num_series=3, observation_scale=0.3, dt=0.02)
    post = path_posterior(6, 2, 0.02, weighted)
    observations = torch.randn(3, 6, 2, generator=torch.Generator().manual_seed(9))
    predictive = model.predictive(post)
    draws, w = draws_and_weights(post)
    x = draws["x"]  # (S, series, time, 2)
    assert predictive.batch_shape == (3, 6) and predictive.event_shape == (2,)
    torch.testing.assert_close(predictive.mean, torch.einsum("s,sjtd->jtd", w, x))
    torch.testing.assert_close(predictive.variance, torch.einsum("s,sjtd->jtd", w, x ** 2) + 0.09
                               - predictive.mean ** 2)
    log_p = torch.distributions.Normal(x, 0.3).log_prob(observations).sum(-1)  # (S, series, time)
    torch.testing.assert_close(predictive.log_prob(observations), torch.logsumexp(log_p + w.log()[:, None, None], 0))
    # times pick the paths' times (the observation times, say)
    at = model.predictive(post, torch.tensor([0.04, 0.1]))
    torch.testing.assert_close(at.log_prob(observations[:, [2, 5]]), predictive.log_prob(observations)[:, [2, 5]])


def test_fractional_sde_prior_predictive_matches_the_exact_fou_covariance(float64):
    """Prior paths of the fractional OU (X(0) = 0, Euler steps): the predictive of o(t) = X(t) + noise has mean 0
    and variance Var X(t) + s^2, Var X(t) from the exact covariance of the Euler chain (fou_covariance)."""
    theta, sigma, noise, dt = 1.5, 0.8, 0.3, 0.02
    fbm = MarkovFBM(0.7, horizon=1.0)
    model = FractionalSDE(OrnsteinUhlenbeckDrift(theta), ConstantDiffusion(sigma), fbm, observation_scale=noise,
                          dt=dt, method="euler")
    post = model.prior_paths(0.6, num_paths=4000, seed=0)
    times = torch.tensor([0.2, 0.4, 0.6])
    predictive = model.predictive(post, times)
    exact = fou_covariance(30, dt, theta, sigma, fbm, scheme="euler").diagonal()[[10, 20, 30]] + noise ** 2
    assert predictive.batch_shape == (1, 3)
    torch.testing.assert_close(predictive.variance[0, :, 0], exact, rtol=0.08, atol=0)  # MC sd of 2.2%
    assert (predictive.mean.abs() < 5 * (exact / 4000).sqrt()[None, :, None]).all()
    assert float((predictive.variance[0, :, 0] - exact).abs().max()) < float(exact.min() - noise ** 2)


@pytest.mark.parametrize("weighted", [False, True])
def test_latent_fractional_sde_predictive_decodes_and_mixes_the_weighted_paths(float64, weighted):
    model = LatentFractionalSDE(2, 4, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=0.025, observation_scale=0.2)
    post = path_posterior(5, 4, 0.05, weighted)
    y = torch.randn(3, 5, 2, generator=torch.Generator().manual_seed(10))
    predictive = model.predictive(post)
    draws, w = draws_and_weights(post)
    decoder = model.decoder
    mean = draws["x"] @ decoder.weight.detach().T + decoder.bias.detach()  # (S, sequence, time, obs)
    assert predictive.batch_shape == (3, 5) and predictive.event_shape == (2,)
    torch.testing.assert_close(predictive.mean, torch.einsum("s,sjtd->jtd", w, mean))
    log_p = torch.distributions.Normal(mean, 0.2).log_prob(y).sum(-1)
    torch.testing.assert_close(predictive.log_prob(y), torch.logsumexp(log_p + w.log()[:, None, None], 0))


def test_latent_fractional_sde_predictive_of_a_forecast(float64):
    torch.manual_seed(0)
    model = LatentFractionalSDE(2, 3, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=0.025, observation_scale=0.2)
    y = torch.randn(4, 8, 2)
    times = 1.0 + torch.arange(8) * 0.05
    future = 1.0 + torch.tensor([0.4, 0.5, 0.6])
    forecast = model.forecast(y, times, future, num_samples=50, seed=3)
    predictive = model.predictive(forecast, future)
    assert predictive.batch_shape == (4, 3)
    torch.testing.assert_close(predictive.mean, forecast.samples["mean"][0, :, :, 8:].mean(0))
    assert model.predictive(forecast).batch_shape == (4, 11)


def test_bad_fractional_sde_predictive_inputs_are_refused(float64):
    model = FractionalSDE(OrnsteinUhlenbeckDrift(), 1.0, MarkovFBM(0.5), state_dim=2, dt=0.02)
    post = path_posterior(6, 2, 0.02, False)
    with pytest.raises(ValueError, match="times\\[1\\]"):
        model.predictive(post, torch.tensor([0.02, 0.03]))
    with pytest.raises(ValueError, match="'x'"):
        model.predictive(Posterior({"alpha": torch.zeros(1, 2)}))
    with pytest.raises(ValueError, match="samples\\['x'\\]"):
        model.predictive(path_posterior(6, 3, 0.02, False))
    with pytest.raises(ValueError, match="coords"):
        model.predictive(Posterior(post.samples), torch.tensor([0.02]))
    latent = LatentFractionalSDE(2, 4, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=0.025)
    with pytest.raises(ValueError, match="samples\\['x'\\]"):
        latent.predictive(post)


# ------------------------------------------------------------------------------ autoencoders
def autoencoder_draws(bae, num_draws=5, seed=11):
    g = torch.Generator().manual_seed(seed)
    return {name: 0.3 * torch.randn(2, num_draws, *shape, generator=g) for name, shape in bae.sites.items()}


@pytest.mark.parametrize("weighted", [False, True])
def test_bayesian_autoencoder_predictive_mixes_the_weighted_reconstructions(float64, weighted):
    bae = BayesianAutoencoder(6, 2, hidden=(5,))
    samples = autoencoder_draws(bae)
    post = weighted_posterior(samples, seed=12) if weighted else Posterior(samples)
    draws, w = draws_and_weights(post)
    x = torch.rand(7, 6, generator=torch.Generator().manual_seed(13))
    # the network by hand: relu hidden layers, a linear code and linear logits
    h = torch.relu(x @ draws["enc0_w"] + draws["enc0_b"][:, None])
    z = h @ draws["enc1_w"] + draws["enc1_b"][:, None]
    h = torch.relu(z @ draws["dec0_w"] + draws["dec0_b"][:, None])
    logits = h @ draws["dec1_w"] + draws["dec1_b"][:, None]  # (S, n, 6)
    pixels = torch.distributions.ContinuousBernoulli(logits=logits)
    predictive = bae.predictive(post, x)
    assert predictive.batch_shape == (7,) and predictive.event_shape == (6,)
    torch.testing.assert_close(predictive.mean, torch.einsum("s,snp->np", w, pixels.mean))
    by_hand = torch.logsumexp(pixels.log_prob(x).sum(-1) + w.log()[:, None], 0)  # one density per image
    torch.testing.assert_close(predictive.log_prob(x), by_hand)
    torch.testing.assert_close(bae.log_likelihood(post, x), by_hand)
    # max_draws thins evenly (the first and the last draw) and renormalises their weights
    kept = w[[0, -1]] / w[[0, -1]].sum()
    thinned = torch.logsumexp(pixels.log_prob(x).sum(-1)[[0, -1]] + kept.log()[:, None], 0)
    torch.testing.assert_close(bae.predictive(post, x, max_draws=2).log_prob(x), thinned)


def test_vae_predictive_mixes_over_codes_from_the_encoder(float64):
    vae = VariationalAutoencoder(6, 2, hidden=(5,))
    x = torch.rand(7, 6, generator=torch.Generator().manual_seed(14))
    predictive = vae.predictive(x, num_codes=16, seed=0)
    assert predictive.batch_shape == (7,) and predictive.event_shape == (6,)
    torch.testing.assert_close(vae.predictive(x, num_codes=16, seed=0).log_prob(x), predictive.log_prob(x))
    with torch.no_grad():  # a point-mass q(z | x): the predictive is the likelihood at the mean code
        vae.weights["enc1_w"][:, 2:] = 0.0
        vae.weights["enc1_b"][2:] = -80.0
    torch.testing.assert_close(vae.predictive(x, num_codes=4, seed=0).log_prob(x), vae.log_likelihood(x))
    torch.testing.assert_close(vae.predictive(x, num_codes=4, seed=0).mean, vae.reconstruct(x))


def test_bad_autoencoder_predictive_inputs_are_refused(float64):
    bae = BayesianAutoencoder(6, 2, hidden=(5,))
    samples = autoencoder_draws(bae)
    with pytest.raises(ValueError, match="shape"):
        bae.predictive(Posterior(samples), torch.rand(3, 5))
    with pytest.raises(ValueError, match="weight sites"):
        bae.predictive(Posterior({"enc0_w": samples["enc0_w"]}), torch.rand(3, 6))
    with pytest.raises(ValueError, match="num_codes"):
        VariationalAutoencoder(6, 2, hidden=(5,)).predictive(torch.rand(3, 6), num_codes=0)
