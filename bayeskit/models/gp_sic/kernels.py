"""Stationary ARD kernels evaluated on batches of small blocks, the shape the sparse inverse Cholesky needs.

Each kernel is ``k(x, z) = s * rho(r)`` with the scaled distance
``r = ||(x - z) / l||`` (one lengthscale per input dimension, ARD):

- ``"matern12"``: ``rho(r) = exp(-r)`` (the exponential kernel),
- ``"matern32"``: ``rho(r) = (1 + sqrt(3) r) exp(-sqrt(3) r)``,
- ``"matern52"``: ``rho(r) = (1 + sqrt(5) r + 5 r^2 / 3) exp(-sqrt(5) r)``,
- ``"rbf"``: ``rho(r) = exp(-r^2 / 2)``,

as in Rasmussen & Williams (2006), eqs. 4.14-4.17. :meth:`StationaryKernel.from_pyro` wraps a Pyro kernel of one of
these classes so that its own (Pyro) parameters are the ones trained.
"""

from __future__ import annotations

import math

import torch

_SQRT3, _SQRT5 = math.sqrt(3.0), math.sqrt(5.0)


def _matern12(r):
    return torch.exp(-r)


def _matern32(r):
    r = _SQRT3 * r
    return (1.0 + r) * torch.exp(-r)


def _matern52(r):
    r = _SQRT5 * r
    return (1.0 + r + r * r / 3.0) * torch.exp(-r)


def _rbf(r):
    return torch.exp(-0.5 * r * r)


CORRELATIONS = {"matern12": _matern12, "matern32": _matern32, "matern52": _matern52, "rbf": _rbf}


class StationaryKernel(torch.nn.Module):
    """An ARD stationary kernel (``kind`` in ``"matern12"``, ``"matern32"``, ``"matern52"``, ``"rbf"``).

    Parameters
    ----------
    kind : str
        The correlation function (module docstring).
    input_dim : int
        Dimension ``d`` of the inputs.
    lengthscale : float or Tensor of shape ``(d,)``
        Initial lengthscales (positive), learnt on a log scale.
    outputscale : float
        Initial variance ``s`` of the process (positive), learnt on a log scale.
    """

    def __init__(self, kind: str = "matern32", input_dim: int = 1, *, lengthscale=1.0, outputscale: float = 1.0):
        super().__init__()
        if kind not in CORRELATIONS:
            raise ValueError(f"kernel must be one of {sorted(CORRELATIONS)}, got {kind!r}")
        if not isinstance(input_dim, int) or input_dim < 1:
            raise ValueError(f"input_dim must be a positive int, got {input_dim!r}")
        lengthscale = torch.as_tensor(lengthscale, dtype=torch.get_default_dtype()).flatten()
        if lengthscale.numel() == 1:
            lengthscale = lengthscale.expand(input_dim)
        if lengthscale.numel() != input_dim or not bool((lengthscale > 0).all()):
            raise ValueError(f"lengthscale must be positive, a scalar or of length {input_dim}, got {lengthscale}")
        if not outputscale > 0:
            raise ValueError(f"outputscale must be positive, got {outputscale!r}")
        self.kind, self.input_dim = kind, input_dim
        self.log_lengthscale = torch.nn.Parameter(lengthscale.log().clone())
        self.log_outputscale = torch.nn.Parameter(torch.tensor(math.log(outputscale)))

    @property
    def lengthscale(self) -> torch.Tensor:
        return self.log_lengthscale.exp()

    @property
    def outputscale(self) -> torch.Tensor:
        return self.log_outputscale.exp()

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``k(x1, x2)`` for ``x1`` of shape ``(..., m, d)`` and ``x2`` of ``(..., k, d)``: ``(..., m, k)``."""
        lengthscale = self.lengthscale.to(x1.dtype)
        # the direct (not matrix-product) distance: exact zeros on the diagonal, where cdist's gradient is zero
        r = torch.cdist(x1 / lengthscale, x2 / lengthscale, compute_mode="donot_use_mm_for_euclid_dist")
        return self.outputscale.to(x1.dtype) * CORRELATIONS[self.kind](r)

    def extra_repr(self):
        return f"kind={self.kind!r}, input_dim={self.input_dim}"

    @staticmethod
    def from_pyro(kernel, input_dim: int) -> StationaryKernel:
        """Wrap a Pyro ``RBF``, ``Exponential``, ``Matern32`` or ``Matern52`` kernel; its parameters stay its own.

        The wrapper reads ``kernel.lengthscale`` and ``kernel.variance`` at each call, so training the wrapper
        trains the Pyro kernel (Pyro's ``active_dims`` is not supported: select the columns yourself).
        """
        return _PyroKernel(kernel, input_dim)


class _PyroKernel(StationaryKernel):
    def __init__(self, kernel, input_dim):
        from pyro.contrib.gp import kernels as pyro_kernels

        kinds = {pyro_kernels.RBF: "rbf", pyro_kernels.Exponential: "matern12", pyro_kernels.Matern32: "matern32",
                 pyro_kernels.Matern52: "matern52"}
        kind = kinds.get(type(kernel))
        if kind is None:
            raise TypeError(f"a Pyro kernel must be one of {[k.__name__ for k in kinds]}, got {type(kernel).__name__}")
        if getattr(kernel, "active_dims", None) is not None and list(kernel.active_dims) != list(range(input_dim)):
            raise ValueError("Pyro kernels with active_dims are not supported: pass the selected columns as x")
        torch.nn.Module.__init__(self)
        self.kind, self.input_dim, self.pyro_kernel = kind, input_dim, kernel

    @property
    def lengthscale(self):
        return self.pyro_kernel.lengthscale.expand(self.input_dim)

    @property
    def outputscale(self):
        return self.pyro_kernel.variance


def make_kernel(kernel, input_dim: int, lengthscale, outputscale) -> StationaryKernel:
    """A kernel from a name, a :class:`StationaryKernel` or a Pyro kernel."""
    if isinstance(kernel, StationaryKernel):
        if kernel.input_dim != input_dim:
            raise ValueError(f"kernel.input_dim is {kernel.input_dim} but x has {input_dim} columns")
        return kernel
    if isinstance(kernel, str):
        return StationaryKernel(kernel, input_dim, lengthscale=lengthscale, outputscale=outputscale)
    if isinstance(kernel, torch.nn.Module) and type(kernel).__module__.startswith("pyro.contrib.gp"):
        return StationaryKernel.from_pyro(kernel, input_dim)
    raise TypeError(f"kernel must be a name, a StationaryKernel or a Pyro kernel, got {type(kernel).__name__}")
