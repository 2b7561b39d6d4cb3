"""Stochastic-gradient MCMC: SGLD, pSGLD, SGHMC, SGNHT, schedules, federated and structured variants.

The engines (:class:`SGLD`, :class:`PSGLD`, :class:`SGHMC`,
:class:`AdaptiveSGHMC`, :class:`SGNHT`)
sit on a functional core (:mod:`bayeskit.inference.sgmcmc.kernels`) of
``init``/``step`` pairs over a small state of tensors, in the style of
BlackJAX and ``posteriors``; step-size schedules are in
:mod:`bayeskit.inference.sgmcmc.schedules`.  :class:`FSGLD` and
:class:`DSGLD` sample over data shards held by clients
(:mod:`~bayeskit.inference.sgmcmc.federated`); :class:`StructuredSGMCMC`
breaks the coupling between parameter groups
(:mod:`~bayeskit.inference.sgmcmc.structured`).
"""

from bayeskit.inference.sgmcmc.engines import PSGLD, SGHMC, SGLD, SGMCMC, SGNHT, AdaptiveSGHMC
from bayeskit.inference.sgmcmc.federated import DSGLD, FSGLD, GaussianSurrogate, scale_prior, subposterior_target
from bayeskit.inference.sgmcmc.kernels import (
    AdaptiveSGHMCKernel,
    PSGLDKernel,
    SGHMCKernel,
    SGLDKernel,
    SGMCMCState,
    SGNHTKernel,
    make_kernel,
)
from bayeskit.inference.sgmcmc.schedules import ConstantSchedule, CyclicalSchedule, PolynomialDecay
from bayeskit.inference.sgmcmc.structured import StructuredSGMCMC

__all__ = [
    "SGMCMC", "SGLD", "PSGLD", "SGHMC", "AdaptiveSGHMC", "SGNHT", "FSGLD", "DSGLD", "StructuredSGMCMC",
    "GaussianSurrogate", "scale_prior", "subposterior_target", "SGMCMCState", "SGLDKernel", "PSGLDKernel",
    "SGHMCKernel", "AdaptiveSGHMCKernel", "SGNHTKernel", "make_kernel", "ConstantSchedule", "PolynomialDecay",
    "CyclicalSchedule",
]
