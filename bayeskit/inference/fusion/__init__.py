"""Divide-and-conquer Fusion: exact combination of sub-posteriors, in this process or across a Ray cluster.

:class:`Fusion` is the engine; :mod:`~bayeskit.inference.fusion.core` holds
the algorithms (GBF, D&C-MCF, MCF, the trees),
:mod:`~bayeskit.inference.fusion.bridges` the path-space estimators,
:mod:`~bayeskit.inference.fusion.densities` the sub-posterior densities and
their bounds, :mod:`~bayeskit.inference.fusion.baselines` Consensus Monte
Carlo and the Weierstrass sampler.
"""

from bayeskit.inference.fusion.baselines import consensus_monte_carlo, weierstrass
from bayeskit.inference.fusion.core import build_tree, fuse_gbf, fuse_mcf, mesh_guidance, time_horizon_guidance
from bayeskit.inference.fusion.densities import GaussianDensity, LogDensity, LogisticDensity, PyroDensity, ShardDensity
from bayeskit.inference.fusion.engine import METHODS, Fusion
from bayeskit.inference.fusion.shards import EngineSampler, NUTSSampler, SubPosterior
from bayeskit.sharding import Shard, split_data

__all__ = [
    "Fusion", "METHODS", "SubPosterior", "Shard", "split_data", "NUTSSampler", "EngineSampler", "ShardDensity",
    "GaussianDensity", "LogisticDensity", "LogDensity", "PyroDensity", "fuse_gbf", "fuse_mcf", "build_tree",
    "time_horizon_guidance", "mesh_guidance", "consensus_monte_carlo", "weierstrass",
]
