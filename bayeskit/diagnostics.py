"""Sample-quality diagnostics: KSD, energy distance, weighted ESS, IAD, r_hat and ESS.

All functions take torch tensors on any device; ``rhat`` and ``ess`` go
through arviz-stats so that they agree with ArviZ's tables.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["kernel_stein_discrepancy", "energy_distance", "weighted_ess", "integrated_absolute_distance",
           "rhat", "ess"]


def _uniform_weights(x):
    n = x.shape[-2]
    return torch.full(x.shape[:-1], 1.0 / n, dtype=x.dtype, device=x.device)


def kernel_stein_discrepancy(x, score, *, weights=None, c=1.0, beta=-0.5, lengthscale=1.0):
    """Kernel Stein discrepancy with the inverse multiquadric kernel.

    Gorham and Mackey (2017), "Measuring Sample Quality with Kernels", ICML.
    With ``k(x, y) = (c^2 + |x - y|^2 / l^2)^beta`` and the Langevin Stein kernel

    .. math::

        k_p(x, y) = s(x)^\\top s(y)\\, k + s(x)^\\top \\nabla_y k + s(y)^\\top \\nabla_x k
                    + \\operatorname{tr} \\nabla_x \\nabla_y k,

    it returns ``sqrt(sum_ij w_i w_j k_p(x_i, x_j))`` (the V-statistic), which
    needs only the target's score ``s = ∇ log p``, not its normaliser.

    Parameters
    ----------
    x, score : Tensor
        ``(..., n, d)`` points and the target's score at them.
    weights : Tensor, optional
        ``(..., n)`` normalised weights; uniform by default.
    """
    if x.shape != score.shape:
        raise ValueError(f"x and score must have the same shape, got {tuple(x.shape)} and {tuple(score.shape)}")
    if not -1 < beta < 0:
        raise ValueError(f"beta must lie in (-1, 0), got {beta}")
    w = _uniform_weights(x) if weights is None else weights.to(x)
    d = x.shape[-1]
    ell2 = lengthscale**2
    sq = (x.unsqueeze(-2) - x.unsqueeze(-3)).pow(2).sum(-1)  # |x_i - x_j|^2
    u = c**2 + sq / ell2
    k = u.pow(beta)
    g = 2 * beta / ell2 * u.pow(beta - 1)  # grad_x k = g (x - y)
    trace = -2 * beta / ell2 * (2 * (beta - 1) * u.pow(beta - 2) * sq / ell2 + d * u.pow(beta - 1))
    # (s_j - s_i)^T (x_i - x_j) from inner products, no (n, n, d) tensor of differences
    sx = score @ x.transpose(-1, -2)  # sx[i, j] = s_i^T x_j
    own = sx.diagonal(dim1=-2, dim2=-1)
    cross = sx.transpose(-1, -2) - own.unsqueeze(-2) - own.unsqueeze(-1) + sx
    stein = k * (score @ score.transpose(-1, -2)) + g * cross + trace
    value = (w.unsqueeze(-1) * w.unsqueeze(-2) * stein).sum((-1, -2))
    return value.clamp_min(0).sqrt()


def energy_distance(x, y, *, weights_x=None, weights_y=None):
    """Squared energy distance ``2 E|X - Y| - E|X - X'| - E|Y - Y'|`` (V-statistic).

    Székely and Rizzo (2013). ``x`` is ``(n, d)``, ``y`` is ``(m, d)``
    (1-D inputs are treated as ``d = 1``); optional weights are normalised here.
    """
    x, y = _as_points(x), _as_points(y).to(x)
    wx = _normalised(weights_x, x)
    wy = _normalised(weights_y, y)
    between = wx @ torch.cdist(x, y) @ wy
    within_x = wx @ torch.cdist(x, x) @ wx
    within_y = wy @ torch.cdist(y, y) @ wy
    return 2 * between - within_x - within_y


def _as_points(x):
    x = torch.as_tensor(x)
    return x[:, None] if x.dim() == 1 else x


def _normalised(weights, x):
    if weights is None:
        return torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype, device=x.device)
    weights = torch.as_tensor(weights).to(x)
    if weights.shape != (x.shape[0],) or (weights < 0).any():
        raise ValueError(f"weights must be non-negative with shape ({x.shape[0]},)")
    return weights / weights.sum()


def weighted_ess(log_weights, dim=-1):
    """Kish's effective sample size ``(sum w)^2 / sum w^2`` along ``dim``, from log weights."""
    log_weights = torch.as_tensor(log_weights)
    return torch.exp(2 * torch.logsumexp(log_weights, dim) - torch.logsumexp(2 * log_weights, dim))


def integrated_absolute_distance(x, y, *, bandwidth=None, grid_size=2048):
    """Integrated absolute distance between two samples, marginal by marginal.

    As in Chan, Pollock, Johansen and Roberts (2023, Divide-and-conquer
    Fusion): ``IAD = 1/(2d) sum_j ∫ |f_j - g_j|`` with ``f_j, g_j`` Gaussian
    kernel density estimates of the j-th marginals (Silverman's bandwidth
    unless given). It lies in [0, 1]; 0 for identical marginals.
    """
    x, y = _as_points(x).double().cpu(), _as_points(y).double().cpu()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    total = 0.0
    for j in range(x.shape[1]):
        hx, hy = (bandwidth, bandwidth) if bandwidth else (_silverman(x[:, j]), _silverman(y[:, j]))
        low = min(x[:, j].min() - 5 * hx, y[:, j].min() - 5 * hy)
        high = max(x[:, j].max() + 5 * hx, y[:, j].max() + 5 * hy)
        grid = torch.linspace(float(low), float(high), grid_size, dtype=torch.float64)
        gap = (_kde(x[:, j], hx, grid) - _kde(y[:, j], hy, grid)).abs()
        total += float(torch.trapezoid(gap, grid))
    return total / (2 * x.shape[1])


def _silverman(v):
    iqr = float(torch.quantile(v, 0.75) - torch.quantile(v, 0.25))
    spread = min(float(v.std()), iqr / 1.349) if iqr > 0 else float(v.std())
    return 0.9 * spread * len(v) ** (-0.2) or 1e-3


def _kde(points, bandwidth, grid, chunk=4096):
    density = torch.zeros_like(grid)
    for start in range(0, len(points), chunk):
        z = (grid[:, None] - points[None, start:start + chunk]) / bandwidth
        density += torch.exp(-0.5 * z**2).sum(1)
    return density / (len(points) * bandwidth * math.sqrt(2 * math.pi))


def _chain_draw_array(samples):
    array = samples.detach().cpu().numpy() if isinstance(samples, torch.Tensor) else np.asarray(samples)
    if array.ndim < 2:
        raise ValueError(f"samples must have shape (chain, draw, ...), got {array.shape}")
    return array


def rhat(samples, method="rank"):
    """Split-R-hat (rank-normalised by default, Vehtari et al. 2021) of ``(chain, draw, ...)`` draws."""
    from arviz_stats.base import array_stats

    return torch.as_tensor(array_stats.rhat(_chain_draw_array(samples), chain_axis=0, draw_axis=1, method=method))


def ess(samples, method="bulk", prob=None):
    """Effective sample size (``bulk`` or ``tail``, Vehtari et al. 2021) of ``(chain, draw, ...)`` draws.

    ``tail`` uses the 5% and 95% quantiles unless ``prob`` says otherwise.
    """
    from arviz_stats.base import array_stats

    if method == "tail" and prob is None:
        prob = (0.05, 0.95)
    return torch.as_tensor(array_stats.ess(_chain_draw_array(samples), chain_axis=0, draw_axis=1,
                                           method=method, prob=prob))
