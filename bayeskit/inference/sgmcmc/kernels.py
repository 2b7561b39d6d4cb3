"""The functional core of stochastic-gradient MCMC: one update per algorithm.

Every update takes the state at ``theta_t`` and a stochastic estimate of the
score at ``theta_t``,

.. math::

    \\hat g(\\theta) = \\nabla \\log p(\\theta) + \\frac{N}{B} \\sum_{i \\in \\text{batch}}
        \\nabla \\log p(x_i \\mid \\theta),

which is what :meth:`bayeskit.Target.log_prob_and_score` returns for a Pyro
model with ``pyro.plate(..., subsample_size=B)`` (Pyro scales the minibatch
by ``N / B``).  All tensors are batched: positions are ``(chains, dim)`` and
every chain moves in the same call.  The target is tempered as
``p(theta | x)^(1 / T)`` by ``temperature=T`` (``T = 1`` samples the
posterior; ``T < 1`` sharpens it, as in "cold posterior" work).

Use the pure functions in your own loop::

    state = sgld_init(position)
    for t in range(num_steps):
        _, score = target.log_prob_and_score(state.position)
        state = sgld_step(state, score, step_size=1e-4)

or the kernel objects (:class:`SGLDKernel`, ...), which bind the
hyperparameters and are what the engines in
:mod:`bayeskit.inference.sgmcmc` and the federated and structured variants
take.  Noise comes from torch's global generator on the positions' device;
seed it (the engines do) for reproducible runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from bayeskit._checks import positive

__all__ = [
    "SGMCMCState", "SGLDKernel", "PSGLDKernel", "SGHMCKernel", "SGNHTKernel", "make_kernel",
    "sgld_init", "sgld_step", "psgld_init", "psgld_step", "sghmc_init", "sghmc_step",
    "sgnht_init", "sgnht_step", "AdaptiveSGHMCKernel", "adaptive_sghmc_init", "adaptive_sghmc_step",
]


@dataclass(frozen=True)
class SGMCMCState:
    """What an SG-MCMC update carries from one step to the next.

    Frozen, and every update builds new tensors: a step returns a new state
    and leaves the one it was given (and its tensors) unchanged, so states
    may share tensors (an update that does not touch ``momentum`` passes it on).

    Attributes
    ----------
    position : Tensor
        ``(chains, dim)`` current parameters, unconstrained.
    momentum : Tensor or None
        ``(chains, dim)`` for SGHMC and SGNHT.
    thermostat : Tensor or None
        ``(chains, 1)`` the SGNHT friction variable ``xi``.
    square_avg : Tensor or None
        ``(chains, dim)`` running average of squared gradients (pSGLD's ``V``,
        SGHMC's gradient-noise estimate).
    grad_avg : Tensor or None
        ``(chains, dim)`` running average of gradients (SGHMC's noise estimate).
    window : Tensor or None
        ``(chains, dim)`` adaptive SGHMC's averaging window ``tau``.
    """

    position: torch.Tensor
    momentum: torch.Tensor | None = None
    thermostat: torch.Tensor | None = None
    square_avg: torch.Tensor | None = None
    grad_avg: torch.Tensor | None = None
    window: torch.Tensor | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        """The non-empty fields, for checkpoints."""
        return {name: value for name, value in vars(self).items() if value is not None}


def _check_position(position):
    if not isinstance(position, torch.Tensor) or position.dim() != 2:
        raise ValueError("position must be a tensor of shape (chains, dim), got "
                         f"{getattr(position, 'shape', type(position).__name__)}")
    return position.detach().clone()


def _inv_sqrt(mass, like):
    """``M^(-1/2)`` of a scalar (kept a Python number: no device copy per step) or diagonal mass."""
    if isinstance(mass, (int, float)):
        return float(mass) ** -0.5
    return mass.to(dtype=like.dtype, device=like.device).rsqrt()


def _clamp_at_zero(value):
    """``max(value, 0)`` for a number or a tensor."""
    return max(value, 0.0) if isinstance(value, (int, float)) else value.clamp(min=0.0)


def _gaussian(like, variance):
    """N(0, variance) noise shaped like ``like``; variance (a number or a tensor) broadcasts."""
    scale = math.sqrt(variance) if isinstance(variance, (int, float)) else variance.sqrt()
    return torch.randn_like(like) * scale


# ---------------------------------------------------------------------------- SGLD
def sgld_init(position: torch.Tensor) -> SGMCMCState:
    """SGLD's state: the position alone."""
    return SGMCMCState(_check_position(position))


def sgld_step(state: SGMCMCState, score: torch.Tensor, step_size: float, *, temperature: float = 1.0,
              noise: bool = True, mass: float | torch.Tensor = 1.0,
              noise_estimate: float | torch.Tensor = 0.0) -> SGMCMCState:
    """Stochastic gradient Langevin dynamics (Welling and Teh, ICML 2011).

    .. math:: \\theta \\leftarrow \\theta + \\tfrac{\\epsilon}{2} \\hat g(\\theta)
              + \\mathcal N(0, \\epsilon T I).

    ``noise=False`` gives stochastic gradient ascent (the exploration phase
    of cyclical schedules).

    ``mass`` (a number or a ``(dim,)`` diagonal ``M``) runs the same update
    on ``x = M^(1/2) theta``, i.e. SGLD preconditioned by ``G = M^(-1)``
    (as pSGLD, Li et al. 2016, but with ``G`` held fixed, so no correction
    term ``Gamma`` arises).  ``noise_estimate`` is the variance ``v`` of the
    stochastic score in those units (per coordinate).  Its noise already adds
    ``(epsilon / 2)^2 v`` to each step, so only ``epsilon T - epsilon^2 v / 4``
    is injected (clamped at zero): Chen, Fox and Guestrin's (2014) ``B_hat``
    correction in the overdamped limit.  The defaults are plain SGLD.
    """
    inv_sqrt_mass = _inv_sqrt(mass, score)
    if isinstance(inv_sqrt_mass, float) and inv_sqrt_mass == 1.0:
        position = state.position + 0.5 * step_size * score
        scale = None
    else:
        scale = inv_sqrt_mass * inv_sqrt_mass  # M^(-1): drift and noise both move theta = M^(-1/2) x
        position = state.position + 0.5 * step_size * scale * score
    if noise:
        variance = step_size * temperature
        if not (isinstance(noise_estimate, (int, float)) and noise_estimate == 0):
            variance = _clamp_at_zero(variance - 0.25 * step_size * step_size * noise_estimate)
        if scale is not None:
            variance = variance * scale
        position = position + _gaussian(position, variance)
    return replace(state, position=position)


# ---------------------------------------------------------------------------- pSGLD
def psgld_init(position: torch.Tensor) -> SGMCMCState:
    """pSGLD's state: the position; the squared-gradient average starts with the first gradient."""
    return SGMCMCState(_check_position(position))


def psgld_step(state: SGMCMCState, score: torch.Tensor, step_size: float, *, alpha: float = 0.99,
               eps: float = 1e-5, temperature: float = 1.0, noise: bool = True) -> SGMCMCState:
    """Preconditioned SGLD (Li, Chen, Carlson and Carin, AAAI 2016).

    An RMSprop preconditioner ``G = diag(1 / (eps + sqrt(V)))`` with
    ``V <- alpha V + (1 - alpha) g^2``:

    .. math:: \\theta \\leftarrow \\theta + \\tfrac{\\epsilon}{2} G \\hat g
              + \\mathcal N(0, \\epsilon T G).

    The correction term ``Gamma`` (derivatives of ``G``) is dropped, as the
    paper recommends: it vanishes as ``alpha -> 1``.  The first step uses
    ``V = g^2`` rather than a biased-to-zero average.
    """
    square = score * score
    square_avg = square if state.square_avg is None else alpha * state.square_avg + (1 - alpha) * square
    preconditioner = 1.0 / (eps + square_avg.sqrt())
    position = state.position + 0.5 * step_size * preconditioner * score
    if noise:
        position = position + _gaussian(position, step_size * temperature * preconditioner)
    return replace(state, position=position, square_avg=square_avg)


# ---------------------------------------------------------------------------- SGHMC
def sghmc_init(position: torch.Tensor, momentum: torch.Tensor | None = None) -> SGMCMCState:
    """SGHMC's state: position, momentum (zeros unless given) and gradient averages for the noise estimate."""
    position = _check_position(position)
    momentum = torch.zeros_like(position) if momentum is None else momentum.detach().clone()
    return SGMCMCState(position, momentum=momentum, square_avg=torch.zeros_like(position),
                       grad_avg=torch.zeros_like(position))


def sghmc_step(state: SGMCMCState, score: torch.Tensor, step_size: float, *, friction: float,
               noise_estimate: float | str = 0.0, temperature: float = 1.0, noise: bool = True,
               mass: float | torch.Tensor = 1.0, estimate_decay: float = 0.01) -> SGMCMCState:
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox and Guestrin, ICML 2014).

    Euler steps of the second-order Langevin dynamics with friction
    ``alpha`` and time step ``epsilon``:

    .. math::

        m \\leftarrow m + \\epsilon \\hat g(\\theta) - \\epsilon \\alpha m
            + \\mathcal N\\big(0, \\epsilon (2 \\alpha T - \\epsilon \\hat\\beta)\\big),
        \\qquad \\theta \\leftarrow \\theta + \\epsilon m,

    where ``beta_hat`` estimates the variance of the stochastic gradient,
    whose noise already injects ``epsilon^2 beta_hat`` into ``m`` (the
    paper's ``B_hat = epsilon V_hat / 2``).  ``noise_estimate`` is that
    variance (a number, per coordinate) or ``"ema"``: an exponential moving
    variance of the gradients, an over-estimate (it includes the drift of
    ``theta``) that errs towards less injected noise.  The injected variance
    is clamped at zero.  In Chen et al.'s practical parametrisation this is
    learning rate ``eta = epsilon^2`` and momentum decay ``epsilon alpha``.

    ``mass`` (a number or a ``(dim,)`` tensor, the diagonal of ``M``) runs
    the same dynamics on ``x = M^(1/2) theta``: the score is scaled by
    ``M^(-1/2)`` and so is the position update.  A mass near the posterior
    precision makes the posterior of ``x`` roughly unit scale, so one step
    size and friction suit every coordinate and the dynamics are not stiff.
    """
    momentum = state.momentum
    inv_sqrt_mass = _inv_sqrt(mass, score)
    score = inv_sqrt_mass * score
    square_avg, grad_avg = state.square_avg, state.grad_avg
    if noise_estimate == "ema":
        grad_avg = (1 - estimate_decay) * grad_avg + estimate_decay * score
        square_avg = (1 - estimate_decay) * square_avg + estimate_decay * (score - grad_avg) ** 2
        beta = square_avg
    else:
        beta = noise_estimate
    momentum = momentum + step_size * score - step_size * friction * momentum
    if noise:
        variance = step_size * (2 * friction * temperature - step_size * beta)
        momentum = momentum + _gaussian(momentum, _clamp_at_zero(variance))
    position = state.position + step_size * inv_sqrt_mass * momentum
    return replace(state, position=position, momentum=momentum, square_avg=square_avg, grad_avg=grad_avg)


# ---------------------------------------------------------------------------- adaptive SGHMC
def adaptive_sghmc_init(position: torch.Tensor) -> SGMCMCState:
    """Adaptive SGHMC's state: position and zero momentum; the gradient averages start with the first score."""
    position = _check_position(position)
    return SGMCMCState(position, momentum=torch.zeros_like(position))


def _update_gradient_moments(state, score):
    """Springenberg et al.'s averages of ``g`` and ``g^2`` with the self-tuning window of Schaul et al. (2013).

    ``tau <- tau (1 - gbar^2 / vhat) + 1``, each average moving at rate
    ``1 / (tau + 1)``: the window grows while the gradient's sign is steady
    (``gbar^2`` near ``vhat``) and shrinks back to a few steps when it
    turns noisy, so ``vhat`` tracks the local gradient scale quickly.
    """
    if state.square_avg is None:
        return score, score * score, torch.ones_like(score)
    rate = 1.0 / (state.window + 1.0)
    grad_avg = state.grad_avg + rate * (score - state.grad_avg)
    square_avg = state.square_avg + rate * (score * score - state.square_avg)
    window = state.window * (1.0 - grad_avg * grad_avg / square_avg.clamp_min(torch.finfo(score.dtype).tiny)) + 1.0
    return grad_avg, square_avg, window


def adaptive_sghmc_step(state: SGMCMCState, score: torch.Tensor, step_size: float, *, momentum_decay: float = 0.05,
                        temperature: float = 1.0, noise: bool = True, adapt: bool = True) -> SGMCMCState:
    """Adaptive SGHMC (Springenberg, Klein, Falkner and Hutter, NeurIPS 2016), the sampler of Bayesian autoencoders.

    SGHMC (:func:`sghmc_step`) with the diagonal mass ``M = Vhat^(1/2)``,
    where ``Vhat`` estimates ``E[g^2]`` of the stochastic score, and the
    friction set by the momentum decay ``mdecay = epsilon alpha``.  In the
    velocity ``v = epsilon M^(-1/2) m`` this is the paper's update

    .. math::

        v \\leftarrow v + \\epsilon^2 \\hat V^{-1/2} \\hat g - \\text{mdecay}\\, v
            + \\mathcal N\\big(0, 2 \\epsilon^2\\, \\text{mdecay}\\, T\\, \\hat V^{-1/2}\\big),
        \\qquad \\theta \\leftarrow \\theta + v,

    so ``epsilon^2`` is a scale-free learning rate (each coordinate moves
    by about ``epsilon^2`` per unit-normalised gradient) and one setting
    serves weights of very different scales.  ``Vhat`` adapts (see
    :func:`_update_gradient_moments`) only while ``adapt`` is true: keep it
    to the burn-in, as the engine :class:`~bayeskit.inference.AdaptiveSGHMC`
    does, since a mass that keeps moving breaks the sampler's invariance.
    The paper's gradient-noise correction is left out (the noise estimate
    is taken as zero), as in its experiments.
    """
    grad_avg, square_avg, window = ((state.grad_avg, state.square_avg, state.window)
                                    if state.square_avg is not None and not adapt
                                    else _update_gradient_moments(state, score))
    # A relative floor keeps coordinates with a vanishing gradient from an unbounded step.
    mass = square_avg.clamp_min(1e-12 * square_avg.mean(-1, keepdim=True)).sqrt()
    state = replace(state, grad_avg=grad_avg, square_avg=square_avg, window=window)
    return sghmc_step(state, score, step_size, friction=momentum_decay / step_size, temperature=temperature,
                      noise=noise, mass=mass)


# ---------------------------------------------------------------------------- SGNHT
def sgnht_init(position: torch.Tensor, diffusion: float, momentum: torch.Tensor | None = None) -> SGMCMCState:
    """SGNHT's state: position, momentum (zeros unless given) and the thermostat, started at ``diffusion``."""
    position = _check_position(position)
    momentum = torch.zeros_like(position) if momentum is None else momentum.detach().clone()
    thermostat = torch.full((position.shape[0], 1), float(diffusion), dtype=position.dtype,
                            device=position.device)
    return SGMCMCState(position, momentum=momentum, thermostat=thermostat)


def sgnht_step(state: SGMCMCState, score: torch.Tensor, step_size: float, *, diffusion: float,
               temperature: float = 1.0, noise: bool = True, mass: float | torch.Tensor = 1.0) -> SGMCMCState:
    """Stochastic gradient Nosé-Hoover thermostat (Ding, Fang, Babbush, Chen, Skeel, Neven, NeurIPS 2014).

    .. math::

        m \\leftarrow e^{-\\epsilon \\xi} m + \\epsilon \\hat g(\\theta)
            + \\mathcal N(0, 2 A \\epsilon T),\\quad
        \\theta \\leftarrow \\theta + \\epsilon m,\\quad
        \\xi \\leftarrow \\xi + \\epsilon \\big(m^\\top m / d - T\\big).

    The thermostat ``xi`` adapts the friction until the kinetic energy per
    dimension matches the temperature, which absorbs the unknown gradient
    noise; ``A`` (``diffusion``) is the injected noise.  The friction is
    applied as the exact decay ``exp(-epsilon xi)`` rather than Euler's
    ``1 - epsilon xi`` (as in the splitting schemes of Leimkuhler and Shang,
    2016): the two agree to first order, but from a start far from the
    posterior the thermostat overshoots and Euler's factor turns negative
    once ``epsilon xi > 2``, and the chain diverges.  With ``noise=False``
    the thermostat still runs but drives towards zero kinetic energy.

    The thermostat relaxes in about ``xi / epsilon`` steps, the position in
    about ``xi / (epsilon omega^2)`` for a posterior of curvature
    ``omega^2``: on a narrow posterior (large ``omega``) the thermostat lags
    far behind.  ``mass`` rescales as in :func:`sghmc_step`; a mass near the
    posterior precision brings ``omega`` to about 1 and the two time scales
    together.
    """
    inv_sqrt_mass = _inv_sqrt(mass, score)
    score = inv_sqrt_mass * score
    momentum = torch.exp(-step_size * state.thermostat) * state.momentum + step_size * score
    if noise:
        momentum = momentum + _gaussian(momentum, 2 * diffusion * step_size * temperature)
    position = state.position + step_size * inv_sqrt_mass * momentum
    target_energy = temperature if noise else 0.0
    kinetic = (momentum * momentum).mean(-1, keepdim=True)
    thermostat = state.thermostat + step_size * (kinetic - target_energy)
    return replace(state, position=position, momentum=momentum, thermostat=thermostat)


# ------------------------------------------------------------------ kernel objects
@dataclass(frozen=True)
class SGLDKernel:
    """SGLD with its hyperparameters bound: ``init(position)``, ``step(state, score, step_size, noise)``."""

    temperature: float = 1.0
    name = "SGLD"

    def __post_init__(self):
        positive("temperature", self.temperature)

    def init(self, position):
        return sgld_init(position)

    def step(self, state, score, step_size, noise=True, **tuned):
        """One update; ``tuned`` (``mass``, ``noise_estimate``) are values a warm-up adapted (see
        :mod:`bayeskit.inference.sgmcmc.engines`); they replace the bound ones for this step."""
        return sgld_step(state, score, step_size, temperature=self.temperature, noise=noise, **tuned)

    def settings(self) -> dict:
        return {"temperature": self.temperature}


@dataclass(frozen=True)
class PSGLDKernel(SGLDKernel):
    """pSGLD: RMSprop-preconditioned SGLD; ``alpha`` is the average's decay, ``eps`` its floor."""

    alpha: float = 0.99
    eps: float = 1e-5
    name = "pSGLD"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha must lie in (0, 1), got {self.alpha!r}")
        positive("eps", self.eps)

    def init(self, position):
        return psgld_init(position)

    def step(self, state, score, step_size, noise=True):
        return psgld_step(state, score, step_size, alpha=self.alpha, eps=self.eps,
                          temperature=self.temperature, noise=noise)

    def settings(self):
        return {**super().settings(), "alpha": self.alpha, "eps": self.eps}


@dataclass(frozen=True)
class SGHMCKernel(SGLDKernel):
    """SGHMC with friction ``alpha`` (per unit time) and a gradient-noise estimate (number or ``"ema"``)."""

    friction: float = 1.0
    noise_estimate: float | str = 0.0
    mass: float | torch.Tensor = 1.0
    name = "SGHMC"

    def __post_init__(self):
        super().__post_init__()
        positive("friction", self.friction)
        _check_mass(self)
        if self.noise_estimate != "ema" and not (isinstance(self.noise_estimate, (int, float))
                                                 and self.noise_estimate >= 0):
            raise ValueError(f"noise_estimate must be a non-negative number or 'ema', got {self.noise_estimate!r}")

    def init(self, position):
        return sghmc_init(position)

    def step(self, state, score, step_size, noise=True, **tuned):
        settings = {"friction": self.friction, "noise_estimate": self.noise_estimate, "mass": self.mass, **tuned}
        return sghmc_step(state, score, step_size, temperature=self.temperature, noise=noise, **settings)

    def settings(self):
        return {**super().settings(), "friction": self.friction, "noise_estimate": self.noise_estimate,
                "mass": _setting(self.mass)}


@dataclass(frozen=True)
class AdaptiveSGHMCKernel(SGLDKernel):
    """Adaptive SGHMC: mass ``Vhat^(1/2)`` learned while ``step(..., adapt=True)``; ``momentum_decay`` per step."""

    momentum_decay: float = 0.05
    name = "AdaptiveSGHMC"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.momentum_decay < 1:
            raise ValueError(f"momentum_decay must lie in (0, 1), got {self.momentum_decay!r}")

    def init(self, position):
        return adaptive_sghmc_init(position)

    def step(self, state, score, step_size, noise=True, adapt=True, **tuned):
        if tuned:  # a mass, friction and noise estimate fixed by the engine's warm-up: plain SGHMC
            return sghmc_step(state, score, step_size, temperature=self.temperature, noise=noise, **tuned)
        return adaptive_sghmc_step(state, score, step_size, momentum_decay=self.momentum_decay,
                                   temperature=self.temperature, noise=noise, adapt=adapt)

    def settings(self):
        return {**super().settings(), "momentum_decay": self.momentum_decay}


@dataclass(frozen=True)
class SGNHTKernel(SGLDKernel):
    """SGNHT with injected noise ``diffusion`` (A); the thermostat starts at A."""

    diffusion: float = 1.0
    mass: float | torch.Tensor = 1.0
    name = "SGNHT"

    def __post_init__(self):
        super().__post_init__()
        positive("diffusion", self.diffusion)
        _check_mass(self)

    def init(self, position):
        return sgnht_init(position, self.diffusion)

    def step(self, state, score, step_size, noise=True, **tuned):
        settings = {"diffusion": self.diffusion, "mass": self.mass, **tuned}
        return sgnht_step(state, score, step_size, temperature=self.temperature, noise=noise, **settings)

    def settings(self):
        return {**super().settings(), "diffusion": self.diffusion, "mass": _setting(self.mass)}


def _setting(value):
    """A JSON-friendly form of a scalar-or-tensor hyperparameter."""
    return value.tolist() if isinstance(value, torch.Tensor) else value


def _check_mass(kernel):
    """Validate ``kernel.mass``; a sequence becomes a tensor (moved to the chains' device at use)."""
    mass = kernel.mass
    if isinstance(mass, (int, float)) and not isinstance(mass, bool):
        # The common case without a tensor round trip: engines build their kernel at every step.
        if not (0 < mass < math.inf):
            raise ValueError(f"mass must be a positive number or a 1-D tensor of positive entries (the "
                             f"diagonal), got {mass!r}")
        return
    values = torch.as_tensor(mass, dtype=torch.float64)
    if values.dim() > 1 or not bool((values > 0).all()) or not bool(torch.isfinite(values).all()):
        raise ValueError("mass must be a positive number or a 1-D tensor of positive entries (the diagonal), "
                         f"got {mass!r}")
    if not isinstance(mass, (int, float, torch.Tensor)):
        object.__setattr__(kernel, "mass", values)  # frozen dataclass


_KERNELS = {"sgld": SGLDKernel, "psgld": PSGLDKernel, "sghmc": SGHMCKernel, "sgnht": SGNHTKernel,
            "adaptive_sghmc": AdaptiveSGHMCKernel}


def make_kernel(kernel, **hyperparameters):
    """A kernel object from a name (``"sgld"``, ``"psgld"``, ``"sghmc"``, ``"sgnht"``, ``"adaptive_sghmc"``)
    or an instance."""
    if isinstance(kernel, str):
        if kernel.lower() not in _KERNELS:
            raise ValueError(f"unknown SG-MCMC kernel {kernel!r}; choose one of {sorted(_KERNELS)}")
        return _KERNELS[kernel.lower()](**hyperparameters)
    if hyperparameters:
        raise TypeError("hyperparameters are bound in a kernel instance; pass them to its constructor")
    if not (hasattr(kernel, "init") and hasattr(kernel, "step")):
        raise TypeError(f"kernel must be a name or an object with init() and step(), got {kernel!r}")
    return kernel
