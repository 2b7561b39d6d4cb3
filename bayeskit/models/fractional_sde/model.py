r"""Variational inference for SDEs driven by Markov-approximate fractional noise.

Daems, Opper, Crevecoeur and Birdal, "Variational inference for SDEs
driven by fractional noise", ICLR 2024.  The prior is

.. math::

    dX = b(t, X)\,dt + \sigma(t, X) \circ d\hat B^H, \qquad
    \hat B^H = \sum_k \omega_k(H)\,(Y_k - Y_k(0)),\quad dY_k = -\gamma_k Y_k\,dt + dW,

and the variational posterior adds a control :math:`u(t, X, Y)` to every
:math:`dY_k` (one control shared by the K processes, since they share the
Brownian motion).  Girsanov's theorem gives the evidence lower bound

.. math::

    \mathcal L = E_q\Bigl[\sum_i \log p(o_i \mid X(t_i))\Bigr]
      - \mathrm{KL}\bigl(q(X_0, Y_0) \,\|\, p(X_0, Y_0)\bigr)
      - E_q\Bigl[\tfrac12 \int_0^T |u|^2\,dt\Bigr],

estimated by simulating posterior paths with :func:`~.solvers.solve`;
the drift's parameters, the diffusion, the Hurst index (through the
differentiable :math:`\omega(H)`) and the control are learnt together by
maximising it.  Type I starts :math:`Y(0)` from its stationary law, which the
observations update too, so :math:`q` covers :math:`Y(0)` as well as
:math:`X(0)` (the paper's :math:`q(x_0)`, extended).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bayeskit._checks import check_finite, positive_int
from bayeskit.models.fractional_sde.markov import MarkovFBM, ou_covariance
from bayeskit.models.fractional_sde.solvers import METHODS, solve
from bayeskit.optim import Adam
from bayeskit.parallel import resolve_seed, step_generator
from bayeskit.posterior import Posterior, predictive_mixture
from bayeskit.runner import Fit

__all__ = ["FractionalSDE", "OrnsteinUhlenbeckDrift", "ConstantDiffusion", "MLPControl", "AffineControl",
           "ControlContext", "gaussian_kl", "guided_control", "gained_guide", "guide_schedule", "upcoming_observations"]


# ----------------------------------------------------------------------------- building blocks
def register_log(module: nn.Module, name: str, value, learn: bool, argument: str) -> None:
    """Store log(value) as parameter ``name`` (learnt) or as a buffer (fixed); positivity comes free."""
    value = torch.as_tensor(value, dtype=torch.get_default_dtype())
    if not bool((value > 0).all()):
        raise ValueError(f"{argument} must be positive, got {value.tolist()}")
    if learn:
        setattr(module, name, nn.Parameter(value.log()))
    else:
        module.register_buffer(name, value.log())


class OrnsteinUhlenbeckDrift(nn.Module):
    r"""Mean-reverting drift :math:`b(x) = -\theta (x - \mu)`, with :math:`\theta > 0` stored as its log."""

    def __init__(self, theta=1.0, mean=0.0, *, learn_theta: bool = True, learn_mean: bool = False):
        super().__init__()
        register_log(self, "log_theta", theta, learn_theta, "theta")
        mean = torch.as_tensor(mean, dtype=torch.get_default_dtype())
        if learn_mean:
            self.mean = nn.Parameter(mean)
        else:
            self.register_buffer("mean", mean)

    @property
    def theta(self):
        return self.log_theta.exp()

    def forward(self, t, x):
        return -self.theta * (x - self.mean)


class ConstantDiffusion(nn.Module):
    """A diffusion :math:`\\sigma > 0` that does not depend on the state (one per dimension or shared)."""

    def __init__(self, sigma=1.0, *, learn: bool = True):
        super().__init__()
        register_log(self, "log_sigma", sigma, learn, "sigma")

    @property
    def sigma(self):
        return self.log_sigma.exp()

    def forward(self, t, x):
        return self.sigma.expand_as(x)


@dataclass
class ControlContext:
    """What the model tells its control at each step, per path.

    Attributes
    ----------
    series : ``(batch,)`` long, the series each path belongs to
    next_observation : ``(batch, d)`` the next observation after the current step (zeros past the last one)
    time_to_observation : ``(batch, 1)`` time from the current step to it (zeros past the last one)
    has_next : ``(batch, 1)`` 1.0 before the last observation, 0.0 after it
    guide : ``(batch, d)`` the driftless optimal control towards the next observations (:func:`guided_control`)
    guide_scale : ``(batch, d)`` the sd ratio of the driftless posterior's Brownian step (at most 1)
    """

    series: torch.Tensor
    next_observation: torch.Tensor
    time_to_observation: torch.Tensor
    has_next: torch.Tensor
    guide: torch.Tensor
    guide_scale: torch.Tensor


def guide_coefficients(weights, gammas, waits, valid):
    r"""Per-step coefficients of :func:`guided_control` for the times ``waits`` ``(n, J)`` to the next J observations.

    ``valid`` ``(n, J)`` marks real observations (false past the last one). Returns ``memory``
    ``(n, J, K)`` :math:`\omega_k(e^{-\gamma_k\tau_a} - 1)`, ``kernel`` ``(n, J)``
    :math:`K(\tau_a) = \sum_k\omega_k e^{-\gamma_k\tau_a}` and ``covariance`` ``(n, J, J)``
    :math:`C_{ab} = \sum_{ij}\omega_i\omega_j
    \int_0^{\min(\tau_a,\tau_b)} e^{-\gamma_i(\tau_a-s)-\gamma_j(\tau_b-s)}ds`,
    with the invalid entries zeroed (and 1 on the diagonal of C, so that it stays invertible).
    """
    tau = waits.to(torch.float64)
    decay = torch.exp(-gammas * tau[..., None])  # (n, J, K)
    # the noise from now on moves the OU states as if they started at zero: the type II covariance
    covariance = torch.einsum("i,nabij,j->nab", weights, ou_covariance(gammas, tau, tau, "riemann_liouville"),
                              weights)
    both = valid[:, :, None] & valid[:, None, :]
    eye = torch.eye(tau.shape[1], dtype=torch.float64, device=tau.device)
    covariance = torch.where(both, covariance, eye * (~valid[:, :, None]))
    memory = weights * (decay - 1) * valid[..., None]
    kernel = (decay @ weights) * valid
    return memory, kernel, covariance


def upcoming_observations(index: torch.Tensor, num_steps: int, lookahead: int):
    """Per solver step n: the indices of the next ``lookahead`` observations after it (grid index > n),
    which of them exist, and the number of steps to each (zero where none is left). All ``(n, lookahead)``."""
    steps = torch.arange(num_steps, device=index.device)
    first = torch.searchsorted(index, steps, right=True)  # first observation with index > n
    upcoming = first[:, None] + torch.arange(lookahead, device=index.device)
    valid = upcoming < index.numel()
    upcoming = upcoming.clamp(max=index.numel() - 1)
    return upcoming, valid, (index[upcoming] - steps[:, None]) * valid


def guide_schedule(weights, gammas, waits, valid, dt, dtype):
    """:func:`guided_control`'s per-step ``memory`` (at the step's start) and ``kernel`` and ``covariance``
    (from the step's end, after its kick), from the times ``waits`` ``(n, J)`` to the next observations."""
    memory = guide_coefficients(weights, gammas, waits, valid)[0].to(dtype)
    _, kernel, covariance = (v.to(dtype) for v in guide_coefficients(weights, gammas, (waits - dt).clamp(min=0),
                                                                     valid))
    return memory, kernel, covariance


def guided_control(x, y, sigma, observations, noise_variance, memory, kernel, covariance, dt):
    r"""The optimal control towards the next J noisy observations, ignoring the drift.

    Without drift, :math:`X(t+\tau_a) = x + \sigma\sum_k\omega_k(Y_k(t+\tau_a) - Y_k(t))` are jointly
    Gaussian given the current state, with means :math:`m_a = x + \sigma\sum_k\omega_k(e^{-\gamma_k\tau_a}-1)Y_k`,
    covariance :math:`\sigma^2 C` and response :math:`r = \sigma K(\tau_a)` to a kick of the noise now.
    The posterior of the next Brownian increment :math:`\Delta W \sim N(0, \delta t)` given them has
    precision :math:`1/\delta t + \lambda`, :math:`\lambda = r^T(\sigma^2 C + s_o^2 I)^{-1} r`, and mean
    :math:`u\,\delta t` with

    .. math:: u = \frac{r^T (\sigma^2 C + s_o^2 I)^{-1} (o - m)}{1 + \lambda\,\delta t},

    the Brownian-bridge guide (Delyon and Hu 2006) with fBM's memory kernel in place of 1 and several
    observations at once; in continuous time it is the exact posterior control of a driftless model
    whose remaining observations all lie in the window.  MA-fBM's response to a kick is not
    immediate (for H > 1/2 it grows after it), so the plain Brownian guide :math:`(o - x)/\tau` would
    overshoot.  Returns ``u`` and the factor :math:`(1 + \lambda\delta t)^{-1/2}` by which the guided
    posterior narrows the step's sd (``kernel`` and ``covariance`` are taken from the end of the step,
    ``memory`` from its start; ``dt`` is :math:`\delta t`).  The networks of :class:`MLPControl` correct
    for the drift, which the guide leaves out.

    Shapes: x ``(batch, d)``, y ``(batch, d, K)``, sigma ``(batch, d)``, observations ``(batch, d, J)``,
    memory ``(J, K)``, kernel ``(J,)``, covariance ``(J, J)``.
    """
    predicted = x.unsqueeze(-1) + sigma.unsqueeze(-1) * (y @ memory.mT)  # (batch, d, J)
    system = sigma[..., None, None] ** 2 * covariance + noise_variance * torch.eye(covariance.shape[-1],
                                                                                     dtype=x.dtype, device=x.device)
    response = sigma.unsqueeze(-1) * kernel
    pull = torch.linalg.solve(system, response.unsqueeze(-1)).squeeze(-1)  # (sigma^2 C + s^2 I)^{-1} r
    shrink = 1 + (pull * response).sum(-1) * dt  # 1 + lambda dt
    return (pull * (observations - predicted)).sum(-1) / shrink, shrink.rsqrt()


def gained_guide(head, guide):
    r""":math:`f + 2\,\mathrm{sigmoid}(g)\,u_{\text{guide}}` from a network output ``head`` whose last dimension
    holds :math:`(f, g)`: a head at zero gives the guide itself (gain 1, no correction)."""
    shift, gain = head.chunk(2, -1)
    return shift + 2 * torch.sigmoid(gain) * guide


class MLPControl(nn.Module):
    r"""Posterior control: the guided control times a learnt gain, plus a learnt correction.

    .. math:: u = f_\phi(h) + 2\,\mathrm{sigmoid}\bigl(g_\phi(h)\bigr)\,u_{\text{guide}},

    with :math:`h` = (time, state, OU states, a learnt embedding of the
    series, the time to the next observation, the gap to it, the guide) and
    :math:`u_{\text{guide}}` from :func:`guided_control`.  The guide carries
    the observations, which an embedding alone would have to memorise, and
    the pull of order 1/(observation variance) near each observation, which
    an MLP would need thousands of steps to learn; the networks correct it
    for the drift and for later observations.  Both heads start at zero, so
    fitting starts from the guide (gain 1, no correction).
    """

    def __init__(self, state_dim: int, num_processes: int, *, num_series: int = 1, hidden: int = 64,
                 embedding_dim: int = 8):
        super().__init__()
        self.state_dim = state_dim
        self.embedding = nn.Embedding(num_series, embedding_dim)
        inputs = 3 + state_dim * (num_processes + 3) + embedding_dim
        self.net = mlp(inputs, hidden, 2 * state_dim, zero_last=True)

    def forward(self, step, t, x, y, context: ControlContext):
        time = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0], 1)
        gap = (context.next_observation - x) * context.has_next
        features = torch.cat([time, x, y.flatten(1), self.embedding(context.series), context.has_next,
                              context.time_to_observation, gap, context.guide], -1)
        return gained_guide(self.net(features), context.guide), context.guide_scale


class AffineControl(nn.Module):
    r"""Control affine in the augmented state, piecewise constant in time: :math:`u_n = a_{s,n} + B_n (x, y)`.

    For a linear drift, constant diffusion and Gaussian observations the
    exact posterior of the augmented SDE is a Gauss-Markov process whose
    control is of this form (the gradient of the log of a Gaussian backward
    filter), so this family contains the exact posterior (in continuous
    time): the tool for checking the ELBO against the exact likelihood.
    """

    def __init__(self, num_steps: int, state_dim: int, num_processes: int, *, num_series: int = 1):
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(num_series, num_steps, state_dim))
        self.gain = nn.Parameter(torch.zeros(num_steps, state_dim, state_dim * (num_processes + 1)))

    def forward(self, step, t, x, y, context: ControlContext):
        if step >= self.gain.shape[0]:
            raise ValueError(f"AffineControl was built for {self.gain.shape[0]} steps; step {step} is past them")
        state = torch.cat([x, y.flatten(1)], -1)
        return self.offset[context.series, step] + (self.gain[step] @ state.unsqueeze(-1)).squeeze(-1)


def mlp(inputs: int, hidden: int, outputs: int, *, zero_last: bool = False) -> nn.Sequential:
    """Two tanh hidden layers; ``zero_last`` starts the output at zero (a control that starts at the prior)."""
    net = nn.Sequential(nn.Linear(inputs, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                        nn.Linear(hidden, outputs))
    if zero_last:
        nn.init.zeros_(net[-1].weight)
        nn.init.zeros_(net[-1].bias)
    return net


def gaussian_kl(loc, scale_tril, prior_loc, prior_cov) -> torch.Tensor:
    """KL(N(loc, L L^T) || N(prior_loc, prior_cov)) over the last dimension."""
    size = loc.shape[-1]
    prior_tril = torch.linalg.cholesky(prior_cov)
    solved = torch.linalg.solve_triangular(prior_tril, scale_tril, upper=False)
    diff = torch.linalg.solve_triangular(prior_tril, (prior_loc - loc).unsqueeze(-1), upper=False).squeeze(-1)
    return 0.5 * ((solved**2).sum((-2, -1)) + (diff**2).sum(-1) - size
                  + 2 * prior_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
                  - 2 * scale_tril.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1))


def path_draws(posterior, times, *, dt: float, state_dim: int, source: str):
    """A path Posterior's paths ``x`` at ``times``, ``(S, series, time, state_dim)``, and their log-weights ``(S,)``.

    What the fractional SDEs' ``predictive`` mixes over. ``times`` None keeps every time of the paths;
    otherwise each must be one of the posterior's ``coords["time"]`` (within ``1e-4 * dt``). ``source``
    names the methods that make such posteriors, for the messages.
    """
    if not callable(getattr(posterior, "flat_draws", None)):
        raise TypeError(f"posterior must be a bayeskit Posterior from {source}, got {type(posterior).__name__}")
    draws, log_weights = posterior.flat_draws()
    if "x" not in draws:
        raise ValueError(f"the posterior lacks the paths 'x' (it has {sorted(draws)}); pass what {source} returned")
    x = draws["x"]
    if x.dim() != 4 or x.shape[-1] != state_dim:
        raise ValueError(f"samples['x'] must be (chain, draw, series, time, {state_dim}) paths, got "
                         f"{tuple(posterior.samples['x'].shape)}")
    if times is None:
        return x, log_weights
    grid = posterior.coords.get("time")
    if grid is None or len(grid) != x.shape[2]:
        raise ValueError(f"the posterior has no coords['time'] for its {x.shape[2]} times, so times cannot be "
                         f"matched; pass times=None or a posterior from {source}")
    times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
    if times.dim() != 1 or times.numel() == 0:
        raise ValueError(f"times must be a non-empty 1-D tensor of times, got shape {tuple(times.shape)}")
    check_finite("times", times)
    gap, index = (times[:, None] - torch.tensor(grid, dtype=torch.float64)[None]).abs().min(-1)
    off = (gap > 1e-4 * dt).nonzero()
    if off.numel():
        first = int(off[0])
        raise ValueError(f"times[{first}] = {float(times[first])} is not a time of the posterior's paths (a multiple "
                         f"of dt = {dt} in [{grid[0]}, {grid[-1]}])")
    return x[:, :, index.to(x.device)], log_weights


# ----------------------------------------------------------------------------- the model
class FractionalSDE(nn.Module):
    r"""An SDE driven by MA-fBM, observed with Gaussian noise, fitted by maximising the Girsanov ELBO.

    Parameters
    ----------
    drift : callable or nn.Module
        Prior drift ``b(t, x) -> (batch, d)``: a network, or e.g. :class:`OrnsteinUhlenbeckDrift`.
    diffusion : float, callable or nn.Module
        Diagonal diffusion ``sigma(t, x) -> (batch, d)`` (e.g. :class:`ConstantDiffusion`) or a constant.
    fbm : MarkovFBM
        The driving noise: kind, K, gamma_max, horizon and H (learnt when
        ``MarkovFBM(learn_hurst=True)``).  Its ``horizon`` should be the length of the observation window.
    state_dim : int
        d, the number of state dimensions (each driven by its own fBM).
    num_series : int
        Number of independent observed sequences sharing the prior; each
        has its own initial-state posterior and its own control embedding.
    control : nn.Module, optional
        ``control(step, t, x, y, context) -> (batch, d)`` with a :class:`ControlContext`; default :class:`MLPControl`.
    x0 : float or tensor ``(d,)``
        Prior mean of X(0).
    x0_scale : float, optional
        Prior sd of X(0); ``None`` pins X(0) at ``x0`` (a known start).
    observation_scale : float
        Sd of the Gaussian observation noise; learnt if ``learn_observation_scale``.
    method : ``"heun"`` (Stratonovich, default) or ``"euler"`` (Ito).
    dt : float
        Solver step; every observation time must lie on the grid ``k * dt``.
    lookahead : int
        How many upcoming observations the guide of :class:`MLPControl` steers
        towards (see :func:`guided_control`); each costs a little per step.
    """

    def __init__(self, drift, diffusion, fbm: MarkovFBM, *, state_dim: int = 1, num_series: int = 1,
                 control: nn.Module | None = None, x0=0.0, x0_scale: float | None = None,
                 observation_scale: float = 0.1, learn_observation_scale: bool = False, method: str = "heun",
                 dt: float = 0.01, lookahead: int = 4):
        super().__init__()
        if not isinstance(fbm, MarkovFBM):
            raise TypeError(f"fbm must be a MarkovFBM, got {type(fbm).__name__}")
        if not callable(drift):
            raise TypeError("drift must be callable as drift(t, x)")
        positive_int("state_dim", state_dim)
        positive_int("lookahead", lookahead)
        positive_int("num_series", num_series)
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if not dt > 0:
            raise ValueError(f"dt must be positive, got {dt!r}")
        if x0_scale is not None and not x0_scale > 0:
            raise ValueError(f"x0_scale must be positive or None, got {x0_scale!r}")
        self.drift, self.diffusion, self.fbm = drift, diffusion, fbm
        self.state_dim, self.num_series, self.method, self.dt = state_dim, num_series, method, float(dt)
        self.lookahead = lookahead
        K = fbm.num_processes
        self.control = control if control is not None else MLPControl(state_dim, K, num_series=num_series)
        self.register_buffer("x0", torch.as_tensor(x0, dtype=torch.get_default_dtype()).expand(state_dim).clone())
        self.x0_scale = None if x0_scale is None else float(x0_scale)
        register_log(self, "log_observation_scale", observation_scale, learn_observation_scale, "observation_scale")
        self._init_initial_posterior()

    # ------------------------------------------------------------ initial state
    @property
    def random_x0(self) -> bool:
        return self.x0_scale is not None

    @property
    def random_y0(self) -> bool:
        return self.fbm.kind == "mandelbrot_van_ness"

    def _initial_prior(self):
        """Covariance ``(m, m)`` of the random initial components of one dimension (X0 if random, then Y0)."""
        blocks = []
        dtype = self.x0.dtype
        if self.random_x0:
            blocks.append(torch.full((1, 1), self.x0_scale**2, dtype=dtype))
        if self.random_y0:
            blocks.append(self.fbm.initial_covariance().to(dtype))
        cov = torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=dtype)
        return cov.to(self.x0.device)

    def _init_initial_posterior(self):
        cov = self._initial_prior()
        size = cov.shape[0]
        tril = torch.linalg.cholesky(cov) if size else cov
        loc = torch.zeros(self.num_series, self.state_dim, size)
        if self.random_x0:
            loc[..., 0] = self.x0
        self.initial_loc = nn.Parameter(loc)
        self.initial_tril = nn.Parameter(tril.expand(self.num_series, self.state_dim, size, size).clone())

    def _initial_scale_tril(self):
        # lower triangle with a positive diagonal: any unconstrained tensor maps to a valid factor
        tril = self.initial_tril.tril(-1)
        return tril + torch.diag_embed(self.initial_tril.diagonal(dim1=-2, dim2=-1).abs() + 1e-8)

    def initial_kl(self) -> torch.Tensor:
        """KL(q(X0, Y0) || p(X0, Y0)) of each series, ``(num_series,)``."""
        cov = self._initial_prior()
        if cov.shape[0] == 0:
            return self.initial_loc.new_zeros(self.num_series)
        prior_loc = torch.zeros(cov.shape[0], dtype=cov.dtype, device=cov.device)
        if self.random_x0:
            prior_loc = prior_loc.expand(self.state_dim, -1).clone()
            prior_loc[:, 0] = self.x0
        kl = gaussian_kl(self.initial_loc, self._initial_scale_tril(), prior_loc, cov)
        return kl.sum(-1)

    def _sample_initial(self, series, generator):
        """Reparameterised draws of (x0, y0) from q for each path's series."""
        batch, d, K = series.shape[0], self.state_dim, self.fbm.num_processes
        size = self.initial_loc.shape[-1]
        noise = torch.randn(batch, d, size, generator=generator, dtype=self.initial_loc.dtype)
        noise = noise.to(self.initial_loc.device)
        draw = self.initial_loc[series] + (self._initial_scale_tril()[series] @ noise.unsqueeze(-1)).squeeze(-1)
        x0 = draw[..., 0] if self.random_x0 else self.x0.expand(batch, d)
        y0 = draw[..., int(self.random_x0):] if self.random_y0 else x0.new_zeros(batch, d, K)
        return x0, y0

    # ------------------------------------------------------------ simulation
    @property
    def observation_scale(self):
        return self.log_observation_scale.exp()

    def _grid(self, horizon: float):
        num_steps = round(horizon / self.dt)
        if num_steps < 1 or abs(num_steps * self.dt - horizon) > 1e-4 * self.dt:
            raise ValueError(f"the horizon {horizon} is not a whole number of steps dt = {self.dt}")
        return torch.arange(num_steps + 1, dtype=self.x0.dtype, device=self.x0.device) * self.dt

    def _observation_index(self, observation_times):
        times = torch.as_tensor(observation_times, dtype=torch.float64).reshape(-1)
        check_finite("observation_times", times)
        if times.numel() == 0 or not bool((times > 0).all()) or not bool((times.diff() > 0).all()):
            raise ValueError("observation_times must be positive and increasing")
        index = torch.round(times / self.dt).long()
        if not bool(((index.double() * self.dt - times).abs() <= 1e-4 * self.dt).all()):  # float32 times round
            raise ValueError(f"every observation time must be a multiple of dt = {self.dt}")
        return index

    def _check_observations(self, observations, index):
        observations = torch.as_tensor(observations, dtype=self.x0.dtype, device=self.x0.device)
        if observations.dim() == 2:
            observations = observations.unsqueeze(0)
        expected = (self.num_series, index.numel(), self.state_dim)
        if tuple(observations.shape) != expected:
            raise ValueError(f"observations must be (num_series, num_times, state_dim) = {expected}, "
                             f"got {tuple(observations.shape)}")
        check_finite("observations", observations)
        return observations

    def _next_observations(self, observations, index, num_steps):
        """Per step n: the next ``lookahead`` observations after it, the times to them, and which are real.

        Returns observations ``(num_series, n, d, J)``, waits ``(n, J)`` and valid ``(n, J)``.
        """
        upcoming, valid, wait_steps = upcoming_observations(index, num_steps, self.lookahead)  # (n, J)
        waits = wait_steps.double() * self.dt
        device = self.x0.device
        following = observations[:, upcoming.to(device)] * valid.to(device)[None, :, :, None]  # (S, n, J, d)
        return following.transpose(-1, -2), waits.to(device), valid.to(device)

    def _simulate(self, series, horizon, observations=None, index=None, generator=None):
        """Posterior paths (control on, initial state from q) given the observations, or prior paths if None."""
        times = self._grid(horizon)
        if observations is None:
            return self._simulate_prior(series, times, generator)
        x0, y0 = self._sample_initial(series, generator)
        following, waits, valid = self._next_observations(observations, index, times.numel() - 1)
        weights = self.fbm.weights()
        memory, kernel, covariance = guide_schedule(weights, self.fbm.gammas, waits, valid, self.dt, x0.dtype)
        noise_variance = self.observation_scale.to(x0.dtype) ** 2
        has_next, wait = valid[:, :1].to(x0.dtype), waits[:, :1].to(x0.dtype)
        batch = series.shape[0]

        def control(step, t, x, y):
            sigma = self.diffusion(t, x) if callable(self.diffusion) else torch.as_tensor(self.diffusion).to(x)
            targets = following[series, step]  # (batch, d, J)
            guide, guide_scale = guided_control(x, y, sigma.expand_as(x), targets, noise_variance, memory[step],
                                                kernel[step], covariance[step], self.dt)
            context = ControlContext(series, targets[..., 0], wait[step].expand(batch, 1),
                                     has_next[step].expand(batch, 1), guide, guide_scale)
            return self.control(step, t, x, y, context)

        return solve(self.drift, self.diffusion, weights, self.fbm.gammas, x0, y0, times,
                     control=control, method=self.method, generator=generator)

    def _simulate_prior(self, series, times, generator):
        batch = series.shape[0]
        x0 = self.x0.expand(batch, self.state_dim)
        if self.random_x0:
            x0 = x0 + self.x0_scale * torch.randn(batch, self.state_dim, generator=generator,
                                                  dtype=x0.dtype).to(x0.device)
        y0 = self.fbm.sample_initial((batch, self.state_dim), generator=generator, dtype=x0.dtype, device=x0.device)
        return solve(self.drift, self.diffusion, self.fbm.weights(), self.fbm.gammas, x0, y0, times,
                     method=self.method, generator=generator)

    def elbo(self, observations, observation_times, *, num_samples: int = 16, generator=None) -> dict:
        """Monte Carlo ELBO of each series and its parts, a dict of ``(num_series,)`` tensors.

        ``elbo = log_likelihood - kl_path - kl_initial``, each averaged over
        ``num_samples`` posterior paths on ``[0, last observation time]``.
        """
        index = self._observation_index(observation_times)
        observations = self._check_observations(observations, index)
        series = torch.arange(self.num_series, device=self.x0.device).repeat_interleave(num_samples)
        paths = self._simulate(series, float(index[-1]) * self.dt, observations, index, generator)
        states = paths.x[index.to(self.x0.device)]  # (num_times, batch, d)
        noise = torch.distributions.Normal(states, self.observation_scale.to(states))
        log_likelihood = noise.log_prob(observations[series].transpose(0, 1)).sum((0, 2))
        per_series = lambda v: v.reshape(self.num_series, num_samples).mean(1)  # noqa: E731
        log_likelihood, kl_path = per_series(log_likelihood), per_series(paths.girsanov)
        kl_initial = self.initial_kl()
        return {"elbo": log_likelihood - kl_path - kl_initial, "log_likelihood": log_likelihood,
                "kl_path": kl_path, "kl_initial": kl_initial}

    # ------------------------------------------------------------ fitting and export
    def fit(self, observations, observation_times, *, num_steps: int = 2000, num_samples: int = 16,
            lr: float = 1e-2, prior_lr: float | None = None, seed: int | None = None, progress: bool = True,
            callback=None, checkpoint=None, checkpoint_every: int = 100, resume: bool = False) -> Posterior:
        """Maximise the ELBO (summed over series) by Adam on the shared loop.

        ``lr`` is the step size of the variational parameters (control,
        initial-state posterior); ``prior_lr`` (default ``lr``) that of the
        prior's parameters (drift, diffusion, Hurst index, observation noise),
        which often want a larger one: they are few and their gradients
        average over every path.  Returns the fit's :class:`~bayeskit.Posterior`
        (the final parameters as one draw); its ``trace`` holds ``loss``
        (= -ELBO), the ELBO's parts and ``hurst`` per step.  ``seed`` (None draws
        one, recorded in ``meta["seed"]``), ``progress``, ``callback`` and the
        checkpoint arguments are those of :func:`bayeskit.runner.run_loop`; each
        step's paths come from a generator of ``(seed, step)``, so a resumed run
        ends exactly as an uninterrupted one.
        """
        index = self._observation_index(observation_times)
        observations = self._check_observations(observations, index)
        positive_int("num_samples", num_samples)
        seed = resolve_seed(seed)

        def loss(step):
            parts = self.elbo(observations, observation_times, num_samples=num_samples,
                              generator=step_generator(seed, step))
            info = {name: value.sum().detach() for name, value in parts.items() if name != "elbo"}
            return -parts["elbo"].sum(), {**info, "hurst": self.fbm.hurst.detach()}

        parameters = {name: value for name, value in self.named_parameters() if value.requires_grad}
        variational = {id(p) for p in (self.initial_loc, self.initial_tril, *self.control.parameters())}
        optimizer = {name: Adam(lr=lr if id(p) in variational else prior_lr or lr) for name, p in parameters.items()}
        fit = Fit(loss, parameters, optimizer=optimizer, name="FractionalSDE")
        return fit.run(num_steps=num_steps, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
                       checkpoint_every=checkpoint_every, resume=resume)

    @torch.no_grad()
    def posterior_paths(self, observations, observation_times, *, num_paths: int = 256,
                        seed: int | None = None) -> Posterior:
        """``num_paths`` posterior paths of each series on ``[0, last observation]``, as a Posterior.

        ``samples["x"]`` has shape ``(1, num_paths, num_series, time, state)``
        with ``time`` coordinates, ``observed_data["y"]`` the observations;
        ``meta`` records H, the kind and the solver.
        """
        index = self._observation_index(observation_times)
        observations = self._check_observations(observations, index)
        positive_int("num_paths", num_paths)
        seed = resolve_seed(seed)  # None draws one; meta["seed"] records it
        series = torch.arange(self.num_series, device=self.x0.device).repeat(num_paths)
        paths = self._simulate(series, float(index[-1]) * self.dt, observations, index,
                               torch.Generator().manual_seed(seed))
        return self._paths_posterior(paths, num_paths, seed, "posterior", {"y": observations})

    @torch.no_grad()
    def prior_paths(self, horizon: float, *, num_paths: int = 256, seed: int | None = None) -> Posterior:
        """``num_paths`` prior paths on ``[0, horizon]`` (the same layout as :meth:`posterior_paths`, one series)."""
        positive_int("num_paths", num_paths)
        seed = resolve_seed(seed)
        series = torch.zeros(num_paths, dtype=torch.long, device=self.x0.device)
        paths = self._simulate(series, horizon, generator=torch.Generator().manual_seed(seed))
        return self._paths_posterior(paths, num_paths, seed, "prior", None)

    def predictive(self, posterior, times=None) -> torch.distributions.Distribution:
        r"""The predictive of the noisy observations at the paths' times: a mixture over the paths.

        For series :math:`j` and time :math:`t`, over the paths :math:`X^s` of ``posterior`` and their
        normalised weights :math:`w_s` (equal for sampled paths),

        .. math:: p(o_j(t) \mid D) \approx \sum_s w_s\, N\big(o_j(t);\ X^s_j(t),\ s_o^2 I\big),

        with :math:`s_o` the model's ``observation_scale``. ``posterior`` comes from
        :meth:`posterior_paths` (the posterior predictive) or :meth:`prior_paths` (the prior
        predictive). ``times`` None takes every time of the paths (the solver grid from 0);
        otherwise a 1-D tensor of times among them, e.g. the ``observation_times``.

        Returns a :class:`~torch.distributions.MixtureSameFamily` of batch shape ``(series, time)`` and
        event shape ``(state_dim,)``: ``log_prob(observations)`` gives each observation's log predictive
        density ``(series, time)``. Each time is its own mixture (the marginal at that time): the
        paths' correlation across times is not in it, so summing over times is not a joint density.
        """
        x, log_weights = path_draws(posterior, times, dt=self.dt, state_dim=self.state_dim,
                                    source="posterior_paths or prior_paths")
        scale = self.observation_scale
        x = x.to(scale)
        components = torch.distributions.Independent(torch.distributions.Normal(x.permute(1, 2, 0, 3), scale), 1)
        return predictive_mixture(log_weights.to(x), components)

    def _paths_posterior(self, paths, num_paths, seed, kind, observed):
        x = paths.x.reshape(paths.x.shape[0], num_paths, -1, self.state_dim)
        meta = {"engine": "FractionalSDE", "kind": self.fbm.kind, "hurst": float(self.fbm.hurst),
                "method": self.method, "dt": self.dt, "num_processes": self.fbm.num_processes,
                "gamma_max": self.fbm.gamma_max, "paths": kind, "seed": seed}
        dims = {"x": ["series", "time", "state"]}
        if observed is not None:
            dims["y"] = ["series", "observation", "state"]
        return Posterior({"x": x.permute(1, 2, 0, 3).unsqueeze(0)}, meta=meta, observed_data=observed,
                         dims=dims, coords={"time": paths.times.cpu().tolist()})

    def extra_repr(self) -> str:
        return (f"state_dim={self.state_dim}, num_series={self.num_series}, method={self.method}, dt={self.dt}, "
                f"observation_scale={float(self.observation_scale):.3g}")
