r"""Exact Gaussian results for the fractional Ornstein-Uhlenbeck process under MA-fBM.

With a linear drift and constant diffusion the augmented state
:math:`z = (X, Y_1, \dots, Y_K)` of one dimension solves the linear SDE
:math:`dz = F z\,dt + G\,dW`,

.. math::

    F = \begin{pmatrix} -\theta & -\sigma\,(\omega_k\gamma_k)_k^T \\ 0 & -\mathrm{diag}(\gamma) \end{pmatrix},
    \qquad G = \begin{pmatrix} \sigma \sum_k \omega_k \\ \mathbf 1 \end{pmatrix},

so X is a Gaussian process whose covariance on a grid follows from the
one-step transition :math:`z_{n+1} = \Phi z_n + \varepsilon_n`,
:math:`\varepsilon_n \sim N(0, Q)`.  :math:`(\Phi, Q)` is either the exact
transition (:math:`\Phi = e^{F\Delta}` and Van Loan's (1978) matrix
exponential for :math:`Q`), or the transition of the Euler or Heun scheme
applied to this SDE, which is what :func:`~.solvers.solve` simulates; the
latter makes the ground truth exact for the simulated chain, free of
discretisation error.  From the covariance come the exact log-likelihood
of noisy observations and the exact posterior (the Gaussian-process
conditional) that the variational posterior of :class:`FractionalSDE` is
tested against.
"""

from __future__ import annotations

import torch

__all__ = ["SCHEMES", "fou_system", "transition", "path_covariance", "fou_covariance", "gaussian_conditional",
           "gaussian_log_likelihood", "fou_log_likelihood"]

SCHEMES = ("exact", "euler", "heun")


def fou_system(theta, sigma, fbm) -> tuple[torch.Tensor, torch.Tensor]:
    """``F`` ``(K+1, K+1)`` and ``G`` ``(K+1,)`` of the augmented fOU SDE (drift ``-theta x``, diffusion ``sigma``)."""
    weights, gammas = fbm.weights(), fbm.gammas
    theta = torch.as_tensor(theta, dtype=torch.float64)
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    size = gammas.numel() + 1
    F = torch.cat([torch.cat([-theta.reshape(1, 1), -(sigma * weights * gammas).reshape(1, -1)], 1),
                   torch.cat([torch.zeros(size - 1, 1, dtype=torch.float64), -torch.diag(gammas)], 1)], 0)
    G = torch.cat([(sigma * weights.sum()).reshape(1), torch.ones(size - 1, dtype=torch.float64)])
    return F, G


def transition(F: torch.Tensor, G: torch.Tensor, step: float, scheme: str = "exact"):
    r"""One-step ``(Phi, Q)`` of :math:`dz = Fz\,dt + G\,dW` over ``step``: exact, or the Euler / Heun scheme's."""
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    size = F.shape[0]
    eye = torch.eye(size, dtype=F.dtype)
    if scheme == "exact":  # Van Loan: expm([[-F, G G^T], [0, F^T]] dt) = [[., M12], [0, Phi^T]]
        block = torch.cat([torch.cat([-F, torch.outer(G, G)], 1),
                           torch.cat([torch.zeros_like(F), F.mT], 1)], 0)
        exponential = torch.linalg.matrix_exp(block * step)
        phi = exponential[size:, size:].mT
        Q = phi @ exponential[:size, size:]
        return phi, 0.5 * (Q + Q.mT)
    if scheme == "euler":
        phi, loading = eye + F * step, G
    else:  # Heun on a linear SDE with additive noise: the trapezoidal rule
        phi, loading = eye + F * step + 0.5 * (F @ F) * step**2, (eye + 0.5 * F * step) @ G
    return phi, torch.outer(loading, loading) * step


def path_covariance(phi: torch.Tensor, Q: torch.Tensor, P0: torch.Tensor, num_steps: int) -> torch.Tensor:
    r"""Covariance ``(num_steps + 1, num_steps + 1)`` of the first coordinate of
    :math:`z_n = \Phi z_{n-1} + \epsilon_n`.

    :math:`\mathrm{Cov}(x_n, x_m) = e_0^T \Phi^{n-m} P_m e_0` for :math:`n \ge m`, with
    :math:`P_{m+1} = \Phi P_m \Phi^T + Q`.
    """
    state_covs, rows = [P0], [torch.eye(phi.shape[0], dtype=phi.dtype)[0]]
    for _ in range(num_steps):
        state_covs.append(phi @ state_covs[-1] @ phi.mT + Q)
        rows.append(rows[-1] @ phi)
    first_columns = torch.stack([P[:, 0] for P in state_covs])  # (n + 1, K + 1): P_m e_0
    rows = torch.stack(rows)  # (n + 1, K + 1): e_0^T Phi^k
    lag = torch.arange(num_steps + 1)[:, None] - torch.arange(num_steps + 1)[None, :]
    lower = (rows[lag.clamp(min=0)] * first_columns[None, :, :]).sum(-1)
    cov = torch.where(lag >= 0, lower, lower.mT)
    return 0.5 * (cov + cov.mT)


def fou_covariance(num_steps: int, step: float, theta, sigma, fbm, *, x0_variance: float = 0.0,
                   scheme: str = "exact") -> torch.Tensor:
    """Covariance of X on the grid ``0, step, ..., num_steps * step`` for the fOU with X(0) ~ N(., x0_variance)."""
    F, G = fou_system(theta, sigma, fbm)
    phi, Q = transition(F, G, step, scheme)
    P0 = torch.block_diag(torch.as_tensor(x0_variance, dtype=torch.float64).reshape(1, 1), fbm.initial_covariance())
    return path_covariance(phi, Q, P0, num_steps)


def _observed_covariance(cov, index, noise_scale):
    """Covariance of the noisy observations at grid points ``index``."""
    return cov[index][:, index] + noise_scale**2 * torch.eye(len(index), dtype=cov.dtype)


def gaussian_log_likelihood(cov: torch.Tensor, index: torch.Tensor, y: torch.Tensor,
                            noise_scale: float, mean: torch.Tensor | None = None) -> torch.Tensor:
    """Exact log-density of ``y`` ``(..., len(index))`` observed at grid points ``index`` with Gaussian noise."""
    marginal = _observed_covariance(cov, index, noise_scale)
    loc = torch.zeros(len(index), dtype=cov.dtype) if mean is None else mean[index]
    return torch.distributions.MultivariateNormal(loc, covariance_matrix=marginal).log_prob(y.to(cov.dtype))


def gaussian_conditional(cov: torch.Tensor, index: torch.Tensor, y: torch.Tensor, noise_scale: float):
    """Mean ``(..., n)`` and sd ``(n,)`` on the whole grid of the zero-mean process given noisy ``y`` at ``index``."""
    marginal = _observed_covariance(cov, index, noise_scale)
    cross = cov[:, index]  # (n, m)
    gain = torch.linalg.solve(marginal, cross.mT).mT  # (n, m)
    mean = y.to(cov.dtype) @ gain.mT
    variance = cov.diagonal() - (gain * cross).sum(-1)
    return mean, variance.clamp(min=0).sqrt()


def fou_log_likelihood(observations: torch.Tensor, index: torch.Tensor, step: float, theta, sigma, fbm,
                       noise_scale, *, x0_variance: float = 0.0, scheme: str = "exact") -> torch.Tensor:
    """Exact log-likelihood, summed over series, of fOU observations ``(num_series, len(index))`` at grid points.

    X(0) has mean 0; differentiable in ``theta``, ``sigma``, ``noise_scale`` and the Hurst index of ``fbm``
    (through its weights), so maximising it gives the exact MA-fBM maximum-likelihood estimate: the
    reference for the variational fit of :class:`~.model.FractionalSDE`.
    """
    cov = fou_covariance(int(index.max()), step, theta, sigma, fbm, x0_variance=x0_variance, scheme=scheme)
    return gaussian_log_likelihood(cov, index, observations, noise_scale).sum()
