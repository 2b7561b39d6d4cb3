r"""Pure optimisers in the style of optax's transformations, for the Stein engines and :class:`~bayeskit.runner.Fit`.

An optimiser holds only its hyperparameters; the state it updates is a dict
of tensors that the caller keeps (in :class:`~bayeskit.inference.stein.core.SVGDState`,
or per parameter in a :class:`~bayeskit.runner.Fit` state):

- ``init(params) -> state``: the starting state for parameters ``params``;
- ``update(grad, state, params) -> (new_params, new_state)``: one step that
  moves ``params`` against ``grad``, the gradient of a loss to decrease
  (torch.optim's and optax's convention: the Stein steps pass :math:`-\phi`
  to ascend along :math:`\phi`). It returns new tensors and leaves its
  inputs unchanged, so a state can be kept, compared or resumed from.

Any object with these two methods drives the Stein engines and ``Fit`` (``optimizer=``).
:class:`SGD`, :class:`Adagrad`, :class:`Adam` and :class:`RMSprop` follow
torch.optim's update formulas and defaults, operation for operation, so
that they agree with torch.optim to the last bits (``tests/test_optim.py``).
A ``torch.optim.Optimizer`` updates its parameters in place and keeps its
state inside itself, which a pure step cannot hold, so it is refused with a
message that shows how to write its pure twin. :class:`Adam`'s learning rate
may be a schedule, a function of the update count (optax's schedules).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

__all__ = ["PureOptimizer", "SGD", "Adagrad", "Adam", "RMSprop", "make_optimizer"]

OptState = dict[str, torch.Tensor]


@runtime_checkable
class PureOptimizer(Protocol):
    """``init(params) -> state`` and ``update(grad, state, params) -> (new_params, new_state)``; see the module."""

    def init(self, params: torch.Tensor) -> OptState: ...

    def update(self, grad: torch.Tensor, state: OptState, params: torch.Tensor) -> tuple[torch.Tensor, OptState]: ...


def step_count() -> torch.Tensor:
    """A step count of 0, kept on the CPU as torch.optim keeps its own: reading it never waits for the device."""
    return torch.zeros((), dtype=torch.int64)


@dataclass(frozen=True)
class SGD:
    r"""Plain gradient descent: :math:`x \leftarrow x - \mathrm{lr}\, g`. Its state is empty."""

    lr: float

    def init(self, params):
        return {}

    def update(self, grad, state, params):
        return torch.add(params, grad, alpha=-self.lr), {}


@dataclass(frozen=True)
class Adagrad:
    r"""Adagrad (Duchi, Hazan and Singer 2011) with torch.optim's defaults (no learning-rate decay, sum from 0).

    .. math::

        s \leftarrow s + g^2, \qquad x \leftarrow x - \mathrm{lr}\, \frac{g}{\sqrt{s} + \epsilon}.
    """

    lr: float
    eps: float = 1e-10

    def init(self, params):
        return {"sum": torch.zeros_like(params)}

    def update(self, grad, state, params):
        total = torch.addcmul(state["sum"], grad, grad)
        return torch.addcdiv(params, grad, total.sqrt() + self.eps, value=-self.lr), {"sum": total}


@dataclass(frozen=True)
class Adam:
    r"""Adam (Kingma and Ba 2015) with torch.optim's defaults and bias correction.

    At step :math:`t = 1, 2, \dots`

    .. math::

        m \leftarrow m + (1 - \beta_1)(g - m), \qquad v \leftarrow \beta_2 v + (1 - \beta_2)\, g^2,

        x \leftarrow x - \frac{\mathrm{lr}_t}{1 - \beta_1^t}\,
            \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}.

    ``lr`` is a number or a schedule ``lr(t) -> float`` of the update count
    :math:`t = 1, 2, \dots` (a step decay, a warm-up), as torch's schedulers
    set a group's rate before each step.
    """

    lr: float | Callable[[int], float]
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def init(self, params):
        return {"step": step_count(), "exp_avg": torch.zeros_like(params),
                "exp_avg_sq": torch.zeros_like(params)}

    def update(self, grad, state, params):
        beta1, beta2 = self.betas
        step = state["step"] + 1
        t = int(step)  # a CPU tensor: no device sync
        exp_avg = torch.lerp(state["exp_avg"], grad, 1 - beta1)
        exp_avg_sq = torch.addcmul(state["exp_avg_sq"] * beta2, grad, grad, value=1 - beta2)
        # The corrections in Python floats, in torch's order, so that the rounding is torch's.
        rate = self.lr(t) if callable(self.lr) else self.lr
        step_size = rate / (1 - beta1**t)
        denominator = exp_avg_sq.sqrt() / (1 - beta2**t) ** 0.5 + self.eps
        new_params = torch.addcdiv(params, exp_avg, denominator, value=-step_size)
        return new_params, {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}


@dataclass(frozen=True)
class RMSprop:
    r"""RMSprop with TensorFlow's decay (0.9) and epsilon (1e-7), the setting of the mirrored-Stein paper.

    .. math::

        v \leftarrow \alpha v + (1 - \alpha)\, g^2, \qquad x \leftarrow x - \mathrm{lr}\, \frac{g}{\sqrt{v} + \epsilon}

    (torch.optim's formula, not centred, no momentum). torch's default decay
    of 0.99 makes the first steps about three times as long (the average of
    squared gradients starts at zero), which throws particles far past a
    nearby boundary.
    """

    lr: float
    alpha: float = 0.9
    eps: float = 1e-7

    def init(self, params):
        return {"square_avg": torch.zeros_like(params)}

    def update(self, grad, state, params):
        square_avg = torch.addcmul(state["square_avg"] * self.alpha, grad, grad, value=1 - self.alpha)
        return torch.addcdiv(params, grad, square_avg.sqrt() + self.eps, value=-self.lr), {"square_avg": square_avg}


_OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "adam": Adam, "rmsprop": RMSprop}

_HOW_TO_WRITE_ONE = (
    "an object with init(params) -> dict of tensors and update(grad, state, params) -> (new_params, new_state) "
    "that returns new tensors, e.g. bayeskit.optim.Adam(lr=0.01), or your own:\n"
    "    class Momentum:\n"
    "        def init(self, params): return {'velocity': torch.zeros_like(params)}\n"
    "        def update(self, grad, state, params):\n"
    "            velocity = 0.9 * state['velocity'] + grad\n"
    "            return params - 0.01 * velocity, {'velocity': velocity}"
)


def make_optimizer(optimizer, lr) -> PureOptimizer:
    """The pure optimiser for ``optimizer``: a name (built with ``lr``) or an object with ``init`` and ``update``.

    Names: ``"sgd"``, ``"adagrad"``, ``"adam"``, ``"rmsprop"`` (:class:`RMSprop`'s
    TensorFlow-like decay). A pure optimiser object is used as it is (its own
    learning rate; ``lr`` is not applied). A ``torch.optim.Optimizer`` class,
    instance or factory is refused: it updates tensors in place.
    """
    if isinstance(optimizer, str):
        if optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(_OPTIMIZERS)} or pass "
                             f"a pure optimiser: {_HOW_TO_WRITE_ONE}")
        return _OPTIMIZERS[optimizer.lower()](lr=lr)
    if isinstance(optimizer, torch.optim.Optimizer) or (
            isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer)):
        raise TypeError(f"optimizer={getattr(optimizer, '__name__', type(optimizer).__name__)}: a torch.optim "
                        "optimizer updates its parameters in place, and the engines' states are pure; pass a name "
                        f"({', '.join(sorted(_OPTIMIZERS))}) or {_HOW_TO_WRITE_ONE}")
    if isinstance(optimizer, PureOptimizer) and not isinstance(optimizer, type):
        return optimizer
    raise TypeError(f"optimizer must be a name ({', '.join(sorted(_OPTIMIZERS))}) or a pure optimiser, "
                    f"{_HOW_TO_WRITE_ONE}; got {optimizer!r}")
