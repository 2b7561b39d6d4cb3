r"""Additive functionals :math:`h_{0:T} = \sum_t \tilde h_t(x_{t-1}, x_t)` for PaRIS and particle Gibbs.

A functional is any callable ``h(t, x_prev, x)`` returning ``(R, M, *shape)``
for particles ``x`` ``(R, M, d)``; at ``t = 0`` it is called with
``x_prev=None`` and returns the initial term :math:`\tilde h_0(x_0)`.
"""

from __future__ import annotations

import torch

__all__ = ["state_sum", "cross_sum", "smoothed_states"]


def state_sum():
    r""":math:`\sum_t x_t`, shape ``(d,)``."""
    def h(t, x_prev, x):
        return x
    return h


def cross_sum():
    r""":math:`\sum_{t \ge 1} x_{t-1} x_t^\top`, shape ``(d, d)``: with :func:`state_sum`, the EM statistics
    of a linear Gaussian model."""
    def h(t, x_prev, x):
        if x_prev is None:
            return torch.zeros(*x.shape, x.shape[-1], dtype=x.dtype, device=x.device)
        return x_prev.unsqueeze(-1) * x.unsqueeze(-2)
    return h


def smoothed_states(num_steps: int):
    r"""Every marginal :math:`x_t` at once, shape ``(T, d)``: its estimate is the smoothed means
    :math:`E[x_t \mid y_{0:T-1}]`. Costs ``O(T)`` memory per particle."""
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")

    def h(t, x_prev, x):
        value = torch.zeros(*x.shape[:-1], num_steps, x.shape[-1], dtype=x.dtype, device=x.device)
        value[..., t, :] = x
        return value
    return h
