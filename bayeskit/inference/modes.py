"""Posterior modes from many random starts, optimised together: starting points for multimodal models.

Mixtures, mixtures of experts and neural networks have posteriors with many
poor local modes besides the label-switching copies of the good ones. A
sampler started from prior draws spends its budget escaping them (or never
does); started from the best of many short maximum a posteriori runs it
explores the mode that matters. All starts are one ``(restarts, dim)`` batch,
so each optimisation step is a single batched :class:`~bayeskit.Target` call.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bayeskit._checks import positive_int
from bayeskit.optim import Adam
from bayeskit.parallel import resolve_seed
from bayeskit.posterior import Posterior
from bayeskit.runner import run_loop, target_of
from bayeskit.target import Target

__all__ = ["Modes", "ModeSearch", "find_modes"]


@dataclass
class Modes:
    """The best points found, best first.

    ``values`` maps each site to its constrained values ``(num_points, *shape)``
    (what the engines' ``init=`` takes), ``points`` are the same points
    unconstrained ``(num_points, dim)``, and ``log_density`` their
    unnormalised log posterior density in unconstrained space.
    """

    values: dict[str, torch.Tensor]
    points: torch.Tensor
    log_density: torch.Tensor
    target: Target = field(repr=False)
    meta: dict = field(default_factory=dict, repr=False)
    trace: dict = field(default_factory=dict, repr=False)

    def starts(self, num: int, *, within: float | None = None, jitter: float = 0.1, seed: int | None = None):
        """``num`` starting points for an engine's ``init=``, as constrained site values.

        The modes within ``within`` nats of the best (all of them by default)
        are taken in turn, best first, and every point but the first is moved
        by N(0, ``jitter``^2) in unconstrained space: restarts often land on
        the same mode, and particle methods need distinct points (identical
        SVGD particles never separate). ``seed`` seeds the jitter (None draws
        one from torch's global RNG).
        """
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an int >= 1, got {num!r}")
        keep = len(self.points) if within is None else int((self.log_density >= self.log_density[0] - within).sum())
        index = torch.arange(num) % keep
        noise = torch.randn(num, self.points.shape[-1], generator=torch.Generator().manual_seed(resolve_seed(seed)))
        noise[0] = 0.0
        noise = noise.to(self.points) * jitter
        return self.target.constrain(self.points[index] + noise)


def find_modes(model_or_target, *model_args, num_restarts: int = 32, num_steps: int = 500, lr: float = 0.05,
               num_points: int | None = None, seed: int | None = None, progress: bool = True, callback=None,
               checkpoint=None, checkpoint_every: int = 100, resume: bool = False, **model_kwargs) -> Modes:
    """Maximise the log posterior density from ``num_restarts`` prior draws with Adam; keep the best.

    The search runs on the one loop (:func:`bayeskit.runner.run_loop`), so it
    has the engines' seed, progress bar, trace (``trace["best_log_prob"]``),
    callback and checkpoints; ``Modes.meta`` holds the run's ``meta``.

    Parameters
    ----------
    model_or_target : Pyro model or Target
        A model is conditioned on ``*model_args, **model_kwargs``.
    num_restarts : int
        Random starts, optimised as one batch.
    num_steps : int
        Adam steps (a fixed budget: the best points matter, not convergence of all).
    lr : float
        Adam's learning rate in unconstrained space.
    num_points : int, optional
        How many of the best points to return (all finite ones by default).
    seed : int, optional
        Seeds the starting draws and any minibatches; None draws one (``Modes.meta["seed"]``).
    progress, callback, checkpoint, checkpoint_every, resume
        As for every engine's ``run``.
    """
    positive_int("num_restarts", num_restarts)
    if num_points is not None and not 1 <= num_points <= num_restarts:
        raise ValueError(f"num_points must lie in 1..num_restarts={num_restarts}, got {num_points!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    target = target_of(model_or_target, *model_args, **model_kwargs)
    search = ModeSearch(num_restarts, lr)
    result = run_loop(search, target, num_steps=num_steps, seed=seed, progress=progress, callback=callback,
                      checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)
    points = target.unconstrain({name: value[0] for name, value in result.samples.items()}).to(target.device)
    log_density, _ = target.log_prob_and_score(points)
    finite = torch.isfinite(log_density) & torch.isfinite(points).all(-1)
    if not finite.any():
        raise FloatingPointError("every start reached a non-finite log density; lower lr or check the model")
    order = torch.argsort(torch.where(finite, log_density, torch.full_like(log_density, -torch.inf)),
                          descending=True)[: int(finite.sum())]
    order = order[:num_points] if num_points is not None else order
    best = points[order]
    return Modes(values=target.constrain(best), points=best, log_density=log_density[order], target=target,
                 meta=result.meta, trace=result.trace)


class ModeSearch:
    """Batched multi-start Adam ascent of the log density: the Algorithm behind :func:`find_modes`.

    The state is the ``(num_restarts, dim)`` points and Adam's moments, all
    tensors; a step returns new ones. A start whose score is not finite stops
    moving (its gradient is zeroed) and is dropped at the end, so the run
    stops as non-finite only when every start is.
    """

    name = "find_modes"

    def __init__(self, num_restarts: int, lr: float):
        self.num_restarts, self.lr, self.adam = num_restarts, lr, Adam(lr=lr)

    def settings(self, problem) -> dict:
        return {"num_restarts": self.num_restarts, "lr": self.lr, "optimizer": "adam"}

    def init(self, problem, generator):
        points = problem.init(self.num_restarts, generator).detach()
        return {"points": points, "adam": self.adam.init(points)}

    def step(self, state, problem, generator):
        log_prob, score = problem.log_prob_and_score(state["points"])
        ascent = torch.where(torch.isfinite(score), score, torch.zeros_like(score))
        points, adam = self.adam.update(-ascent, state["adam"], state["points"])
        finite = torch.isfinite(log_prob)
        best = torch.where(finite, log_prob, torch.full_like(log_prob, -torch.inf)).max()
        return {"points": points, "adam": adam}, {"best_log_prob": best, "finite": finite.any()}

    def state_dict(self, state) -> dict:
        return {"points": state["points"], "adam": dict(state["adam"])}

    def load_state(self, problem, saved):
        points = saved["points"].to(device=problem.device, dtype=problem.dtype)
        fresh = self.adam.init(points)  # says where each of Adam's tensors lives (its step count on the CPU)
        return {"points": points, "adam": {name: value.to(fresh[name]) for name, value in saved["adam"].items()}}

    def finite_values(self, state, problem):
        return state["points"], None

    def to_posterior(self, state, problem, trace, meta):
        values = {name: value.unsqueeze(0) for name, value in problem.constrain(state["points"]).items()}
        return Posterior(values, trace=trace, meta={**meta, "sample_kind": "modes"})
