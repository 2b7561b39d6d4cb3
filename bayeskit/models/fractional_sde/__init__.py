"""Neural SDEs driven by Markov-approximate fractional Brownian motion (Daems et al., ICLR 2024).

- :mod:`.markov`: MA-fBM and its optimal weights omega(H), type I and II, differentiable in H.
- :mod:`.solvers`: batched Euler-Maruyama (Ito) and Heun (Stratonovich) solvers of the augmented SDE.
- :mod:`.model`: :class:`FractionalSDE`, the Girsanov ELBO, controls, ``fit()``, posterior paths.
- :mod:`.latent`: :class:`LatentFractionalSDE`, a latent neural SDE for sequences (encoder, control, decoder).
- :mod:`.linear`: exact Gaussian results for the fractional OU process (covariance, likelihood, conditional).
- :mod:`.exact`: exact fBM covariances and samplers (Cholesky, Davies-Harte), the ground truth.
"""

from bayeskit.models.fractional_sde.exact import (
    fbm_covariance,
    sample_fbm_cholesky,
    sample_fbm_davies_harte,
    sample_fou,
)
from bayeskit.models.fractional_sde.latent import LatentFractionalSDE, stochastic_lorenz
from bayeskit.models.fractional_sde.markov import MarkovFBM, approximation_error, optimal_weights, speed_grid
from bayeskit.models.fractional_sde.model import (
    AffineControl,
    ConstantDiffusion,
    ControlContext,
    FractionalSDE,
    MLPControl,
    OrnsteinUhlenbeckDrift,
)
from bayeskit.models.fractional_sde.solvers import SDEPaths, solve

__all__ = [
    "MarkovFBM", "optimal_weights", "approximation_error", "speed_grid", "SDEPaths", "solve", "FractionalSDE",
    "OrnsteinUhlenbeckDrift", "ConstantDiffusion", "MLPControl", "AffineControl", "ControlContext",
    "LatentFractionalSDE", "stochastic_lorenz", "fbm_covariance", "sample_fbm_cholesky", "sample_fbm_davies_harte",
    "sample_fou",
]
