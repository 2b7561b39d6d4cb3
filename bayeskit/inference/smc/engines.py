"""The SMC engines on the shared runner: ParticleFilter, PaRIS (one step per observation) and
ParticleGibbs (one step per Gibbs iteration). The math lives in :mod:`bayeskit.inference.smc.core`."""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from bayeskit._checks import check_series, positive_int
from bayeskit.compiling import check_jit_compile, compile_step
from bayeskit.inference.smc import core
from bayeskit.models.ssm import StateSpaceModel
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

__all__ = ["ParticleFilter", "PaRIS", "ParticleGibbs"]


class _Observations:
    """What the shared loop needs of a Target, for engines that run on a state-space model and its data."""

    def __init__(self, model, y):
        self.model, self.y, self.device, self.dtype = model, y, y.device, y.dtype
        self.description = f"{type(model).__name__} on {y.shape[0]} observations"

    def nonfinite_sites(self, z=None, score=None):
        return ["log_weights"]


def observations_for(model, y) -> torch.Tensor:
    """``y`` as ``(T, obs_dim)`` in the model's dtype, on the model's device (refused when elsewhere)."""
    y = check_series("y", y, model.obs_dim)
    reference = next(iter(list(model.parameters()) + list(model.buffers())), None)
    if reference is not None:
        if y.device != reference.device:
            raise ValueError(f"y is on {y.device} but the model is on {reference.device}; "
                             f"move the model with model.to({str(y.device)!r})")
        y = y.to(reference.dtype)
    return y


def check_model(model):
    if not isinstance(model, StateSpaceModel):
        raise TypeError(f"model must be a bayeskit.models.ssm.StateSpaceModel, got {type(model).__name__}")


def _sweep_dict(sweep: core.SweepState | None) -> dict:
    """A sweep's fields as tensors, plain values and lists (what a checkpoint holds)."""
    if sweep is None:
        return {"sweep": None}
    values = {f.name: getattr(sweep, f.name) for f in fields(sweep)}
    return {"sweep": {name: list(value) if isinstance(value, core.PersistentLog) else value
                      for name, value in values.items()}}


def _sweep_from(saved: dict) -> core.SweepState | None:
    if saved["sweep"] is None:
        return None
    values = dict(saved["sweep"])
    for name in ("particles", "backward"):
        values[name] = core.PersistentLog.of(values[name])
    return core.SweepState(**values)


class ParticleFilter(Engine):
    r"""Particle filter for a :class:`~bayeskit.models.ssm.StateSpaceModel`, many replicates in one batch.

    Sequential importance resampling (Gordon, Salmond and Smith 1993) with the
    bootstrap proposal :math:`q_t` or a guided one
    (:class:`~bayeskit.inference.smc.proposals.Proposal`), resampling
    (``"multinomial"``, ``"systematic"``, ``"stratified"``, ``"residual"``) when
    the ESS drops below ``ess_threshold * num_particles``; see
    :mod:`bayeskit.inference.smc.core` for the weights and the log-evidence.
    ``x_0`` always comes from the model's initial law; a guided proposal acts
    from ``t = 1`` on.

    ``ParticleFilter(model, num_chains=R).run(y, seed=...)`` runs one step per observation and
    returns a weighted :class:`~bayeskit.Posterior`: ``samples["x"]`` holds the
    final filtering cloud ``(R, N, state_dim)`` (chains are replicates) with
    its ``log_weights``; ``trace`` has one row per time step with
    ``log_evidence`` (cumulative, ``(T, R)``), ``ess``, ``resampled`` and
    ``filtering_mean`` ``(T, R, state_dim)``; ``meta["log_evidence"]`` lists
    the R final estimates of :math:`\log p(y_{0:T-1})`.

    ``jit_compile=True`` compiles each step of the bootstrap filter
    (resampling, move, weights and the trace entry) as one call with
    ``torch.compile`` (see :mod:`bayeskit.compiling`); the random draws stay
    torch's own, so a seed gives the eager filter's particles, up to float
    rounding.  Compiling takes seconds once per engine; it pays on long series
    and small clouds, where Python's per-operation cost dominates a step.
    """

    name = "particle_filter"

    def __init__(self, model, *, num_particles: int = 1000, num_chains: int = 1, proposal=None,
                 resampling: str = "systematic", ess_threshold: float = 0.5, jit_compile: bool | str = False):
        check_model(model)
        core.check_settings(num_particles, 1, resampling, ess_threshold, "auto", None)
        if proposal is not None and not callable(getattr(proposal, "propose", None)):
            raise TypeError("proposal must have a propose(model, t, x_prev, y_t) method (see smc.proposals)")
        if check_jit_compile(jit_compile) is not False and proposal is not None:
            raise ValueError("jit_compile compiles the bootstrap filter's step; a guided proposal adapts itself "
                             "in Python at every step: drop jit_compile or the proposal")
        super().__init__(model)
        self.model, self.num_particles, self.proposal = model, num_particles, proposal
        self.resampling, self.ess_threshold = resampling, ess_threshold
        self.functional, self.num_backward, self.backward = None, 1, "auto"
        self.num_chains = positive_int("num_chains", num_chains)
        self.jit_compile = jit_compile
        self.compiled_forward = None  # made on first use: compiling costs seconds

    def settings(self, problem):
        return {"num_particles": self.num_particles, "num_chains": self.num_chains,
                "resampling": self.resampling, "ess_threshold": self.ess_threshold,
                "proposal": "bootstrap" if self.proposal is None else type(self.proposal).__name__,
                "model": type(self.model).__name__}

    def run(self, y, *, seed: int | None = None, progress: bool = True, callback=None,
            checkpoint=None, checkpoint_every: int = 100, resume: bool = False) -> Posterior:
        """Filter ``y`` ``(T, obs_dim)`` with ``num_chains`` independent particle systems."""
        y = observations_for(self.model, y)
        return super().run(y, num_steps=y.shape[0], seed=seed, progress=progress, callback=callback,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)

    def target(self, y):
        return _Observations(self.model, y)

    # ------------------------------------------------------------ functional core
    def init(self, target, generator):
        return None  # the first step processes y_0

    def step(self, state, target, generator):
        with torch.no_grad():
            if state is None:
                sweep = core.initial_state(self.model, target.y[0], self.num_chains, self.num_particles,
                                           functional=self.functional)
                return sweep, self.trace_entry(sweep)
            if self.jit_compile is False:
                return self.forward(state, target.y[state.t + 1])
            if self.compiled_forward is None:
                # dynamic=None: the time index grows by one each step; torch makes it a symbol after the
                # second value instead of compiling a version per step
                self.compiled_forward = compile_step(self.forward_tensors, self.jit_compile, dynamic=None)
            tensors, info = self.compiled_forward(state, target.y[state.t + 1])
            return replace(state, t=state.t + 1, **tensors), info

    def forward(self, state, y_t):
        """Process ``y_t``: the next sweep state and its trace entry."""
        sweep = core.forward_step(self.model, state, y_t, resampling=self.resampling,
                                  ess_threshold=self.ess_threshold, proposal=self.proposal,
                                  functional=self.functional, num_backward=self.num_backward,
                                  backward=self.backward)
        return sweep, self.trace_entry(sweep)

    def forward_tensors(self, state, y_t):
        """:meth:`forward` with the new state's tensors as a dict: what ``jit_compile`` compiles as one call
        (the bootstrap filter's resampling, move, weights and trace entry; the state's logs stay outside)."""
        sweep, info = self.forward(state, y_t)
        return {"x": sweep.x, "log_weights": sweep.log_weights, "log_evidence": sweep.log_evidence,
                "ess": sweep.ess, "resampled": sweep.resampled}, info

    @staticmethod
    def trace_entry(sweep):
        """What the run's trace keeps of a step: evidence, ESS, resampling flags, filtering means."""
        return {"log_evidence": sweep.log_evidence, "ess": sweep.ess, "resampled": sweep.resampled,
                "filtering_mean": core.weighted_mean(sweep.log_weights, sweep.x),
                "finite": torch.isfinite(sweep.log_evidence).all()}

    def state_dict(self, state):
        return _sweep_dict(state)

    def load_state(self, target, saved):
        return _sweep_from(saved)

    def finite_values(self, state, target):
        return None, None

    def to_posterior(self, state, target, trace, meta):
        samples = {"x": state.x}
        meta = {**meta, "log_evidence": state.log_evidence.tolist(), "sample_kind": "particles"}
        if state.stats is not None:
            samples["functional"] = state.stats
            meta["estimate"] = state.estimate().tolist()
        return Posterior(samples, log_weights=state.log_weights, trace=trace, meta=meta,
                         observed_data={"y": target.y}, dims={"x": ["state"]})


class PaRIS(ParticleFilter):
    r"""Online smoothing of an additive functional by PaRIS (Olsson and Westerborn 2017).

    Estimates :math:`E[\sum_t \tilde h_t(x_{t-1}, x_t) \mid y_{0:T-1}]` for a
    user ``functional(t, x_prev, x)`` (see :mod:`bayeskit.inference.smc.functionals`
    for sums of states, lag-one cross products and all smoothed means) in
    ``O(N)`` memory, online, with ``num_backward`` (:math:`\tilde N`, 2 by
    default; 1 degenerates) backward draws per particle. ``backward="reject"``
    uses accept-reject with the model's transition bound and an exact
    fallback; ``"exact"`` draws from the full ``N x N`` kernel (fastest on a
    GPU); ``"auto"`` picks accept-reject on the CPU when a bound exists.

    The posterior adds ``samples["functional"]`` ``(R, N, *shape)``, the
    per-particle statistics :math:`\tau_T^i`, whose weighted mean per chain is
    the estimate, also in ``meta["estimate"]`` (a nested list ``(R, *shape)``).
    """

    name = "paris"

    def __init__(self, model, functional, *, num_particles: int = 1000, num_chains: int = 1, num_backward: int = 2,
                 backward: str = "auto", proposal=None, resampling: str = "systematic", ess_threshold: float = 0.5):
        super().__init__(model, num_particles=num_particles, num_chains=num_chains, proposal=proposal,
                         resampling=resampling, ess_threshold=ess_threshold)
        if functional is None:
            raise TypeError("PaRIS needs a functional(t, x_prev, x); for filtering alone use ParticleFilter")
        core.check_settings(num_particles, num_backward, resampling, ess_threshold, backward, functional)
        self.functional, self.num_backward, self.backward = functional, num_backward, backward

    def settings(self, problem):
        return {**super().settings(problem), "num_backward": self.num_backward, "backward": self.backward}


class ParticleGibbs(Engine):
    r"""PaRIS particle Gibbs (PPG; Cardoso, Janati El Idrissi, Le Corff, Moulines and Olsson 2023).

    Each iteration runs conditional PaRIS: a particle filter in which the last
    particle is pinned to a reference trajectory, with the PaRIS statistics of
    every particle updated from backward draws. It yields the estimate
    :math:`\Pi_k(h) = \sum_i W_T^i \tau_T^i` and a new reference, drawn by
    walking back the backward indices from a final particle drawn by weight:
    a Markov kernel that leaves the smoothing law invariant. The
    bias-reduced roll-out estimator averages the iterations after the first ``num_warmup``,

    .. math:: \widehat{\Pi}_{k_0:k}(h) = \frac{1}{k - k_0} \sum_{l = k_0 + 1}^{k} \Pi_l(h),

    whose bias decays geometrically in ``k0`` (PaRIS alone is biased at
    fixed N). ``run(y, num_steps=k)`` runs ``k`` iterations of ``num_chains`` chains in one batch, the first
    reference coming from an unconditional PaRIS sweep. The posterior holds the
    references ``samples["x"]`` ``(R, k, T, state_dim)`` (a Markov chain on
    trajectories, so r_hat and ESS apply), ``sample_stats["functional"]`` the
    :math:`\Pi_l(h)`, ``meta["estimate"]`` the roll-out estimate per replicate,
    and ``trace["update_rate"]``, the fraction of times at which the reference
    moved.
    """

    name = "particle_gibbs"

    def __init__(self, model, functional=None, *, num_particles: int = 100, num_chains: int = 1,
                 num_backward: int = 2, backward: str = "auto", num_warmup: int | None = None):
        check_model(model)
        core.check_settings(num_particles, num_backward, "multinomial", 0.5, backward, functional)
        super().__init__(model)
        self.model, self.functional, self.num_particles = model, functional, num_particles
        self.num_backward, self.backward = num_backward, backward
        #: Iterations left out of the roll-out estimate (None: a tenth of them).
        self.num_warmup = positive_int("num_warmup", num_warmup, minimum=0, allow_none=True)
        self.num_chains = positive_int("num_chains", num_chains)

    def settings(self, problem):
        return {"num_particles": self.num_particles, "num_chains": self.num_chains,
                "num_backward": self.num_backward, "backward": self.backward, "num_warmup": self.num_warmup,
                "model": type(self.model).__name__}

    def run(self, y, *, num_steps: int = 100, seed: int | None = None,
            progress: bool = True, callback=None, checkpoint=None, checkpoint_every: int = 100,
            resume: bool = False) -> Posterior:
        """``num_steps`` Gibbs iterations on ``y`` ``(T, obs_dim)``, ``num_chains`` chains in one batch."""
        y = observations_for(self.model, y)
        return super().run(y, num_steps=num_steps, seed=seed, progress=progress, callback=callback,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)

    def target(self, y):
        return _Observations(self.model, y)

    def _sweep(self, y, reference):
        return core.sweep(self.model, y, self.num_chains, self.num_particles, functional=self.functional,
                          reference=reference, record=True, num_backward=self.num_backward,
                          backward=self.backward)

    def init(self, target, generator):
        with torch.no_grad():
            reference = core.backward_trajectory(self._sweep(target.y, None))
        return {"reference": reference, "draws": core.PersistentLog(), "estimates": core.PersistentLog()}

    def step(self, state, target, generator):
        with torch.no_grad():
            sweep = self._sweep(target.y, state["reference"])
            reference = core.backward_trajectory(sweep)
        moved = (reference != state["reference"]).any(-1).to(reference.dtype).mean(-1)
        # Persistent logs: the new state shares the old one's draws and never changes them.
        draws = state["draws"].append(reference)
        estimates = state["estimates"]
        if self.functional is not None:
            estimates = estimates.append(sweep.estimate())
        finite = torch.isfinite(sweep.log_weights).any(-1).all()
        return {"reference": reference, "draws": draws, "estimates": estimates}, {"update_rate": moved,
                                                                                   "finite": finite}

    def state_dict(self, state):
        return {"reference": state["reference"], "draws": list(state["draws"]),
                "estimates": list(state["estimates"])}

    def load_state(self, target, saved):
        return {"reference": saved["reference"], "draws": core.PersistentLog.of(saved["draws"]),
                "estimates": core.PersistentLog.of(saved["estimates"])}

    def finite_values(self, state, target):
        return None, None

    def to_posterior(self, state, target, trace, meta):
        draws = list(state["draws"]) or [state["reference"]]
        samples = {"x": torch.stack(draws, 1)}
        num_warmup = self.num_warmup if self.num_warmup is not None else len(draws) // 10
        num_warmup = min(num_warmup, len(draws) - 1)
        meta = {**meta, "num_warmup": num_warmup, "sample_kind": "trajectories"}
        stats = {}
        if state["estimates"]:
            values = torch.stack(list(state["estimates"]), 1)
            stats["functional"] = values
            meta["estimate"] = values[:, num_warmup:].mean(1).tolist()
        return Posterior(samples, sample_stats=stats, trace=trace, meta=meta, observed_data={"y": target.y},
                         dims={"x": ["time", "state"]})
