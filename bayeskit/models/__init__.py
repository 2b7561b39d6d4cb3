"""Model families: ordinary Pyro models and PyroModules that every engine can take."""

from bayeskit.models.bae import BayesianAutoencoder, VariationalAutoencoder
from bayeskit.models.bnn import bayesian_mlp
from bayeskit.models.dp_mixture import DirichletProcessMixture
from bayeskit.models.fractional_sde import FractionalSDE, MarkovFBM
from bayeskit.models.glm import logistic_regression
from bayeskit.models.gp_sic import SparseInverseCholeskyGP
from bayeskit.models.moe import MixtureOfExperts
from bayeskit.models.ssm import LinearGaussianSSM, NonlinearGrowth, StateSpaceModel, StochasticVolatility

__all__ = [
    "logistic_regression", "bayesian_mlp", "MixtureOfExperts", "BayesianAutoencoder", "VariationalAutoencoder",
    "DirichletProcessMixture", "StateSpaceModel", "LinearGaussianSSM", "StochasticVolatility", "NonlinearGrowth",
    "FractionalSDE", "MarkovFBM", "SparseInverseCholeskyGP",
]
