"""Stochastic-gradient MCMC: SGLD, pSGLD, SGHMC, SGNHT, schedules, federated and structured variants.

The engines (:class:`SGLD`, :class:`PSGLD`, :class:`SGHMC`, :class:`SGNHT`)
sit on a functional core (:mod:`bayeskit.inference.sgmcmc.kernels`) of
``init``/``step`` pairs over a small state of tensors, in the style of
BlackJAX and ``posteriors``; step-size schedules are in
:mod:`bayeskit.inference.sgmcmc.schedules`.
"""

from bayeskit.inference.sgmcmc.engines import PSGLD, SGHMC, SGLD, SGMCMC, SGNHT
from bayeskit.inference.sgmcmc.kernels import (PSGLDKernel, SGHMCKernel, SGLDKernel, SGMCMCState, SGNHTKernel,
                                               make_kernel)
from bayeskit.inference.sgmcmc.schedules import ConstantSchedule, CyclicalSchedule, PolynomialDecay

__all__ = ["SGMCMC", "SGLD", "PSGLD", "SGHMC", "SGNHT", "SGMCMCState", "SGLDKernel", "PSGLDKernel", "SGHMCKernel",
           "SGNHTKernel", "make_kernel", "ConstantSchedule", "PolynomialDecay", "CyclicalSchedule"]
