"""The SG-MCMC updates against closed-form stationary distributions.

Each check runs thousands of independent chains of the functional core on a
Gaussian target with exact (or artificially noised) gradients.  The ground
truth is the stationary covariance of the linear recursion the update
defines, from ``scipy.linalg.solve_discrete_lyapunov``, or the target itself
where the discretisation error is negligible.
"""

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.linalg import solve_discrete_lyapunov

from bayeskit.inference.sgmcmc.kernels import (
    AdaptiveSGHMCKernel,
    PSGLDKernel,
    SGHMCKernel,
    SGLDKernel,
    SGNHTKernel,
    make_kernel,
    sghmc_init,
    sghmc_step,
    sgld_init,
    sgld_step,
)

CHAINS = 4000


def run_kernel(kernel, precision, num_steps, *, dim=1, step_size, gradient_noise_sd=0.0, seed=0, chains=CHAINS):
    """Run ``chains`` chains on N(0, 1/precision) per coordinate; return the final state."""
    torch.manual_seed(seed)
    state = kernel.init(torch.zeros(chains, dim, dtype=torch.float64))
    for _ in range(num_steps):
        score = -precision * state.position
        if gradient_noise_sd:
            score = score + gradient_noise_sd * torch.randn_like(score)
        state = kernel.step(state, score, step_size)
    return state


def variance_tolerance(num_chains, sigmas=4):
    """Relative error allowed on a sample variance of independent Gaussian draws: sd sqrt(2/n)."""
    return sigmas * math.sqrt(2 / num_chains)


def test_sgld_matches_the_ar1_stationary_variance():
    # theta' = (1 - eps h / 2) theta + N(0, eps): an AR(1) with variance eps / (1 - rho^2)
    precision, eps = 4.0, 0.05
    rho = 1 - eps * precision / 2
    exact = eps / (1 - rho**2)
    state = run_kernel(SGLDKernel(), precision, 400, step_size=eps)
    assert abs(state.position.var().item() / exact - 1) < variance_tolerance(CHAINS)
    assert abs(state.position.mean().item()) < 4 * math.sqrt(exact / CHAINS)
    # the discretisation bias is what the AR(1) says, not zero: the check can tell the two apart
    assert exact / (1 / precision) - 1 > 2 * variance_tolerance(CHAINS) / 4


def test_sgld_temperature_scales_the_variance():
    precision, eps, temperature = 1.0, 0.01, 2.5
    state = run_kernel(SGLDKernel(temperature=temperature), precision, 1500, step_size=eps)
    rho = 1 - eps * precision / 2
    exact = temperature * eps / (1 - rho**2)
    assert abs(state.position.var().item() / exact - 1) < variance_tolerance(CHAINS)


def sghmc_stationary_covariance(eps, friction, precision, momentum_noise):
    """Stationary covariance of (theta, m) under m' = m - eps H theta - eps alpha m + xi, theta' = theta + eps m'.

    ``precision`` H is a number or a (d, d) matrix (unit mass); ``momentum_noise``, the covariance of ``xi``
    (a number for ``c I``, or a (d, d) matrix), enters theta through ``theta' = theta + eps m'``. Returns the
    (2d, 2d) covariance, positions first.
    """
    precision = np.atleast_2d(precision)
    eye, zero = np.eye(len(precision)), np.zeros_like(precision)
    momentum_rows = np.hstack([-eps * precision, (1 - eps * friction) * eye])
    position_rows = np.hstack([eye, zero]) + eps * momentum_rows
    transition = np.vstack([position_rows, momentum_rows])
    noise = momentum_noise * eye if np.ndim(momentum_noise) == 0 else momentum_noise
    loading = np.vstack([eps * eye, eye])
    return solve_discrete_lyapunov(transition, loading @ noise @ loading.T)


@pytest.mark.parametrize("friction", [0.5, 3.0])
def test_sghmc_matches_the_lyapunov_stationary_covariance(friction):
    precision, eps = 2.0, 0.1
    exact = sghmc_stationary_covariance(eps, friction, precision, momentum_noise=eps * 2 * friction)
    state = run_kernel(SGHMCKernel(friction=friction), precision, 1500, step_size=eps)
    theta, m = state.position.squeeze(-1), state.momentum.squeeze(-1)
    assert abs(theta.var().item() / exact[0, 0] - 1) < variance_tolerance(CHAINS)
    assert abs(m.var().item() / exact[1, 1] - 1) < variance_tolerance(CHAINS)


def test_sghmc_noise_estimate_removes_the_gradient_noise_bias():
    # Gradient noise of variance beta adds eps^2 beta to the momentum each step; telling the
    # sampler beta lowers the injected noise by exactly that much, so the stationary
    # covariance is that of the noise-free chain.
    precision, eps, friction, beta = 1.0, 0.1, 2.0, 20.0
    noise_free = sghmc_stationary_covariance(eps, friction, precision, eps * 2 * friction)[0, 0]
    uncorrected = sghmc_stationary_covariance(eps, friction, precision, eps * 2 * friction + eps**2 * beta)[0, 0]
    corrected = run_kernel(SGHMCKernel(friction=friction, noise_estimate=beta), precision, 1500, step_size=eps,
                           gradient_noise_sd=math.sqrt(beta))
    naive = run_kernel(SGHMCKernel(friction=friction), precision, 1500, step_size=eps,
                       gradient_noise_sd=math.sqrt(beta))
    tol = variance_tolerance(CHAINS)
    assert abs(corrected.position.var().item() / noise_free - 1) < tol
    assert abs(naive.position.var().item() / uncorrected - 1) < tol
    assert uncorrected / noise_free - 1 > 2 * tol  # the two are distinguishable


def test_sghmc_ema_noise_estimate_helps_without_being_told():
    precision, eps, friction, beta = 1.0, 0.1, 2.0, 30.0
    noise_free = sghmc_stationary_covariance(eps, friction, precision, eps * 2 * friction)[0, 0]
    naive = sghmc_stationary_covariance(eps, friction, precision, eps * 2 * friction + eps**2 * beta)[0, 0]
    state = run_kernel(SGHMCKernel(friction=friction, noise_estimate="ema"), precision, 3000, step_size=eps,
                       gradient_noise_sd=math.sqrt(beta))
    variance = state.position.var().item()
    # the moving variance also sees theta's own motion (an over-estimate), so it lands at or just
    # below the noise-free value, and well below the uncorrected chain's
    assert noise_free * (1 - 2 * variance_tolerance(CHAINS)) < variance < 0.5 * (noise_free + naive)


def test_sghmc_mass_rescales_a_narrow_target():
    # N(0, 1e-4): with mass = precision the chain behaves as unit-mass SGHMC on N(0, 1)
    precision = 1e4
    state = run_kernel(SGHMCKernel(friction=2.0, mass=precision), precision, 1500, step_size=0.1)
    reference = run_kernel(SGHMCKernel(friction=2.0), 1.0, 1500, step_size=0.1)
    torch.testing.assert_close(state.position * precision**0.5, reference.position)


def test_sgnht_thermostat_absorbs_unknown_gradient_noise():
    # Unknown gradient noise: the thermostat raises the friction until the kinetic energy per
    # dimension is T; the position then has (nearly) the target's variance.
    precision, eps, diffusion, beta = 1.0, 0.05, 1.0, 20.0
    state = run_kernel(SGNHTKernel(diffusion=diffusion), precision, 4000, dim=10, step_size=eps,
                       gradient_noise_sd=math.sqrt(beta), chains=1000)
    kinetic = (state.momentum**2).mean().item()
    n = state.momentum.numel()
    assert abs(kinetic - 1) < variance_tolerance(n)
    # friction settles where the decay balances the noise: 1 - exp(-2 eps xi) = 2 A eps + eps^2 beta
    # (about A + eps beta / 2 for small steps)
    expected_friction = -math.log(1 - 2 * diffusion * eps - eps**2 * beta) / (2 * eps)
    assert abs(state.thermostat.mean().item() / expected_friction - 1) < 0.1
    # discretisation error at eps * sqrt(h) = 0.05 is a few percent
    assert abs(state.position.var().item() * precision - 1) < 0.05 + variance_tolerance(n)


def test_psgld_samples_coordinates_of_very_different_scales_with_one_step_size():
    # sds 0.1 and 1 with minibatch-like gradient noise: the RMSprop preconditioner scales each
    # coordinate's step by about 1 / (gradient magnitude), so one step size serves both; plain
    # SGLD at this step would be about 33% too wide in the first coordinate (eps h = 1).
    # (Without gradient noise, V tracks theta^2 and the dropped Gamma term biases pSGLD.)
    precision = torch.tensor([100.0, 1.0], dtype=torch.float64)
    noise_sd = precision.sqrt()
    torch.manual_seed(0)
    kernel = PSGLDKernel(alpha=0.999)
    chains = 2000
    state = kernel.init(torch.ones(chains, 2, dtype=torch.float64))
    for _ in range(3000):
        score = -precision * state.position + noise_sd * torch.randn_like(state.position)
        state = kernel.step(state, score, 1e-2)
    ratio = state.position.var(0) * precision
    assert (ratio - 1).abs().max() < 0.05 + variance_tolerance(chains), ratio


def test_noise_free_steps_are_gradient_ascent():
    position = torch.tensor([[1.0, -2.0]])
    score = torch.tensor([[0.5, 0.25]])
    out = sgld_step(sgld_init(position), score, 0.2, noise=False)
    torch.testing.assert_close(out.position, position + 0.1 * score)
    out = sghmc_step(sghmc_init(position), score, 0.2, friction=1.0, noise=False)
    torch.testing.assert_close(out.momentum, 0.2 * score)
    torch.testing.assert_close(out.position, position + 0.04 * score)


def test_make_kernel_and_bad_hyperparameters():
    assert isinstance(make_kernel("sghmc", friction=2.0), SGHMCKernel)
    with pytest.raises(ValueError, match="unknown SG-MCMC kernel 'hmc'"):
        make_kernel("hmc")
    with pytest.raises(ValueError, match="temperature must be a positive"):
        SGLDKernel(temperature=0.0)
    with pytest.raises(ValueError, match="alpha must lie in"):
        PSGLDKernel(alpha=1.0)
    with pytest.raises(ValueError, match="noise_estimate"):
        SGHMCKernel(noise_estimate="auto")
    with pytest.raises(ValueError, match="mass must be"):
        SGNHTKernel(mass=torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"position must be a tensor of shape \(chains, dim\)"):
        sgld_init(torch.zeros(3))


@pytest.mark.parametrize("kernel, options", [
    (SGLDKernel(), {}),
    (SGLDKernel(), {"mass": torch.tensor([1.0, 4.0, 9.0]), "noise_estimate": 0.5}),
    (PSGLDKernel(), {}),
    (SGHMCKernel(friction=2.0), {}),
    (SGHMCKernel(friction=2.0, noise_estimate="ema", mass=torch.tensor([1.0, 2.0, 3.0])), {}),
    (SGNHTKernel(diffusion=1.0), {}),
    (AdaptiveSGHMCKernel(), {"adapt": True}),
    (AdaptiveSGHMCKernel(), {"adapt": False}),
    (AdaptiveSGHMCKernel(), {"mass": torch.tensor([1.0, 2.0, 3.0]), "friction": 3.0, "noise_estimate": 0.1}),
], ids=["sgld", "sgld-mass", "psgld", "sghmc", "sghmc-ema", "sgnht", "adaptive", "adaptive-frozen",
        "adaptive-tuned"])
def test_a_kernel_step_returns_a_new_state_and_leaves_its_input_unchanged(kernel, options):
    generator = torch.Generator().manual_seed(0)
    state = kernel.init(torch.randn(2, 3, generator=generator, dtype=torch.float64))
    for _ in range(3):
        score = -state.position + torch.randn(2, 3, generator=generator, dtype=torch.float64)
        before = {name: value.clone() for name, value in state.tensors().items()}
        new = kernel.step(state, score, 0.1, **options)
        assert new is not state and state.tensors().keys() == before.keys()
        assert all(torch.equal(state.tensors()[name], value) for name, value in before.items())
        state = new
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.position = torch.zeros(2, 3)
