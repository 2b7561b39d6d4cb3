"""The latent fractional SDE: its ELBO against exact Gaussian results, training on the stochastic Lorenz data,
forecasts, Hurst sensitivity, reproducibility and input checks."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import FULL
from scipy.integrate import solve_ivp
from torch import nn

from bayeskit import Posterior
from bayeskit.models.fractional_sde.latent import LatentFractionalSDE, latent_observations, stochastic_lorenz
from bayeskit.models.fractional_sde.linear import fou_covariance, gaussian_log_likelihood
from bayeskit.models.fractional_sde.markov import MarkovFBM
from bayeskit.models.fractional_sde.model import OrnsteinUhlenbeckDrift
from bayeskit.models.fractional_sde.solvers import solve

pytestmark = pytest.mark.usefixtures("one_thread")

DT = 0.025  # with gamma_max = 10: gamma_max * dt = 0.25


def linear_model(hurst=0.7, theta=1.5, sigma=0.8, noise=0.3, learn_prior=False, hidden=32, guide=False):
    """latent_dim = obs_dim = 1, identity decoder, drift -theta x, constant sigma: a Gaussian process."""
    fbm = MarkovFBM(hurst, gamma_max=10.0, horizon=1.0, learn_hurst=learn_prior)
    return LatentFractionalSDE(1, 1, fbm=fbm, dt=DT, drift=OrnsteinUhlenbeckDrift(theta, learn_theta=learn_prior),
                               decoder=nn.Identity(), diffusion=sigma, learn_diffusion=learn_prior,
                               observation_scale=noise, learn_observation_scale=learn_prior, hidden=hidden,
                               guide=guide)


def exact_covariance(model, num_steps):
    """Covariance of X on the grid under the prior, for the Euler chain the model simulates (X(0) ~ N(0, 1))."""
    return fou_covariance(num_steps, model.dt, model.drift.theta.detach(), model.diffusion.sigma.detach(),
                          model.fbm, x0_variance=1.0, scheme="euler")


def prior_sequences(model, num_sequences, index, seed):
    """Sequences drawn from the model's own prior (Euler chain), observed at grid points ``index``."""
    generator = torch.Generator().manual_seed(seed)
    d = model.latent_dim
    x0 = torch.randn(num_sequences, d, generator=generator)
    y0 = model.fbm.sample_initial((num_sequences, d), generator=generator, dtype=x0.dtype)
    grid = torch.arange(int(index[-1]) + 1, dtype=x0.dtype) * model.dt
    with torch.no_grad():
        paths = solve(model.drift, model.diffusion, model.fbm.weights(), model.fbm.gammas, x0, y0, grid,
                      method="euler", generator=generator)
        mean = model.decoder(paths.x[index])
    y = mean + model.observation_scale.detach() * torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return y.transpose(0, 1).contiguous(), grid[index]


# ----------------------------------------------------------------------------- the ELBO against exact results
def test_elbo_at_the_prior_is_the_exact_expected_log_likelihood_and_a_lower_bound(float64):
    """With u = 0 (the control's zero-initialised last layer) and q(x0) = p(x0) (zeroed encoder head),
    ELBO = log p(y | X) for X from the prior, whose expectation is Gaussian in closed form:
    sum_i -log(2 pi s^2)/2 - ((y_i - 0)^2 + Var X(t_i)) / (2 s^2).  Jensen puts it below the exact log p(y)."""
    model = linear_model()
    nn.init.zeros_(model.encoder.to_initial.weight)
    nn.init.zeros_(model.encoder.to_initial.bias)
    index = torch.arange(0, 41, 4)  # 11 observations every 0.1 on [0, 1]
    times = index * DT
    y = torch.sin(3 * times).reshape(1, -1, 1)
    num = 8000  # independent ELBO draws: the same sequence repeated, one path each
    parts = model.elbo(y.expand(num, -1, -1), times, num_samples=1, generator=torch.Generator().manual_seed(1))
    assert float(parts["kl_path"].detach().abs().max()) == 0.0
    assert float(parts["kl_initial"].detach().abs().max()) == 0.0
    cov = exact_covariance(model, 40)
    s2 = float(model.observation_scale) ** 2
    expected = -0.5 * math.log(2 * math.pi * s2) * 11 - ((y.reshape(-1) ** 2 + cov.diagonal()[index]) / (2 * s2)).sum()
    estimate = parts["elbo"].detach()
    standard_error = float(estimate.std()) / math.sqrt(num)
    assert abs(float(estimate.mean()) - float(expected)) < 4 * standard_error
    evidence = gaussian_log_likelihood(cov, index, y.reshape(-1), math.sqrt(s2))
    assert float(estimate.mean()) + 4 * standard_error < float(evidence)


def test_fitted_elbo_stays_below_the_exact_evidence_and_closes_most_of_the_gap():
    """Fit only the encoder and control (the linear-Gaussian prior fixed): the ELBO rises towards the exact
    log-evidence of the prior's own sequences and stays below it."""
    model = linear_model(hidden=32)
    index = torch.arange(0, 41, 4)
    y, times = prior_sequences(model, 16, index, seed=3)
    cov = exact_covariance(model, 40).double()
    evidence = float(gaussian_log_likelihood(cov, index, y[..., 0].double(), float(model.observation_scale)).mean())

    def elbo():
        with torch.no_grad():
            values = model.elbo(y, times, num_samples=200, generator=torch.Generator().manual_seed(7))["elbo"]
        return float(values.mean())

    before = elbo()
    model.fit(y, times, num_steps=120, batch_size=16, lr=0.02, seed=0, progress=False)
    after = elbo()
    assert before < after < evidence + 0.2  # 0.2 nats: Monte Carlo error of 200 paths x 16 sequences
    assert evidence - after < 0.05 * (evidence - before)


def test_initial_kl_matches_torch_distributions():
    torch.manual_seed(0)
    model = LatentFractionalSDE(2, 3, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=DT)
    nn.init.normal_(model.encoder.to_initial.weight, std=0.5)
    y = torch.randn(5, 6, 2)
    parts = model.elbo(y, torch.arange(6) * 0.1, generator=torch.Generator().manual_seed(0))
    _, loc, scale = model.encoder(y)
    reference = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                                  torch.distributions.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(parts["kl_initial"], reference)
    assert float(reference.min().detach()) > 0.01  # a non-trivial q(x0)


# ----------------------------------------------------------------------------- the data set
def test_stochastic_lorenz_is_the_normalised_lorenz_system():
    y, times = stochastic_lorenz(6, 40, dt=0.05, noise=0.0, diffusion=0.0, max_step=0.0005, seed=4)
    torch.testing.assert_close(times, torch.arange(40, dtype=times.dtype) * 0.05)
    assert float(y.double().mean((0, 1)).abs().max()) < 1e-5
    assert float((y.double().std((0, 1)) - 1).abs().max()) < 1e-5
    # the same start (the generator's first draw), integrated by scipy's RK45 and normalised the same way
    start = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64).numpy()

    def lorenz(t, x):
        return [10 * (x[1] - x[0]), x[0] * (28 - x[2]) - x[1], x[0] * x[1] - 8 / 3 * x[2]]

    paths = np.stack([solve_ivp(lorenz, (0, 2.0), x0, t_eval=np.arange(40) * 0.05, rtol=1e-10, atol=1e-10).y.T
                      for x0 in start])
    paths = (paths - paths.mean((0, 1))) / paths.std((0, 1), ddof=1)
    assert np.abs(paths - y.double().numpy()).max() < 0.05
    again, _ = stochastic_lorenz(6, 40, dt=0.05, noise=0.0, diffusion=0.0, max_step=0.0005, seed=4)
    assert torch.equal(again, y)
    noisy, _ = stochastic_lorenz(6, 40, seed=4)
    other, _ = stochastic_lorenz(6, 40, seed=5)
    assert float((noisy - other).abs().mean()) > 0.1


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def lorenz_fit():
    y, times = stochastic_lorenz(80, 40, dt=0.05, noise=0.01, seed=0)
    train, test = y[:64], y[64:]
    torch.manual_seed(0)
    model = LatentFractionalSDE(3, 4, fbm=MarkovFBM(0.5, gamma_max=10.0, horizon=2.0, learn_hurst=True),
                                dt=DT, hidden=32)
    untrained = copy.deepcopy(model)
    fit = model.fit(train, times, num_steps=150, batch_size=32, lr=0.02, seed=0, progress=False)
    return model, untrained, fit, train, test, times


def reconstruction_mse(model, y, times):
    posterior = model.reconstruct(y, times, num_samples=20, seed=1)
    return float(((posterior.samples["mean"][0].mean(0) - y) ** 2).mean())


def test_fit_on_lorenz_lowers_the_held_out_reconstruction_error(lorenz_fit):
    model, untrained, fit, train, test, times = lorenz_fit
    trained = reconstruction_mse(model, test, times)
    baseline = float(((test - train.mean((0, 1))) ** 2).mean())  # the per-dimension-mean predictor, ~1
    assert trained < 0.15 * reconstruction_mse(untrained, test, times)
    assert trained < 0.15 * baseline
    loss = fit.trace["loss"]
    assert float(loss[-10:].mean()) < 0.2 * float(loss[:10].mean())
    assert fit.meta["engine"] == "Fit" and fit.meta["settings"]["name"] == "LatentFractionalSDE"
    assert fit.trace["hurst"].shape == (150,)


def test_forecast_beats_the_last_value_over_five_frames(lorenz_fit):
    """Context of 30 frames, forecast of 5 (0.25 time units): the posterior-mean forecast's MSE, averaged over
    the five frames, is below that of repeating the last observed frame (the first frame alone is not)."""
    model, _, _, _, test, times = lorenz_fit
    context, future = 30, 5
    forecast = model.forecast(test[:, :context], times[:context], times[context:context + future],
                              num_samples=50, seed=2)
    predicted = forecast.samples["mean"][0].mean(0)[:, context:]
    truth = test[:, context:context + future]
    model_mse = float(((predicted - truth) ** 2).mean())
    last_value_mse = float(((test[:, context - 1:context] - truth) ** 2).mean())
    assert model_mse < 0.9 * last_value_mse
    assert model_mse < 0.5 * float(((truth - test[:, :context].mean((0, 1))) ** 2).mean())


def test_forecast_continues_the_reconstruction_and_is_a_posterior():
    torch.manual_seed(0)
    model = LatentFractionalSDE(2, 3, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=DT, observation_scale=0.2)
    y = torch.randn(4, 8, 2)
    times = 1.0 + torch.arange(8) * 0.05  # the grid starts at the first time, not at 0
    future = 1.0 + torch.tensor([0.4, 0.5, 0.6])
    forecast = model.forecast(y, times, future, num_samples=300, seed=3)
    reconstruction = model.reconstruct(y, times, num_samples=300, seed=3)
    assert isinstance(forecast, Posterior)
    assert forecast.samples["x"].shape == (1, 300, 4, 11, 3)
    assert forecast.coords["time"] == pytest.approx((torch.cat([times, future])).tolist())
    # the same seed gives the same posterior paths over the window; the forecast then runs on from them
    torch.testing.assert_close(forecast.samples["x"][:, :, :, :8], reconstruction.samples["x"])
    assert not torch.allclose(forecast.samples["x"][:, :, :, 8], forecast.samples["x"][:, :, :, 7])
    noise = forecast.samples["y"] - forecast.samples["mean"]
    assert float(noise.std()) == pytest.approx(0.2, rel=0.03)
    assert torch.equal(forecast.observed_data["y_context"], y)
    forecast.to_arviz()  # dims and coords are consistent enough for ArviZ


# ----------------------------------------------------------------------------- the guided control
def test_latent_observations_are_the_least_squares_latent_and_its_noise():
    """z = C^+ (o - b) against torch's least-squares solver; the noise variance against s^2 diag(C^+ C^+^T)."""
    torch.manual_seed(0)
    decoder = nn.Linear(2, 5).double()
    y = torch.randn(3, 7, 5, dtype=torch.float64)
    z, variance = latent_observations(decoder, y, torch.tensor(0.3, dtype=torch.float64), 2)
    weight = decoder.weight.detach()
    reference = torch.linalg.lstsq(weight.expand(21, 5, 2), (y - decoder.bias.detach()).reshape(21, 5, 1)).solution
    torch.testing.assert_close(z.detach(), reference.reshape(3, 7, 2))
    pseudo_inverse = torch.linalg.pinv(weight)
    torch.testing.assert_close(variance.detach(), 0.09 * (pseudo_inverse @ pseudo_inverse.mT).diagonal())
    same, noise = latent_observations(nn.Identity(), y[..., :2], torch.tensor(0.3, dtype=torch.float64), 2)
    assert torch.equal(same, y[..., :2]) and torch.allclose(noise, torch.full((2,), 0.09, dtype=torch.float64))


def linear_decoder_data(model, num_sequences, index, seed):
    """Sequences o = C x + b + noise with x the prior's Gaussian process (1-D), and their exact log-evidence:
    the observations are jointly Gaussian with covariance Cov(X) kron C C^T + s^2 I (Euler chain, X(0) ~ N(0, 1))."""
    cov = exact_covariance(model, int(index[-1])).double()[index][:, index]
    weight, bias = model.decoder.weight.detach().double(), model.decoder.bias.detach().double()
    size, scale = index.numel(), float(model.observation_scale)
    generator = torch.Generator().manual_seed(seed)
    x = (torch.linalg.cholesky(cov) @ torch.randn(size, num_sequences, generator=generator, dtype=torch.float64)).T
    y = x[..., None] * weight[:, 0] + bias + scale * torch.randn(num_sequences, size, 2, generator=generator,
                                                                 dtype=torch.float64)
    joint = torch.distributions.MultivariateNormal(
        bias.repeat(size), torch.kron(cov, weight @ weight.T) + scale**2 * torch.eye(2 * size, dtype=torch.float64))
    return y.float(), joint.log_prob(y.reshape(num_sequences, -1))


@pytest.mark.slow
@pytest.mark.parametrize("hurst", [0.3, 0.7])
def test_guided_elbo_with_a_linear_decoder_nears_the_exact_evidence(hurst):
    """Observations o = C x + b + noise of a 1-D latent fOU (C = (1, 0.5), the prior fixed): after a short fit of
    the encoder and control the guided ELBO is within a nat per sequence of the exact log-evidence, below it.
    (Without the guide the same fit ends 57 nats below at H = 0.3 and 16 at H = 0.7.)"""
    torch.manual_seed(0)
    fbm = MarkovFBM(hurst, gamma_max=10.0, horizon=1.0)
    model = LatentFractionalSDE(2, 1, fbm=fbm, dt=DT, drift=OrnsteinUhlenbeckDrift(1.0, learn_theta=False),
                                diffusion=1.0, learn_diffusion=False, observation_scale=0.1,
                                learn_observation_scale=False, hidden=32, guide=True)
    with torch.no_grad():
        model.decoder.weight.copy_(torch.tensor([[1.0], [0.5]]))
        model.decoder.bias.copy_(torch.tensor([0.2, -0.1]))
    model.decoder.requires_grad_(False)
    index = torch.arange(0, 41, 4)
    y, evidence = linear_decoder_data(model, 16, index, seed=1)
    model.fit(y, index * DT, num_steps=200 if FULL else 40, batch_size=16, lr=0.02, seed=0, progress=False)
    with torch.no_grad():
        elbo = model.elbo(y, index * DT, num_samples=200, generator=torch.Generator().manual_seed(2))["elbo"]
    gap = float(evidence.mean()) - float(elbo.mean())
    print(f"H = {hurst}: exact log-evidence - guided ELBO = {gap:.3f} nats per sequence")
    # 0.2: Monte Carlo error of 200 paths x 16 sequences; the gap levels off near 0.5 (0.52 after 200 steps)
    assert -0.2 < gap < 1.0


@pytest.mark.slow
def test_guided_elbo_ranks_hurst_as_the_exact_likelihood_does():
    """On H = 0.3 data (identity decoder), the ELBO after fitting the encoder and control at H = 0.3 and at
    H = 0.5 favours 0.3 by what the exact Gaussian likelihood does, within a tenth (296 nats over 32 sequences;
    without the guide the ELBO favoured 0.5 by 1459 in this budget)."""
    index = torch.arange(0, 41, 2)
    y, times = prior_sequences(linear_model(hurst=0.3, theta=1.0, sigma=1.0, noise=0.1), 32, index, seed=0)
    elbo, evidence = {}, {}
    for hurst in (0.3, 0.5):
        torch.manual_seed(0)
        model = linear_model(hurst=hurst, theta=1.0, sigma=1.0, noise=0.1, guide=True)
        evidence[hurst] = float(gaussian_log_likelihood(exact_covariance(model, 40).double(), index,
                                                        y[..., 0].double(), 0.1).sum())
        model.fit(y, times, num_steps=400 if FULL else 150, batch_size=32, lr=0.02, seed=0, progress=False)
        with torch.no_grad():
            elbo[hurst] = float(model.elbo(y, times, num_samples=64,
                                           generator=torch.Generator().manual_seed(7))["elbo"].sum())
        assert elbo[hurst] < evidence[hurst] + 2.0  # a lower bound, up to Monte Carlo error
    exact_preference, elbo_preference = evidence[0.3] - evidence[0.5], elbo[0.3] - elbo[0.5]
    print(f"exact prefers H = 0.3 by {exact_preference:.1f} nats, the guided ELBO by {elbo_preference:.1f}")
    assert exact_preference > 100  # the data discriminate
    assert abs(elbo_preference - exact_preference) < 0.1 * exact_preference


# ----------------------------------------------------------------------------- Hurst sensitivity
ROUGH_DATA_GAP = ("without the guide the latent model's ELBO keeps H near its start of 0.5 on H = 0.3 data (the "
                  "control network alone does not learn the rough posterior in this budget, and the ELBO's gap, "
                  "largest at small H, biases H towards 1/2); guide=True closes it")


@pytest.mark.slow
@pytest.mark.parametrize("hurst, guide", [
    pytest.param(0.3, False, marks=pytest.mark.xfail(strict=True, reason=ROUGH_DATA_GAP)), (0.7, False),
    (0.3, True), (0.7, True)])
def test_learnt_hurst_is_within_a_tenth_of_the_truth(hurst, guide):
    """Sequences from the model's own prior (linear, 1-D) with H = 0.3 or 0.7; a fresh model starts at H = 0.5
    with the drift, diffusion and noise fixed at the truth and learns H alone. The exact likelihood's maximum on
    these data is H = 0.26 and 0.70. With the guide both are recovered (0.28 and 0.67); without it smooth data
    pull H to about 0.7 but rough data do not pull it below 0.5 (0.52): a strict xfail, the unguided gap."""
    truth = linear_model(hurst=hurst, theta=1.0, sigma=1.0, noise=0.1)
    y, times = prior_sequences(truth, 32, torch.arange(0, 41, 2), seed=0)
    torch.manual_seed(0)
    model = linear_model(hurst=0.5, theta=1.0, sigma=1.0, noise=0.1, guide=guide)
    model.fbm.hurst_logit = nn.Parameter(model.fbm.hurst_logit.clone())  # learn H only
    model.fit(y, times, num_steps=150, batch_size=32, lr=0.02, seed=0, progress=False)
    learnt = float(model.fbm.hurst.detach())
    print(f"H = {hurst} data, guide={guide}: learnt H {learnt:.3f}")
    assert abs(learnt - hurst) < 0.1
    if guide:  # and close to what the exact likelihood of the same model and data finds (0.26, 0.70)
        grid = torch.linspace(0.2, 0.8, 31).tolist()
        evidence = [float(gaussian_log_likelihood(
            exact_covariance(linear_model(hurst=h, theta=1.0, sigma=1.0, noise=0.1), 40).double(),
            torch.arange(0, 41, 2), y[..., 0].double(), 0.1).sum()) for h in grid]
        assert abs(learnt - grid[int(np.argmax(evidence))]) < 0.05


# ----------------------------------------------------------------------------- reproducibility
def test_fit_is_reproducible_from_its_seed_and_resumes_exactly(tmp_path):
    y, times = stochastic_lorenz(12, 10, seed=1)
    torch.manual_seed(0)
    model = LatentFractionalSDE(3, 2, fbm=MarkovFBM(0.5, gamma_max=10.0, learn_hurst=True), dt=DT, hidden=16)
    copies = [copy.deepcopy(model) for _ in range(3)]
    first = copies[0].fit(y, times, num_steps=4, batch_size=5, seed=3, progress=False)
    second = copies[1].fit(y, times, num_steps=4, batch_size=5, seed=3, progress=False)
    assert torch.equal(first.trace["loss"], second.trace["loss"])
    other = copy.deepcopy(model).fit(y, times, num_steps=4, batch_size=5, seed=4, progress=False)
    assert not torch.equal(first.trace["loss"], other.trace["loss"])
    checkpoint = tmp_path / "latent.pt"
    copies[2].fit(y, times, num_steps=2, batch_size=5, seed=3, progress=False, checkpoint=checkpoint)
    resumed = copies[2].fit(y, times, num_steps=4, batch_size=5, seed=3, progress=False, checkpoint=checkpoint,
                            resume=True)
    assert torch.equal(resumed.trace["loss"], first.trace["loss"])
    for a, b in zip(copies[0].parameters(), copies[2].parameters()):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------- bad input
def test_bad_input_raises_value_error_naming_the_argument():
    fbm = MarkovFBM(0.5, gamma_max=10.0)
    model = LatentFractionalSDE(3, 2, fbm=fbm, dt=DT, hidden=8)
    y, times = torch.zeros(2, 5, 3), torch.arange(5) * 0.05
    cases = [
        (lambda: model.elbo(torch.zeros(2, 5, 2), times), "y"),
        (lambda: model.elbo(torch.zeros(5, 3), times), "y"),
        (lambda: model.elbo(y.clone().fill_(float("nan")), times), "y"),
        (lambda: model.elbo(y, times + torch.tensor([0, 0, 0.01, 0, 0])), "times"),
        (lambda: model.elbo(y, times.flip(0)), "times"),
        (lambda: model.elbo(y[:, :1], times[:1]), "times"),
        (lambda: model.elbo(y, times, num_samples=0), "num_samples"),
        (lambda: model.fit(y, times, batch_size=0), "batch_size"),
        (lambda: model.fit(y, times, lr=-1.0), "lr"),
        (lambda: model.forecast(y, times, torch.tensor([0.1, 0.3])), "future_times"),
        (lambda: model.forecast(y, times, torch.tensor([0.3, 0.31])), "future_times"),
        (lambda: model.forecast(y, times, torch.tensor([0.3]), num_samples=0), "num_samples"),
        (lambda: model.reconstruct(y, times[:4]), "y"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, dt=0.05), "dt"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, dt=-1.0), "dt"),
        (lambda: LatentFractionalSDE(3, 0, fbm=fbm), "latent_dim"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, diffusion=-1.0), "diffusion"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, diffusion=[1.0, 2.0, 3.0]), "diffusion"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, observation_scale=0.0), "observation_scale"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, method="rk4"), "method"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, guide=True, decoder=nn.Sequential(nn.Linear(2, 3))), "decoder"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, guide=True, decoder=nn.Identity()), "decoder"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, guide=True, decoder=nn.Linear(3, 3)), "decoder"),
        (lambda: LatentFractionalSDE(2, 3, fbm=fbm, guide=True), "obs_dim >= latent_dim"),
        (lambda: LatentFractionalSDE(3, 2, fbm=fbm, guide=True, lookahead=0), "lookahead"),
        (lambda: stochastic_lorenz(0, 10), "num_sequences"),
        (lambda: stochastic_lorenz(4, 10, dt=0.0), "dt"),
        (lambda: stochastic_lorenz(4, 10, noise=-0.1), "noise"),
    ]
    for call, argument in cases:
        with pytest.raises(ValueError, match=argument):
            call()
    with pytest.raises(TypeError, match="fbm"):
        LatentFractionalSDE(3, 2, fbm="fbm")


@pytest.mark.gpu
@pytest.mark.parametrize("guide", [False, True])
def test_runs_on_cuda_and_matches_the_cpu(guide):
    torch.manual_seed(0)
    model = LatentFractionalSDE(3, 2, fbm=MarkovFBM(0.5, gamma_max=10.0, learn_hurst=True), dt=DT, hidden=16,
                                guide=guide)
    y, times = stochastic_lorenz(4, 10, seed=1)
    cpu = model.elbo(y, times, generator=torch.Generator().manual_seed(0))
    gpu_model = copy.deepcopy(model).to("cuda")
    gpu = gpu_model.elbo(y.cuda(), times, generator=torch.Generator().manual_seed(0))
    for name in cpu:
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], rtol=1e-4, atol=1e-3)
    gpu_model.fit(y.cuda(), times, num_steps=2, batch_size=4, progress=False)
    forecast = gpu_model.forecast(y.cuda(), times, times[-1] + torch.tensor([0.05, 0.1]), num_samples=8)
    assert forecast.samples["y"].shape == (1, 8, 4, 12, 3) and bool(torch.isfinite(forecast.samples["y"]).all())
