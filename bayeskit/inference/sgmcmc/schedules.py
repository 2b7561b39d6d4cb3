"""Step-size schedules for SG-MCMC, laid out in advance as a :class:`Plan`.

A schedule turns ``(step_size, num_warmup, num_samples, thin)`` into a plan
over every step of the run: the step size, whether Gaussian noise is
injected (the exploration phase of cyclical SG-MCMC runs without it) and
whether the new state is kept as a draw.  Plans are tensors fixed by the
settings alone, so checkpoints need not store them and a resumed run follows
the same plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["Plan", "ConstantSchedule", "PolynomialDecay", "CyclicalSchedule", "make_schedule"]


@dataclass(frozen=True)
class Plan:
    """Per-step step sizes ``(K,)`` (float64), noise flags ``(K,)`` and draw flags ``(K,)``."""

    step_sizes: torch.Tensor
    noise: torch.Tensor
    collect: torch.Tensor

    @property
    def num_steps(self) -> int:
        return len(self.step_sizes)

    @property
    def num_draws(self) -> int:
        return int(self.collect.sum())


def _warmup_then_sample(step_sizes, num_warmup, thin):
    """Noise everywhere; keep every ``thin``-th state after warm-up."""
    steps = torch.arange(1, len(step_sizes) + 1)
    collect = (steps > num_warmup) & ((steps - num_warmup) % thin == 0)
    return Plan(step_sizes, torch.ones(len(step_sizes), dtype=torch.bool), collect)


@dataclass(frozen=True)
class ConstantSchedule:
    """The same step size throughout; draws after ``num_warmup`` steps, every ``thin``-th."""

    def plan(self, step_size, num_warmup, num_samples, thin) -> Plan:
        num_steps = num_warmup + num_samples * thin
        return _warmup_then_sample(torch.full((num_steps,), float(step_size), dtype=torch.float64),
                                   num_warmup, thin)

    def settings(self):
        return {"schedule": "constant"}


@dataclass(frozen=True)
class PolynomialDecay:
    """``epsilon_t = epsilon_0 (1 + t / b)^(-gamma)`` (Welling and Teh, 2011; ``gamma`` in (0.5, 1]).

    The decaying step sizes satisfy Robbins-Monro conditions, so SGLD's
    discretisation bias vanishes; ``b`` (``decay_steps``) sets when the decay
    starts to bite.
    """

    gamma: float = 0.55
    decay_steps: float = 1000.0

    def __post_init__(self):
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must lie in (0, 1], got {self.gamma!r}")
        if not self.decay_steps > 0:
            raise ValueError(f"decay_steps must be positive, got {self.decay_steps!r}")

    def plan(self, step_size, num_warmup, num_samples, thin) -> Plan:
        t = torch.arange(num_warmup + num_samples * thin, dtype=torch.float64)
        return _warmup_then_sample(step_size * (1 + t / self.decay_steps) ** -self.gamma, num_warmup, thin)

    def settings(self):
        return {"schedule": "polynomial", "gamma": self.gamma, "decay_steps": self.decay_steps}


@dataclass(frozen=True)
class CyclicalSchedule:
    """Cyclical SG-MCMC (Zhang, Li, Zhang, Chen, Wilson, ICLR 2020).

    The run is ``num_cycles`` cycles of length ``L``; within a cycle the step
    size follows a cosine from ``epsilon_0`` down to 0,

    .. math:: \\epsilon_k = \\frac{\\epsilon_0}{2}
              \\Big[\\cos\\Big(\\frac{\\pi\\, \\mathrm{mod}(k - 1, L)}{L}\\Big) + 1\\Big],

    the first ``explore_fraction`` of each cycle runs without noise
    (exploration: stochastic gradient ascent towards a mode) and the rest
    samples, keeping every ``thin``-th state.  Each cycle yields
    ``num_samples / num_cycles`` draws, so ``L`` is chosen from them:
    ``L = ceil(thin * num_samples / num_cycles / (1 - explore_fraction))``.
    ``num_warmup`` constant-step noisy steps may precede the cycles (0 by
    default in the paper).
    """

    num_cycles: int = 4
    explore_fraction: float = 0.5

    def __post_init__(self):
        if not isinstance(self.num_cycles, int) or self.num_cycles < 1:
            raise ValueError(f"num_cycles must be a positive int, got {self.num_cycles!r}")
        if not 0 <= self.explore_fraction < 1:
            raise ValueError(f"explore_fraction must lie in [0, 1), got {self.explore_fraction!r}")

    def plan(self, step_size, num_warmup, num_samples, thin) -> Plan:
        if num_samples % self.num_cycles:
            raise ValueError(f"num_samples ({num_samples}) must be a multiple of num_cycles "
                             f"({self.num_cycles}): each cycle yields the same number of draws")
        sampling_steps = thin * num_samples // self.num_cycles
        length = math.ceil(sampling_steps / (1 - self.explore_fraction))
        k = torch.arange(length, dtype=torch.float64)
        cycle_sizes = 0.5 * step_size * (torch.cos(math.pi * k / length) + 1)
        explore_steps = length - sampling_steps
        sampling = torch.arange(length) >= explore_steps
        cycle_collect = sampling & ((torch.arange(length) - explore_steps + 1) % thin == 0)
        warmup = torch.full((num_warmup,), float(step_size), dtype=torch.float64)
        return Plan(
            torch.cat([warmup, cycle_sizes.repeat(self.num_cycles)]),
            torch.cat([torch.ones(num_warmup, dtype=torch.bool), sampling.repeat(self.num_cycles)]),
            torch.cat([torch.zeros(num_warmup, dtype=torch.bool), cycle_collect.repeat(self.num_cycles)]),
        )

    def settings(self):
        return {"schedule": "cyclical", "num_cycles": self.num_cycles, "explore_fraction": self.explore_fraction}


_SCHEDULES = {"constant": ConstantSchedule, "polynomial": PolynomialDecay, "cyclical": CyclicalSchedule}


def make_schedule(schedule):
    """A schedule from a name (``"constant"``, ``"polynomial"``, ``"cyclical"``) or an instance."""
    if isinstance(schedule, str):
        if schedule not in _SCHEDULES:
            raise ValueError(f"unknown schedule {schedule!r}; choose one of {sorted(_SCHEDULES)} "
                             "or pass a schedule object")
        return _SCHEDULES[schedule]()
    if not hasattr(schedule, "plan"):
        raise TypeError(f"schedule must be a name or an object with plan(), got {schedule!r}")
    return schedule
