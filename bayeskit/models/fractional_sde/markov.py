r"""Markov-approximate fractional Brownian motion (MA-fBM).

Fractional Brownian motion is not Markov, so an SDE driven by it cannot be
simulated or conditioned step by step.  MA-fBM replaces it by a weighted sum
of :math:`K` Ornstein-Uhlenbeck processes that share one Brownian motion,

.. math::

    \hat B^H(t) = \sum_{k=1}^K \omega_k \bigl(Y_k(t) - Y_k(0)\bigr), \qquad
    dY_k = -\gamma_k Y_k\,dt + dW(t),

with speeds on a geometric grid :math:`\gamma_k = r^{k-(K+1)/2}`,
:math:`r = \gamma_{\max}^{2/(K-1)}` (Harms and Stefanovits 2019; Daems,
Opper, Crevecoeur and Birdal, "Variational inference for SDEs driven by
fractional noise", ICLR 2024).  The weights :math:`\omega(H)` minimise the
integrated mean-squared error :math:`\int_0^T E(\hat B^H - B^H)^2 dt`, a
linear system :math:`A\omega = b` in closed form:

- **type I** (Mandelbrot-van Ness): :math:`B^H(t) = \Gamma(H+\tfrac12)^{-1}
  \int_{-\infty}^t [(t-s)_+^{H-1/2} - (-s)_+^{H-1/2}] dW(s)`, stationary
  increments; :math:`Y_k(0)` is drawn from the stationary law
  :math:`N(0, 1/(\gamma_i+\gamma_j))`.  This process has variance
  :math:`V_H t^{2H}` with :math:`V_H = 1/(\Gamma(2H+1)\sin \pi H)`; the
  weights are rescaled by :math:`V_H^{-1/2}` so that the approximation
  targets *standard* fBM (variance :math:`t^{2H}`).
- **type II** (Riemann-Liouville): :math:`B^H(t) = \Gamma(H+\tfrac12)^{-1}
  \int_0^t (t-s)^{H-1/2} dW(s)`, :math:`Y_k(0) = 0`.

Type I:
:math:`A_{ij} = [2T + (e^{-\gamma_i T}-1)/\gamma_i + (e^{-\gamma_j T}-1)/\gamma_j]
/(\gamma_i+\gamma_j)`,
:math:`b_k = 2T\gamma_k^{-(H+1/2)} - T^{H+1/2}/(\gamma_k \Gamma(H+3/2))
+ [e^{-\gamma_k T} - Q(H+\tfrac12, \gamma_k T) e^{\gamma_k T}]\gamma_k^{-(H+3/2)}`.

Type II:
:math:`A_{ij} = [T + (e^{-(\gamma_i+\gamma_j)T} - 1)/(\gamma_i+\gamma_j)]/(\gamma_i+\gamma_j)`,
:math:`b_k = T\gamma_k^{-(H+1/2)}P(H+\tfrac12, \gamma_k T)
- (H+\tfrac12)\gamma_k^{-(H+3/2)}P(H+\tfrac32, \gamma_k T)`,

with :math:`P, Q` the regularised incomplete gamma functions.  Everything is
computed in float64 (``A`` is badly conditioned) and is differentiable in
:math:`H`: torch's incomplete gamma has no gradient in its first argument,
so :func:`regularized_gamma_p` and :func:`scaled_gamma_q` supply one.
"""

from __future__ import annotations

import math

import torch

__all__ = ["KINDS", "MarkovFBM", "approximation_error", "canonical_kind", "mvn_variance_factor", "optimal_weights",
           "ou_covariance", "regularized_gamma_p", "scaled_gamma_q", "speed_grid"]

#: Accepted names of the two fBM definitions; the first of each pair is the canonical one.
KINDS = {"mandelbrot_van_ness": "mandelbrot_van_ness", "I": "mandelbrot_van_ness", "type_I": "mandelbrot_van_ness",
         "riemann_liouville": "riemann_liouville", "II": "riemann_liouville", "type_II": "riemann_liouville"}

# Above this x, Q(a, x) e^x is evaluated by its continued fraction: e^x overflows float64 at x ~ 709.
_CONTINUED_FRACTION_FROM = 100.0
_CONTINUED_FRACTION_TERMS = 40


def canonical_kind(kind: str) -> str:
    """``"mandelbrot_van_ness"`` (type I) or ``"riemann_liouville"`` (type II) from any accepted alias."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def speed_grid(num_processes: int = 5, gamma_max: float = 20.0, *, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Geometric grid of OU speeds on :math:`[1/\gamma_{\max}, \gamma_{\max}]`, ``(num_processes,)``."""
    if not isinstance(num_processes, int) or isinstance(num_processes, bool) or num_processes < 1:
        raise ValueError(f"num_processes must be a positive int, got {num_processes!r}")
    if not gamma_max > 1:
        raise ValueError(f"gamma_max must be > 1, got {gamma_max!r}")
    if num_processes == 1:
        return torch.ones(1, dtype=dtype, device=device)
    ratio = gamma_max ** (2.0 / (num_processes - 1))
    exponents = torch.arange(1, num_processes + 1, dtype=dtype, device=device) - (num_processes + 1) / 2
    return ratio ** exponents


# ----------------------------------------------------------------------------- special functions
def _gamma_q_continued_fraction(a, x):
    """Q(a, x) e^x by Legendre's continued fraction (modified Lentz), accurate for x >> a."""
    tiny = 1e-300
    b = x + 1 - a
    c = torch.full_like(b, 1 / tiny)
    d = 1 / b
    h = d
    for i in range(1, _CONTINUED_FRACTION_TERMS + 1):
        an = -i * (i - a)
        b = b + 2
        d = an * d + b
        d = torch.where(d.abs() < tiny, torch.full_like(d, tiny), d)
        c = b + an / c
        c = torch.where(c.abs() < tiny, torch.full_like(c, tiny), c)
        d = 1 / d
        h = h * d * c
    return torch.exp(a * torch.log(x) - torch.lgamma(a)) * h


def _scaled_gamma_q_value(a, x):
    direct = torch.special.gammaincc(a, x) * torch.exp(torch.clamp(x, max=_CONTINUED_FRACTION_FROM))
    fraction = _gamma_q_continued_fraction(a, torch.clamp(x, min=_CONTINUED_FRACTION_FROM))
    return torch.where(x < _CONTINUED_FRACTION_FROM, direct, fraction)


def _a_derivative(function, a, x):
    """d function / da by a central difference in float64: the error is ~1e-10, far below what the weights need."""
    step = 1e-6 * torch.clamp(a.abs(), min=1.0)
    return (function(a + step, x) - function(a - step, x)) / (2 * step)


class _RegularizedGammaP(torch.autograd.Function):
    @staticmethod
    def forward(a, x):
        return torch.special.gammainc(a, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, grad):
        a, x = ctx.saved_tensors
        grad_a = grad_x = None
        if ctx.needs_input_grad[0]:
            # dP/da = -dQ/da: difference whichever of P, Q is below 1/2, so rounding stays relative to it
            lower = _a_derivative(torch.special.gammainc, a, x)
            upper = -_a_derivative(torch.special.gammaincc, a, x)
            grad_a = grad * torch.where(torch.special.gammainc(a, x) < 0.5, lower, upper)
        if ctx.needs_input_grad[1]:
            grad_x = grad * torch.exp((a - 1) * torch.log(x) - x - torch.lgamma(a))
        return grad_a, grad_x


class _ScaledGammaQ(torch.autograd.Function):
    @staticmethod
    def forward(a, x):
        return _scaled_gamma_q_value(a, x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs, output)

    @staticmethod
    def backward(ctx, grad):
        a, x, value = ctx.saved_tensors
        grad_a = grad_x = None
        if ctx.needs_input_grad[0]:
            grad_a = grad * _a_derivative(_scaled_gamma_q_value, a, x)
        if ctx.needs_input_grad[1]:  # d/dx [Q e^x] = Q e^x - x^(a-1) / Gamma(a)
            grad_x = grad * (value - torch.exp((a - 1) * torch.log(x) - torch.lgamma(a)))
        return grad_a, grad_x


def regularized_gamma_p(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Regularised lower incomplete gamma :math:`P(a, x)`, differentiable in both ``a`` and ``x``."""
    a, x = torch.broadcast_tensors(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(x, dtype=torch.float64))
    return _RegularizedGammaP.apply(a, x)


def scaled_gamma_q(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r""":math:`Q(a, x)\,e^x` (regularised upper incomplete gamma times :math:`e^x`) without overflow.

    Direct below ``x = 100``, Legendre's continued fraction above (where it
    converges in a few terms); differentiable in ``a`` and ``x``.
    """
    a, x = torch.broadcast_tensors(torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(x, dtype=torch.float64))
    return _ScaledGammaQ.apply(a, x)


# ----------------------------------------------------------------------------- optimal weights
def _as_hurst(hurst) -> torch.Tensor:
    hurst = torch.as_tensor(hurst, dtype=torch.float64)
    if hurst.dim() != 0:
        raise ValueError(f"hurst must be a scalar, got shape {tuple(hurst.shape)}")
    if not 0 < float(hurst.detach()) < 1:
        raise ValueError(f"hurst must lie in (0, 1), got {float(hurst.detach())}")
    return hurst


def mvn_variance_factor(hurst: torch.Tensor) -> torch.Tensor:
    r""":math:`V_H = 1/(\Gamma(2H+1)\sin\pi H)`: the variance at t = 1 of type-I fBM with the 1/Gamma(H+1/2) kernel."""
    return 1.0 / (torch.exp(torch.lgamma(2 * hurst + 1)) * torch.sin(math.pi * hurst))


def _normal_equations(hurst, gammas, horizon, kind):
    """The matrix A, the vector b and the cost c = int_0^T E B(t)^2 dt of the least-squares problem."""
    T, g = horizon, gammas
    total = g[:, None] + g[None, :]
    a = hurst + 0.5
    decay = torch.exp(-g * T)
    if kind == "riemann_liouville":
        A = (T + (torch.exp(-total * T) - 1) / total) / total
        b = T * g ** (-a) * regularized_gamma_p(a, g * T) - a * g ** (-(a + 1)) * regularized_gamma_p(a + 1, g * T)
        c = T ** (2 * hurst + 1) / (2 * hurst * (2 * hurst + 1) * torch.exp(2 * torch.lgamma(a)))
    else:
        one_sided = (decay - 1) / g
        A = (2 * T + one_sided[:, None] + one_sided[None, :]) / total
        b = (2 * T * g ** (-a) - T**a / (g * torch.exp(torch.lgamma(a + 1)))
             + (decay - scaled_gamma_q(a, g * T)) * g ** (-(a + 1)))
        c = mvn_variance_factor(hurst) * T ** (2 * hurst + 1) / (2 * hurst + 1)
    return A, b, c


def optimal_weights(hurst, gammas: torch.Tensor, horizon: float = 1.0, kind: str = "mandelbrot_van_ness", *,
                    normalize: bool = True) -> torch.Tensor:
    r"""Weights :math:`\omega(H)` minimising :math:`\int_0^T E(\hat B^H - B^H)^2 dt`, float64, differentiable in H.

    Parameters
    ----------
    hurst : float or 0-d tensor in (0, 1)
        The Hurst index; gradients flow through a tensor with ``requires_grad``.
    gammas : tensor ``(K,)``
        OU speeds, e.g. :func:`speed_grid`.
    horizon : float
        The time ``T`` of the integrated error.
    kind : str
        ``"mandelbrot_van_ness"`` (``"I"``) or ``"riemann_liouville"`` (``"II"``).
    normalize : bool
        Type I only: rescale so that the target is standard fBM (variance
        :math:`t^{2H}`) rather than the 1/Gamma(H+1/2)-kernel process.
    """
    kind = canonical_kind(kind)
    hurst = _as_hurst(hurst)
    gammas = torch.as_tensor(gammas, dtype=torch.float64, device=hurst.device)
    if not horizon > 0:
        raise ValueError(f"horizon must be positive, got {horizon!r}")
    A, b, _ = _normal_equations(hurst, gammas, float(horizon), kind)
    weights = torch.linalg.solve(A, b)
    if kind == "mandelbrot_van_ness" and normalize:
        weights = weights / mvn_variance_factor(hurst).sqrt()
    return weights


def approximation_error(hurst, gammas: torch.Tensor, horizon: float = 1.0,
                        kind: str = "mandelbrot_van_ness") -> torch.Tensor:
    r"""Relative integrated MSE :math:`\int_0^T E(\hat B^H-B^H)^2dt / \int_0^T E(B^H)^2 dt = 1 - b^T\omega/c`."""
    kind = canonical_kind(kind)
    hurst = _as_hurst(hurst)
    gammas = torch.as_tensor(gammas, dtype=torch.float64, device=hurst.device)
    A, b, c = _normal_equations(hurst, gammas, float(horizon), kind)
    return 1 - b @ torch.linalg.solve(A, b) / c


# ----------------------------------------------------------------------------- the process
def ou_covariance(gammas: torch.Tensor, s: torch.Tensor, t: torch.Tensor, kind: str) -> torch.Tensor:
    r""":math:`\mathrm{Cov}(Y_i(s), Y_j(t))` of the K OU processes, ``(..., len(s), len(t), K, K)``.

    One Brownian motion drives all of them, so the covariance is
    :math:`e^{-\gamma_i (s-m) - \gamma_j (t-m)} (1 - e^{-(\gamma_i+\gamma_j) m})/(\gamma_i+\gamma_j)` with
    :math:`m = \min(s, t)` from :math:`Y(0) = 0` (type II), and without the bracket from the stationary start (type I).
    """
    s, t = s[..., :, None, None, None], t[..., None, :, None, None]  # batched over leading dimensions
    gi, gj = gammas[:, None], gammas[None, :]
    m = torch.minimum(s, t)
    cov = torch.exp(-gi * (s - m) - gj * (t - m)) / (gi + gj)
    if canonical_kind(kind) == "riemann_liouville":
        cov = cov * (1 - torch.exp(-(gi + gj) * m))
    return cov


class MarkovFBM(torch.nn.Module):
    r"""Markov-approximate fBM: K OU speeds, a kind (type I or II), a Hurst index (fixed or learnable).

    Parameters
    ----------
    hurst : float in (0, 1)
        Initial (or fixed) Hurst index.
    kind : str
        ``"mandelbrot_van_ness"`` / ``"I"`` (stationary increments; the
        default) or ``"riemann_liouville"`` / ``"II"``.
    num_processes : int
        K, the number of OU processes per driven dimension (authors: 5).
    gamma_max : float
        The fastest speed; the grid spans :math:`[1/\gamma_{\max}, \gamma_{\max}]` (authors: 20).
    horizon : float
        T of the integrated error that the weights minimise: the length of
        the interval the process is used on.
    learn_hurst : bool
        Make H a parameter, stored as ``logit(H)`` so any value maps into (0, 1).

    Notes
    -----
    ``weights()`` is recomputed from H on each call (a 5x5 float64 solve),
    so gradients reach H through every use.
    """

    def __init__(self, hurst: float = 0.5, *, kind: str = "mandelbrot_van_ness", num_processes: int = 5,
                 gamma_max: float = 20.0, horizon: float = 1.0, learn_hurst: bool = False):
        super().__init__()
        self.kind = canonical_kind(kind)
        _as_hurst(hurst)
        if not horizon > 0:
            raise ValueError(f"horizon must be positive, got {horizon!r}")
        speed_grid(num_processes, gamma_max)  # validates both
        self.num_processes, self.gamma_max, self.horizon = num_processes, float(gamma_max), float(horizon)
        logit = torch.logit(torch.tensor(float(hurst), dtype=torch.float64))
        if learn_hurst:
            self.hurst_logit = torch.nn.Parameter(logit)
        else:
            self.register_buffer("hurst_logit", logit)

    @property
    def gammas(self) -> torch.Tensor:
        """The OU speeds ``(K,)``, float64 on the module's device (recomputed: a module cast cannot round them)."""
        return speed_grid(self.num_processes, self.gamma_max, device=self.hurst_logit.device)

    @property
    def hurst(self) -> torch.Tensor:
        """H as a 0-d float64 tensor (differentiable when learnable)."""
        return torch.sigmoid(self.hurst_logit.double())

    def weights(self) -> torch.Tensor:
        """The optimal weights ``(K,)`` at the current H, float64."""
        return optimal_weights(self.hurst, self.gammas, self.horizon, self.kind)

    def approximation_error(self) -> torch.Tensor:
        """Relative integrated MSE on [0, horizon] at the current H."""
        return approximation_error(self.hurst, self.gammas, self.horizon, self.kind)

    def initial_covariance(self) -> torch.Tensor:
        """Covariance ``(K, K)`` of :math:`Y(0)`: stationary, :math:`1/(\\gamma_i+\\gamma_j)` (type I), or zero (II)."""
        if self.kind == "riemann_liouville":
            return torch.zeros(self.num_processes, self.num_processes, dtype=self.gammas.dtype,
                               device=self.gammas.device)
        return 1 / (self.gammas[:, None] + self.gammas[None, :])

    def covariance(self, times: torch.Tensor) -> torch.Tensor:
        r"""Exact covariance ``(n, n)`` of :math:`\hat B^H` at ``times`` (closed form, float64)."""
        times = torch.as_tensor(times, dtype=torch.float64, device=self.gammas.device)
        zero = times.new_zeros(1)
        weights = self.weights()
        cov = ou_covariance(self.gammas, times, times, self.kind)
        if self.kind == "mandelbrot_van_ness":  # increments Y(t) - Y(0) of the stationary process
            cov = (cov - ou_covariance(self.gammas, times, zero, self.kind)
                   - ou_covariance(self.gammas, zero, times, self.kind)
                   + ou_covariance(self.gammas, zero, zero, self.kind))
        return torch.einsum("i,stij,j->st", weights, cov, weights)

    def sample_initial(self, shape, *, generator=None, dtype=torch.float64, device=None) -> torch.Tensor:
        """Draws of :math:`Y(0)`, ``(*shape, K)``: stationary (type I) or zeros (type II).

        Drawn on the CPU from ``generator`` (reproducible on any device), then moved to ``device``.
        """
        device = self.gammas.device if device is None else device
        if self.kind == "riemann_liouville":
            return torch.zeros(*shape, self.num_processes, dtype=dtype, device=device)
        noise = torch.randn(*shape, self.num_processes, generator=generator, dtype=torch.float64)
        factor = torch.linalg.cholesky(self.initial_covariance().cpu())
        return (noise @ factor.mT).to(dtype=dtype, device=device)

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, H={float(self.hurst):.3f}, K={self.num_processes}, "
                f"gamma_max={self.gamma_max}, horizon={self.horizon}")
