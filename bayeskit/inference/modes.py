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
from bayeskit.runner import progress_enabled, target_of
from bayeskit.target import Target

__all__ = ["Modes", "find_modes"]


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

    def starts(self, num: int, *, within: float | None = None, jitter: float = 0.1, seed: int = 0):
        """``num`` starting points for an engine's ``init=``, as constrained site values.

        The modes within ``within`` nats of the best (all of them by default)
        are taken in turn, best first, and every point but the first is moved
        by N(0, ``jitter``^2) in unconstrained space: restarts often land on
        the same mode, and particle methods need distinct points (identical
        SVGD particles never separate).
        """
        if isinstance(num, bool) or not isinstance(num, int) or num < 1:
            raise ValueError(f"num must be an int >= 1, got {num!r}")
        keep = len(self.points) if within is None else int((self.log_density >= self.log_density[0] - within).sum())
        index = torch.arange(num) % keep
        noise = torch.randn(num, self.points.shape[-1], generator=torch.Generator().manual_seed(seed))
        noise[0] = 0.0
        noise = noise.to(self.points) * jitter
        return self.target.constrain(self.points[index] + noise)


def find_modes(model_or_target, *model_args, num_restarts: int = 32, num_steps: int = 500, lr: float = 0.05,
               num_points: int | None = None, seed: int = 0, progress: bool = True, **model_kwargs) -> Modes:
    """Maximise the log posterior density from ``num_restarts`` prior draws with Adam; keep the best.

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
    seed : int
        Seeds the starting draws and any minibatches.
    progress : bool
        A progress bar (off under ``CI``), as for every engine.
    """
    positive_int("num_restarts", num_restarts)
    positive_int("num_steps", num_steps)
    if num_points is not None and not 1 <= num_points <= num_restarts:
        raise ValueError(f"num_points must lie in 1..num_restarts={num_restarts}, got {num_points!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    target = target_of(model_or_target, *model_args, **model_kwargs)
    from tqdm.auto import tqdm

    with torch.random.fork_rng(devices=[target.device] if target.device.type == "cuda" else []):
        torch.manual_seed(seed)
        points = target.init(num_restarts, torch.Generator().manual_seed(seed)).detach().clone()
        points.requires_grad_(True)
        optimizer = torch.optim.Adam([points], lr=lr)
        for _ in tqdm(range(num_steps), desc="find_modes", disable=not progress_enabled(progress)):
            _, score = target.log_prob_and_score(points.detach())
            # A start that left the finite region stops moving; it is dropped at the end.
            points.grad = -torch.where(torch.isfinite(score), score, torch.zeros_like(score))
            optimizer.step()
        log_density, _ = target.log_prob_and_score(points.detach())
    finite = torch.isfinite(log_density) & torch.isfinite(points.detach()).all(-1)
    if not finite.any():
        raise FloatingPointError("every start reached a non-finite log density; lower lr or check the model")
    order = torch.argsort(torch.where(finite, log_density, torch.full_like(log_density, -torch.inf)),
                          descending=True)[: int(finite.sum())]
    order = order[:num_points] if num_points is not None else order
    best = points.detach()[order]
    return Modes(values=target.constrain(best), points=best, log_density=log_density[order], target=target)
