"""Guided SMC proposals: the mixture of experts recovers the closed-form optimal kernel of a linear Gaussian
model, its log r is the mixture density it claims, it splits a bimodal optimal kernel, it refuses bad settings,
and in a particle filter its log-evidence matches the Kalman filter with far less variance than the bootstrap."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from bayeskit.inference import ParticleFilter
from bayeskit.inference.smc.proposals import MixtureOfExpertsProposal, Proposal
from bayeskit.models.ssm import LinearGaussianSSM, NonlinearGrowth

pytestmark = pytest.mark.usefixtures("one_thread")


def linear_gaussian(obs_sd=None, P0=None):
    R = torch.tensor([[0.2, 0.05], [0.05, 0.1]]) if obs_sd is None else torch.eye(2) * obs_sd ** 2
    return LinearGaussianSSM([[0.9, 0.2], [-0.1, 0.8]], [[1.0, 0.5], [0.0, 1.0]], [[1.0, 0.3], [0.3, 0.5]], R,
                             P0=P0)


def optimal_kernel(model, y):
    """p(x_t | x_{t-1}, y_t) = N(a + B x_{t-1}, Sigma): Sigma = (Q^-1 + C^T R^-1 C)^-1, B = Sigma Q^-1 A,
    a = Sigma C^T R^-1 y."""
    A, C = model.A, model.C
    Q_inv, R_inv = torch.linalg.inv(model.covariance("Q")), torch.linalg.inv(model.covariance("R"))
    Sigma = torch.linalg.inv(Q_inv + C.T @ R_inv @ C)
    return Sigma @ C.T @ R_inv @ y, Sigma @ Q_inv @ A, Sigma


def ess(log_weights):
    return 1.0 / (torch.softmax(log_weights, -1) ** 2).sum(-1)


def test_one_expert_recovers_the_optimal_kernel_of_a_linear_gaussian_model(float64):
    torch.manual_seed(0)
    model, y = linear_gaussian(), torch.tensor([1.0, -0.5])
    x_prev = 0.5 + 1.5 * torch.randn(2, 20_000, 2)
    log_weights = torch.log_softmax(-((x_prev - 1) ** 2).sum(-1) / 8, -1)  # a weighted cloud
    proposal = MixtureOfExpertsProposal(num_experts=1)
    proposal.adapt(model, 1, x_prev, log_weights, y)
    fit, (a, B, Sigma) = proposal.experts(), optimal_kernel(model, y)
    assert not fit["bootstrap"].any()
    # Monte Carlo error at 20,000 pilot draws: ~0.003 on a and B, ~1% on Sigma; bounds are ~4 of those
    torch.testing.assert_close(fit["a"][:, 0], a.expand(2, -1), atol=0.015, rtol=0)
    torch.testing.assert_close(fit["B"][:, 0], B.expand(2, -1, -1), atol=0.015, rtol=0)
    torch.testing.assert_close(fit["Sigma"][:, 0], Sigma.expand(2, -1, -1), atol=0.004, rtol=0.04)
    # the fitted kernel is near optimal: the importance weights of its draws are nearly flat given x_prev
    x, log_r = proposal.propose(model, 1, x_prev, y)
    log_w = model.transition_log_prob(1, x_prev, x) + model.observation(1, x).log_prob(y) - log_r
    exact = torch.distributions.MultivariateNormal(a + x_prev @ B.T, covariance_matrix=Sigma)
    x_exact = exact.sample()  # the exact kernel's weights are the predictive likelihoods p(y | x_prev)
    log_w_exact = (model.transition_log_prob(1, x_prev, x_exact) + model.observation(1, x_exact).log_prob(y)
                   - exact.log_prob(x_exact))
    assert (ess(log_w) > 0.97 * ess(log_w_exact)).all()


def test_log_r_is_the_density_of_the_fitted_mixture(float64):
    torch.manual_seed(1)
    model, y = NonlinearGrowth(), torch.tensor([3.2])
    x_prev = torch.randn(3, 400, 1) * 2
    proposal = MixtureOfExpertsProposal(num_experts=3)
    proposal.adapt(model, 4, x_prev, torch.full((3, 400), -math.log(400)), y)
    fit = proposal.experts()
    assert not fit["bootstrap"].any()
    x, log_r = proposal.propose(model, 4, x_prev[:, :25], y)
    assert x.shape == (3, 25, 1) and log_r.shape == (3, 25)
    a, B, Sigma, c, D = (fit[key].numpy() for key in ("a", "B", "Sigma", "c", "D"))
    for r in range(3):
        for i in range(25):
            u, v = x_prev[r, i].numpy(), x[r, i].numpy()
            log_gate = c[r] + D[r] @ u
            log_gate = log_gate - logsumexp(log_gate)
            log_expert = [stats.multivariate_normal(a[r, k] + B[r, k] @ u, Sigma[r, k]).logpdf(v) for k in range(3)]
            assert log_r[r, i].item() == pytest.approx(logsumexp(log_gate + np.array(log_expert)), abs=1e-8)


def test_two_experts_split_a_bimodal_optimal_kernel(float64):
    # Growth model at t = 4: ancestors near -0.027 have transition mean ~0, and y = 3.2 ~ x^2 / 20 leaves the
    # sign of x open, so the optimal kernel has two modes near +-6.6 (one Gaussian must straddle both).
    torch.manual_seed(2)
    model, t, y = NonlinearGrowth(), 4, torch.tensor([3.2])
    x_prev = -0.027 + 0.01 * torch.randn(2, 2000, 1)
    log_weights = torch.full((2, 2000), -math.log(2000))
    x = model.transition(t, x_prev).sample()
    ess_of = {"bootstrap": ess(model.observation(t, x).log_prob(y))}
    proposals = {"one": MixtureOfExpertsProposal(num_experts=1), "two": MixtureOfExpertsProposal(num_experts=2)}
    for name, proposal in proposals.items():
        proposal.adapt(model, t, x_prev, log_weights, y)
        x, log_r = proposal.propose(model, t, x_prev, y)
        ess_of[name] = ess(model.transition_log_prob(t, x_prev, x) + model.observation(t, x).log_prob(y) - log_r)
    # measured (seed 2): ESS ~300 (bootstrap), ~930 (one expert), ~1750 (two experts) of 2000
    assert (ess_of["two"] > 3 * ess_of["bootstrap"]).all() and (ess_of["two"] > 1.4 * ess_of["one"]).all()
    fit = proposals["two"].experts()
    gate_mass = torch.softmax(fit["c"].unsqueeze(1) + x_prev @ fit["D"].mT, -1).mean(1)  # (R, K)
    centres = fit["a"][..., 0] + fit["B"][..., 0, 0] * x_prev.mean((1, 2)).unsqueeze(-1)
    assert (gate_mass > 0.2).all() and (centres.max(-1).values > 4).all() and (centres.min(-1).values < -4).all()


def test_propose_without_a_fit_for_this_step_is_the_bootstrap_kernel():
    torch.manual_seed(3)
    model, proposal = linear_gaussian(), MixtureOfExpertsProposal()
    x_prev = torch.randn(2, 50, 2)
    x, log_r = proposal.propose(model, 1, x_prev, torch.zeros(2))
    torch.testing.assert_close(log_r, model.transition_log_prob(1, x_prev, x))
    proposal.adapt(model, 1, x_prev, torch.full((2, 50), -math.log(50)), torch.zeros(2))
    x, log_r = proposal.propose(model, 2, x_prev, torch.zeros(2))  # a fit for t = 1 is not used at t = 2
    torch.testing.assert_close(log_r, model.transition_log_prob(2, x_prev, x))


def test_follows_the_dtype_of_the_particles():
    torch.manual_seed(4)
    model, proposal = linear_gaussian(), MixtureOfExpertsProposal()
    x_prev = torch.randn(2, 100, 2, dtype=torch.float32)
    proposal.adapt(model, 1, x_prev, torch.full((2, 100), -math.log(100)), torch.zeros(2))
    x, log_r = proposal.propose(model, 1, x_prev, torch.zeros(2))
    assert x.dtype == log_r.dtype == torch.float32 and torch.isfinite(log_r).all()
    assert all(value.dtype in (torch.float32, torch.bool) for value in proposal.experts().values())


@pytest.mark.gpu
def test_runs_on_cuda():
    torch.manual_seed(5)
    model = linear_gaussian().to("cuda")
    x_prev = torch.randn(2, 500, 2, device="cuda")
    proposal = MixtureOfExpertsProposal()
    proposal.adapt(model, 1, x_prev, torch.full((2, 500), -math.log(500), device="cuda"),
                   torch.zeros(2, device="cuda"))
    x, log_r = proposal.propose(model, 1, x_prev, torch.zeros(2, device="cuda"))
    assert x.device.type == log_r.device.type == "cuda" and torch.isfinite(log_r).all()


@pytest.mark.parametrize("kwargs, name", [
    ({"num_experts": 0}, "num_experts"), ({"num_experts": 1.5}, "num_experts"), ({"num_experts": True}, "num_experts"),
    ({"num_em_iterations": 0}, "num_em_iterations"), ({"num_em_iterations": 5, "max_em_iterations": 4},
                                                       "max_em_iterations"),
    ({"num_pilot": 1}, "num_pilot"), ({"num_pilot": 10.0}, "num_pilot"),
    ({"tempering_ess": 0.0}, "tempering_ess"), ({"tempering_ess": 1.0}, "tempering_ess"),
    ({"ridge": -1.0}, "ridge"), ({"ridge": float("nan")}, "ridge"), ({"min_variance": 0}, "min_variance"),
])
def test_refuses_bad_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        MixtureOfExpertsProposal(**kwargs)


def test_refuses_badly_shaped_clouds():
    model, proposal = linear_gaussian(), MixtureOfExpertsProposal()
    with pytest.raises(ValueError, match="x_prev"):
        proposal.adapt(model, 1, torch.randn(10, 2), torch.zeros(10), torch.zeros(2))
    with pytest.raises(ValueError, match="x_prev"):
        proposal.propose(model, 1, torch.randn(1, 10, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="log_weights"):
        proposal.adapt(model, 1, torch.randn(1, 10, 2), torch.zeros(1, 9), torch.zeros(2))
    with pytest.raises(RuntimeError, match="adapt"):
        proposal.experts()


def test_particle_filter_log_evidence_matches_kalman_with_less_variance():
    # Informative observations (sd 0.1 against unit transition noise) and a known start, so that the
    # bootstrap filter's cost lies in the guided steps t >= 1, not in the unguided x_0 draw.
    model = linear_gaussian(obs_sd=0.1, P0=0.01 * torch.eye(2))
    _, y = model.simulate(12, seed=1)
    truth = model.kalman(y).log_likelihood.item()
    proposal = MixtureOfExpertsProposal()
    log_z = {}
    for name, chosen in (("bootstrap", None), ("experts", proposal)):
        posterior = ParticleFilter(model, num_particles=200, proposal=chosen, num_chains=100).run(y, seed=0,
                                                                                    progress=False)
        log_z[name] = torch.tensor(posterior.meta["log_evidence"], dtype=torch.float64)
    proposal.experts()  # raises unless the filter called adapt()
    ratio = torch.exp(log_z["experts"] - truth)  # unbiased for 1
    standard_error = ratio.std() / math.sqrt(ratio.numel())
    assert abs(ratio.mean().item() - 1) < 4 * standard_error.item() + 0.02
    # measured (seed 0): sd of log Z ~0.1 with the experts, ~40 with the bootstrap; mean of Z / Z_kalman 0.98 +- 0.01
    assert log_z["experts"].var() < 0.01 * log_z["bootstrap"].var()
    assert log_z["experts"].std() < 1.0


def test_the_base_class_states_the_interface():
    model, x_prev = linear_gaussian(), torch.zeros(1, 3, 2)
    assert Proposal().adapt(model, 1, x_prev, torch.full((1, 3), -math.log(3)), torch.zeros(2)) is None
    with pytest.raises(NotImplementedError):
        Proposal().propose(model, 1, x_prev, torch.zeros(2))
