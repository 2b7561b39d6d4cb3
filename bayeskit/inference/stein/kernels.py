"""Radial kernels for Stein methods, batched over independent particle sets.

Both kernels are functions of the squared distance, ``k(x, y) = f(r^2)`` with
``r = |x - y|``, so the SVGD repulsion needs only ``f'``:

.. math::

    \\sum_j \\nabla_{x_j} k(x_j, x_i) = 2 \\sum_j f'(r_{ij}^2)\\,(x_j - x_i).

Each kernel takes particles ``x`` of shape ``(..., n, d)`` and returns the
kernel matrix ``(..., n, n)``, that repulsion ``(..., n, d)`` and the
bandwidth used ``(...)``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["RBFKernel", "IMQKernel", "median_bandwidth", "make_kernel"]


def median_bandwidth(sq_dist: torch.Tensor, *, log_scale: bool) -> torch.Tensor:
    """Median heuristic: the median of the off-diagonal squared distances.

    With ``log_scale`` it is divided by ``log(n + 1)``, so that for the RBF
    kernel ``sum_j k(x_i, x_j) ≈ n exp(-med / h) = n / (n + 1) ≈ 1``: the
    particle's own gradient and the repulsion stay balanced as ``n`` grows
    (Liu and Wang, 2016, Sec. 5).  Falls back to 1 where all particles coincide.
    """
    n = sq_dist.shape[-1]
    if n < 2:
        return torch.ones(sq_dist.shape[:-2], dtype=sq_dist.dtype, device=sq_dist.device)
    rows, cols = torch.triu_indices(n, n, offset=1, device=sq_dist.device)
    h = sq_dist[..., rows, cols].median(dim=-1).values
    if log_scale:
        h = h / math.log(n + 1)
    return torch.where(h > 0, h, torch.ones_like(h)).detach()


def _squared_distances(x):
    # Gram-matrix form: one matmul, no (n, n, d) intermediate.
    sq_norm = (x * x).sum(-1)
    sq = sq_norm[..., :, None] + sq_norm[..., None, :] - 2 * x @ x.transpose(-1, -2)
    return sq.clamp_min(0)


def _repulsion(x, f_prime):
    """2 * sum_j f'_ij (x_j - x_i), for a symmetric f'."""
    return 2 * (f_prime @ x - f_prime.sum(-1, keepdim=True) * x)


class RBFKernel:
    """Gaussian kernel ``k(x, y) = exp(-|x - y|^2 / h)``.

    Parameters
    ----------
    bandwidth : "median" or float
        ``h``. ``"median"`` uses the median heuristic of Liu and Wang (2016),
        ``h = med(r^2) / log(n + 1)``, recomputed at every step.
    """

    name = "rbf"

    def __init__(self, bandwidth="median"):
        self.bandwidth = _check_bandwidth(bandwidth)

    def __call__(self, x):
        k, f_prime, h = self.matrices(x)
        return k, _repulsion(x, f_prime), h

    def matrices(self, x):
        """``(k, f', h)``: the kernel matrix, the derivative of its profile ``f'(r_ij^2)`` and the bandwidth.

        ``grad_{x_j} k(x_j, x_i) = 2 f'(r_ij^2) (x_j - x_i)``: the mirrored
        samplers precondition each of these pair gradients, so they need
        ``f'`` rather than the summed repulsion.
        """
        sq = _squared_distances(x)
        h = self._bandwidth(sq)
        k = torch.exp(-sq / h[..., None, None])
        return k, -k / h[..., None, None], h

    def _bandwidth(self, sq):
        if self.bandwidth == "median":
            return median_bandwidth(sq, log_scale=True)
        return torch.full(sq.shape[:-2], float(self.bandwidth), dtype=sq.dtype, device=sq.device)

    def settings(self):
        return {"kernel": self.name, "bandwidth": self.bandwidth}


class IMQKernel(RBFKernel):
    """Inverse multiquadric kernel ``k(x, y) = (1 + |x - y|^2 / h)^beta``, ``beta in (-1, 0)``.

    Its heavier tails keep the repulsion alive between distant particles
    (Gorham and Mackey, 2017).  ``"median"`` sets ``h = med(r^2)`` (no log
    factor, as in Shi, Liu and Mackey, 2022).
    """

    name = "imq"

    def __init__(self, bandwidth="median", beta=-0.5):
        super().__init__(bandwidth)
        if not -1 < beta < 0:
            raise ValueError(f"beta must lie in (-1, 0), got {beta}")
        self.beta = beta

    def matrices(self, x):
        sq = _squared_distances(x)
        h = self._bandwidth(sq)[..., None, None]
        base = 1 + sq / h
        k = base.pow(self.beta)
        return k, self.beta / h * base.pow(self.beta - 1), h[..., 0, 0]

    def _bandwidth(self, sq):
        if self.bandwidth == "median":
            return median_bandwidth(sq, log_scale=False)
        return super()._bandwidth(sq)

    def settings(self):
        return {**super().settings(), "beta": self.beta}


def _check_bandwidth(bandwidth):
    if bandwidth == "median":
        return bandwidth
    if isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool) and bandwidth > 0:
        return float(bandwidth)
    raise ValueError(f"bandwidth must be 'median' or a positive number, got {bandwidth!r}")


def make_kernel(kernel):
    """A kernel from its name ('rbf', 'imq') or a kernel object."""
    if isinstance(kernel, str):
        kernels = {"rbf": RBFKernel, "imq": IMQKernel}
        if kernel.lower() not in kernels:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {sorted(kernels)} or pass a kernel object")
        return kernels[kernel.lower()]()
    if not callable(kernel):
        raise TypeError(f"kernel must be a name or a callable kernel object, got {type(kernel).__name__}")
    return kernel
