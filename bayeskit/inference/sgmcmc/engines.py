"""SG-MCMC engines: SGLD, pSGLD, SGHMC and SGNHT on a Pyro model or a Target.

Each engine runs ``num_chains`` chains in one batched step (one model call
scores all chains on the same minibatch), follows a step-size schedule
(constant, polynomial decay or cyclical), discards ``num_warmup`` steps,
keeps every ``thin``-th state and returns a :class:`~bayeskit.Posterior`
with draws shaped ``(chain, draw, ...)``, so ArviZ's r_hat and ESS apply.

Minibatches come from the model: write ``pyro.plate("data", N,
subsample_size=B)`` and each step sees a fresh minibatch, scaled by
``N / B``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayeskit.inference.sgmcmc.kernels import (AdaptiveSGHMCKernel, PSGLDKernel, SGHMCKernel, SGLDKernel,
                                               SGMCMCState, SGNHTKernel, _positive)
from bayeskit.inference.sgmcmc.schedules import make_schedule
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

__all__ = ["SGMCMC", "SGLD", "PSGLD", "SGHMC", "AdaptiveSGHMC", "SGNHT", "SGMCMCRun"]

#: Full-data pointwise log-likelihoods are exported up to this many numbers (chains x draws x rows).
MAX_LOG_LIKELIHOOD_SIZE = 50_000_000


@dataclass
class SGMCMCRun:
    """An engine's state: the kernel state, the draws kept so far and the step count.

    ``draws`` is ``(chains, num_draws, dim)`` in unconstrained space, filled
    up to ``num_collected``; ``draw_log_prob`` the stochastic log density
    seen at each kept draw.
    """

    kernel_state: SGMCMCState
    draws: torch.Tensor
    draw_log_prob: torch.Tensor
    num_collected: int
    step: int


def _positive_int(name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class SGMCMC(Engine):
    """Base class of the SG-MCMC engines; subclasses choose the kernel.

    Parameters
    ----------
    model_or_target : callable or Target
        A Pyro model (use ``pyro.plate(..., subsample_size=B)`` for
        minibatches) or a :class:`~bayeskit.Target`.
    step_size : float
        The base step size ``epsilon`` (see each engine for its meaning).
    num_samples : int
        Draws kept per chain.
    num_warmup : int
        Steps discarded first (burn-in).
    num_chains : int
        Chains advanced together in one batched step (default 4, so that
        r_hat is defined).
    thin : int
        Keep every ``thin``-th state after warm-up.
    schedule : str or schedule object
        ``"constant"`` (default), ``"polynomial"``, ``"cyclical"``, or an
        instance of :mod:`bayeskit.inference.sgmcmc.schedules`.
    temperature : float
        Sample ``p(theta | x)^(1/T)``; 1 is the posterior.
    init : Tensor or dict, optional
        Starting points, unconstrained, ``(num_chains, dim)`` or ``(dim,)``;
        or a dict of constrained site values ``(num_chains, *shape)`` or
        ``shape`` (as :func:`~bayeskit.inference.find_modes` returns them);
        prior draws by default.
    dims, coords : dict, optional
        Dimension names and labels for the exported posterior.
    """

    name = "SG-MCMC"

    def __init__(self, model_or_target, *, step_size, num_samples=1000, num_warmup=1000, num_chains=4, thin=1,
                 schedule="constant", temperature=1.0, init=None, dims=None, coords=None):
        super().__init__(model_or_target)
        self.step_size = _positive("step_size", step_size)
        self.num_samples = _positive_int("num_samples", num_samples)
        self.num_warmup = _positive_int("num_warmup", num_warmup, minimum=0)
        self.num_chains = _positive_int("num_chains", num_chains)
        self.thin = _positive_int("thin", thin)
        self.temperature = _positive("temperature", temperature)
        self.schedule = make_schedule(schedule)
        self.plan = self.schedule.plan(self.step_size, self.num_warmup, self.num_samples, self.thin)
        # (step size, noise, collect) per step as Python values: no tensor indexing in the hot loop
        self.steps = list(zip(self.plan.step_sizes.tolist(), self.plan.noise.tolist(), self.plan.collect.tolist()))
        self.initial_position = init
        self.dims, self.coords = dims, coords
        self.kernel = self.make_kernel()

    def make_kernel(self):
        raise NotImplementedError

    def settings(self):
        return {"step_size": self.step_size, "num_samples": self.num_samples, "num_warmup": self.num_warmup,
                "num_chains": self.num_chains, "thin": self.thin, **self.schedule.settings(),
                **self.kernel.settings()}

    def run(self, *model_args, seed=None, progress=True, callback=None, checkpoint=None, checkpoint_every=100,
            resume=False, **model_kwargs) -> Posterior:
        """Run all chains for ``plan.num_steps`` steps and return the kept draws.

        Takes the model's arguments and the runner's options (``seed``,
        ``progress``, ``callback``, ``checkpoint``, ``resume``; see
        :meth:`bayeskit.runner.Engine.run`).  The number of steps follows
        from ``num_warmup``, ``num_samples``, ``thin`` and the schedule.
        """
        if "num_steps" in model_kwargs:
            raise TypeError(f"{self.name}.run takes no num_steps: set num_samples, num_warmup and thin "
                            f"on the engine (this run has {self.plan.num_steps} steps)")
        return super().run(*model_args, num_steps=self.plan.num_steps, seed=seed, progress=progress,
                           callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                           resume=resume, **model_kwargs)

    # ------------------------------------------------------------ functional core
    def _start(self, target, generator):
        if self.initial_position is None:
            return target.init(self.num_chains, generator)
        start = self.initial_position
        start = (target.unconstrain(start) if isinstance(start, dict)
                 else torch.as_tensor(start, dtype=target.dtype, device=target.device))
        if start.shape == (target.dim,):
            start = start.expand(self.num_chains, target.dim)
        if start.shape != (self.num_chains, target.dim):
            raise ValueError(f"init must have shape ({self.num_chains}, {target.dim}) or ({target.dim},), "
                             f"got {tuple(start.shape)}")
        return start

    def init_state(self, target, generator):
        position = self._start(target, generator)
        draws = position.new_zeros(self.num_chains, self.plan.num_draws, target.dim)
        return SGMCMCRun(self.kernel.init(position), draws, position.new_zeros(self.num_chains,
                                                                              self.plan.num_draws), 0, 0)

    def step(self, state, target):
        step_size, noise, collect = self.steps[state.step]
        log_prob, score = target.log_prob_and_score(state.kernel_state.position)
        kernel_state = self.kernel.step(state.kernel_state, score, step_size, noise=noise,
                                        **self.kernel_options(state))
        return state, self.record(state, kernel_state, log_prob, collect)

    def kernel_options(self, state) -> dict:
        """Extra keyword arguments of this step's kernel update (none, unless an engine adapts)."""
        return {}

    def record(self, state, kernel_state, log_prob, collect) -> dict:
        """Keep the new state as a draw if the plan says so, count the step, return its trace entry.

        The stored density is the one seen at the pre-step point, one step
        stale but free; it is a minibatch estimate when the model subsamples.
        """
        if collect:
            state.draws[:, state.num_collected] = kernel_state.position
            state.draw_log_prob[:, state.num_collected] = log_prob
            state.num_collected += 1
        state.kernel_state, state.step = kernel_state, state.step + 1
        # A non-finite score or density makes the new position non-finite: one sum checks all three.
        info = {"log_prob": log_prob.mean(), "finite": torch.isfinite(kernel_state.position.sum())}
        if kernel_state.thermostat is not None:
            info["thermostat"] = kernel_state.thermostat.mean()
        return info

    def finite_values(self, state, target):
        position = state.kernel_state.position
        _, score = target.log_prob_and_score(position)
        return position, score

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, state):
        return {"kernel": state.kernel_state.tensors(), "draws": state.draws, "draw_log_prob": state.draw_log_prob,
                "num_collected": state.num_collected, "step": state.step}

    def snapshot(self, state):
        # Kept draws are written once and never changed, so the buffer is
        # shared rather than copied every step; num_collected marks what counts.
        return {**self.state_dict(state), "kernel": {name: value.clone()
                                                     for name, value in state.kernel_state.tensors().items()}}

    def load_state(self, target, saved):
        kernel_state = SGMCMCState(**{name: value.to(device=target.device, dtype=target.dtype)
                                      for name, value in saved["kernel"].items()})
        return SGMCMCRun(kernel_state, saved["draws"].to(device=target.device, dtype=target.dtype),
                         saved["draw_log_prob"].to(device=target.device, dtype=target.dtype),
                         int(saved["num_collected"]), int(saved["step"]))

    # ------------------------------------------------------------ export
    def to_posterior(self, state, target, trace, meta):
        meta = {**meta, "sample_kind": "mcmc"}
        if "log_prob" in trace:  # the step sizes are the plan's; no need to record them per step
            trace = {**trace, "step_size": self.plan.step_sizes[:len(trace["log_prob"])]}
        if state.num_collected:
            draws = state.draws[:, :state.num_collected]
            log_prob = state.draw_log_prob[:, :state.num_collected]
        else:  # stopped before the first kept draw: export the current point, and say so
            draws = state.kernel_state.position.unsqueeze(1)
            log_prob = target.log_prob(draws).detach()
            meta["note"] = "no draws were kept (stopped during warm-up); the posterior holds the last state"
        _warn_on_runaway_chains(log_prob, target.dim)
        with torch.no_grad():
            samples = target.constrain(draws)
        return Posterior(samples, sample_stats={"log_prob": log_prob}, trace=trace, meta=meta,
                         observed_data=target.observed_data or None,
                         log_likelihood=_pointwise_log_likelihood(target, draws),
                         dims=self.dims, coords=self.coords)


def _warn_on_runaway_chains(log_prob, dim):
    """Warn when a chain's draws sit far below the best chain's log density.

    A chain can run off to huge but finite values (a step size too large for
    it, the restart of a cyclical schedule) without any NaN to stop the run,
    and averages over all chains hide it.  At stationarity a draw's log
    density varies by about ``sqrt(dim / 2)``; a median more than
    ``max(100, 10 sqrt(dim))`` below the best chain's is flagged.
    """
    if log_prob.shape[0] < 2:
        return
    medians = log_prob.median(dim=1).values
    best = medians.max()
    gap = max(100.0, 10 * dim**0.5)
    behind = (medians < best - gap).nonzero().flatten().tolist()
    if behind:
        import warnings

        values = ", ".join(f"chain {c}: {float(medians[c]):.4g}" for c in behind)
        warnings.warn(f"median log density of the draws far below the best chain's ({float(best):.4g}): {values}. "
                      "Those chains may not have converged yet (warm-up too short), have run off (step size "
                      "too large for them) or be stuck in a poor mode; look at post.sample_stats['log_prob'] "
                      "per chain before pooling them.", stacklevel=6)


def _pointwise_log_likelihood(target, draws):
    """Full-data pointwise log-likelihood at the draws, unless the model subsamples or it is too large."""
    num_rows = sum(value.numel() for value in target.observed_data.values())
    if getattr(target, "subsampled", False) or draws.shape[0] * draws.shape[1] * num_rows > MAX_LOG_LIKELIHOOD_SIZE:
        return None
    return target.pointwise_log_likelihood(draws)


class SGLD(SGMCMC):
    """Stochastic gradient Langevin dynamics (Welling and Teh, ICML 2011).

    ``theta <- theta + (epsilon/2) g_hat + N(0, epsilon T)``: the step size
    ``epsilon`` is both the gradient step (times 1/2) and the noise variance.
    Its discretisation bias grows with ``epsilon``; use a small step or
    ``schedule="polynomial"``.  See :class:`SGMCMC` for the other arguments.

    Examples
    --------
    >>> post = SGLD(model, step_size=1e-5, num_samples=1000).run(x, y, seed=0)  # doctest: +SKIP
    >>> post.summary()  # doctest: +SKIP
    """

    name = "SGLD"

    def make_kernel(self):
        return SGLDKernel(temperature=self.temperature)


class PSGLD(SGMCMC):
    """Preconditioned SGLD (Li et al., AAAI 2016): RMSprop-scaled steps and noise.

    ``alpha`` is the squared-gradient average's decay, ``eps`` the floor of
    ``sqrt(V)``.  The preconditioner makes one step size serve parameters of
    very different scales (neural-network weights).
    """

    name = "pSGLD"

    def __init__(self, model_or_target, *, alpha=0.99, eps=1e-5, **kwargs):
        self.alpha, self.eps = alpha, eps
        super().__init__(model_or_target, **kwargs)

    def make_kernel(self):
        return PSGLDKernel(temperature=self.temperature, alpha=self.alpha, eps=self.eps)


class SGHMC(SGMCMC):
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox and Guestrin, ICML 2014).

    ``step_size`` is the time step ``epsilon`` of the Langevin dynamics with
    momentum; ``friction`` is ``alpha`` per unit time (default
    ``0.1 / step_size``: a momentum decay of 0.1 per step, a common choice in
    Chen et al.'s practical form); ``noise_estimate`` the gradient-noise variance ``beta_hat`` (0,
    a number, or ``"ema"``); ``mass`` a scalar or diagonal mass (set it near
    the posterior precision on narrow posteriors; see
    :func:`~bayeskit.inference.sgmcmc.kernels.sghmc_step`).  In Chen et al.'s practical form the learning
    rate is ``epsilon**2`` and the momentum decay ``epsilon * friction``.
    """

    name = "SGHMC"

    def __init__(self, model_or_target, *, friction=None, noise_estimate=0.0, mass=1.0, **kwargs):
        self.friction, self.noise_estimate, self.mass = friction, noise_estimate, mass
        super().__init__(model_or_target, **kwargs)

    def make_kernel(self):
        friction = 0.1 / self.step_size if self.friction is None else self.friction
        return SGHMCKernel(temperature=self.temperature, friction=friction, noise_estimate=self.noise_estimate,
                           mass=self.mass)


class AdaptiveSGHMC(SGMCMC):
    """SGHMC with a mass adapted during burn-in (Springenberg, Klein, Falkner and Hutter, NeurIPS 2016).

    The diagonal mass is ``Vhat^(1/2)``, with ``Vhat`` a running estimate of
    the squared stochastic score per coordinate, learned over the
    ``num_warmup`` steps and frozen afterwards, so the kept draws come from
    a fixed sampler.  ``step_size`` ``epsilon`` is scale free: each step moves
    a coordinate by about ``epsilon**2`` per unit-normalised gradient (the
    paper's ``lr`` is ``epsilon**2``); ``momentum_decay`` is the fraction of
    momentum lost per step (the paper's ``mdecay``, default 0.05).  This is
    the pilot-run mass tuning of :class:`SGHMC` done inside one run; it is
    what Bayesian neural networks and autoencoders, whose weights differ in
    scale by orders of magnitude, need.  See
    :func:`~bayeskit.inference.sgmcmc.kernels.adaptive_sghmc_step` for the
    math and :class:`SGMCMC` for the other arguments.

    Examples
    --------
    >>> post = AdaptiveSGHMC(model, step_size=0.01, num_warmup=2000, num_samples=200, thin=10).run(
    ...     x, seed=0)  # doctest: +SKIP
    """

    name = "AdaptiveSGHMC"

    def __init__(self, model_or_target, *, momentum_decay=0.05, **kwargs):
        self.momentum_decay = momentum_decay
        super().__init__(model_or_target, **kwargs)

    def make_kernel(self):
        return AdaptiveSGHMCKernel(temperature=self.temperature, momentum_decay=self.momentum_decay)

    def kernel_options(self, state):
        return {"adapt": state.step < self.num_warmup}  # the mass learns during burn-in only


class SGNHT(SGMCMC):
    """Stochastic gradient Nosé-Hoover thermostat (Ding et al., NeurIPS 2014).

    ``step_size`` is the time step; ``diffusion`` the injected noise ``A``
    (default ``0.1 / step_size``, as SGHMC's friction), which is also the
    thermostat's starting value.  The thermostat adapts the friction to the
    unknown gradient noise; it relaxes in about ``xi / step_size`` steps, so
    on a narrow posterior set ``mass`` near the posterior precision
    (see :func:`~bayeskit.inference.sgmcmc.kernels.sgnht_step`).  From a
    start far from the posterior the thermostat overshoots (the kinetic
    energy is large at first) and comes back at about ``step_size`` per step:
    give it a warm-up of several ``xi_max / step_size`` steps (watch
    ``post.trace["thermostat"]``).
    """

    name = "SGNHT"

    def __init__(self, model_or_target, *, diffusion=None, mass=1.0, **kwargs):
        self.diffusion, self.mass = diffusion, mass
        super().__init__(model_or_target, **kwargs)

    def make_kernel(self):
        diffusion = 0.1 / self.step_size if self.diffusion is None else self.diffusion
        return SGNHTKernel(temperature=self.temperature, diffusion=diffusion, mass=self.mass)
