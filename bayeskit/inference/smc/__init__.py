"""Sequential Monte Carlo for state-space models: particle filters, PaRIS smoothing, PaRIS particle Gibbs,
parameter learning. Models live in :mod:`bayeskit.models.ssm`."""

from bayeskit.inference.smc.core import SweepState, backward_trajectory, surrogate_log_likelihood, sweep
from bayeskit.inference.smc.engines import PaRIS, ParticleFilter, ParticleGibbs
from bayeskit.inference.smc.functionals import cross_sum, smoothed_states, state_sum
from bayeskit.inference.smc.learning import fit_ssm
from bayeskit.inference.smc.proposals import MixtureOfExpertsProposal, Proposal
from bayeskit.resampling import resample

__all__ = [
    "ParticleFilter", "PaRIS", "ParticleGibbs", "state_sum", "cross_sum", "smoothed_states", "resample", "fit_ssm",
    "Proposal", "MixtureOfExpertsProposal", "sweep", "SweepState", "backward_trajectory",
    "surrogate_log_likelihood",
]
