"""Inference engines. Each returns a :class:`bayeskit.Posterior`."""

from bayeskit.inference.kernels import IMQKernel, RBFKernel
from bayeskit.inference.sgmcmc import (DSGLD, FSGLD, PSGLD, SGHMC, SGLD, SGNHT, ConstantSchedule, CyclicalSchedule,
                                       PolynomialDecay, StructuredSGMCMC)
from bayeskit.inference.stein import SVGD

__all__ = ["SVGD", "RBFKernel", "IMQKernel", "SGLD", "PSGLD", "SGHMC", "SGNHT", "FSGLD", "DSGLD", "StructuredSGMCMC",
           "ConstantSchedule", "PolynomialDecay", "CyclicalSchedule"]
