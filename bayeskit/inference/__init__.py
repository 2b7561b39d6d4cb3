"""Inference engines. Each returns a :class:`bayeskit.Posterior`."""

from bayeskit.inference.kernels import IMQKernel, RBFKernel
from bayeskit.inference.sgmcmc import (PSGLD, SGHMC, SGLD, SGNHT, ConstantSchedule, CyclicalSchedule,
                                       PolynomialDecay)
from bayeskit.inference.stein import SVGD

__all__ = ["SVGD", "RBFKernel", "IMQKernel", "SGLD", "PSGLD", "SGHMC", "SGNHT", "ConstantSchedule",
           "PolynomialDecay", "CyclicalSchedule"]
