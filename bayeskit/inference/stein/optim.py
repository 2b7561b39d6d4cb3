"""Optimisers for the Stein particles: a name, a ``torch.optim.Optimizer`` class or a factory."""

from __future__ import annotations

import torch

__all__ = ["make_optimizer"]


class _RMSprop(torch.optim.RMSprop):
    """RMSprop with TensorFlow's decay (0.9) and epsilon (1e-7), the setting of the mirrored-Stein paper.

    torch's default decay of 0.99 makes the first steps about three times as
    long (the average of squared gradients starts at zero), which throws
    particles far past a nearby boundary.
    """

    def __init__(self, params, lr):
        super().__init__(params, lr=lr, alpha=0.9, eps=1e-7)


_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": _RMSprop}


def make_optimizer(optimizer, lr):
    """A factory ``params -> torch.optim.Optimizer`` from a name, an Optimizer class or a factory."""
    if isinstance(optimizer, str):
        if optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(_OPTIMIZERS)}, "
                             "a torch.optim.Optimizer class or a callable params -> optimizer")
        optimizer = _OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
        return lambda params: cls(params, lr=lr)
    if callable(optimizer):
        return optimizer
    raise TypeError(f"optimizer must be a name, a torch.optim.Optimizer class or a callable, got {optimizer!r}")
