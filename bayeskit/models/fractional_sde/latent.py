r"""A latent neural SDE for sequences, driven by Markov-approximate fractional noise.

The latent model of Daems, Opper, Crevecoeur and Birdal, "Variational
inference for SDEs driven by fractional noise" (ICLR 2024; their
``VideoSDE``), in the amortised latent-SDE design of Li, Wong, Chen and
Duvenaud, "Scalable gradients for stochastic differential equations"
(AISTATS 2020).  A batch of sequences :math:`o_{0:n-1}` observed at shared
times :math:`t_0 < \dots < t_{n-1}` is explained by a latent path
:math:`X` of dimension ``latent_dim``:

.. math::

    X(t_0) &\sim N(0, I), \qquad
    dX = b(X)\,dt + \sigma \circ d\hat B^H, \qquad
    \hat B^H = \sum_k \omega_k(H)\,(Y_k - Y_k(t_0)),\quad dY_k = -\gamma_k Y_k\,dt + dW, \\
    o_i \mid X &\sim N\bigl(D(X(t_i)),\ s^2 I\bigr),

one MA-fBM (:class:`~.markov.MarkovFBM`, a learnable Hurst index by
default) per latent dimension, a prior drift network :math:`b`, a positive
diffusion :math:`\sigma` per dimension and a decoder :math:`D` (linear by
default).  The variational posterior is amortised by an encoder: a GRU run
backwards in time gives a context :math:`c_i` per observation, summarising
:math:`o_{i:n-1}`; :math:`c_0` gives :math:`q(x_0) = N(\mu, \mathrm{diag}\,s_0^2)`,
and a control network steers every OU process,

.. math::

    dY_k = \bigl(-\gamma_k Y_k + u(t, X, Y, c(t))\bigr)\,dt + dW,

where :math:`c(t)` is the context of the first observation after
:math:`t`.  Girsanov's theorem gives the evidence lower bound per sequence

.. math::

    \mathcal L = E_q\Bigl[\sum_i \log p(o_i \mid X(t_i))\Bigr]
      - \mathrm{KL}\bigl(q(x_0)\,\|\,N(0, I)\bigr) - E_q\Bigl[\tfrac12\int_{t_0}^{t_{n-1}} |u|^2\,dt\Bigr].

:math:`Y(t_0)` is drawn from its stationary law (type I; zero for type II) in
both the prior and the posterior, so it adds no KL term: the paper's :math:`q(x_0)` only (unlike
:class:`~.model.FractionalSDE`, which fits a :math:`q` over :math:`Y(0)` per
series).  The prior is time-homogeneous (:math:`b` sees only :math:`X`), so
forecasting runs the prior SDE on from the posterior's state at the last
observation.

With a linear-Gaussian decoder :math:`o = Cx + b + \varepsilon` (``guide=True``) the
control is instead :class:`~.model.FractionalSDE`'s guided form, a learnt gain
times the driftless optimal control :func:`~.model.guided_control` towards the
next observations mapped into the latent space, :math:`z = C^+(o - b)`, plus a
learnt correction: the network alone does not learn the posterior of rough
paths (:math:`H < 1/2`) in a usual budget, and its ELBO gap then biases the
learnt H towards 1/2.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bayeskit._checks import check_finite, positive_int
from bayeskit.models.fractional_sde.markov import MarkovFBM
from bayeskit.models.fractional_sde.model import (
    ConstantDiffusion,
    gained_guide,
    guide_schedule,
    guided_control,
    mlp,
    path_draws,
    register_log,
    upcoming_observations,
)
from bayeskit.models.fractional_sde.solvers import MAX_SPEED_TIMES_STEP, METHODS, solve
from bayeskit.parallel import resolve_seed, step_generator
from bayeskit.posterior import Posterior, predictive_mixture
from bayeskit.runner import Fit

__all__ = ["LatentFractionalSDE", "SequenceEncoder", "LatentControl", "MLPDrift", "latent_observations",
           "stochastic_lorenz"]

# Default gamma_max * dt: below the authors' strict rule gamma_max * dt < 0.5 with room for float32 rounding of the
# grid (float32(0.05) > 0.05, which the solver's check would refuse at exactly 0.5), and 1/4 divides the usual
# frame spacings (0.05 / (0.25 / 20) = 4 steps).
_DEFAULT_SPEED_TIMES_STEP = 0.25

# Observation times count as on the solver grid when within this fraction of a step (float32 times round).
_GRID_TOLERANCE = 1e-4


class MLPDrift(nn.Module):
    """Autonomous prior drift :math:`b(t, x) = \\mathrm{MLP}(x)` (time is ignored, so forecasts are homogeneous)."""

    def __init__(self, latent_dim: int, hidden: int = 64):
        super().__init__()
        self.net = mlp(latent_dim, hidden, latent_dim)

    def forward(self, t, x):
        return self.net(x)


class SequenceEncoder(nn.Module):
    r"""GRU run backwards in time: a context per observation and the parameters of :math:`q(x_0)`.

    ``forward(y)`` with ``y`` ``(batch, num_times, obs_dim)`` returns the
    context ``(batch, num_times, context_dim)`` (entry ``i`` summarises
    observations ``i, ..., num_times - 1``) and the mean and sd
    ``(batch, latent_dim)`` of :math:`q(x_0)`, read from the first context.
    """

    def __init__(self, obs_dim: int, latent_dim: int, *, hidden: int = 64, context_dim: int = 16):
        super().__init__()
        self.gru = nn.GRU(obs_dim, hidden, batch_first=True)
        self.to_context = nn.Linear(hidden, context_dim)
        self.to_initial = nn.Linear(context_dim, 2 * latent_dim)

    def forward(self, y):
        states, _ = self.gru(y.flip(1))
        context = self.to_context(states.flip(1))
        loc, log_scale = self.to_initial(context[:, 0]).chunk(2, dim=-1)
        return context, loc, log_scale.exp()


class LatentControl(nn.Module):
    r"""Posterior control :math:`u(t, x, y, c)`: an MLP of the time since :math:`t_0`, the latent state,
    the OU states and the context.  The last layer starts at zero, so fitting starts from the prior (u = 0).

    With ``guided=True`` (what :class:`LatentFractionalSDE` builds when ``guide=True``) it is called as
    ``control(t, x, y, context, guide, guide_scale)`` and, as :class:`~.model.MLPControl` does, returns

    .. math:: u = f_\phi(h) + 2\,\mathrm{sigmoid}\bigl(g_\phi(h)\bigr)\,u_{\text{guide}}

    with the guide among the inputs :math:`h`, and the guide's narrowing of the Brownian step: both heads
    start at zero, so fitting starts from the guide (gain 1, no correction).
    """

    def __init__(self, latent_dim: int, num_processes: int, *, context_dim: int = 16, hidden: int = 64,
                 guided: bool = False):
        super().__init__()
        self.latent_dim, self.guided = latent_dim, bool(guided)
        inputs = 1 + latent_dim * (num_processes + 1 + self.guided) + context_dim
        self.net = mlp(inputs, hidden, latent_dim * (1 + self.guided), zero_last=True)

    def forward(self, t, x, y, context, guide=None, guide_scale=None):
        time = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0], 1)
        if not self.guided:
            return self.net(torch.cat([time, x, y.flatten(1), context], -1))
        if guide is None:
            raise ValueError("this LatentControl was built with guided=True: call it with the guide "
                             "(LatentFractionalSDE(..., guide=True) does)")
        return gained_guide(self.net(torch.cat([time, x, y.flatten(1), context, guide], -1)), guide), guide_scale


def latent_observations(decoder: nn.Module, y: torch.Tensor, observation_scale: torch.Tensor, latent_dim: int):
    r"""Observations of a linear-Gaussian decoder mapped into the latent space, and their noise variance.

    For :math:`o = C x + b + \varepsilon`, :math:`\varepsilon \sim N(0, s^2 I)` and :math:`C` of full column
    rank, the least-squares latent :math:`z = C^+(o - b)`, :math:`C^+ = (C^TC)^{-1}C^T`, is a sufficient
    statistic for :math:`x`: :math:`z = x + \eta`, :math:`\eta \sim N(0, s^2 (C^TC)^{-1})`.  The guide works
    per latent dimension, so it takes the diagonal of that covariance (exact for the identity decoder and
    for orthogonal columns; otherwise a guide that ignores the cross-dimension correlation of the noise,
    which the learnt gain and correction absorb).  Differentiable in :math:`C`, :math:`b` and :math:`s`.

    Returns ``z`` (the shape of ``y`` with ``latent_dim`` last) and the variance ``(latent_dim,)``.
    """
    scale = observation_scale.to(y.dtype)
    if isinstance(decoder, nn.Identity):
        return y, (scale**2).expand(latent_dim)
    weight = decoder.weight.to(y.dtype)  # C: (obs_dim, latent_dim)
    centred = y - decoder.bias.to(y.dtype) if decoder.bias is not None else y
    gram = weight.mT @ weight
    z = torch.linalg.solve(gram, (centred @ weight).unsqueeze(-1)).squeeze(-1)
    return z, scale**2 * torch.linalg.inv(gram).diagonal()


class LatentFractionalSDE(nn.Module):
    r"""Latent SDE driven by MA-fBM, with a GRU encoder and a decoder, fitted by the amortised Girsanov ELBO.

    Parameters
    ----------
    obs_dim : int
        Dimension of each observation.
    latent_dim : int
        Dimension of the latent SDE (each driven by its own MA-fBM).
    fbm : MarkovFBM, optional
        The driving noise; default ``MarkovFBM(0.5, kind="I", learn_hurst=True, horizon=1.0)``.  Its
        ``horizon`` should be about the length of the observation window.
    dt : float, optional
        Solver step; must satisfy the authors' stability rule :math:`\gamma_{\max}\,dt < 0.5`; default
        :math:`0.25/\gamma_{\max}` (0.0125 for :math:`\gamma_{\max} = 20`), which leaves room for float32
        rounding of the grid.  Observation times must lie on the grid :math:`t_0 + k\,dt`.
    drift : nn.Module, optional
        Prior drift ``b(t, x) -> (batch, latent_dim)``; default :class:`MLPDrift`.
    decoder : nn.Module, optional
        ``decoder(x) -> observation mean`` over the last dimension; default ``nn.Linear(latent_dim, obs_dim)``.
    control : nn.Module, optional
        ``control(t, x, y, context) -> (batch, latent_dim)``; default :class:`LatentControl`.  With
        ``guide=True`` it is called as ``control(t, x, y, context, guide, guide_scale)`` and returns ``u`` or
        ``(u, scale)`` (see :func:`~.solvers.solve`); default ``LatentControl(..., guided=True)``.
    guide : bool
        Steer the posterior by the guided control of :func:`~.model.guided_control` (the driftless optimal
        control towards the next ``lookahead`` observations, the guide that lets :class:`~.model.FractionalSDE`
        learn H), with the observations mapped into the latent space by :func:`latent_observations`.  Needs a
        linear-Gaussian decoder: ``nn.Linear(latent_dim, obs_dim)`` with ``obs_dim >= latent_dim``, or
        ``nn.Identity()`` with ``obs_dim == latent_dim``.  Without it the control network alone must learn
        the pull of order 1/(observation variance) of each observation, which it does not within a usual
        budget when H < 1/2, and the ELBO's gap then biases the learnt H towards 1/2 (see the tutorial).
    lookahead : int
        How many upcoming observations the guide steers towards.
    context_dim, hidden : int
        Sizes of the context vector and of the hidden layers (GRU and MLPs).
    diffusion : float or tensor ``(latent_dim,)``
        Initial diffusion :math:`\sigma > 0` per dimension; learnt if ``learn_diffusion``.
    observation_scale : float
        Initial sd :math:`s` of the Gaussian observation noise; learnt if ``learn_observation_scale``.
    method : ``"euler"`` (default) or ``"heun"``
        The diffusion does not depend on the state, so Ito and Stratonovich agree; Euler costs half of
        Heun and makes the discrete ELBO an exact lower bound of the simulated chain's evidence.

    The module's parameters set the device and dtype: pass ``y`` on its device (``model.to(...)``);
    ``y`` is cast to the parameters' dtype.
    """

    def __init__(self, obs_dim: int, latent_dim: int = 4, *, fbm: MarkovFBM | None = None, dt: float | None = None,
                 drift: nn.Module | None = None, decoder: nn.Module | None = None, control: nn.Module | None = None,
                 context_dim: int = 16, hidden: int = 64, diffusion=0.5, learn_diffusion: bool = True,
                 observation_scale: float = 0.1, learn_observation_scale: bool = True, method: str = "euler",
                 guide: bool = False, lookahead: int = 4):
        super().__init__()
        for name, value in (("obs_dim", obs_dim), ("latent_dim", latent_dim), ("context_dim", context_dim),
                            ("hidden", hidden), ("lookahead", lookahead)):
            positive_int(name, value)
        if fbm is None:
            fbm = MarkovFBM(0.5, kind="mandelbrot_van_ness", learn_hurst=True, horizon=1.0)
        if not isinstance(fbm, MarkovFBM):
            raise TypeError(f"fbm must be a MarkovFBM, got {type(fbm).__name__}")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        if dt is None:
            dt = _DEFAULT_SPEED_TIMES_STEP / fbm.gamma_max
        if not (isinstance(dt, (int, float)) and not isinstance(dt, bool) and dt > 0):
            raise ValueError(f"dt must be a positive number, got {dt!r}")
        if not fbm.gamma_max * dt < MAX_SPEED_TIMES_STEP:
            raise ValueError(f"dt = {dt} is too large for gamma_max = {fbm.gamma_max}: gamma_max * dt must be "
                             f"< {MAX_SPEED_TIMES_STEP}")
        for name, module in (("drift", drift), ("decoder", decoder), ("control", control)):
            if module is not None and not callable(module):
                raise TypeError(f"{name} must be callable")
        diffusion = torch.as_tensor(diffusion, dtype=torch.get_default_dtype())
        if diffusion.numel() == 1:
            diffusion = diffusion.reshape(1).expand(latent_dim).clone()
        if tuple(diffusion.shape) != (latent_dim,):
            raise ValueError(f"diffusion must be a number or have shape ({latent_dim},), got {tuple(diffusion.shape)}")
        if not bool((diffusion > 0).all()):
            raise ValueError(f"diffusion must be positive, got {diffusion.tolist()}")
        self.obs_dim, self.latent_dim, self.method, self.dt = obs_dim, latent_dim, method, float(dt)
        self.guide, self.lookahead = bool(guide), lookahead
        self.fbm = fbm
        self.encoder = SequenceEncoder(obs_dim, latent_dim, hidden=hidden, context_dim=context_dim)
        self.drift = drift if drift is not None else MLPDrift(latent_dim, hidden)
        self.diffusion = ConstantDiffusion(diffusion, learn=learn_diffusion)
        self.control = control if control is not None else LatentControl(
            latent_dim, fbm.num_processes, context_dim=context_dim, hidden=hidden, guided=self.guide)
        self.decoder = decoder if decoder is not None else nn.Linear(latent_dim, obs_dim)
        if self.guide:
            self._check_linear_decoder()
        register_log(self, "log_observation_scale", observation_scale, learn_observation_scale,
                      "observation_scale")

    # ------------------------------------------------------------ checks
    def _check_linear_decoder(self):
        """The guide maps observations into the latent space, which needs a linear decoder of full column rank."""
        decoder = self.decoder
        if isinstance(decoder, nn.Identity):
            if self.obs_dim != self.latent_dim:
                raise ValueError(f"guide=True with an nn.Identity decoder needs obs_dim == latent_dim, got "
                                 f"{self.obs_dim} and {self.latent_dim}")
        elif type(decoder) is nn.Linear:
            if (decoder.in_features, decoder.out_features) != (self.latent_dim, self.obs_dim):
                raise ValueError(f"decoder must be nn.Linear({self.latent_dim}, {self.obs_dim}), got "
                                 f"nn.Linear({decoder.in_features}, {decoder.out_features})")
            if self.obs_dim < self.latent_dim:
                raise ValueError(f"guide=True needs obs_dim >= latent_dim (the decoder's pseudo-inverse maps the "
                                 f"observations into the latent space), got {self.obs_dim} < {self.latent_dim}")
        else:
            raise ValueError(f"guide=True needs a linear-Gaussian decoder (nn.Linear or nn.Identity), got "
                             f"{type(decoder).__name__}; pass guide=False for a nonlinear decoder")

    @property
    def observation_scale(self) -> torch.Tensor:
        return self.log_observation_scale.exp()

    def _grid_index(self, times, argument: str, start=None) -> torch.Tensor:
        """Grid index ``round((t - start) / dt)`` of each time (``start`` defaults to the first time)."""
        try:
            times = torch.as_tensor(times, dtype=torch.float64).detach().cpu()
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{argument} must be a 1-D tensor of times") from error
        if times.dim() != 1 or times.numel() == 0:
            raise ValueError(f"{argument} must be a non-empty 1-D tensor of times, got shape {tuple(times.shape)}")
        check_finite(argument, times)
        if not bool((times.diff() > 0).all()):
            raise ValueError(f"{argument} must be strictly increasing")
        offset = times - (times[0] if start is None else start)
        index = torch.round(offset / self.dt).long()
        if not bool(((index.double() * self.dt - offset).abs() <= _GRID_TOLERANCE * self.dt).all()):
            where = "the first time" if start is None else "the first context time"
            raise ValueError(f"{argument}: every time must lie on the solver grid, a whole number of steps "
                             f"dt = {self.dt} after {where}")
        return index

    def _check_sequences(self, y, times, argument: str = "y", times_argument: str = "times"):
        """``y`` as a ``(batch, num_times, obs_dim)`` tensor of the module's dtype and the grid index of ``times``."""
        index = self._grid_index(times, times_argument)
        if index.numel() < 2:
            raise ValueError(f"{times_argument} must hold at least two times")
        reference = self.log_observation_scale
        if not torch.is_tensor(y):
            y = torch.as_tensor(y, device=reference.device)
        if y.device != reference.device:
            raise ValueError(f"{argument} is on {y.device}, but the model is on {reference.device}; "
                             "move one of them (model.to(device))")
        y = y.to(reference.dtype)
        expected = (index.numel(), self.obs_dim)
        if y.dim() != 3 or tuple(y.shape[1:]) != expected:
            raise ValueError(f"{argument} must be (batch, num_times, obs_dim) = (batch, {expected[0]}, "
                             f"{expected[1]}), got {tuple(y.shape)}")
        if y.shape[0] == 0:
            raise ValueError(f"{argument} holds no sequences")
        check_finite(argument, y)
        return y, index

    # ------------------------------------------------------------ simulation
    def _grid(self, num_steps: int) -> torch.Tensor:
        reference = self.log_observation_scale
        return torch.arange(num_steps + 1, dtype=reference.dtype, device=reference.device) * self.dt

    def _posterior_paths(self, y, index, num_samples, generator):
        """Posterior paths of every sequence (sample-major: path ``p`` is of sequence ``p % batch``).

        Returns the solver's paths on ``[t_0, t_{n-1}]`` (times relative to :math:`t_0`), the encoder's
        :math:`q(x_0)` parameters ``(batch, latent_dim)`` and the sequence of each path.
        """
        batch = y.shape[0]
        context, loc, scale = self.encoder(y)
        sequence = torch.arange(batch, device=y.device).repeat(num_samples)
        noise = torch.randn(sequence.numel(), self.latent_dim, generator=generator, dtype=y.dtype).to(y.device)
        x0 = loc[sequence] + scale[sequence] * noise
        y0 = self.fbm.sample_initial((sequence.numel(), self.latent_dim), generator=generator, dtype=y.dtype,
                                     device=y.device)
        num_steps = int(index[-1])
        # at step n (interval [n dt, (n + 1) dt]) the control sees the context of the first observation after n dt
        upcoming = torch.searchsorted(index, torch.arange(num_steps), right=True).to(y.device)
        path_context = context[sequence]  # (paths, num_times, context_dim)

        def control(step, t, x, ou):
            return self.control(t, x, ou, path_context[:, upcoming[step]])

        if self.guide:
            control = self._guided_control(y, index, sequence, path_context, upcoming)
        paths = solve(self.drift, self.diffusion, self.fbm.weights(), self.fbm.gammas, x0, y0,
                      self._grid(num_steps), control=control, method=self.method, generator=generator)
        return paths, loc, scale, sequence

    def _guided_control(self, y, index, sequence, path_context, context_step):
        r"""The control of the guided posterior: :func:`~.model.guided_control` towards the next ``lookahead``
        latent observations :math:`z = C^+(o - b)` (:func:`latent_observations`), handed to ``self.control``
        with its narrowing of the Brownian step, as :class:`~.model.FractionalSDE` does in observation space."""
        num_steps = int(index[-1])
        z, variance = latent_observations(self.decoder, y, self.observation_scale, self.latent_dim)
        upcoming, valid, wait_steps = (v.to(y.device) for v in upcoming_observations(index, num_steps,
                                                                                      self.lookahead))
        waits = wait_steps.double() * self.dt
        memory, kernel, covariance = guide_schedule(self.fbm.weights(), self.fbm.gammas, waits, valid, self.dt,
                                                    y.dtype)
        noise_variance = variance[:, None, None]  # per latent dimension, against (paths, d, J, J) systems
        path_z = z[sequence]  # (paths, num_times, d)

        def control(step, t, x, ou):
            targets = (path_z[:, upcoming[step]] * valid[step, :, None]).transpose(-1, -2)  # (paths, d, J)
            sigma = self.diffusion(t, x)
            guide, guide_scale = guided_control(x, ou, sigma, targets, noise_variance, memory[step], kernel[step],
                                                covariance[step], self.dt)
            return self.control(t, x, ou, path_context[:, context_step[step]], guide, guide_scale)

        return control

    def elbo(self, y, times, *, num_samples: int = 1, generator: torch.Generator | None = None) -> dict:
        """Monte Carlo ELBO of each sequence and its parts, a dict of ``(batch,)`` tensors.

        ``elbo = log_likelihood - kl_path - kl_initial``: the expected log-likelihood and the path KL
        :math:`\\tfrac12\\int|u|^2dt` averaged over ``num_samples`` posterior paths per sequence, and the
        closed-form :math:`\\mathrm{KL}(q(x_0)\\,\\|\\,N(0, I))`.
        """
        y, index = self._check_sequences(y, times)
        positive_int("num_samples", num_samples)
        batch = y.shape[0]
        paths, loc, scale, sequence = self._posterior_paths(y, index, num_samples, generator)
        mean = self.decoder(paths.x[index.to(y.device)])  # (num_times, paths, obs_dim)
        noise = torch.distributions.Normal(mean, self.observation_scale)
        log_likelihood = noise.log_prob(y[sequence].transpose(0, 1)).sum((0, 2))
        log_likelihood = log_likelihood.reshape(num_samples, batch).mean(0)
        kl_path = paths.girsanov.reshape(num_samples, batch).mean(0)
        kl_initial = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1)
        return {"elbo": log_likelihood - kl_path - kl_initial, "log_likelihood": log_likelihood,
                "kl_path": kl_path, "kl_initial": kl_initial}

    # ------------------------------------------------------------ fitting
    def fit(self, y, times, *, num_steps: int = 1000, batch_size: int = 32, num_samples: int = 1, lr: float = 1e-2,
            seed: int | None = None, progress: bool = True, callback=None, checkpoint=None,
            checkpoint_every: int = 100, resume: bool = False) -> Posterior:
        """Maximise the mean ELBO per sequence over minibatches of sequences by Adam, on the shared loop.

        Each step draws ``batch_size`` sequences without replacement and ``num_samples`` posterior paths of
        each, from a generator that depends on ``(seed, step)`` only: runs are reproducible and resume
        exactly from a checkpoint.  Returns the fit's :class:`~bayeskit.Posterior` (the final parameters as
        one draw); its ``trace`` holds ``loss`` (= -mean ELBO), the ELBO's parts, ``hurst`` and
        ``observation_scale`` per step.  ``seed`` (None draws one, recorded in ``meta["seed"]``),
        ``progress``, ``callback`` and the checkpoint arguments are those of :func:`bayeskit.runner.run_loop`.
        """
        y, _ = self._check_sequences(y, times)
        seed = resolve_seed(seed)
        positive_int("batch_size", batch_size)
        positive_int("num_samples", num_samples)
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        batch_size = min(batch_size, y.shape[0])

        def loss(step):
            generator = step_generator(seed, step)
            batch = torch.randperm(y.shape[0], generator=generator)[:batch_size].to(y.device)
            parts = self.elbo(y[batch], times, num_samples=num_samples, generator=generator)
            info = {name: value.mean().detach() for name, value in parts.items() if name != "elbo"}
            info.update(hurst=self.fbm.hurst.detach(), observation_scale=self.observation_scale.detach())
            return -parts["elbo"].mean(), info

        parameters = {name: value for name, value in self.named_parameters() if value.requires_grad}
        return Fit(loss, parameters, lr=lr, name="LatentFractionalSDE").run(
            num_steps=num_steps, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
            checkpoint_every=checkpoint_every, resume=resume)

    # ------------------------------------------------------------ prediction
    @torch.no_grad()
    def forecast(self, y_context, context_times, future_times, *, num_samples: int = 100,
                 seed: int | None = None) -> Posterior:
        r"""Paths given the observed window, then the prior SDE onward, decoded, as a :class:`~bayeskit.Posterior`.

        Over ``context_times`` the paths are posterior paths (the encoder's :math:`q(x_0)` and control);
        from the last context time on, the prior SDE runs from each path's state :math:`(X, Y)` there.
        ``future_times`` must be later than the context and on the same grid.

        ``samples`` (shape ``(1, num_samples, sequence, time, .)`` at ``time`` = context then future times):
        ``"x"`` the latent paths, ``"mean"`` the decoded means :math:`D(X)`, ``"y"`` the means plus
        observation noise (the predictive); ``observed_data["y_context"]`` the context.
        """
        y_context, index = self._check_sequences(y_context, context_times, "y_context", "context_times")
        positive_int("num_samples", num_samples)
        start = float(torch.as_tensor(context_times, dtype=torch.float64).reshape(-1)[0])
        future = self._grid_index(future_times, "future_times", start=start)
        if int(future[0]) <= int(index[-1]):
            raise ValueError("future_times must all be later than the last context time")
        seed = resolve_seed(seed)  # None draws one; meta["seed"] records it
        generator = torch.Generator().manual_seed(seed)
        paths, _, _, _ = self._posterior_paths(y_context, index, num_samples, generator)
        onward = solve(self.drift, self.diffusion, self.fbm.weights(), self.fbm.gammas, paths.x[-1], paths.y,
                       self._grid(int(future[-1]))[int(index[-1]):], method=self.method, generator=generator)
        device = y_context.device
        x = torch.cat([paths.x[index.to(device)], onward.x[(future - index[-1]).to(device)]])
        times = torch.cat([torch.as_tensor(context_times, dtype=torch.float64).reshape(-1).cpu(),
                           torch.as_tensor(future_times, dtype=torch.float64).reshape(-1).cpu()])
        return self._predictive(x, y_context, times, torch.as_tensor(context_times, dtype=torch.float64),
                                num_samples, generator, seed, "forecast")

    @torch.no_grad()
    def reconstruct(self, y, times, *, num_samples: int = 100, seed: int | None = None) -> Posterior:
        """Posterior paths of each sequence at its own ``times``, decoded (the layout of :meth:`forecast`)."""
        y, index = self._check_sequences(y, times)
        positive_int("num_samples", num_samples)
        seed = resolve_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        paths, _, _, _ = self._posterior_paths(y, index, num_samples, generator)
        times = torch.as_tensor(times, dtype=torch.float64).reshape(-1).cpu()
        return self._predictive(paths.x[index.to(y.device)], y, times, times, num_samples, generator, seed,
                                "reconstruction")

    def predictive(self, posterior, times=None) -> torch.distributions.Distribution:
        r"""The predictive of the observations at the paths' times: a mixture over the decoded paths.

        For sequence :math:`j` and time :math:`t`, over the latent paths :math:`X^s` of ``posterior``
        (from :meth:`forecast` or :meth:`reconstruct`) and their normalised weights :math:`w_s`,

        .. math:: p(o_j(t) \mid D) \approx \sum_s w_s\, N\big(o_j(t);\ D(X^s_j(t)),\ s^2 I\big),

        with the model's decoder :math:`D` and ``observation_scale`` :math:`s` (the paths are decoded
        again, so the law is the model's). ``times`` None takes every time of the posterior (the
        context then the future times of a forecast); otherwise a 1-D tensor of times among them,
        e.g. the ``future_times``.

        Returns a :class:`~torch.distributions.MixtureSameFamily` of batch shape ``(sequence, time)``
        and event shape ``(obs_dim,)``: ``log_prob(y)`` gives each frame's log predictive density
        ``(sequence, time)``. Each time is its own mixture (the marginal at that time): the paths'
        correlation across times is not in it.
        """
        x, log_weights = path_draws(posterior, times, dt=self.dt, state_dim=self.latent_dim,
                                    source="forecast or reconstruct")
        scale = self.observation_scale
        mean = self.decoder(x.to(scale))  # (S, sequence, time, obs_dim)
        if mean.shape[-1] != self.obs_dim:
            raise ValueError(f"the decoder gave {mean.shape[-1]} outputs, not obs_dim = {self.obs_dim}")
        components = torch.distributions.Independent(
            torch.distributions.Normal(mean.permute(1, 2, 0, 3), scale), 1)
        return predictive_mixture(log_weights.to(mean), components)

    def _predictive(self, x, y_context, times, context_times, num_samples, generator, seed, kind):
        """The Posterior of latent paths ``x`` ``(time, num_samples * batch, latent_dim)`` (sample-major)."""
        batch = y_context.shape[0]
        mean = self.decoder(x)
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
        draws = {"x": x, "mean": mean, "y": mean + self.observation_scale * noise}
        # (time, sample * batch, .) -> (chain = 1, draw = sample, sequence, time, .)
        samples = {name: value.reshape(value.shape[0], num_samples, batch, -1).permute(1, 2, 0, 3).unsqueeze(0)
                   for name, value in draws.items()}
        meta = {"engine": "LatentFractionalSDE", "paths": kind, "kind": self.fbm.kind,
                "hurst": float(self.fbm.hurst), "method": self.method, "dt": self.dt,
                "num_processes": self.fbm.num_processes, "gamma_max": self.fbm.gamma_max, "seed": seed,
                "observation_scale": float(self.observation_scale)}
        dims = {"x": ["sequence", "time", "latent"], "mean": ["sequence", "time", "obs"],
                "y": ["sequence", "time", "obs"], "y_context": ["sequence", "context_time", "obs"]}
        coords = {"time": times.tolist(), "context_time": context_times.reshape(-1).tolist()}
        return Posterior(samples, meta=meta, observed_data={"y_context": y_context}, dims=dims, coords=coords)

    def extra_repr(self) -> str:
        return (f"obs_dim={self.obs_dim}, latent_dim={self.latent_dim}, method={self.method}, dt={self.dt}, "
                f"observation_scale={float(self.observation_scale):.3g}")


# ----------------------------------------------------------------------------- data
def stochastic_lorenz(num_sequences: int, num_times: int, *, dt: float = 0.05, noise: float = 0.01,
                      seed: int | None = None, diffusion: float = 0.15, max_step: float = 0.005, dtype=None):
    r"""Sequences of the stochastic Lorenz attractor, the standard synthetic benchmark of latent SDEs.

    The data set of torchsde's latent-SDE example (Li et al. 2020): the Ito SDE

    .. math::

        dx_1 = 10 (x_2 - x_1)\,dt + \alpha x_1\,dW_1, \quad
        dx_2 = (x_1 (28 - x_3) - x_2)\,dt + \alpha x_2\,dW_2, \quad
        dx_3 = (x_1 x_2 - \tfrac83 x_3)\,dt + \alpha x_3\,dW_3

    (:math:`\sigma = 10, \rho = 28, \beta = 8/3`, multiplicative noise :math:`\alpha` = ``diffusion``)
    from :math:`x(0) \sim N(0, I)`, simulated by Euler-Maruyama with steps of at most ``max_step``,
    recorded every ``dt``, normalised per coordinate by the mean and sd over all sequences and
    frames, plus N(0, ``noise``\ :sup:`2`) observation noise.  Returns ``y``
    ``(num_sequences, num_times, 3)`` and ``times = dt * arange(num_times)`` (default dtype; CPU).
    Generate train and test sequences in one call so that they share the normalisation.
    """
    positive_int("num_sequences", num_sequences)
    positive_int("num_times", num_times)
    for name, value in (("dt", dt), ("max_step", max_step)):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a positive number, got {value!r}")
    for name, value in (("noise", noise), ("diffusion", diffusion)):
        if not (isinstance(value, (int, float)) and value >= 0):
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")
    dtype = torch.get_default_dtype() if dtype is None else dtype
    generator = torch.Generator().manual_seed(resolve_seed(seed))
    substeps = max(1, math.ceil(dt / max_step - 1e-9))
    step = dt / substeps
    x = torch.randn(num_sequences, 3, generator=generator, dtype=torch.float64)
    frames = [x]
    for _ in range(num_times - 1):
        for _ in range(substeps):
            drift = torch.stack([10.0 * (x[:, 1] - x[:, 0]), x[:, 0] * (28.0 - x[:, 2]) - x[:, 1],
                                 x[:, 0] * x[:, 1] - 8.0 / 3.0 * x[:, 2]], -1)
            dw = torch.randn(x.shape, generator=generator, dtype=torch.float64) * math.sqrt(step)
            x = x + drift * step + diffusion * x * dw
        frames.append(x)
    y = torch.stack(frames, 1)
    y = (y - y.mean((0, 1))) / y.std((0, 1))
    y = y + noise * torch.randn(y.shape, generator=generator, dtype=torch.float64)
    times = torch.arange(num_times, dtype=torch.float64) * dt
    return y.to(dtype), times.to(dtype)
