"""Federated SG-MCMC: distributed SGLD (DSGLD) and federated SGLD with conducive gradients (FSGLD).

The data are split into ``S`` shards held by clients.  Each shard defines a
*sub-posterior* that takes an equal share of the prior,

.. math::

    \\pi_s(\\theta) \\propto p(\\theta)^{1/S}\\, p(x_s \\mid \\theta),
    \\qquad \\sum_{s=1}^S \\log \\pi_s(\\theta) = \\log p(\\theta \\mid x) + \\text{const},

built by :func:`bayeskit.sharding.subposterior_target` (on the unconstrained
vector, where the log-Jacobian of constrained sites is tempered with the
prior).  A chain lives on one shard at a time.  Every ``local_steps``
steps (one communication *round*) the server reassigns each chain to a
shard ``s`` drawn with probability ``f_s``; during the round the chain
moves with the kernel's update driven by

- **DSGLD** (Ahn, Shahbaba and Welling, "Distributed stochastic gradient MCMC",
  ICML 2014):
  :math:`\\hat g(\\theta) = f_s^{-1} \\nabla \\log \\pi_s(\\theta)`, unbiased for the
  full-posterior score when ``s`` is redrawn at every step.  When a chain
  stays on a shard for many steps (delayed communication) it drifts towards
  the mode of :math:`\\pi_s^{1/f_s}` instead; on non-IID shards the draws
  spread over the shards' modes.
- **FSGLD** (El Mekkaoui, Mesquita, Blomstedt and Kaski, "Federated stochastic
  gradient Langevin dynamics", UAI 2021) adds the *conducive gradient*

  .. math::

      \\hat g(\\theta) = f_s^{-1} \\nabla \\log \\pi_s(\\theta)
          + \\nabla \\log q(\\theta) - f_s^{-1} \\nabla \\log q_s(\\theta),
      \\qquad q = \\prod_s q_s,

  where ``q_s`` is a Gaussian surrogate of ``pi_s`` fitted once per client
  before sampling.  The extra term has zero mean over ``s ~ f``, so the
  estimator stays unbiased; when ``q_s`` matches ``pi_s`` it turns each
  client's drift into the score of ``q``, an approximation of the full
  posterior, so that chains no longer drift during long rounds.

Each client's work in a round (all of its chains' local steps, batched into
one target call per step) is one task of :func:`bayeskit.parallel.parallel_map`,
run in-process or on Ray (``backend="ray"``) with a seed derived from the run
seed, the round and the shard: both backends give the same draws.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from bayeskit._checks import positive, positive_int
from bayeskit.inference.modes import find_modes
from bayeskit.inference.sgmcmc.adaptation import default_friction
from bayeskit.inference.sgmcmc.engines import SGMCMC, DrawLog
from bayeskit.inference.sgmcmc.kernels import SGLDKernel, SGMCMCState, make_kernel
from bayeskit.inference.sgmcmc.scoring import log_prob_and_score_per_chain
from bayeskit.parallel import BACKENDS, derived_seed, parallel_map, seeded
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

# The sub-posteriors (prior and log-Jacobian both tempered) live in bayeskit.sharding, shared with Fusion;
# the names are re-exported here, where the federated engines' users have found them so far.
from bayeskit.sharding import PriorScaledModel, PriorScaleMessenger, scale_prior, subposterior_target
from bayeskit.target import Target

__all__ = ["PriorScaleMessenger", "scale_prior", "PriorScaledModel", "subposterior_target", "GaussianSurrogate",
           "fit_gaussian_surrogate", "FederatedSGMCMC", "DSGLD", "FSGLD", "SURROGATE_COVARIANCES"]

#: How :func:`fit_gaussian_surrogate` estimates a surrogate's precision.
SURROGATE_COVARIANCES = ("full", "diag", "laplace")

# Namespaces of the seeds derived from a run's base seed (first entry of the spawn key).
_SURROGATE_STREAM, _CLIENT_STREAM, _SERVER_STREAM = 0, 1, 2


# ============================================================ Gaussian surrogates
@dataclass
class GaussianSurrogate:
    """A Gaussian ``q_s = N(mean, precision^-1)`` on the unconstrained vector.

    ``precision`` is ``(dim, dim)`` (full) or ``(dim,)`` (diagonal).
    """

    mean: torch.Tensor
    precision: torch.Tensor

    @property
    def diagonal(self) -> bool:
        return self.precision.dim() == 1

    def apply_precision(self, z: torch.Tensor) -> torch.Tensor:
        """``P z`` for rows ``z`` of shape ``(n, dim)`` (P is symmetric)."""
        return z * self.precision if self.diagonal else z @ self.precision

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """``∇ log q_s(z) = -P (z - mean)`` for rows ``z``."""
        return -self.apply_precision(z - self.mean)


@dataclass
class AffineScore:
    """An affine gradient field ``z -> offset - z A`` (``A`` symmetric, full or diagonal).

    The conducive gradient of Gaussian surrogates is affine in ``theta``:
    with ``h_s = P_s m_s``, ``P = sum_s P_s``, ``h = sum_s h_s`` and weight
    ``w = 1 / f_s``,

    .. math:: \\nabla\\log q(\\theta) - w \\nabla\\log q_s(\\theta)
              = (h - w h_s) - (P - w P_s)\\,\\theta,

    so it is stored as ``offset = h - w h_s`` and ``slope = P - w P_s``.
    """

    offset: torch.Tensor
    slope: torch.Tensor

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        return self.offset - (z * self.slope if self.slope.dim() == 1 else z @ self.slope)


def conducive_gradient(surrogates: Sequence[GaussianSurrogate], shard: int, weight: float) -> AffineScore:
    """The conducive gradient ``∇log q - weight ∇log q_shard`` as an :class:`AffineScore` (El Mekkaoui et al., 2021)."""
    shifts = [s.apply_precision(s.mean.unsqueeze(0)).squeeze(0) for s in surrogates]  # h_s = P_s m_s
    total_precision = torch.stack([s.precision for s in surrogates]).sum(0)
    offset = torch.stack(shifts).sum(0) - weight * shifts[shard]
    return AffineScore(offset, total_precision - weight * surrogates[shard].precision)


def fit_gaussian_surrogate(target: Target, kernel=None, *, initial_position: torch.Tensor, step_size: float,
                           num_steps: int, covariance: str = "full", jitter: float = 1e-8,
                           share_minibatches: bool = False) -> GaussianSurrogate:
    """Fit a Gaussian to ``target`` from a short SG-MCMC run on it alone.

    Runs ``kernel`` (SGLD by default) from ``initial_position`` (``(chains, dim)``)
    for ``num_steps`` steps, discards the first half as warm-up and pools the
    rest over chains and steps.  The mean is the pooled mean; the precision is

    - ``"full"``: the inverse of the pooled covariance (``jitter`` times its
      mean variance is added to the diagonal before inverting);
    - ``"diag"``: the inverse of the pooled variances (for large models);
    - ``"laplace"``: the negative Hessian of ``log target`` at the mean (one
      target call, so one minibatch if the model subsamples), exact for a
      Gaussian target and free of Monte Carlo error, at the cost of ``dim``
      backward passes.

    SGLD's discretisation inflates variances by about ``1 / (1 - step_size * lambda / 4)``
    along a direction of precision ``lambda``; keep the step small against the
    target's curvature.  Each chain draws its own minibatches unless
    ``share_minibatches`` (see :func:`~bayeskit.inference.sgmcmc.scoring.log_prob_and_score_per_chain`).
    Uses torch's global generator (seed it).
    """
    if covariance not in SURROGATE_COVARIANCES:
        raise ValueError(f"surrogate covariance must be one of {list(SURROGATE_COVARIANCES)}, got {covariance!r}")
    kernel = SGLDKernel() if kernel is None else kernel
    state = kernel.init(initial_position)
    kept = []
    for step in range(num_steps):
        _, score = log_prob_and_score_per_chain(target, state.position, share_minibatches)
        state = kernel.step(state, score, step_size)
        if step >= num_steps // 2:
            kept.append(state.position)
    draws = torch.cat(kept)
    if not torch.isfinite(draws).all():
        raise ValueError(f"the surrogate run on {target.description} produced non-finite values; "
                         "lower surrogate_step_size")
    mean = draws.mean(0)
    if covariance == "laplace":
        return GaussianSurrogate(mean, _negative_hessian(target, mean))
    centred = draws - mean
    if covariance == "diag":
        return GaussianSurrogate(mean, 1.0 / centred.pow(2).mean(0).clamp(min=torch.finfo(draws.dtype).tiny))
    if draws.shape[0] <= draws.shape[1]:
        raise ValueError(f"a full surrogate covariance needs more pooled draws ({draws.shape[0]}) than "
                         f"dimensions ({draws.shape[1]}); raise surrogate_steps or use surrogate_covariance='diag'")
    cov = centred.T @ centred / (draws.shape[0] - 1)
    cov = cov + jitter * cov.diagonal().mean() * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
    return GaussianSurrogate(mean, _positive_definite_inverse(cov, "the surrogate covariance"))


def _negative_hessian(target, point):
    hessian = torch.autograd.functional.hessian(lambda z: target.log_prob(z), point)
    precision = -(hessian + hessian.T) / 2
    try:
        torch.linalg.cholesky(precision)
    except RuntimeError as error:
        raise ValueError(f"the Laplace surrogate of {target.description} is not positive definite at the "
                         "local mean (the sub-posterior is not log-concave there); use "
                         "surrogate_covariance='full' or 'diag'") from error
    return precision


def _positive_definite_inverse(matrix, what):
    try:
        return torch.cholesky_inverse(torch.linalg.cholesky(matrix))
    except RuntimeError as error:
        raise ValueError(f"{what} is not positive definite; use surrogate_covariance='diag'") from error


# ============================================================ client tasks
@dataclass
class SurrogateTask:
    """One client's surrogate fit: everything a worker needs, picklable."""

    target: Target
    kernel: object
    num_chains: int
    step_size: float
    num_steps: int
    covariance: str
    seed: int
    share_minibatches: bool = False


#: Adam steps (batched over the surrogate chains) that put the surrogate run's chains at the shard's mode.
SURROGATE_MODE_STEPS = 300


def run_surrogate_task(task: SurrogateTask) -> GaussianSurrogate:
    """Fit ``q_s`` on one client (a :func:`parallel_map` task).

    The chains start at the shard's mode, not at prior draws. Why: the fit
    pools the second half of a short run, and a chain started many
    sub-posterior sds away is still relaxing there. On the conformance
    matrix's Normal model (``step_size * precision = 0.0125``, 400 steps)
    prior starts gave precisions 0.2-0.5 times the truth and means 1-1.7 sd
    off, and FSGLD's draws then came out 29% too wide; from the mode, the
    variance builds up in a few relaxation times and is 0.9-1.1 times right.
    """
    with seeded(task.seed, task.target.device):
        modes = find_modes(task.target, num_restarts=task.num_chains, num_steps=SURROGATE_MODE_STEPS,
                           num_points=1, seed=task.seed, progress=False)
        start = modes.points.expand(task.num_chains, -1).clone()
        return fit_gaussian_surrogate(task.target, task.kernel, initial_position=start, step_size=task.step_size,
                                      num_steps=task.num_steps, covariance=task.covariance,
                                      share_minibatches=task.share_minibatches)


@dataclass
class ClientRound:
    """One client's work in one round: its chains' local steps.

    ``weight`` is ``1 / f_s``; ``correction`` the conducive gradient (FSGLD)
    or None (DSGLD); ``step_sizes``, ``noise`` and ``collect`` the slice of the
    schedule's plan that this round covers.
    """

    target: Target
    kernel: object
    kernel_state: SGMCMCState
    weight: float
    correction: AffineScore | None
    step_sizes: torch.Tensor
    noise: torch.Tensor
    collect: torch.Tensor
    seed: int
    share_minibatches: bool = False


@dataclass
class ClientResult:
    """What a client sends back: new kernel state, kept draws ``(chains, kept, dim)``, mean local log density."""

    kernel_state: SGMCMCState
    draws: torch.Tensor
    log_prob: torch.Tensor


def run_client_round(work: ClientRound) -> ClientResult:
    """Advance one client's chains by ``len(work.step_sizes)`` steps (a :func:`parallel_map` task).

    All chains on the shard move together, each scored on its own minibatch
    of the shard (one target call per chain; one call and one minibatch for
    all with ``work.share_minibatches``).
    """
    state, kept, log_prob = work.kernel_state, [], None
    with seeded(work.seed, work.target.device):
        for step_size, noise, collect in zip(work.step_sizes.tolist(), work.noise.tolist(), work.collect.tolist()):
            log_prob, score = log_prob_and_score_per_chain(work.target, state.position, work.share_minibatches)
            score = work.weight * score
            if work.correction is not None:
                score = score + work.correction(state.position)
            state = work.kernel.step(state, score, step_size, noise=noise)
            if collect:
                kept.append(state.position)
    position = state.position
    draws = torch.stack(kept, dim=1) if kept else position.new_zeros(position.shape[0], 0, position.shape[1])
    return ClientResult(state, draws, log_prob.mean())


# ============================================================ the federation
@dataclass
class Federation:
    """The shards' sub-posterior targets and what the server knows about them.

    Plays the role of the runner's target: it exposes the sites, dtype,
    device and ``constrain`` shared by all shards.
    """

    targets: list[Target]
    shard_probs: torch.Tensor
    surrogates: list[GaussianSurrogate] | None = None
    description: str = field(default="")

    def __post_init__(self):
        self.description = f"{len(self.targets)} shards of {self.targets[0].description.rsplit(', shard', 1)[0]}"

    @property
    def first(self) -> Target:
        return self.targets[0]

    dim = property(lambda self: self.first.dim)
    sites = property(lambda self: self.first.sites)
    dtype = property(lambda self: self.first.dtype)
    device = property(lambda self: self.first.device)

    def constrain(self, z):
        return self.first.constrain(z)

    def init(self, n, generator=None):
        return self.first.init(n, generator)

    def nonfinite_sites(self, z, score=None):
        return self.first.nonfinite_sites(z, score)


def _shard_call(shard, index):
    """``(args, kwargs)`` of one shard: a tuple (positional), a dict (keywords) or a single tensor."""
    if isinstance(shard, tuple):
        return shard, {}
    if isinstance(shard, Mapping):
        return (), dict(shard)
    if isinstance(shard, torch.Tensor):
        return (shard,), {}
    raise TypeError(f"shards[{index}] must be a tuple of model arguments, a dict of keyword arguments or a "
                    f"tensor, got {type(shard).__name__}")


def _check_shard_probs(shard_probs):
    """A float64 tensor of probabilities (validated for sign and sum; length is checked at run time)."""
    if shard_probs is None:
        return None
    probs = torch.as_tensor(shard_probs, dtype=torch.float64).detach().cpu()
    if probs.dim() != 1 or len(probs) == 0:
        raise ValueError(f"shard_probs must be a 1-d sequence with one probability per shard, got shape "
                         f"{tuple(probs.shape)}")
    if not torch.isfinite(probs).all() or (probs <= 0).any():
        raise ValueError(f"shard_probs must be positive and finite (DSGLD divides by them), got {probs.tolist()}")
    if abs(float(probs.sum()) - 1.0) > 1e-6:
        raise ValueError(f"shard_probs must sum to 1, got sum {float(probs.sum()):.6g}")
    return probs


# ============================================================ the engines
@dataclass(frozen=True)
class FederatedRun:
    """The engine's state between rounds.

    ``draws`` holds the kept ``(chains, dim)`` draws, unconstrained, and
    ``draw_shard`` the shard each was made on, as :class:`DrawLog` s (each
    round appends its draws: a step never changes the state it is given);
    ``base_seed`` the root of every per-(round, shard) seed; ``round`` the
    rounds done.
    """

    kernel_state: SGMCMCState
    draws: DrawLog
    draw_shard: DrawLog
    round: int
    base_seed: int
    surrogates: tuple[GaussianSurrogate, ...] | None

    @property
    def num_collected(self) -> int:
        return len(self.draws)


class FederatedSGMCMC(SGMCMC):
    """Base of :class:`DSGLD` and :class:`FSGLD`: chains hop between shards every ``local_steps`` steps.

    Parameters
    ----------
    model : callable
        A Pyro model; each shard's data are passed to it as its arguments.
        Subsampling plates (``pyro.plate(..., subsample_size=B)``) give
        per-shard minibatches scaled by ``N_s / B``.
    step_size, num_samples, num_warmup, num_chains, thin, schedule, temperature, init, dims, coords
        As for :class:`~bayeskit.inference.sgmcmc.SGMCMC`; counted in SG-MCMC
        steps (``num_warmup + num_samples * thin`` steps in all).
    local_steps : int
        Steps a chain stays on its shard between communications (one round).
        ``1`` is classic DSGLD with a shard redrawn at every step.
    shard_probs : sequence of float, optional
        ``f_s``, the probability that the server sends a chain to shard ``s``
        at a round's start.  Default: uniform, ``1 / S``.  Pass
        ``N_s / N`` for the size-proportional choice of Ahn et al.
    kernel : str or kernel object
        ``"sgld"`` (default), ``"psgld"``, ``"sghmc"``, ``"sgnht"`` or a kernel
        instance from :mod:`bayeskit.inference.sgmcmc.kernels` (anything with
        ``init(position)`` and ``step(state, score, step_size, noise)``).  A name
        gets ``temperature``; an instance keeps its own settings.
    backend : "inprocess" or "ray"
        Where clients run (:func:`bayeskit.parallel.parallel_map`).  With Ray,
        the model must be importable by workers (define it at module level),
        and each task carries its shard's target, data included.
    ray_options : dict, optional
        Passed to ``ray.remote(...).options``.

    The runner's step is one round: progress, ``Posterior.trace`` (mean local
    log density, first step size of the round, finiteness) and checkpoints
    are per round.  ``Posterior.sample_stats["shard"]`` says which shard each
    draw was made on.
    """

    name = "FederatedSGMCMC"

    def __init__(self, model, *, step_size, local_steps=10, shard_probs=None, kernel="sgld", backend="inprocess",
                 ray_options=None, **sgmcmc_options):
        if isinstance(model, Target) or not callable(model):
            raise TypeError("federated engines need a Pyro model (a callable), whose prior they split between "
                            f"shards; got {type(model).__name__}")
        super().__init__(model, step_size=step_size, **sgmcmc_options)
        self.kernel_spec = kernel
        self.make_kernel()  # refuse a bad kernel now
        self.local_steps = positive_int("local_steps", local_steps)
        self.shard_probs = _check_shard_probs(shard_probs)
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
        self.backend, self.ray_options = backend, dict(ray_options or {})

    def make_kernel(self):
        if isinstance(self.kernel_spec, str):
            options = {"temperature": self.temperature}
            if self.kernel_spec.lower() == "sghmc":  # the SGHMC engine's default, not the kernel's bare 1.0
                options["friction"] = default_friction(self.step_size)
            return make_kernel(self.kernel_spec, **options)
        return make_kernel(self.kernel_spec)

    @property
    def num_rounds(self) -> int:
        return math.ceil(self.plan.num_steps / self.local_steps)

    def settings(self, problem):
        probs = None if self.shard_probs is None else self.shard_probs.tolist()
        return {**super().settings(problem), "kernel": getattr(self.kernel, "name", type(self.kernel).__name__),
                "local_steps": self.local_steps, "shard_probs": probs, "backend": self.backend}

    # ------------------------------------------------------------ run
    def _run(self, shards, surrogates, *, seed, progress, callback, checkpoint, checkpoint_every, resume):
        return Engine.run(self, shards, surrogates, num_steps=self.num_rounds, seed=seed, progress=progress,
                          callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
                          resume=resume)

    def target(self, shards, surrogates=None) -> Federation:
        """The :class:`Federation` of sub-posterior targets, one per shard."""
        if isinstance(shards, (str, bytes, Mapping, torch.Tensor)) or not isinstance(shards, Sequence):
            raise TypeError(f"shards must be a list with one entry per shard, got {type(shards).__name__}")
        if len(shards) == 0:
            raise ValueError("shards is empty: pass one entry (model arguments) per shard")
        num_shards = len(shards)
        probs = torch.full((num_shards,), 1.0 / num_shards, dtype=torch.float64)
        if self.shard_probs is not None:
            if len(self.shard_probs) != num_shards:
                raise ValueError(f"shard_probs has {len(self.shard_probs)} entries but there are {num_shards} shards")
            probs = self.shard_probs
        targets = []
        for index, shard in enumerate(shards):
            args, kwargs = _shard_call(shard, index)
            try:
                target = subposterior_target(self.model_or_target, num_shards, args, kwargs)
            except (ValueError, TypeError) as error:
                raise type(error)(f"shards[{index}]: {error}") from error
            target.description = f"{target.description}, shard {index}"
            _check_same_sites(targets[0] if targets else target, target, index)
            targets.append(target)
        return Federation(targets, probs, self._check_surrogates(surrogates, targets[0], num_shards))

    def _check_surrogates(self, surrogates, first, num_shards):
        if surrogates is not None:
            raise TypeError(f"{self.name} takes no surrogates (only FSGLD's conducive gradient uses them)")
        return None

    # ------------------------------------------------------------ functional core
    def init(self, federation, generator):
        position = self._start(federation.first, generator)
        base_seed = int(torch.randint(0, 2**62, (), generator=generator))
        surrogates = self.surrogates_for(federation, base_seed)
        no_shards = torch.zeros(self.num_chains, dtype=torch.long)
        return FederatedRun(self.kernel.init(position), DrawLog.empty(position), DrawLog.empty(no_shards), 0,
                            base_seed, None if surrogates is None else tuple(surrogates))

    def surrogates_for(self, federation, base_seed):
        """The Gaussian surrogates ``q_s`` the engine uses (None: DSGLD needs none)."""
        return None

    def assign_chains(self, state, federation) -> torch.Tensor:
        """The server's move: the shard of each chain for this round, drawn i.i.d. from ``f``."""
        generator = torch.Generator().manual_seed(derived_seed(state.base_seed, _SERVER_STREAM, state.round))
        return torch.multinomial(federation.shard_probs, self.num_chains, replacement=True, generator=generator)

    def client_rounds(self, state, federation, assignment):
        """One :class:`ClientRound` per shard that holds chains this round."""
        first = state.round * self.local_steps
        steps = slice(first, min(first + self.local_steps, self.plan.num_steps))
        work = []
        for shard in torch.unique(assignment).tolist():
            rows = (assignment == shard).nonzero().squeeze(1)
            weight = 1.0 / float(federation.shard_probs[shard])
            correction = None
            if state.surrogates is not None:
                correction = conducive_gradient(state.surrogates, shard, weight)
            work.append(ClientRound(
                federation.targets[shard], self.kernel, _select_chains(state.kernel_state, rows), weight,
                correction, self.plan.step_sizes[steps], self.plan.noise[steps], self.plan.collect[steps],
                derived_seed(state.base_seed, _CLIENT_STREAM, state.round, shard), self.share_minibatches))
        return work

    def step(self, state, federation, generator):
        """One round: assign chains, run every client's local steps, gather."""
        assignment = self.assign_chains(state, federation)
        work = self.client_rounds(state, federation, assignment)
        results = parallel_map(run_client_round, work, backend=self.backend, ray_options=self.ray_options)
        rows = [(assignment == shard).nonzero().squeeze(1) for shard in torch.unique(assignment).tolist()]
        kernel_state = _gather_chains([r.kernel_state for r in results], rows, self.num_chains)
        draws, draw_shard = state.draws, state.draw_shard
        num_kept = results[0].draws.shape[1]
        if num_kept:
            draws = draws.append(_in_rows([r.draws for r in results], rows, self.num_chains))
            draw_shard = draw_shard.append(assignment.unsqueeze(1).expand(-1, num_kept))
        first_step = state.round * self.local_steps
        new = replace(state, kernel_state=kernel_state, draws=draws, draw_shard=draw_shard, round=state.round + 1)
        info = {"log_prob": torch.stack([r.log_prob for r in results]).mean(),
                "step_size": self.plan.step_sizes[first_step].clone(),
                "finite": torch.isfinite(kernel_state.position).all()}
        return new, info

    def finite_values(self, state, federation):
        return state.kernel_state.position, None

    # ------------------------------------------------------------ checkpoints
    def state_dict(self, state):
        saved = {"kernel": state.kernel_state.tensors(), "draws": state.draws.pieces(),
                 "draw_shard": state.draw_shard.pieces(), "num_collected": state.num_collected,
                 "round": state.round, "base_seed": state.base_seed}
        if state.surrogates is not None:
            saved["surrogate_means"] = torch.stack([s.mean for s in state.surrogates])
            saved["surrogate_precisions"] = torch.stack([s.precision for s in state.surrogates])
        return saved

    def load_state(self, federation, saved):
        like = {"device": federation.device, "dtype": federation.dtype}
        surrogates = None
        if "surrogate_means" in saved:
            surrogates = tuple(GaussianSurrogate(m.to(**like), p.to(**like))
                               for m, p in zip(saved["surrogate_means"], saved["surrogate_precisions"]))
        num_collected = saved["num_collected"]
        return FederatedRun(SGMCMCState(**{k: v.to(**like) for k, v in saved["kernel"].items()}),
                            DrawLog.from_saved(saved["draws"], num_collected, **like),
                            DrawLog.from_saved(saved["draw_shard"], num_collected), int(saved["round"]),
                            int(saved["base_seed"]), surrogates)

    # ------------------------------------------------------------ export
    def to_posterior(self, state, federation, trace, meta):
        meta = {**meta, "sample_kind": "mcmc", "num_shards": len(federation.targets),
                "shard_probs": federation.shard_probs.tolist(), "rounds_completed": state.round}
        if state.num_collected:
            draws, draw_shard = state.draws.stacked(), state.draw_shard.stacked()
        else:
            draws = state.kernel_state.position.unsqueeze(1)
            draw_shard = torch.full((self.num_chains, 1), -1, dtype=torch.long)
            meta["note"] = "no draws were kept (stopped during warm-up); the posterior holds the last state"
        with torch.no_grad():
            samples = federation.first.draws(draws)
        return Posterior(samples, sample_stats={"shard": draw_shard}, trace=trace, meta=meta,
                         dims=self.dims, coords=self.coords)


def _check_same_sites(reference, target, index):
    mine = {name: tuple(site.shape) for name, site in target.sites.items()}
    theirs = {name: tuple(site.shape) for name, site in reference.sites.items()}
    if mine != theirs:
        raise ValueError(f"shards[{index}] gives latent sites {mine}, but shards[0] gives {theirs}; every "
                         "shard must share the same parameters")


def _select_chains(state: SGMCMCState, rows: torch.Tensor) -> SGMCMCState:
    return SGMCMCState(**{name: value[rows] for name, value in state.tensors().items()})


def _in_rows(parts: list[torch.Tensor], rows: list[torch.Tensor], num_chains: int) -> torch.Tensor:
    """One new tensor ``(num_chains, ...)`` holding each part in its chains' rows."""
    full = parts[0].new_zeros(num_chains, *parts[0].shape[1:])
    for chains, part in zip(rows, parts):
        full[chains] = part.to(full)
    return full


def _gather_chains(parts: list[SGMCMCState], rows: list[torch.Tensor], num_chains: int) -> SGMCMCState:
    """Put each client's chains back in their rows (every chain is on exactly one client per round)."""
    return SGMCMCState(**{name: _in_rows([getattr(part, name) for part in parts], rows, num_chains)
                          for name in parts[0].tensors()})


class DSGLD(FederatedSGMCMC):
    """Distributed SGLD (Ahn, Shahbaba and Welling, ICML 2014) with delayed communication.

    A chain on shard ``s`` (drawn with probability ``f_s``) moves with the
    kernel on ``f_s^{-1} ∇log pi_s(theta)``, where ``pi_s ∝ p(theta)^(1/S) p(x_s | theta)``;
    it stays there ``local_steps`` steps.  The baseline of :class:`FSGLD`: on
    non-IID shards with long rounds its draws drift towards each shard's mode.
    See :class:`FederatedSGMCMC` for the arguments.

    Examples
    --------
    Three clients hold parts of a Normal mean's data (closed-form posterior);
    the baseline's draws come out wider than the posterior (here by about a fifth):

    >>> from bayeskit.inference import DSGLD
    >>> import pyro, torch
    >>> import pyro.distributions as dist
    >>> def model(y, batch_size=None):  # a Normal mean, N(0, 1) prior, unit noise: conjugate
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y), subsample_size=batch_size) as rows:
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[rows])
    >>> y = 1.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))
    >>> shards = [(y[:30], 10), (y[30:60], 10), (y[60:], 10)]  # each client's (data, batch size)
    >>> exact_mean, exact_sd = y.sum() / 101, 101 ** -0.5
    >>> post = DSGLD(model, step_size=1e-3, local_steps=5, num_chains=4, num_warmup=300,
    ...              num_samples=3000).run(shards, seed=0, progress=False)
    >>> bool(abs(post.samples["mu"].mean() - exact_mean) < 0.2 * exact_sd)
    True
    >>> bool(post.samples["mu"].std() > exact_sd)
    True
    """

    name = "DSGLD"

    def run(self, shards, *, seed=None, progress=True, callback=None, checkpoint=None, checkpoint_every=100,
            resume=False) -> Posterior:
        """Sample with one entry of ``shards`` per client: a tuple of model arguments, a dict of keyword
        arguments or a single tensor.  ``seed``, ``progress``, ``callback`` (per round) and checkpoints are
        the runner's (:meth:`bayeskit.runner.Engine.run`); a step there is one round."""
        return self._run(shards, None, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, resume=resume)


class FSGLD(FederatedSGMCMC):
    """Federated SGLD with conducive gradients (El Mekkaoui, Mesquita, Blomstedt and Kaski, UAI 2021).

    DSGLD's estimator plus the conducive gradient,

    .. math::

        \\hat g(\\theta) = f_s^{-1}\\nabla\\log\\pi_s(\\theta)
            + \\sum_{r=1}^S \\nabla\\log q_r(\\theta) - f_s^{-1}\\nabla\\log q_s(\\theta),

    with Gaussian surrogates ``q_s ≈ pi_s`` fitted once per client before
    sampling (one :func:`parallel_map` task per client): a run of the kernel on
    ``pi_s`` alone for ``surrogate_steps`` steps of ``surrogate_step_size``
    (default ``step_size``) with ``surrogate_chains`` chains started at the
    shard's mode (:func:`~bayeskit.inference.find_modes`), summarised by
    :func:`fit_gaussian_surrogate` with ``surrogate_covariance`` (``"full"``,
    ``"diag"`` or ``"laplace"``).  Or pass fitted surrogates to :meth:`run`.

    Since ``E_s[conducive] = 0`` under ``s ~ f`` the estimator stays unbiased;
    during a round its mean is ``∇log q + f_s^{-1}∇log(pi_s / q_s)``, so the
    better ``q_s`` fits ``pi_s`` the less a chain drifts towards the shard's own
    mode.  The leftover drift grows with the surrogates' error times the
    shards' heterogeneity (distance between sub-posterior modes).
    See :class:`FederatedSGMCMC` for the other arguments.

    Examples
    --------
    Three clients hold parts of a Normal mean's data (closed-form posterior):

    >>> from bayeskit.inference import FSGLD
    >>> import pyro, torch
    >>> import pyro.distributions as dist
    >>> def model(y, batch_size=None):  # a Normal mean, N(0, 1) prior, unit noise: conjugate
    ...     mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    ...     with pyro.plate("data", len(y), subsample_size=batch_size) as rows:
    ...         pyro.sample("y", dist.Normal(mu, 1.0), obs=y[rows])
    >>> y = 1.0 + torch.randn(100, generator=torch.Generator().manual_seed(0))
    >>> shards = [(y[:30], 10), (y[30:60], 10), (y[60:], 10)]  # each client's (data, batch size)
    >>> exact_mean, exact_sd = y.sum() / 101, 101 ** -0.5
    >>> post = FSGLD(model, step_size=1e-3, local_steps=5, num_chains=4, num_warmup=300,
    ...              num_samples=3000).run(shards, seed=0, progress=False)
    >>> bool(abs(post.samples["mu"].mean() - exact_mean) < 0.25 * exact_sd)
    True
    >>> bool(abs(post.samples["mu"].std() / exact_sd - 1) < 0.15)
    True
    """

    name = "FSGLD"

    def __init__(self, model, *, step_size, surrogate_covariance="full", surrogate_steps=500,
                 surrogate_step_size=None, surrogate_chains=None, **options):
        super().__init__(model, step_size=step_size, **options)
        if surrogate_covariance not in SURROGATE_COVARIANCES:
            raise ValueError(f"surrogate_covariance must be one of {list(SURROGATE_COVARIANCES)}, "
                             f"got {surrogate_covariance!r}")
        self.surrogate_covariance = surrogate_covariance
        self.surrogate_steps = positive_int("surrogate_steps", surrogate_steps)
        if self.surrogate_steps < 2:
            raise ValueError("surrogate_steps must be at least 2 (the first half is warm-up)")
        self.surrogate_step_size = self.step_size if surrogate_step_size is None else positive(
            "surrogate_step_size", surrogate_step_size)
        self.surrogate_chains = positive_int("surrogate_chains",
                                              self.num_chains if surrogate_chains is None else surrogate_chains)

    def settings(self, problem):
        return {**super().settings(problem), "surrogate_covariance": self.surrogate_covariance,
                "surrogate_steps": self.surrogate_steps, "surrogate_step_size": self.surrogate_step_size,
                "surrogate_chains": self.surrogate_chains}

    def run(self, shards, *, surrogates=None, seed=None, progress=True, callback=None, checkpoint=None,
            checkpoint_every=100, resume=False) -> Posterior:
        """Fit the surrogates (unless given), then sample; see :meth:`DSGLD.run` for the arguments.

        ``surrogates`` : list of :class:`GaussianSurrogate`, one per shard, on the
        unconstrained vector, to skip the fitting (e.g. Laplace fits made by the clients).
        """
        return self._run(shards, surrogates, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
                         checkpoint_every=checkpoint_every, resume=resume)

    def _check_surrogates(self, surrogates, first, num_shards):
        if surrogates is None:
            return None
        if isinstance(surrogates, GaussianSurrogate) or not isinstance(surrogates, Sequence):
            raise TypeError("surrogates must be a list of GaussianSurrogate, one per shard")
        if len(surrogates) != num_shards:
            raise ValueError(f"surrogates has {len(surrogates)} entries but there are {num_shards} shards")
        checked = []
        for index, surrogate in enumerate(surrogates):
            if not isinstance(surrogate, GaussianSurrogate):
                raise TypeError(f"surrogates[{index}] must be a GaussianSurrogate, got {type(surrogate).__name__}")
            mean = torch.as_tensor(surrogate.mean, dtype=first.dtype, device=first.device)
            precision = torch.as_tensor(surrogate.precision, dtype=first.dtype, device=first.device)
            if mean.shape != (first.dim,) or precision.shape not in ((first.dim,), (first.dim, first.dim)):
                raise ValueError(f"surrogates[{index}] must have mean ({first.dim},) and precision ({first.dim},) "
                                 f"or ({first.dim}, {first.dim}); got {tuple(mean.shape)} and "
                                 f"{tuple(precision.shape)}")
            checked.append(GaussianSurrogate(mean, precision))
        if len({s.precision.dim() for s in checked}) > 1:
            raise ValueError("surrogates must be all full or all diagonal")
        return checked

    def surrogates_for(self, federation, base_seed):
        if federation.surrogates is not None:
            return federation.surrogates
        tasks = [SurrogateTask(target, self.kernel, self.surrogate_chains, self.surrogate_step_size,
                               self.surrogate_steps, self.surrogate_covariance,
                               derived_seed(base_seed, _SURROGATE_STREAM, shard), self.share_minibatches)
                 for shard, target in enumerate(federation.targets)]
        return parallel_map(run_surrogate_task, tasks, backend=self.backend, ray_options=self.ray_options)
