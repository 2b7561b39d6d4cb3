"""Latent GPs with double-KL sparse inverse-Cholesky variational inference (DKLGP; Cao et al., ICML 2023).

- :mod:`.ordering`: maximin ordering, the radius-based sparsity sets and reduced ancestor sets.
- :mod:`.factors`: the KL-optimal prior factor U and blocks of the variational factor V, batched over columns.
- :mod:`.model`: :class:`SparseInverseCholeskyGP`: the ELBO, ``fit()``, ``predict()``, posterior draws.
- :mod:`.laplace`: the Laplace initialisation (Newton, zero-fill incomplete Cholesky).
- :mod:`.kernels`, :mod:`.likelihoods`: ARD Matern/RBF kernels; Gaussian, Student-t, Bernoulli, Poisson.
"""

from bayeskit.models.gp_sic.kernels import StationaryKernel
from bayeskit.models.gp_sic.likelihoods import (
    BernoulliLikelihood,
    GaussianLikelihood,
    Likelihood,
    PoissonLikelihood,
    StudentTLikelihood,
)
from bayeskit.models.gp_sic.model import SparseInverseCholeskyGP
from bayeskit.models.gp_sic.ordering import (
    ancestor_sets,
    global_pattern,
    maximin_order,
    prediction_pattern,
    sparsity_pattern,
)

__all__ = [
    "BernoulliLikelihood", "GaussianLikelihood", "Likelihood", "PoissonLikelihood", "SparseInverseCholeskyGP",
    "StationaryKernel", "StudentTLikelihood", "ancestor_sets", "global_pattern", "maximin_order",
    "prediction_pattern", "sparsity_pattern",
]
