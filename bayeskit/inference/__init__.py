"""Inference engines. Each returns a :class:`bayeskit.Posterior`."""

from bayeskit.inference.kernels import IMQKernel, RBFKernel
from bayeskit.inference.stein import SVGD

__all__ = ["SVGD", "RBFKernel", "IMQKernel"]
