"""The SG-MCMC warm-up that adapts when ``step_size`` is None: curvature, gradient noise, mass, step rules.

During the first 3/4 of ``num_warmup`` the engines estimate, in doubling
windows, the diagonal curvature (Hutchinson probes), the minibatch noise and
the largest eigenvalue of the mass-preconditioned Hessian (power iteration),
then set the mass, friction and step size by the rules below; the last
quarter runs the frozen kernel. See :class:`~bayeskit.inference.sgmcmc.engines.SGMCMC`.
"""

from __future__ import annotations

import torch

from bayeskit.inference.sgmcmc.scoring import log_prob_and_score_per_chain

__all__ = [
    "warmup_windows", "probe_gradients", "power_iteration", "omega2_from", "refresh_omega2", "travel_step",
    "start_adaptation", "observe", "estimate", "scaled_estimates", "sgld_step_size_rule", "sgnht_step_size_rule",
    "default_friction", "hmc_step_size_rule", "PROBE_SIZE", "SGLD_DISCRETISATION", "HMC_DISCRETISATION",
    "SGNHT_NOISE_BUDGET", "TRAVEL_STEP", "START_POWER_ITERATIONS", "WINDOW_POWER_ITERATIONS", "REJECT_SLACK",
    "ADAPT_FRACTION", "MIN_ADAPTIVE_WARMUP", "DEFAULT_MOMENTUM_DECAY",
]

# ------------------------------------------------------------------ warm-up adaptation (step_size=None)
# All rules below work in the mass-scaled coordinates x = M^(1/2) theta (M diagonal), where the
# estimates read: v_i = V_i / M_i, the stochastic score's noise variance, and omega^2, the largest
# curvature: the largest eigenvalue of the preconditioned Hessian M^(-1/2) H M^(-1/2), estimated by power
# iteration (see power_iteration).  It is at least max_i H_i / M_i (1 when M is the curvature itself), and
# far above it where the coordinates are coupled (a small neural network's weights: 70-350 against 1).

#: Size of the curvature probe in (estimated) posterior sds: local, yet far above float32 round-off.
PROBE_SIZE = 0.1
#: SGLD inflates a Gaussian's variance by 1 / (1 - epsilon omega^2 / 4) (the AR(1) recursion):
#: epsilon omega^2 <= 0.12 keeps that at 3%.
SGLD_DISCRETISATION = 0.12
#: SGHMC/SGNHT's Euler scheme, critically damped (alpha = 2 omega): epsilon omega <= 0.25 keeps the
#: stationary variance within 2% (discrete Lyapunov equation; 1.3% at 0.2, 3.3% at 0.3).
HMC_DISCRETISATION = 0.25
#: SGNHT's per-step momentum noise ``q = 2 A epsilon + epsilon^2 v`` (in units of T): the thermostat sets
#: ``1 - exp(-2 epsilon xi) = q`` and the position variance then falls short by about ``q / 4`` (discrete
#: Lyapunov equation with the kinetic energy pinned at T): 0.1 keeps that at 2.5%.
SGNHT_NOISE_BUDGET = 0.1
#: SGLD's step while the warm-up first travels to the posterior: ``min(0.5, 1 / omega^2)`` (stable up to
#: epsilon omega^2 < 4); the gradient noise it leaves uncorrected only widens the warm-up, which is discarded.
TRAVEL_STEP = 0.5
#: Power iterations for omega^2: at the start of the warm-up (from a random vector), at the end of each
#: estimation window (warm-started), and one per step in the first window (where the mass changes per step).
START_POWER_ITERATIONS = 10
WINDOW_POWER_ITERATIONS = 5
#: A warm-up step is undone (and the step halved until the window ends) where a chain's log density turns
#: non-finite or falls by more than ``|log p_prev| + REJECT_SLACK * dim`` (more than doubles in size):
#: divergence, not minibatch noise.
REJECT_SLACK = 10.0
#: The first 3/4 of the warm-up estimates; the last 1/4 runs the frozen kernel (momentum, thermostat settle).
ADAPT_FRACTION = 0.75
MIN_ADAPTIVE_WARMUP = 50


def warmup_windows(num_warmup: int) -> list[int]:
    """Ends of the estimation windows: ``(1, 3, 7, 15) / 15`` of the adaptation phase.

    Each window doubles the last (Stan's slow windows) and its estimates
    replace the previous ones at its end, so the final estimates come from
    the last 8/15 of the phase, after the chains have left their starting
    points.  In the first window the estimates are running means.
    """
    steps = int(ADAPT_FRACTION * num_warmup)
    return sorted({max(1, round(steps * k / 15)) for k in (1, 3, 7, 15)})


def probe_gradients(target, position, score, curvature, share_minibatches=False):
    """One warm-up observation per chain: the curvature, gradient-noise and squared-score per coordinate.

    * Curvature ``H_ii = -d^2 log p / d theta_i^2`` (Hutchinson's estimator):
      with Rademacher signs ``s`` and ``delta = PROBE_SIZE * sd * s``, scored
      *in one call* together with ``theta`` (so both see the same minibatch,
      one per chain, and the difference carries no gradient noise),
      ``E[-s_i (g(theta + delta) - g(theta))_i] / (PROBE_SIZE sd_i) = H_ii``.
      It is the local curvature, valid on the way to the posterior too, unlike
      the Fisher identity ``E[g^2] = H``, which holds only at stationarity and
      is buried under the minibatch noise when ``N / B`` is large.
    * Gradient noise ``V_ii`` (Chen et al.'s ``B_hat``, up to ``epsilon / 2``):
      the probe's ``g(theta)`` and the step's score come from two independent
      minibatches at the same point, so ``E[(g_1 - g_2)^2] / 2 = V_ii``, free of
      the chain's own motion (which a moving variance of the scores includes).
    * ``g^2``, the score's second moment (Springenberg et al.'s ``V_hat``).
    """
    sd = curvature.rsqrt()
    signs = torch.randint(0, 2, position.shape, device=position.device).to(position.dtype) * 2 - 1
    pairs = torch.stack([position, position + PROBE_SIZE * sd * signs], dim=1)  # (chains, 2, dim)
    _, pairs = log_prob_and_score_per_chain(target, pairs, share_minibatches)
    here, moved = pairs.unbind(1)
    hessian = -(signs * (moved - here)) / (PROBE_SIZE * sd)
    return torch.stack([hessian, hessian.abs(), 0.5 * (here - score) ** 2, score * score]).mean(1)


def power_iteration(target, position, mass, vector, iterations, share_minibatches=False):
    """Per chain, the largest eigenvalue (in size) of ``A = M^(-1/2) H M^(-1/2)`` by power iteration.

    Each iteration scores ``theta`` and ``theta + h M^(-1/2) u`` (``|u| = 1``,
    ``h = PROBE_SIZE``) *in one call* per chain, as :func:`probe_gradients`
    pairs its points, so both see the same minibatch and the finite difference
    ``A u = -M^(-1/2) (g(theta + h M^(-1/2) u) - g(theta)) / h`` carries no
    gradient noise; each iteration draws a fresh minibatch, so ``u`` follows
    the mean Hessian rather than one minibatch's (whose top eigenvalue is
    biased upwards).  Returns the Rayleigh quotients' sizes ``|u' A u|``, averaged
    over the iterations after the first (``(chains,)``; NaN where none was
    finite), and the last vectors ``(chains, dim)`` to warm-start the next call.
    """
    inv_sqrt_mass = mass.rsqrt()
    total, count = position.new_zeros(position.shape[0]), position.new_zeros(position.shape[0])
    for iteration in range(iterations):
        pairs = torch.stack([position, position + PROBE_SIZE * inv_sqrt_mass * vector], dim=1)
        _, pairs = log_prob_and_score_per_chain(target, pairs, share_minibatches)
        here, moved = pairs.unbind(1)
        product = -(moved - here) * inv_sqrt_mass / PROBE_SIZE
        quotient = (vector * product).sum(-1)
        norm = product.norm(dim=-1, keepdim=True)
        usable = torch.isfinite(norm) & (norm > 0)
        vector = torch.where(usable, product / torch.where(usable, norm, torch.ones_like(norm)), vector)
        if iteration > 0 or iterations == 1:
            finite = torch.isfinite(quotient)
            total = total + torch.where(finite, quotient.abs(), torch.zeros_like(quotient))
            count = count + finite.to(total.dtype)
    return total / count, vector


def omega2_from(quotients):
    """``omega^2`` for ``M = H_hat``: the largest chain's eigenvalue, at least 1 (the diagonal's
    ``max_i H_i / M_i``: ``A``'s largest eigenvalue is never below its largest diagonal entry)."""
    finite = torch.isfinite(quotients)
    largest = torch.where(finite, quotients, torch.zeros_like(quotients)).max()
    return largest.clamp_min(1.0)


def refresh_omega2(adaptation, target, position, iterations, share_minibatches=False):
    """Re-estimate ``omega2`` for the current mass ``curvature`` by ``iterations`` power iterations."""
    quotients, vector = power_iteration(target, position, adaptation["curvature"], adaptation["power_vector"],
                                        iterations, share_minibatches)
    return {**adaptation, "omega2": omega2_from(quotients), "power_vector": vector}


def travel_step(omega2):
    """The travel phase's SGLD step: ``min(TRAVEL_STEP, 1 / omega^2)``, a factor 4 inside stability."""
    return torch.clamp(1.0 / omega2, max=TRAVEL_STEP)


def _curvature_from(mean, mean_abs):
    """A positive curvature: where the mean is not clearly positive (a saddle, a neck of a funnel),
    a tenth of the mean absolute estimate, so that the mass stays on the local scale."""
    curvature = torch.where(mean > 0.1 * mean_abs, mean, 0.1 * mean_abs)
    return curvature.clamp_min(1e-12 * float(curvature.max()) + torch.finfo(curvature.dtype).tiny)


def start_adaptation(target, position, score, share_minibatches=False):
    """The first estimates: the curvature from three probes at growing precision (the first on a unit
    scale), ``omega2`` from :data:`START_POWER_ITERATIONS` power iterations (random start), the travel
    step from it, everything else from the first observation."""
    curvature = torch.ones(position.shape[-1], dtype=position.dtype, device=position.device)
    for _ in range(3):
        observed = probe_gradients(target, position, score, curvature, share_minibatches)
        if not bool(torch.isfinite(observed).all()):
            break
        curvature = _curvature_from(observed[0], observed[1])
    zeros = torch.zeros_like(curvature)
    vector = torch.randn_like(position)
    vector = vector / vector.norm(dim=-1, keepdim=True)
    adaptation = {"curvature": curvature, "noise": zeros, "square": zeros, "sums": zeros.new_zeros(4, len(zeros)),
                  "count": zeros.new_zeros(()), "power_vector": vector, "backoff": zeros.new_ones(())}
    adaptation = refresh_omega2(adaptation, target, position, START_POWER_ITERATIONS, share_minibatches)
    return {**adaptation, "step_size": travel_step(adaptation["omega2"])}


def observe(adaptation, target, position, score, share_minibatches=False):
    """Add one probe to the window's sums (a non-finite probe is skipped)."""
    observed = probe_gradients(target, position, score, adaptation["curvature"], share_minibatches)
    finite = torch.isfinite(observed).all()
    sums = adaptation["sums"] + torch.where(finite, observed, torch.zeros_like(observed))
    return {**adaptation, "sums": sums, "count": adaptation["count"] + finite.to(sums.dtype)}


def estimate(adaptation, *, reset):
    """Window means -> ``curvature``, ``noise``, ``square``; ``reset`` starts the next window."""
    count = adaptation["count"]
    if float(count) == 0:
        return adaptation
    mean = adaptation["sums"] / count
    estimates = {"curvature": _curvature_from(mean[0], mean[1]), "noise": mean[2], "square": mean[3]}
    if reset:
        estimates.update(sums=torch.zeros_like(adaptation["sums"]), count=torch.zeros_like(count))
    return {**adaptation, **estimates}


def scaled_estimates(adaptation, mass):
    """``v`` (per coordinate) and ``omega`` (a scalar) in the coordinates of ``mass``.

    ``omega^2`` is the largest eigenvalue of ``M^(-1/2) H M^(-1/2)``: the power
    iteration's ``omega2`` (measured for ``M = H_hat``), times
    ``max_i H_hat_i / M_i`` for another mass (``M^(-1/2) H M^(-1/2) = D A D``
    with ``D^2 = H_hat / M``, whose largest eigenvalue is at most
    ``max D^2`` times ``A``'s): exact for ``M = H_hat``, a bound otherwise.
    """
    mass = torch.as_tensor(mass, dtype=adaptation["curvature"].dtype, device=adaptation["curvature"].device)
    mass = mass.expand_as(adaptation["curvature"])
    omega2 = adaptation["omega2"] * (adaptation["curvature"] / mass).max()
    return mass, adaptation["noise"] / mass, omega2.sqrt()


def sgld_step_size_rule(noise, omega, temperature):
    """SGLD's step in ``x``: ``epsilon = min(2 T / max_i v_i, 0.12 / omega^2)``.

    The minibatch noise adds ``(epsilon/2)^2 v_i`` to a step, so at most half
    of the injected ``epsilon T`` may come from it (``epsilon^2 v / 4 <=
    epsilon T / 2``), the rest being injected (the ``B_hat`` correction of
    :func:`~bayeskit.inference.sgmcmc.kernels.sgld_step`); and the Euler bias
    ``1 / (1 - epsilon omega^2 / 4)`` stays near 3%.
    """
    return torch.minimum(2 * temperature / noise.max(), SGLD_DISCRETISATION / omega**2)


def sgnht_step_size_rule(diffusion, noise, omega, temperature):
    """SGNHT's step in ``x``: the root of ``epsilon (2 A + epsilon max_i v_i / T) = 0.1``, at most ``0.25 / omega``.

    The thermostat drives the kinetic energy to ``T`` whatever the noise, so
    no noise bound is needed for validity (Ding et al., 2014); but it does so
    by raising ``xi`` until ``1 - exp(-2 epsilon xi) = q``, the momentum noise
    per step, and with the kinetic energy pinned at ``T`` the Euler scheme
    under-disperses the position by about ``q / 4``.  Keeping
    ``q = 2 A epsilon + epsilon^2 v / T <= 0.1`` bounds that at 2.5%; the
    root is written ``0.1 / (A + sqrt(A^2 + 0.1 v / T))`` so that ``v = 0``
    (full data) gives ``0.05 / A``.
    """
    budget = SGNHT_NOISE_BUDGET
    step_size = budget / (diffusion + (diffusion**2 + budget * noise.max() / temperature).sqrt())
    return torch.minimum(step_size, HMC_DISCRETISATION / omega)


#: The momentum's decay per step that SGHMC's default friction gives when a step size is set.
DEFAULT_MOMENTUM_DECAY = 0.1


def default_friction(step_size: float) -> float:
    """SGHMC's friction when only ``step_size`` is given: ``step_size * friction`` = :data:`DEFAULT_MOMENTUM_DECAY`."""
    return DEFAULT_MOMENTUM_DECAY / step_size


def hmc_step_size_rule(friction, noise, omega, temperature):
    """SGHMC's/SGNHT's step in ``x``: ``epsilon = min(alpha T / max_i v_i, 0.25 / omega)``.

    The minibatch noise adds ``epsilon^2 v_i`` to the momentum per step, the
    dynamics need ``2 alpha epsilon T``: at most half may come from the
    minibatches (Chen et al.'s condition ``alpha > epsilon v / 2`` with a
    factor 2 to spare, which also bounds the error of a Gaussian noise model);
    ``epsilon omega <= 0.25`` bounds the Euler error.
    """
    return torch.minimum(friction * temperature / noise.max(), HMC_DISCRETISATION / omega)
