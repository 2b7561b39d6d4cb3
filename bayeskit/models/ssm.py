r"""State-space models for the SMC engines (:mod:`bayeskit.inference.smc`).

A state-space model is a Markov chain :math:`X_0 \sim \chi`,
:math:`X_t \mid X_{t-1} = x \sim q_t(x, \cdot)`, observed through
:math:`Y_t \mid X_t = x \sim g_t(x, \cdot)` at every time :math:`t = 0, \dots,
T-1`. A :class:`StateSpaceModel` gives the three laws as
``torch.distributions`` batched over any leading shape of particles (and of
replicates), so one call moves thousands of particles at once; the transition
density must be evaluable pointwise, since the backward kernels of PaRIS and
particle Gibbs weigh every pair of particles by it.

Parameters that the learning engines fit are ``torch.nn.Parameter`` s of the
model, stored unconstrained (log scales, ``atanh`` of autoregressive
coefficients) and named in ``learn=``. The models are plain
``torch.nn.Module`` s: a ``PyroModule`` would register them in Pyro's global
parameter store by attribute name, so two models of the same class would share
them. ``model.to(device, dtype)`` moves a model like any module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable

import torch
from torch.distributions import Distribution, Independent, MultivariateNormal, Normal

from bayeskit._checks import check_series, positive_int
from bayeskit.parallel import resolve_seed, seeded
from bayeskit.posterior import predictive_mixture

__all__ = ["StateSpaceModel", "LinearGaussianSSM", "StochasticVolatility", "NonlinearGrowth", "KalmanResult"]


class StateSpaceModel(torch.nn.Module):
    """Base class: a hidden Markov chain ``x_t`` (``state_dim``) observed through ``y_t`` (``obs_dim``).

    Subclasses implement :meth:`initial`, :meth:`transition` and
    :meth:`observation`; :meth:`transition_log_bound` (an upper bound on the
    transition log density) enables accept-reject backward sampling.
    Every returned distribution has event shape ``(state_dim,)`` or
    ``(obs_dim,)`` and the batch shape of the particles it is given.
    """

    state_dim: int = 1
    obs_dim: int = 1

    def __init__(self, learn: Iterable[str] = ()):
        super().__init__()
        self._learn = tuple(learn)

    # ---------------------------------------------------------------- the model
    def initial(self) -> Distribution:
        """The law :math:`\\chi` of ``x_0``, with empty batch shape."""
        raise NotImplementedError

    def transition(self, t: int, x_prev: torch.Tensor) -> Distribution:
        """The law :math:`q_t(x_{t-1}, \\cdot)` of ``x_t`` given ``x_{t-1} = x_prev`` (``t >= 1``)."""
        raise NotImplementedError

    def observation(self, t: int, x: torch.Tensor) -> Distribution:
        """The law :math:`g_t(x_t, \\cdot)` of ``y_t`` given ``x_t = x``."""
        raise NotImplementedError

    def transition_log_prob(self, t: int, x_prev: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """:math:`\\log q_t(x_{t-1}, x_t)`, broadcasting ``x_prev`` against ``x``."""
        return self.transition(t, x_prev).log_prob(x)

    def transition_log_bound(self, t: int) -> torch.Tensor | None:
        """An upper bound on :math:`\\log q_t(x, x')` over both arguments, or None when there is none."""
        return None

    # ------------------------------------------------------------------ helpers
    def _register(self, name: str, value) -> None:
        """Keep ``value`` as a parameter, trainable when ``name`` was listed in ``learn``."""
        value = torch.as_tensor(value, dtype=torch.get_default_dtype()).clone()
        if name in self._learn:
            self.register_parameter(name, torch.nn.Parameter(value))
        else:
            self.register_buffer(name, value)


    def parameter_values(self) -> dict[str, torch.Tensor]:
        """The model's parameters in their natural (constrained) form, detached copies."""
        raise NotImplementedError

    @torch.no_grad()
    def simulate(self, num_steps: int, *, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw states ``(num_steps, state_dim)`` and observations ``(num_steps, obs_dim)`` from the model."""
        if not isinstance(num_steps, int) or num_steps < 1:
            raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
        tensors = [*self.parameters(), *self.buffers()]
        device = tensors[0].device if tensors else torch.device("cpu")
        # Only a seeded draw forks the RNG: an unseeded one must advance it, so that calls differ.
        forked = seeded(seed, device) if seed is not None else contextlib.nullcontext()
        with forked:
            states = [self.initial().sample()]
            for t in range(1, num_steps):
                states.append(self.transition(t, states[-1]).sample())
            x = torch.stack(states)
            y = torch.stack([self.observation(t, x[t]).sample() for t in range(num_steps)])
        return x, y

    def predictive(self, posterior, steps: int = 1, *, seed: int | None = None,
                   last_time: int | None = None) -> Distribution:
        r"""The posterior predictive of the observation ``steps`` ahead, a mixture over the posterior's states.

        After the observations :math:`y_{0:T-1}`, with the posterior's (weighted) draws
        :math:`x^s_{T-1}` of the last state and their normalised weights :math:`w_s`,

        .. math::

            p(y_{T-1+k} \mid y_{0:T-1}) \approx \sum_s w_s\, g_{T-1+k}\big(\tilde x^s_{T-1+k}, y_{T-1+k}\big),
            \qquad \tilde x^s_{T-1} = x^s_{T-1},\quad
            \tilde x^s_{t} \sim q_{t}(\tilde x^s_{t-1}, \cdot),

        one forward path per draw, drawn with ``seed`` (None draws one through
        :func:`bayeskit.parallel.resolve_seed`; the same seed gives the same paths, so the
        horizons of calls with one seed share them). :class:`LinearGaussianSSM` marginalises
        the path exactly instead (``seed`` is then unused).

        Parameters
        ----------
        posterior : Posterior
            With ``samples["x"]``: the final filtering cloud ``(chain, draw, state_dim)`` of
            :class:`~bayeskit.inference.smc.ParticleFilter` or ``PaRIS`` (weighted), or
            trajectories ``(chain, draw, T, state_dim)`` of ``ParticleGibbs`` (every draw,
            warm-up included), whose last time is used.
        steps : int
            The horizon :math:`k \geq 1`: 1 is the next observation :math:`y_T`.
        last_time : int, optional
            The time index :math:`T - 1` of the posterior's last state; None reads it from
            ``observed_data["y"]`` (a filtering cloud) or the trajectories' length. Time
            enters models whose laws depend on ``t`` (e.g. :class:`NonlinearGrowth`).

        Returns
        -------
        torch.distributions.MixtureSameFamily
            Batch shape ``()`` and event shape ``(obs_dim,)``: ``mean``, ``variance``,
            ``log_prob(y)`` and ``sample`` all apply.
        """
        steps = positive_int("steps", steps)
        x, log_weights, last_time = self._last_states(posterior, last_time)
        return predictive_mixture(log_weights, self.forecast_observation(last_time, x, steps, seed=seed))

    def forecast_observation(self, last_time: int, x: torch.Tensor, steps: int, *,
                             seed: int | None = None) -> Distribution:
        r"""The law of :math:`y_{t+k}` given one forward path from each state ``x`` ``(S, state_dim)`` at ``t``.

        Batch shape ``(S,)``; what :meth:`predictive` mixes. Draws :math:`x_{t+1}, \dots,
        x_{t+k}` from the transitions under ``seed`` and returns :math:`g_{t+k}(x_{t+k}, \cdot)`;
        a subclass with a closed form overrides it.
        """
        seed = resolve_seed(seed)  # outside the fork: an unseeded call advances the global RNG
        with seeded(seed, x.device):
            for t in range(last_time + 1, last_time + steps + 1):
                x = self.transition(t, x).sample()
        return self.observation(last_time + steps, x)

    def _last_states(self, posterior, last_time):
        """The posterior's last states ``(S, state_dim)``, their log-weights ``(S,)`` and the last time index."""
        if not callable(getattr(posterior, "flat_draws", None)):
            raise TypeError(f"posterior must be a bayeskit Posterior, got {type(posterior).__name__}")
        draws, log_weights = posterior.flat_draws()
        if "x" not in draws:
            raise ValueError(f"the posterior lacks the site 'x' (the states that ParticleFilter, PaRIS and "
                             f"ParticleGibbs return); it has {sorted(draws)}")
        x = draws["x"]
        if x.dim() not in (2, 3) or x.shape[-1] != self.state_dim:
            raise ValueError(f"samples['x'] must be (chain, draw, {self.state_dim}) states or (chain, draw, T, "
                             f"{self.state_dim}) trajectories for this model, got "
                             f"{tuple(posterior.samples['x'].shape)}")
        if last_time is None:
            if x.dim() == 3:
                last_time = x.shape[1] - 1
            elif "y" in posterior.observed_data:
                last_time = posterior.observed_data["y"].shape[0] - 1
            else:
                raise ValueError("the posterior's states carry no time: pass last_time, the time index of the "
                                 "last observation they were filtered on")
        last_time = positive_int("last_time", last_time, minimum=0)
        if x.dim() == 3:
            x = x[:, -1]
        tensors = [*self.parameters(), *self.buffers()]
        like = tensors[0] if tensors else torch.zeros(())
        return x.to(like), log_weights.to(like), last_time

    def log_joint(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:math:`\\log p(x_{0:T-1}, y_{0:T-1})` for trajectories ``x`` ``(..., T, state_dim)``."""
        total = self.initial().log_prob(x[..., 0, :])
        if x.shape[-2] > 1:
            steps = torch.arange(1, x.shape[-2])
            total = total + sum(self.transition_log_prob(int(t), x[..., t - 1, :], x[..., t, :]) for t in steps)
        return total + sum(self.observation(t, x[..., t, :]).log_prob(y[t]) for t in range(x.shape[-2]))


def _diagonal_normal(loc: torch.Tensor, scale: torch.Tensor) -> Distribution:
    # Arguments are valid by construction; validating them costs more than the density on small clouds.
    return Independent(Normal(loc, scale.expand_as(loc), validate_args=False), 1, validate_args=False)


class LinearGaussianSSM(StateSpaceModel):
    r"""Linear Gaussian model in any dimension, with an exact Kalman filter and RTS smoother.

    .. math::

        x_0 \sim N(m_0, P_0),\quad x_t = A x_{t-1} + v_t,\ v_t \sim N(0, Q),\quad
        y_t = C x_t + w_t,\ w_t \sim N(0, R).

    Covariances are held as lower Cholesky factors (``Q = L_Q L_Q^T``); a
    learnt factor may take any real values, since only :math:`L L^T` enters.

    Parameters
    ----------
    A, C, Q, R : array-like
        ``(d, d)``, ``(p, d)``, ``(d, d)``, ``(p, p)``; scalars for ``d = p = 1``.
    m0, P0 : array-like, optional
        Mean and covariance of ``x_0``; default zero and ``Q``.
    learn : iterable of str
        Names among ``"A", "C", "Q", "R", "m0", "P0"`` to fit.
    """

    def __init__(self, A, C, Q, R, m0=None, P0=None, learn: Iterable[str] = ()):
        _check_public_names(self, learn, ("A", "C", "Q", "R", "m0", "P0"))
        super().__init__(learn)
        A, C, Q, R = (torch.atleast_2d(torch.as_tensor(v, dtype=torch.get_default_dtype())) for v in (A, C, Q, R))
        d, p = A.shape[0], C.shape[0]
        if A.shape != (d, d) or C.shape != (p, d) or Q.shape != (d, d) or R.shape != (p, p):
            raise ValueError(f"shapes do not fit: A {tuple(A.shape)}, C {tuple(C.shape)}, Q {tuple(Q.shape)}, "
                             f"R {tuple(R.shape)}; need (d, d), (p, d), (d, d), (p, p)")
        m0 = torch.zeros(d) if m0 is None else torch.as_tensor(m0, dtype=A.dtype)
        P0 = Q if P0 is None else torch.atleast_2d(torch.as_tensor(P0, dtype=A.dtype))
        if m0.numel() != d or P0.shape != (d, d):
            raise ValueError(f"m0 must have {d} entries and P0 shape ({d}, {d}), got m0 {tuple(m0.shape)} and "
                             f"P0 {tuple(P0.shape)}")
        m0 = m0.reshape(d)
        self.state_dim, self.obs_dim = d, p
        self._register("A", A)
        self._register("C", C)
        self._register("Q", _cholesky(Q, "Q"))
        self._register("R", _cholesky(R, "R"))
        self._register("m0", m0)
        self._register("P0", _cholesky(P0, "P0"))

    # The stored Q, R, P0 are Cholesky factors; these give the covariances.
    def covariance(self, name: str) -> torch.Tensor:
        factor = torch.tril(getattr(self, name))
        return factor @ factor.mT

    def initial(self):
        return MultivariateNormal(self.m0, scale_tril=_positive_diagonal(self.P0), validate_args=False)

    def transition(self, t, x_prev):
        return MultivariateNormal(x_prev @ self.A.mT, scale_tril=_positive_diagonal(self.Q), validate_args=False)

    def observation(self, t, x):
        return MultivariateNormal(x @ self.C.mT, scale_tril=_positive_diagonal(self.R), validate_args=False)

    def transition_log_prob(self, t, x_prev, x):
        # Whitened residuals: far faster than MultivariateNormal on the (R, N, N, d) pair grids of PaRIS.
        factor = _positive_diagonal(self.Q)
        whitened = (x - x_prev @ self.A.mT) @ torch.linalg.inv(factor).mT
        return (-0.5 * whitened.pow(2).sum(-1) - torch.diagonal(factor).log().sum()
                - 0.5 * self.state_dim * math.log(2 * math.pi))

    def transition_log_bound(self, t):
        diagonal = torch.diagonal(self.Q).abs()
        return -0.5 * self.state_dim * math.log(2 * math.pi) - diagonal.log().sum()

    def forecast_observation(self, last_time, x, steps, *, seed=None):
        r"""Exactly :math:`y_{t+k} \mid x_t = x \sim N(C A^k x,\ C \Sigma_k C^\top + R)`, batch ``(S,)``.

        :math:`\Sigma_k = \sum_{j<k} A^j Q A^{j\top}` (:math:`\Sigma_1 = Q`,
        :math:`\Sigma_{k+1} = A \Sigma_k A^\top + Q`): the forward path is marginalised, so
        ``seed`` is unused and :meth:`predictive` is a mixture of Gaussians, one per draw.
        """
        A, C = self.A, self.C
        mean, cov = x, torch.zeros_like(A)
        for _ in range(steps):
            mean, cov = mean @ A.mT, A @ cov @ A.mT + self.covariance("Q")
        covariance = C @ cov @ C.mT + self.covariance("R")
        return MultivariateNormal(mean @ C.mT, covariance_matrix=0.5 * (covariance + covariance.mT))

    def parameter_values(self):
        return {"A": self.A.detach().clone(), "C": self.C.detach().clone(), "Q": self.covariance("Q").detach(),
                "R": self.covariance("R").detach(), "m0": self.m0.detach().clone(),
                "P0": self.covariance("P0").detach()}

    # ------------------------------------------------------------ ground truth
    def kalman(self, y: torch.Tensor) -> KalmanResult:
        """Exact filtering and Rauch-Tung-Striebel smoothing of ``y`` ``(T, p)``, in float64.

        Differentiable in the parameters, so the exact maximum-likelihood
        estimate is one ``torch.optim`` loop away (the reference for learning).

        Kalman (1960); Rauch, Tung and Striebel (1965). The smoother's lag-one
        covariances :math:`\\mathrm{Cov}(x_t, x_{t+1} \\mid y)` give the exact
        expectation of :math:`\\sum_t x_t x_{t+1}^T`.
        """
        A, C, Q, R, m, P = (v.double() for v in (self.A, self.C, self.covariance("Q"), self.covariance("R"),
                                                 self.m0, self.covariance("P0")))
        y = check_series("y", y, self.obs_dim).double()
        means, covs, pred_means, pred_covs, log_lik = [], [], [], [], torch.zeros((), dtype=torch.float64)
        for t in range(y.shape[0]):
            if t > 0:
                m, P = A @ m, A @ P @ A.mT + Q
            pred_means.append(m)
            pred_covs.append(P)
            S = C @ P @ C.mT + R
            log_lik = log_lik + MultivariateNormal(C @ m, covariance_matrix=S).log_prob(y[t])
            gain = torch.linalg.solve(S, C @ P).mT
            m = m + gain @ (y[t] - C @ m)
            P = P - gain @ S @ gain.mT
            P = 0.5 * (P + P.mT)
            means.append(m)
            covs.append(P)
        smoothed_means, smoothed_covs, cross = [means[-1]], [covs[-1]], []
        for t in range(y.shape[0] - 2, -1, -1):
            J = torch.linalg.solve(pred_covs[t + 1], A @ covs[t]).mT  # P_t A^T P_{t+1|t}^{-1}
            ms = means[t] + J @ (smoothed_means[0] - pred_means[t + 1])
            Ps = covs[t] + J @ (smoothed_covs[0] - pred_covs[t + 1]) @ J.mT
            cross.insert(0, J @ smoothed_covs[0])  # Cov(x_t, x_{t+1} | y)
            smoothed_means.insert(0, ms)
            smoothed_covs.insert(0, 0.5 * (Ps + Ps.mT))
        empty = torch.zeros(0, self.state_dim, self.state_dim, dtype=torch.float64)
        return KalmanResult(log_lik, torch.stack(means), torch.stack(covs), torch.stack(smoothed_means),
                            torch.stack(smoothed_covs), torch.stack(cross) if cross else empty)


class KalmanResult:
    """Exact moments of a linear Gaussian model given ``y``: see :meth:`LinearGaussianSSM.kalman`.

    Attributes: ``log_likelihood`` (0-d), ``filtered_means`` ``(T, d)``,
    ``filtered_covs`` ``(T, d, d)``, ``smoothed_means``, ``smoothed_covs``,
    ``lag_one_covs`` ``(T - 1, d, d)`` holding :math:`\\mathrm{Cov}(x_t, x_{t+1} \\mid y)`.
    """

    def __init__(self, log_likelihood, filtered_means, filtered_covs, smoothed_means, smoothed_covs, lag_one_covs):
        self.log_likelihood, self.filtered_means, self.filtered_covs = log_likelihood, filtered_means, filtered_covs
        self.smoothed_means, self.smoothed_covs, self.lag_one_covs = smoothed_means, smoothed_covs, lag_one_covs

    def state_sum(self) -> torch.Tensor:
        """:math:`E[\\sum_t x_t \\mid y]`, ``(d,)``."""
        return self.smoothed_means.sum(0)

    def cross_sum(self) -> torch.Tensor:
        """:math:`E[\\sum_{t \\ge 1} x_{t-1} x_t^T \\mid y]`, ``(d, d)``."""
        m = self.smoothed_means
        return (self.lag_one_covs + m[:-1, :, None] * m[1:, None, :]).sum(0)


class StochasticVolatility(StateSpaceModel):
    r"""Stochastic volatility of returns (Taylor 1982; the parametrisation of Kim, Shephard and Chib 1998).

    .. math::

        x_0 \sim N\big(\mu, \sigma^2/(1-\phi^2)\big),\quad
        x_t = \mu + \phi (x_{t-1} - \mu) + \sigma v_t,\quad
        y_t = e^{x_t / 2} w_t,\qquad v_t, w_t \sim N(0, 1),

    so :math:`x_t` is the log variance of the return :math:`y_t`. Stored as
    ``mu``, ``phi_raw = atanh(phi)`` and ``log_sigma``; ``learn=`` takes
    ``"mu"``, ``"phi"``, ``"sigma"``. The same model as ``particles``'
    ``StochVol(mu, rho, sigma)``.
    """

    def __init__(self, mu: float = -1.0, phi: float = 0.9, sigma: float = 0.3, learn: Iterable[str] = ()):
        if not -1 < phi < 1:
            raise ValueError(f"phi must lie in (-1, 1) for a stationary volatility, got {phi}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        _check_public_names(self, learn, ("mu", "phi", "sigma"))
        super().__init__([{"phi": "phi_raw", "sigma": "log_sigma"}.get(name, name) for name in learn])
        self._register("mu", mu)
        self._register("phi_raw", math.atanh(phi))
        self._register("log_sigma", math.log(sigma))

    @property
    def phi(self):
        return torch.tanh(self.phi_raw)

    @property
    def sigma(self):
        return self.log_sigma.exp()

    def initial(self):
        return _diagonal_normal(self.mu.reshape(1), (self.sigma / torch.sqrt(1 - self.phi ** 2)).reshape(1))

    def transition(self, t, x_prev):
        return _diagonal_normal(self.mu + self.phi * (x_prev - self.mu), self.sigma.reshape(1))

    def transition_log_prob(self, t, x_prev, x):
        return _normal_log_prob(x, self.mu + self.phi * (x_prev - self.mu), self.log_sigma)

    def observation(self, t, x):
        return _diagonal_normal(torch.zeros_like(x), torch.exp(0.5 * x))

    def transition_log_bound(self, t):
        return -0.5 * math.log(2 * math.pi) - self.log_sigma

    def parameter_values(self):
        return {"mu": self.mu.detach().clone(), "phi": self.phi.detach(), "sigma": self.sigma.detach()}


class NonlinearGrowth(StateSpaceModel):
    r"""The univariate non-stationary growth model (Kitagawa 1996; Gordon, Salmond and Smith 1993).

    .. math::

        x_0 \sim N(0, 5),\quad
        x_t = \frac{x_{t-1}}{2} + \frac{25 x_{t-1}}{1 + x_{t-1}^2} + 8\cos(1.2 t) + v_t,\quad
        y_t = \frac{x_t^2}{20} + w_t,

    with :math:`v_t \sim N(0, \sigma_v^2)`, :math:`w_t \sim N(0, \sigma_w^2)`;
    bimodal filtering laws (the sign of :math:`x_t` is barely identified by
    :math:`y_t`). ``learn=`` takes ``"sigma_v"``, ``"sigma_w"``.
    """

    def __init__(self, sigma_v: float = math.sqrt(10.0), sigma_w: float = 1.0, learn: Iterable[str] = ()):
        if not (sigma_v > 0 and sigma_w > 0):
            raise ValueError(f"sigma_v and sigma_w must be positive, got {sigma_v}, {sigma_w}")
        _check_public_names(self, learn, ("sigma_v", "sigma_w"))
        super().__init__([f"log_{name}" for name in learn])
        self._register("log_sigma_v", math.log(sigma_v))
        self._register("log_sigma_w", math.log(sigma_w))

    def initial(self):
        return _diagonal_normal(torch.zeros(1, dtype=self.log_sigma_v.dtype, device=self.log_sigma_v.device),
                                torch.full((1,), math.sqrt(5.0), dtype=self.log_sigma_v.dtype,
                                           device=self.log_sigma_v.device))

    def _transition_mean(self, t, x_prev):
        return 0.5 * x_prev + 25 * x_prev / (1 + x_prev ** 2) + 8 * math.cos(1.2 * t)

    def transition(self, t, x_prev):
        return _diagonal_normal(self._transition_mean(t, x_prev), self.log_sigma_v.exp().reshape(1))

    def transition_log_prob(self, t, x_prev, x):
        return _normal_log_prob(x, self._transition_mean(t, x_prev), self.log_sigma_v)

    def observation(self, t, x):
        return _diagonal_normal(x ** 2 / 20, self.log_sigma_w.exp().reshape(1))

    def transition_log_bound(self, t):
        return -0.5 * math.log(2 * math.pi) - self.log_sigma_v

    def parameter_values(self):
        return {"sigma_v": self.log_sigma_v.exp().detach(), "sigma_w": self.log_sigma_w.exp().detach()}


# ---------------------------------------------------------------------- helpers
def _check_public_names(model, learn, names) -> None:
    unknown = sorted(set(learn) - set(names))
    if unknown:
        raise ValueError(f"learn={list(learn)} names {unknown}, which {type(model).__name__} does not have; "
                         f"its parameters are {list(names)}")


def _normal_log_prob(value, loc, log_scale):
    """The log density of independent N(loc, exp(log_scale)^2) coordinates, summed over the last axis: the
    backward kernels call it on every pair of particles, where building a Distribution costs more."""
    z = (value - loc) * torch.exp(-log_scale)
    return (-0.5 * z * z - log_scale - 0.5 * math.log(2 * math.pi)).sum(-1)


def _cholesky(matrix: torch.Tensor, name: str) -> torch.Tensor:
    # cholesky reads only the lower triangle: check symmetry, or an upper entry would be dropped silently
    if matrix.shape[-1] != matrix.shape[-2] or not torch.allclose(matrix, matrix.mT):
        raise ValueError(f"{name} must be a symmetric positive-definite matrix")
    try:
        return torch.linalg.cholesky(matrix)
    except RuntimeError as error:
        raise ValueError(f"{name} must be a symmetric positive-definite matrix") from error


def _positive_diagonal(factor: torch.Tensor) -> torch.Tensor:
    """A lower-triangular factor with a positive diagonal and the same ``L L^T`` (what torch requires)."""
    factor = torch.tril(factor)
    signs = torch.sign(torch.diagonal(factor))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return factor * signs.unsqueeze(-2)


