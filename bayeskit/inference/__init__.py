"""Inference engines. Each returns a :class:`bayeskit.Posterior`."""

from bayeskit.inference.fusion import Fusion
from bayeskit.inference.modes import Modes, find_modes
from bayeskit.inference.sgmcmc import (
    DSGLD,
    FSGLD,
    PSGLD,
    SGHMC,
    SGLD,
    SGNHT,
    AdaptiveSGHMC,
    ConstantSchedule,
    CyclicalSchedule,
    PolynomialDecay,
    StructuredSGMCMC,
)
from bayeskit.inference.smc import PaRIS, ParticleFilter, ParticleGibbs
from bayeskit.inference.stein import (
    SVGD,
    SVMD,
    SVNG,
    BoxMap,
    CustomMirrorMap,
    IdentityMap,
    IMQKernel,
    MirroredSVGD,
    MirrorMap,
    OrthantMap,
    RBFKernel,
    SimplexMap,
)

__all__ = [
    "SVGD", "MirroredSVGD", "SVMD", "SVNG", "RBFKernel", "IMQKernel", "MirrorMap", "IdentityMap", "OrthantMap",
    "BoxMap", "SimplexMap", "CustomMirrorMap", "SGLD", "PSGLD", "SGHMC", "AdaptiveSGHMC", "SGNHT", "FSGLD", "DSGLD",
    "StructuredSGMCMC", "ConstantSchedule", "PolynomialDecay", "CyclicalSchedule", "find_modes", "Modes",
    "ParticleFilter", "PaRIS", "ParticleGibbs", "Fusion",
]
