"""SG-MCMC engines: SGLD, pSGLD, SGHMC and SGNHT on a Pyro model or a Target.

Each engine runs ``num_chains`` chains in one batched step, follows a step-size schedule
(constant, polynomial decay or cyclical), discards ``num_warmup`` steps,
keeps every ``thin``-th state and returns a :class:`~bayeskit.Posterior`
with draws shaped ``(chain, draw, ...)``, so ArviZ's r_hat and ESS apply.

Minibatches come from the model: write ``pyro.plate("data", N,
subsample_size=B)`` and each step sees a fresh minibatch, scaled by
``N / B``; each chain its own (one model call per chain, see
:func:`~bayeskit.inference.sgmcmc.scoring.log_prob_and_score_per_chain`), unless ``share_minibatches=True``;
the warm-up that sets the step size, mass and friction when ``step_size`` is None lives in
:mod:`bayeskit.inference.sgmcmc.adaptation`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bayeskit._checks import positive, positive_int
from bayeskit.inference.sgmcmc.adaptation import (
    HMC_DISCRETISATION,
    MIN_ADAPTIVE_WARMUP,
    REJECT_SLACK,
    WINDOW_POWER_ITERATIONS,
    default_friction,
    estimate,
    hmc_step_size_rule,
    observe,
    refresh_omega2,
    scaled_estimates,
    sgld_step_size_rule,
    sgnht_step_size_rule,
    start_adaptation,
    travel_step,
    warmup_windows,
)
from bayeskit.inference.sgmcmc.kernels import (
    AdaptiveSGHMCKernel,
    PSGLDKernel,
    SGHMCKernel,
    SGLDKernel,
    SGMCMCState,
    SGNHTKernel,
    sgld_step,
)
from bayeskit.inference.sgmcmc.schedules import make_schedule
from bayeskit.inference.sgmcmc.scoring import (
    compiled_kernel_step,
    log_prob_and_score_per_chain,
    pointwise_log_likelihood,
)
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

__all__ = ["SGMCMC", "SGLD", "PSGLD", "SGHMC", "AdaptiveSGHMC", "SGNHT", "SGMCMCRun", "DrawLog"]

#: Pieces a :class:`DrawLog` keeps loose before joining them into one tensor.
DRAW_LOG_PIECES = 128


@dataclass(frozen=True, eq=False)
class DrawLog:
    """Kept draws as a persistent log: :meth:`append` returns a new log and leaves this one as it was.

    Why this structure: a step must not change the state it is given, and a
    run keeps up to ~10^5 draws of up to ~10^4 numbers; writing them into a
    preallocated buffer changes the old state, and copying the buffer per
    step is quadratic.  Here a new piece ``(chains, k, ...)`` (a view of the
    new position: no copy, since tensors are never written in place) joins
    ``loose``, a tuple that grows by concatenation, and every
    :data:`DRAW_LOG_PIECES` pieces are concatenated into one tensor of
    ``joined``.  Per kept draw that costs a tuple copy of at most 128
    pointers, ``len(joined)`` pointers every 128 draws (6 per draw at 10^5
    draws) and one extra copy of the draw's numbers; checkpoints save the
    tensors as they are (no copy), ``n / 128`` of them rather than ``n``.  A
    cons-list would be O(1) per draw but as deep as it is long, and pickling
    and ``copy.deepcopy`` recurse through it.  ``joined`` starts with an empty
    ``(chains, 0, ...)`` tensor, so the log knows its shape before any draw.
    """

    joined: tuple[torch.Tensor, ...]
    loose: tuple[torch.Tensor, ...] = ()
    length: int = 0

    @classmethod
    def empty(cls, like: torch.Tensor) -> DrawLog:
        """A log for draws shaped like ``like`` ``(chains, ...)``."""
        return cls((like.new_zeros(like.shape[0], 0, *like.shape[1:]),))

    @classmethod
    def from_saved(cls, saved, num_collected: int, *, device=None, dtype=None) -> DrawLog:
        """The log a checkpoint's :meth:`pieces` stand for (or a whole buffer, of which ``num_collected``
        draws count), moved to ``device`` and ``dtype`` where given."""
        pieces = [saved[:, :int(num_collected)]] if torch.is_tensor(saved) else saved
        pieces = tuple(piece.to(device=device, dtype=dtype) for piece in pieces)
        return cls(pieces, (), sum(piece.shape[1] for piece in pieces))

    def __len__(self) -> int:
        return self.length

    def append(self, piece: torch.Tensor) -> DrawLog:
        """This log with ``piece`` ``(chains, k, ...)`` (``k`` draws) added at the end."""
        loose = (*self.loose, piece)
        if len(loose) < DRAW_LOG_PIECES:
            return DrawLog(self.joined, loose, self.length + piece.shape[1])
        return DrawLog((*self.joined, torch.cat(loose, 1)), (), self.length + piece.shape[1])

    def pieces(self) -> list[torch.Tensor]:
        """The log's tensors in order (what checkpoints save: no copy of the draws)."""
        return [*self.joined, *self.loose]

    def stacked(self) -> torch.Tensor:
        """All draws, ``(chains, n, ...)``."""
        return torch.cat(self.pieces(), 1)


@dataclass(frozen=True)
class SGMCMCRun:
    """An engine's state: the kernel state, the draws kept so far and the step count.

    ``draws`` holds ``(chains, dim)`` draws in unconstrained space and
    ``draw_log_prob`` the stochastic log density seen at each, both as
    :class:`DrawLog` s; ``adaptation`` the warm-up's estimates when ``step_size=None``.
    """

    kernel_state: SGMCMCState
    draws: DrawLog
    draw_log_prob: DrawLog
    step: int
    adaptation: dict | None = None

    @property
    def num_collected(self) -> int:
        return len(self.draws)


class SGMCMC(Engine):
    """Base class of the SG-MCMC engines; subclasses choose the kernel.

    Parameters
    ----------
    model_or_target : callable or Target
        A Pyro model (use ``pyro.plate(..., subsample_size=B)`` for
        minibatches) or a :class:`~bayeskit.Target`.
    step_size : float or None
        The base step size ``epsilon`` (see each engine for its meaning).
        ``None`` (SGLD, SGHMC, AdaptiveSGHMC, SGNHT): the warm-up adapts the
        diagonal mass, the gradient-noise estimate, the friction and the step
        by the rules of :meth:`tune` (needs ``num_warmup >= 50``), with
        ``omega^2`` the largest eigenvalue of the mass-preconditioned Hessian
        (by power iteration, see :func:`power_iteration`); the
        schedule then scales the chosen step.  The chosen values are in
        ``post.meta["adapted"]``.
    num_samples : int
        Draws kept per chain.
    num_warmup : int
        Steps discarded first (burn-in).
    num_chains : int
        Chains advanced together in one batched step (default 4, so that
        r_hat is defined).
    share_minibatches : bool
        With a subsampling model, score all chains on ONE minibatch per step
        (one model call instead of one per chain: up to ``num_chains`` times
        fewer calls).  The chains then share their gradient noise and are
        *not independent*: they drift together, and r_hat and ArviZ's
        multi-chain ESS, which assume independent chains, overstate
        convergence and precision (many-fold when ``N / B`` is large).
        Default False: each chain draws its own minibatch.
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
    #: Whether ``step_size=None`` is understood (the warm-up then chooses it; see :meth:`tune`).
    adapts_step_size = False

    def __init__(self, model_or_target, *, step_size=None, num_samples=1000, num_warmup=1000, num_chains=4,
                 thin=1, schedule="constant", temperature=1.0, init=None, dims=None, coords=None,
                 share_minibatches=False):
        super().__init__(model_or_target)
        if step_size is None and not self.adapts_step_size:
            raise ValueError(f"{self.name} needs a step_size (it has no step-size rule)")
        self.step_size = None if step_size is None else positive("step_size", step_size)
        self.num_samples = positive_int("num_samples", num_samples)
        self.num_warmup = positive_int("num_warmup", num_warmup, minimum=0)
        if self.step_size is None and self.num_warmup < MIN_ADAPTIVE_WARMUP:
            raise ValueError(f"step_size=None adapts the step size during the warm-up: num_warmup must be "
                             f">= {MIN_ADAPTIVE_WARMUP} (got {num_warmup}), or give step_size")
        self.num_chains = positive_int("num_chains", num_chains)
        if not isinstance(share_minibatches, bool):
            raise TypeError(f"share_minibatches must be True or False, got {share_minibatches!r}")
        self.share_minibatches = share_minibatches
        self.thin = positive_int("thin", thin)
        self.temperature = positive("temperature", temperature)
        self.schedule = make_schedule(schedule)
        # Adapted runs follow the schedule's shape relative to the step the warm-up chooses.
        self.plan = self.schedule.plan(1.0 if self.step_size is None else self.step_size, self.num_warmup,
                                       self.num_samples, self.thin)
        self.windows = warmup_windows(self.num_warmup) if self.step_size is None else []
        # (step size, noise, collect) per step as Python values: no tensor indexing in the hot loop
        self.steps = list(zip(self.plan.step_sizes.tolist(), self.plan.noise.tolist(), self.plan.collect.tolist()))
        self.initial_position = init
        self.dims, self.coords = dims, coords

    @property
    def kernel(self):
        """The kernel with this engine's hyperparameters (see :meth:`make_kernel`)."""
        return self.make_kernel()

    def make_kernel(self):
        """The kernel object, built from the engine's settings on each use.

        Built on use rather than in ``__init__``, so that a subclass may set
        its hyperparameters after ``super().__init__()`` (and calls
        ``make_kernel()`` at the end of its own ``__init__`` to refuse bad ones
        there); a kernel is a small frozen dataclass, cheap to build per step.
        """
        raise NotImplementedError

    def settings(self, problem):
        kernel = self.kernel.settings()
        if self.step_size is None:  # the kernel's bound values are placeholders until the warm-up ends
            kernel.update({name: "adapted" for name in self.adapted_settings()})
        return {"step_size": "adapted" if self.step_size is None else self.step_size,
                "num_samples": self.num_samples, "num_warmup": self.num_warmup,
                "num_chains": self.num_chains, "share_minibatches": self.share_minibatches, "thin": self.thin,
                **self.schedule.settings(), **kernel}

    # ------------------------------------------------------------ warm-up adaptation
    def adapted_settings(self) -> list[str]:
        """The kernel settings the warm-up chooses when ``step_size=None`` (those the user left unset)."""
        return []

    def tune(self, adaptation) -> dict:
        """The frozen sampler from the warm-up's estimates: ``step_size`` and ``tuned_*`` kernel settings."""
        raise NotImplementedError

    def settle(self, kernel_state, adaptation):
        """Prepare the kernel state for the frozen sampler (e.g. SGNHT's thermostat); default: as is."""
        return kernel_state

    def _adaptive_step(self, state, target, log_prob, score, multiplier, noise):
        """A warm-up step of an adapted run: observe, re-estimate at window ends, move.

        Until the last window ends the chains move by SGLD preconditioned with
        the estimated curvature (``M = H_hat``, a Newton-like scaling valid far
        from the posterior too): at ``min(TRAVEL_STEP, 1 / omega^2)`` for the
        first two windows, to reach the posterior fast, then at
        :func:`sgld_step_size_rule`.  ``omega^2`` (the largest eigenvalue of
        ``M^(-1/2) H M^(-1/2)``) comes from :func:`power_iteration`: at the
        start, once per step in the first window (the mass changes every
        step) and at each window's end.  A step after which a chain's log
        density is non-finite or has more than doubled in size (see
        :data:`REJECT_SLACK`) is undone for that chain, which restarts from its
        previous state, and the step is halved until the window ends: warm-up
        draws are discarded, so a divergence there costs steps, never the run.
        At the end the engine's :meth:`tune` fixes its kernel for good.
        Returns the new kernel state, the adaptation, the step and the
        log density of the point moved from.
        """
        adaptation, kernel_state = state.adaptation, state.kernel_state
        position = kernel_state.position
        if not adaptation:
            adaptation = start_adaptation(target, position, score, self.share_minibatches)
        elif "previous_position" in adaptation:
            previous = adaptation["previous_log_prob"]
            diverged = ~torch.isfinite(log_prob) | ~torch.isfinite(score).all(-1) | (
                log_prob < previous - previous.abs() - REJECT_SLACK * position.shape[-1])
            diverged = diverged & torch.isfinite(previous)
            if bool(diverged.any()):  # redo from the previous state, at half the step
                back = diverged.unsqueeze(-1)
                position = torch.where(back, adaptation["previous_position"], position)
                score = torch.where(back, adaptation["previous_score"], score)
                log_prob = torch.where(diverged, previous, log_prob)
                kernel_state = replace(kernel_state, position=position)
                adaptation = {**adaptation, "backoff": 0.5 * adaptation["backoff"]}
        adaptation = observe(adaptation, target, position, score, self.share_minibatches)
        steps_done = state.step + 1
        if steps_done in self.windows or steps_done < self.windows[0]:
            adaptation = estimate(adaptation, reset=steps_done in self.windows)
            iterations = WINDOW_POWER_ITERATIONS if steps_done in self.windows else 1
            adaptation = refresh_omega2(adaptation, target, position, iterations, self.share_minibatches)
            if steps_done in self.windows:
                adaptation = {**adaptation, "backoff": torch.ones_like(adaptation["backoff"])}
            if steps_done >= self.windows[min(1, len(self.windows) - 1)]:
                _, noise_x, omega = scaled_estimates(adaptation, adaptation["curvature"])
                adaptation = {**adaptation, "step_size": sgld_step_size_rule(noise_x, omega, self.temperature)}
            else:
                adaptation = {**adaptation, "step_size": travel_step(adaptation["omega2"])}
        mass = adaptation["curvature"]
        step_size = multiplier * adaptation["step_size"] * adaptation["backoff"]
        kernel_state = sgld_step(kernel_state, score, step_size, temperature=self.temperature, noise=noise,
                                 mass=mass, noise_estimate=adaptation["noise"] / mass)
        if steps_done == self.windows[-1]:
            adaptation = {name: value for name, value in adaptation.items() if not name.startswith("previous_")}
            adaptation = {**adaptation, **self.tune(adaptation)}
            kernel_state = self.settle(kernel_state, adaptation)
        else:
            adaptation = {**adaptation, "previous_position": position, "previous_score": score,
                          "previous_log_prob": log_prob}
        return kernel_state, adaptation, step_size, log_prob

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

    def init(self, target, generator):
        position = self._start(target, generator)
        return SGMCMCRun(self.kernel.init(position), DrawLog.empty(position), DrawLog.empty(position[:, 0]), 0,
                         {} if self.step_size is None else None)

    def step(self, state, target, generator):
        step_size, noise, collect = self.steps[state.step]
        adaptation = state.adaptation
        if adaptation is None:
            kernel_state, log_prob = self.kernel_update(target, state.kernel_state, step_size, noise,
                                                        self.kernel_step_options(state))
            return self.record(state, kernel_state, log_prob, collect)
        if state.step < self.windows[-1]:
            log_prob, score = log_prob_and_score_per_chain(target, state.kernel_state.position,
                                                           self.share_minibatches)
            kernel_state, adaptation, step_size, log_prob = self._adaptive_step(state, target, log_prob, score,
                                                                                step_size, noise)
        else:  # the frozen kernel: a fixed SG-MCMC sampler from here on
            tuned = {name[len("tuned_"):]: value for name, value in adaptation.items() if name.startswith("tuned_")}
            step_size = step_size * adaptation["step_size"]
            kernel_state, log_prob = self.kernel_update(target, state.kernel_state, step_size, noise, tuned)
        new, info = self.record(state, kernel_state, log_prob, collect, adaptation=adaptation)
        return new, {**info, "step_size": step_size}

    def kernel_update(self, target, kernel_state, step_size, noise, options):
        """Score the chains and move them with the kernel; returns the new kernel state and the log density.

        On a captured target (``jit_compile=True``) the score and the update
        run as one compiled call (:func:`~bayeskit.inference.sgmcmc.scoring.compiled_kernel_step`).
        """
        if target.captured is None:
            log_prob, score = log_prob_and_score_per_chain(target, kernel_state.position, self.share_minibatches)
            return self.kernel.step(kernel_state, score, step_size, noise=noise, **options), log_prob
        step = compiled_kernel_step(target, self.kernel, kernel_state.position.shape[0], self.share_minibatches)
        return step(kernel_state, step_size, noise, options)

    def kernel_step_options(self, state) -> dict:
        """Extra keyword arguments of this step's kernel update (none, unless an engine adapts).

        (Not ``kernel_options``: that is :class:`StructuredSGMCMC`'s attribute, the named kernel's settings.)"""
        return {}

    def record(self, state, kernel_state, log_prob, collect, **changes):
        """The next state, with the new position kept as a draw if the plan says so, and its trace entry.

        ``changes`` replace further fields of the state (a subclass's).  The
        stored density is the one seen at the pre-step point, one step stale
        but free; it is a minibatch estimate when the model subsamples.
        """
        if collect:
            changes.update(draws=state.draws.append(kernel_state.position.unsqueeze(1)),
                           draw_log_prob=state.draw_log_prob.append(log_prob.unsqueeze(1)))
        new = replace(state, kernel_state=kernel_state, step=state.step + 1, **changes)
        # A non-finite score or density makes the new position non-finite: one sum checks all three.
        info = {"log_prob": log_prob.mean(), "finite": torch.isfinite(kernel_state.position.sum())}
        if kernel_state.thermostat is not None:
            info["thermostat"] = kernel_state.thermostat.mean()
        return new, info

    def finite_values(self, state, target):
        position = state.kernel_state.position
        _, score = target.log_prob_and_score(position)
        return position, score

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, state):
        saved = {"kernel": state.kernel_state.tensors(), "draws": state.draws.pieces(),
                 "draw_log_prob": state.draw_log_prob.pieces(), "num_collected": state.num_collected,
                 "step": state.step}
        if state.adaptation is not None:
            saved["adaptation"] = state.adaptation
        return saved

    def load_state(self, target, saved):
        kernel_state = SGMCMCState(**{name: value.to(device=target.device, dtype=target.dtype)
                                      for name, value in saved["kernel"].items()})
        adaptation = saved.get("adaptation")
        if adaptation is not None:
            adaptation = {name: value.to(device=target.device, dtype=target.dtype)
                          for name, value in adaptation.items()}
        like = {"device": target.device, "dtype": target.dtype}
        num_collected = saved["num_collected"]
        return SGMCMCRun(kernel_state, DrawLog.from_saved(saved["draws"], num_collected, **like),
                         DrawLog.from_saved(saved["draw_log_prob"], num_collected, **like), int(saved["step"]),
                         adaptation)

    # ------------------------------------------------------------ export
    def to_posterior(self, state, target, trace, meta):
        meta = {**meta, "sample_kind": "mcmc"}
        if state.adaptation:  # what the warm-up chose, for the record (and to reuse as explicit settings)
            meta["adapted"] = {name.removeprefix("tuned_"): value.tolist() for name, value in state.adaptation.items()
                               if name.startswith("tuned_") or name in ("step_size", "omega2")}
        if "log_prob" in trace and "step_size" not in trace:  # the plan's; no need to record them per step
            trace = {**trace, "step_size": self.plan.step_sizes[:len(trace["log_prob"])]}
        if state.num_collected:
            draws, log_prob = state.draws.stacked(), state.draw_log_prob.stacked()
        else:  # stopped before the first kept draw: export the current point, and say so
            draws = state.kernel_state.position.unsqueeze(1)
            log_prob = target.log_prob(draws).detach()
            meta["note"] = "no draws were kept (stopped during warm-up); the posterior holds the last state"
        with torch.no_grad():
            samples = target.draws(draws)
        return Posterior(samples, sample_stats={"log_prob": log_prob}, trace=trace, meta=meta,
                         observed_data=target.observed_data or None,
                         log_likelihood=pointwise_log_likelihood(target, draws),
                         dims=self.dims, coords=self.coords)


class SGLD(SGMCMC):
    """Stochastic gradient Langevin dynamics (Welling and Teh, ICML 2011).

    ``theta <- theta + (epsilon/2) g_hat + N(0, epsilon T)``: the step size
    ``epsilon`` is both the gradient step (times 1/2) and the noise variance.
    Its discretisation bias grows with ``epsilon``; use a small step or
    ``schedule="polynomial"``.  See :class:`SGMCMC` for the other arguments.

    Examples
    --------
    Minibatches of 20 from 100 rows; the warm-up picks the step size:

    >>> from bayeskit.inference import SGLD
    >>> import pyro, torch
    >>> import pyro.distributions as dist
    >>> def model(y, batch_size=None):  # a Normal mean, N(0, 1) prior, unit noise: conjugate
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y), subsample_size=batch_size) as rows:
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[rows])
    >>> y = 1.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))
    >>> post = SGLD(model, num_chains=4, num_warmup=500, num_samples=2000).run(y, 20, seed=0, progress=False)
    >>> exact_mean, exact_sd = y.sum() / 101, 101 ** -0.5
    >>> bool(abs(post.samples["mu"].mean() - exact_mean) < 0.2 * exact_sd)
    True
    >>> bool(abs(post.samples["mu"].std() / exact_sd - 1) < 0.1)
    True
    """

    name = "SGLD"
    adapts_step_size = True

    def make_kernel(self):
        return SGLDKernel(temperature=self.temperature)

    def adapted_settings(self):
        return ["mass", "noise_estimate"]

    def tune(self, adaptation):
        """``M = H_hat``, ``v = V_hat / M``, ``epsilon`` by :func:`sgld_step_size_rule`."""
        mass, noise, omega = scaled_estimates(adaptation, adaptation["curvature"])
        return {"step_size": sgld_step_size_rule(noise, omega, self.temperature), "tuned_mass": mass,
                "tuned_noise_estimate": noise}


class PSGLD(SGMCMC):
    """Preconditioned SGLD (Li et al., AAAI 2016): RMSprop-scaled steps and noise.

    ``alpha`` is the squared-gradient average's decay, ``eps`` the floor of
    ``sqrt(V)``.  The preconditioner makes one step size serve parameters of
    very different scales (neural-network weights).
    """

    name = "pSGLD"

    def __init__(self, model_or_target, *, alpha=0.99, eps=1e-5, **kwargs):
        super().__init__(model_or_target, **kwargs)
        self.alpha, self.eps = alpha, eps
        self.make_kernel()  # refuse bad hyperparameters now

    def make_kernel(self):
        return PSGLDKernel(temperature=self.temperature, alpha=self.alpha, eps=self.eps)


class SGHMC(SGMCMC):
    """Stochastic gradient Hamiltonian Monte Carlo (Chen, Fox and Guestrin, ICML 2014).

    With ``step_size=None`` (the default) the warm-up chooses ``mass``
    (the curvature), ``noise_estimate`` (the minibatch noise, measured),
    ``friction`` (``2 omega``, critical damping) and the step
    (:func:`hmc_step_size_rule`), each only where left unset.  Otherwise
    ``step_size`` is the time step ``epsilon`` of the Langevin dynamics with
    momentum; ``friction`` is ``alpha`` per unit time (default
    ``0.1 / step_size``: a momentum decay of 0.1 per step, a common choice in
    Chen et al.'s practical form); ``noise_estimate`` the gradient-noise variance ``beta_hat`` (default 0,
    a number, or ``"ema"``); ``mass`` a scalar (default 1) or diagonal mass (set it near
    the posterior precision on narrow posteriors; see
    :func:`~bayeskit.inference.sgmcmc.kernels.sghmc_step`).  In Chen et al.'s practical form the learning
    rate is ``epsilon**2`` and the momentum decay ``epsilon * friction``.
    """

    name = "SGHMC"
    adapts_step_size = True

    def __init__(self, model_or_target, *, friction=None, noise_estimate=None, mass=None, **kwargs):
        super().__init__(model_or_target, **kwargs)
        self.friction, self.noise_estimate, self.mass = friction, noise_estimate, mass
        self.make_kernel()  # refuse bad hyperparameters now

    def make_kernel(self):
        # With step_size=None the unset values are placeholders, replaced by the warm-up's.
        friction = self.friction or (1.0 if self.step_size is None else default_friction(self.step_size))
        return SGHMCKernel(temperature=self.temperature, friction=friction,
                           noise_estimate=0.0 if self.noise_estimate is None else self.noise_estimate,
                           mass=1.0 if self.mass is None else self.mass)

    def adapted_settings(self):
        return [name for name in ("friction", "noise_estimate", "mass") if getattr(self, name) is None]

    def tune(self, adaptation):
        """``M = H_hat`` (unless given), ``alpha = 2 omega`` (critical damping of the stiffest direction,
        unless given), ``v = V_hat / M`` as ``noise_estimate`` (unless given), ``epsilon`` by
        :func:`hmc_step_size_rule`."""
        mass, noise, omega = scaled_estimates(adaptation, adaptation["curvature"] if self.mass is None
                                              else self.kernel.mass)
        friction = 2 * omega if self.friction is None else omega.new_tensor(self.friction)
        tuned = {"step_size": hmc_step_size_rule(friction, noise, omega, self.temperature), "tuned_mass": mass,
                 "tuned_friction": friction}
        if self.noise_estimate is None:
            tuned["tuned_noise_estimate"] = noise
        return tuned


class AdaptiveSGHMC(SGMCMC):
    """SGHMC with a mass adapted during burn-in (Springenberg, Klein, Falkner and Hutter, NeurIPS 2016).

    The diagonal mass is ``Vhat^(1/2)``, with ``Vhat`` a running estimate of
    the squared stochastic score per coordinate, learned over the
    ``num_warmup`` steps and frozen afterwards, so the kept draws come from
    a fixed sampler.  ``step_size`` ``epsilon`` is scale free: each step moves
    a coordinate by about ``epsilon**2`` per unit-normalised gradient
    (``epsilon`` is the ``lr`` of Springenberg et al.'s code, and of Tran et
    al.'s, whose update squares it); ``momentum_decay`` is the fraction of
    momentum lost per step (the paper's ``mdecay``, default 0.05).  This is
    the pilot-run mass tuning of :class:`SGHMC` done inside one run; it is
    what Bayesian neural networks and autoencoders, whose weights differ in
    scale by orders of magnitude, need.  See
    :func:`~bayeskit.inference.sgmcmc.kernels.adaptive_sghmc_step` for the
    math and :class:`SGMCMC` for the other arguments.

    Examples
    --------
    >>> from bayeskit.inference import AdaptiveSGHMC
    >>> import pyro, torch
    >>> import pyro.distributions as dist
    >>> def model(y, batch_size=None):  # a Normal mean, N(0, 1) prior, unit noise: conjugate
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y), subsample_size=batch_size) as rows:
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[rows])
    >>> y = 1.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))
    >>> post = AdaptiveSGHMC(model, num_chains=4, num_warmup=500, num_samples=500).run(y, 20, seed=0,
    ...                                                                                progress=False)
    >>> exact_mean, exact_sd = y.sum() / 101, 101 ** -0.5
    >>> bool(abs(post.samples["mu"].mean() - exact_mean) < 0.1 * exact_sd)
    True
    >>> bool(abs(post.samples["mu"].std() / exact_sd - 1) < 0.1)
    True
    """

    name = "AdaptiveSGHMC"
    adapts_step_size = True

    def __init__(self, model_or_target, *, momentum_decay=0.05, **kwargs):
        super().__init__(model_or_target, **kwargs)
        self.momentum_decay = momentum_decay
        self.make_kernel()  # refuse bad hyperparameters now

    def make_kernel(self):
        return AdaptiveSGHMCKernel(temperature=self.temperature, momentum_decay=self.momentum_decay)

    def kernel_step_options(self, state):
        return {"adapt": state.step < self.num_warmup}  # the mass learns during burn-in only

    def adapted_settings(self):
        return ["mass", "friction", "noise_estimate"]

    def tune(self, adaptation):
        """``M = V_hat`` (the score's second moment, Springenberg et al.'s estimate, to the power 1: the
        Fisher identity ``E[g^2] = H + V`` makes it the curvature plus the noise, and only the first power
        scales with the posterior's units); ``epsilon = min(sqrt(mdecay T / max_i v_i), 0.25 / omega)``,
        since the minibatch noise ``epsilon^2 v`` may supply at most half of the momentum's
        ``2 mdecay T`` per step; friction ``mdecay / epsilon``; ``v = V_hat_noise / M`` as ``B_hat``."""
        mass, noise, omega = scaled_estimates(adaptation, adaptation["square"].clamp_min(
            float(adaptation["curvature"].min())))  # no coordinate with less mass than its curvature
        decay = self.momentum_decay
        step_size = torch.minimum((decay * self.temperature / noise.max()).sqrt(), HMC_DISCRETISATION / omega)
        return {"step_size": step_size, "tuned_mass": mass, "tuned_friction": decay / step_size,
                "tuned_noise_estimate": noise}


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
    adapts_step_size = True

    def __init__(self, model_or_target, *, diffusion=None, mass=None, **kwargs):
        super().__init__(model_or_target, **kwargs)
        self.diffusion, self.mass = diffusion, mass
        self.make_kernel()  # refuse bad hyperparameters now

    def make_kernel(self):
        diffusion = self.diffusion or (1.0 if self.step_size is None else 0.1 / self.step_size)
        return SGNHTKernel(temperature=self.temperature, diffusion=diffusion, mass=1.0 if self.mass is None
                           else self.mass)

    def adapted_settings(self):
        return [name for name in ("diffusion", "mass") if getattr(self, name) is None]

    def tune(self, adaptation):
        """``M = H_hat`` (unless given), ``A = omega`` (unless given; the thermostat adds ``epsilon v / 2``),
        ``epsilon`` by :func:`sgnht_step_size_rule`."""
        mass, noise, omega = scaled_estimates(adaptation, adaptation["curvature"] if self.mass is None
                                              else self.kernel.mass)
        diffusion = omega if self.diffusion is None else omega.new_tensor(self.diffusion)
        step_size = sgnht_step_size_rule(diffusion, noise, omega, self.temperature)
        # Where the thermostat will settle (Ding et al.: xi -> A + epsilon V / 2), so it need not travel there.
        return {"step_size": step_size, "tuned_mass": mass, "tuned_diffusion": diffusion,
                "thermostat": diffusion + 0.5 * step_size * noise.mean()}

    def settle(self, kernel_state, adaptation):
        return replace(kernel_state, thermostat=torch.full_like(kernel_state.thermostat,
                                                                float(adaptation["thermostat"])),
                       momentum=torch.zeros_like(kernel_state.momentum))
