r"""Exact fractional Brownian motion: covariances and samplers, the ground truth for MA-fBM.

Two definitions of fBM with Hurst index :math:`H \in (0, 1)` are used in this package:

- **Mandelbrot-van Ness** (type I, Mandelbrot and Van Ness 1968), here *standard* fBM, the centred
  Gaussian process with stationary increments and

  .. math:: \operatorname{Cov}(B^H_t, B^H_s) = \tfrac12\bigl(t^{2H} + s^{2H} - |t-s|^{2H}\bigr).

- **Riemann-Liouville** (type II, Lévy 1953; Marinucci and Robinson 1999),
  :math:`B^H_t = \Gamma(H+\tfrac12)^{-1}\int_0^t (t-u)^{H-1/2}\,dW_u`, whose increments are not
  stationary.  For :math:`0 < s \le t`, with :math:`a = H - \tfrac12`,

  .. math::

      \operatorname{Cov}(B^H_t, B^H_s)
      = \frac{1}{\Gamma(H+\frac12)^2}\int_0^s (t-u)^a (s-u)^a\,du
      = \frac{1}{\Gamma(H+\frac12)^2}\,\frac{s^{a+1}(t-s)^a}{a+1}\,
        {}_2F_1\Bigl(-a, a+1; a+2; -\frac{s}{t-s}\Bigr).

  The argument :math:`-s/(t-s)` runs to :math:`-\infty` as :math:`s \to t`.  Pfaff's transformation
  :math:`{}_2F_1(\alpha,\beta;\gamma;z) = (1-z)^{-\alpha}\,{}_2F_1(\alpha, \gamma-\beta; \gamma; z/(z-1))`
  maps it to :math:`z/(z-1) = s/t \in (0, 1]` and gives the form evaluated here,

  .. math::

      \operatorname{Cov}(B^H_t, B^H_s) = \frac{s^{H+1/2}\,t^{H-1/2}}{(H+\frac12)\,\Gamma(H+\frac12)^2}\,
      {}_2F_1\Bigl(\tfrac12 - H, 1; H + \tfrac32; \frac{s}{t}\Bigr),

  a series that converges on all of :math:`[0, 1]` (:math:`\gamma - \alpha - \beta = 2H > 0`).  At
  :math:`s = t` Gauss's sum gives the variance :math:`t^{2H} / (2H\,\Gamma(H+\frac12)^2)`.

Samplers: :func:`sample_fbm_cholesky` (any times, either kind, :math:`O(n^3)`) and
:func:`sample_fbm_davies_harte` (standard fBM on a uniform grid by circulant embedding of fractional
Gaussian noise, :math:`O(n \log n)` per path; Davies and Harte 1987; Dietrich and Newsam 1997).

References: B. B. Mandelbrot and J. W. Van Ness, "Fractional Brownian motions, fractional noises and
applications", SIAM Review 10 (1968).  P. Lévy, "Random functions: general theory with special reference
to Laplacian random functions", Univ. California Publ. Statist. 1 (1953).  D. Marinucci and P. M.
Robinson, "Alternative forms of fractional Brownian motion", J. Statist. Plann. Inference 80 (1999).
R. B. Davies and D. S. Harte, "Tests for Hurst effect", Biometrika 74 (1987).  C. R. Dietrich and G. N.
Newsam, "Fast and exact simulation of stationary Gaussian processes through circulant embedding of the
covariance matrix", SIAM J. Sci. Comput. 18 (1997).
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.special
import torch

from bayeskit._checks import positive_int
from bayeskit.models.fractional_sde.markov import canonical_kind

__all__ = ["fbm_covariance", "fgn_autocovariance", "sample_fbm_cholesky", "sample_fbm_davies_harte", "sample_fou"]

# Negative circulant eigenvalues up to this fraction of the largest are rounding and are set to zero.
_EIGENVALUE_CLIP = 1e-10
# Cholesky jitter: first try 1e-12 * max diag, then ten times more each time, up to 1e-6 * max diag.
_JITTER_START, _JITTER_GROWTH, _JITTER_STOP = 1e-12, 10.0, 1e-6


def _check_hurst(hurst) -> torch.Tensor | float:
    """``hurst`` as given (float or 0-d floating tensor) after checking it lies in (0, 1)."""
    if isinstance(hurst, torch.Tensor):
        if hurst.ndim != 0 or not hurst.is_floating_point():
            raise ValueError(f"hurst must be a float or a 0-d floating tensor, got a tensor of shape "
                             f"{tuple(hurst.shape)} and dtype {hurst.dtype}")
        value = float(hurst.detach())
    elif isinstance(hurst, numbers.Real) and not isinstance(hurst, bool):
        value = hurst = float(hurst)
    else:
        raise ValueError(f"hurst must be a float or a 0-d floating tensor, got {type(hurst).__name__}")
    if not 0.0 < value < 1.0:
        raise ValueError(f"hurst must lie in the open interval (0, 1), got {value!r}")
    return hurst


def _check_times(times) -> torch.Tensor:
    """``times`` as a 1-D floating tensor (float64 unless already floating), finite and >= 0."""
    if not isinstance(times, torch.Tensor):
        times = torch.as_tensor(times, dtype=torch.float64)
    elif not times.is_floating_point():
        times = times.to(torch.float64)
    if times.ndim != 1:
        raise ValueError(f"times must be a 1-D tensor, got shape {tuple(times.shape)}")
    if not bool(torch.isfinite(times).all()):
        raise ValueError("times must be finite")
    if bool((times < 0).any()):
        raise ValueError(f"times must be >= 0, got a minimum of {float(times.min())!r}")
    return times


def _riemann_liouville_covariance(times: np.ndarray, hurst: float) -> np.ndarray:
    """Type II covariance matrix in float64 numpy through the Pfaff-transformed hypergeometric form."""
    late = np.maximum.outer(times, times)
    early = np.minimum.outer(times, times)
    cov = np.zeros_like(late)
    positive = early > 0  # Cov(B_0, .) = 0
    t, s = late[positive], early[positive]
    scale = 1.0 / ((hurst + 0.5) * math.gamma(hurst + 0.5) ** 2)
    hyper = scipy.special.hyp2f1(0.5 - hurst, 1.0, hurst + 1.5, s / t)
    cov[positive] = scale * s ** (hurst + 0.5) * t ** (hurst - 0.5) * hyper
    # On the diagonal use Gauss's sum exactly, so the variance is t^{2H} / (2H Gamma(H+1/2)^2) to the last bit.
    diagonal = np.diag_indices_from(cov)
    cov[diagonal] = times ** (2 * hurst) / (2 * hurst * math.gamma(hurst + 0.5) ** 2)
    return cov


def fbm_covariance(times, hurst, kind: str = "mandelbrot_van_ness") -> torch.Tensor:
    r"""Covariance matrix ``(n, n)`` of fBM at ``times`` (1-D, :math:`t \ge 0`).

    ``kind="mandelbrot_van_ness"`` (alias ``"I"``): standard fBM,
    :math:`\tfrac12(t^{2H} + s^{2H} - |t-s|^{2H})`, computed in torch and differentiable in ``hurst``.
    ``kind="riemann_liouville"`` (alias ``"II"``): the Riemann-Liouville process of the module docstring,
    evaluated through :func:`scipy.special.hyp2f1` in float64 on the host, so it carries no gradient
    (a ``hurst`` that requires one is refused).  At :math:`H = 1/2` both are Brownian motion,
    :math:`\min(t, s)`.

    ``hurst`` is a float or a 0-d tensor in :math:`(0, 1)`.  The result has the dtype and device of
    ``times`` (float64 when ``times`` is not a floating tensor).
    """
    kind = canonical_kind(kind)
    hurst = _check_hurst(hurst)
    times = _check_times(times)
    if kind == "mandelbrot_van_ness":
        two_h = 2 * (hurst.to(times) if isinstance(hurst, torch.Tensor) else hurst)
        powers = times ** two_h
        lags = (times[:, None] - times[None, :]).abs() ** two_h
        return 0.5 * (powers[:, None] + powers[None, :] - lags)
    if isinstance(hurst, torch.Tensor) and hurst.requires_grad:
        raise ValueError("hurst requires grad, but the riemann_liouville covariance is computed by scipy "
                         "and carries no gradient; pass hurst.detach()")
    cov = _riemann_liouville_covariance(times.detach().cpu().to(torch.float64).numpy(), float(hurst))
    return torch.as_tensor(cov).to(dtype=times.dtype, device=times.device)


def _cholesky_with_jitter(cov: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of ``cov``; on failure adds a growing diagonal jitter (see the caller)."""
    factor, info = torch.linalg.cholesky_ex(cov)
    if int(info) == 0:
        return factor
    scale = float(cov.diagonal().max())
    jitter = _JITTER_START
    while jitter <= _JITTER_STOP:
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        factor, info = torch.linalg.cholesky_ex(cov + jitter * scale * eye)
        if int(info) == 0:
            return factor
        jitter *= _JITTER_GROWTH
    raise ValueError(f"the fBM covariance at these times is not positive definite even with a diagonal "
                     f"jitter of {_JITTER_STOP:g} * max variance; are there (nearly) repeated times?")


def sample_fbm_cholesky(times, hurst, num_paths: int, *, kind: str = "mandelbrot_van_ness",
                        generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Exact fBM paths ``(num_paths, n)`` at arbitrary ``times`` by a Cholesky factor of the covariance.

    :math:`X = Z L^\top` with :math:`L L^\top = \Sigma` = :func:`fbm_covariance` at the times
    :math:`t > 0` and :math:`Z` standard normal; columns at :math:`t = 0` (where :math:`B_0 = 0` and the
    covariance row is zero, so :math:`\Sigma` is singular) are set to zero.  The factorisation is done in
    float64 whatever the dtype of ``times``; no jitter is added while it succeeds.  If it fails
    (repeated or nearly repeated times make :math:`\Sigma` singular), it is retried with a diagonal
    jitter of :math:`10^{-12}\max_i \Sigma_{ii}`, ten times larger at each failure, and a
    ``ValueError`` is raised beyond :math:`10^{-6}\max_i \Sigma_{ii}`.  Cost :math:`O(n^3 + P n^2)`.

    ``generator`` must live on the device of ``times``.  The result has the dtype and device of ``times``.
    """
    kind = canonical_kind(kind)
    hurst = _check_hurst(hurst)
    times = _check_times(times)
    num_paths = positive_int("num_paths", num_paths)
    paths = torch.zeros(num_paths, times.shape[0], dtype=torch.float64, device=times.device)
    positive = times > 0
    if bool(positive.any()):
        if isinstance(hurst, torch.Tensor):
            hurst = hurst.to(torch.float64)
        cov = fbm_covariance(times[positive].to(torch.float64), hurst, kind)
        factor = _cholesky_with_jitter(cov)
        noise = torch.randn(num_paths, factor.shape[0], generator=generator, dtype=torch.float64,
                            device=times.device)
        paths[:, positive] = noise @ factor.T
    return paths.to(times.dtype)


def fgn_autocovariance(num_lags: int, hurst, *, dtype=torch.float64, device=None) -> torch.Tensor:
    r"""Autocovariance of unit-step fractional Gaussian noise at lags :math:`0, \dots,` ``num_lags``.

    :math:`\gamma(k) = \tfrac12(|k+1|^{2H} - 2|k|^{2H} + |k-1|^{2H})`, the covariance of the increments
    :math:`B^H_{j+1} - B^H_j` and :math:`B^H_{j+k+1} - B^H_{j+k}` of standard fBM.
    """
    lags = torch.arange(num_lags + 1, dtype=dtype, device=device)
    two_h = 2 * (hurst.to(dtype=dtype, device=lags.device) if isinstance(hurst, torch.Tensor) else hurst)
    return 0.5 * ((lags + 1) ** two_h - 2 * lags ** two_h + (lags - 1).abs() ** two_h)


def circulant_eigenvalues(num_steps: int, hurst, device) -> torch.Tensor:
    """Eigenvalues ``(2 m,)`` of the minimal circulant embedding of the fGn covariance, in float64."""
    gamma = fgn_autocovariance(num_steps, hurst, dtype=torch.float64, device=device)
    # First row of the circulant: gamma(0), ..., gamma(m), gamma(m-1), ..., gamma(1).
    row = torch.cat([gamma, gamma[1:-1].flip(0)])
    # The row is real and symmetric (row[k] = row[2m-k]), so its DFT is real.
    eigenvalues = torch.fft.fft(row).real
    smallest, largest = float(eigenvalues.min()), float(eigenvalues.max())
    if smallest < -_EIGENVALUE_CLIP * largest:
        raise ValueError(f"the circulant embedding of fractional Gaussian noise has a negative eigenvalue "
                         f"{smallest:.3e} (largest {largest:.3e}) beyond rounding; hurst={float(hurst)!r}, "
                         f"num_steps={num_steps}")
    return eigenvalues.clamp_min(0.0)


def sample_fbm_davies_harte(num_steps: int, hurst, num_paths: int, *, horizon: float = 1.0,
                            generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Exact standard (Mandelbrot-van Ness) fBM on the grid :math:`0, h, \dots, T`, ``(num_paths, m + 1)``.

    Davies-Harte / circulant embedding (Davies and Harte 1987; Dietrich and Newsam 1997).  The
    covariance :math:`\gamma(|j-k|)` of :math:`m` = ``num_steps`` increments of unit-step fractional
    Gaussian noise (:func:`fgn_autocovariance`) is the top-left block of the :math:`2m \times 2m`
    circulant with first row :math:`c = (\gamma(0), \dots, \gamma(m), \gamma(m-1), \dots, \gamma(1))`,
    whose eigenvalues are :math:`\lambda = \mathrm{DFT}(c)`; they are nonnegative for every
    :math:`H \in (0, 1)` (negatives of rounding size, at most :math:`10^{-10}\max\lambda`, are set to
    zero; larger ones raise a ``ValueError``).  With :math:`F` the DFT matrix and
    :math:`\zeta = \xi + i\eta`, :math:`\xi, \eta` independent standard normal vectors,
    :math:`w = F\,\mathrm{diag}(\sqrt{\lambda/2m})\,\zeta` satisfies :math:`E[w w^*] = 2C`,
    :math:`E[w w^\top] = 0`, so :math:`\operatorname{Re} w` and :math:`\operatorname{Im} w` are two
    independent draws with covariance :math:`C`: each FFT yields two paths.  Their first :math:`m`
    entries, scaled by :math:`h^H = (T/m)^H` (self-similarity), are the increments; the cumulative sum
    with :math:`B_0 = 0` prepended is the path.  Cost :math:`O(P\,m \log m)`, batched over paths.

    ``horizon`` is :math:`T > 0`.  ``hurst`` is a float or 0-d tensor in :math:`(0, 1)`.  The work is done
    in float64; the result has the dtype and device of ``hurst`` when it is a tensor, else float64 on the
    device of ``generator`` (CPU without one).
    """
    num_steps = positive_int("num_steps", num_steps)
    hurst = _check_hurst(hurst)
    num_paths = positive_int("num_paths", num_paths)
    if not isinstance(horizon, numbers.Real) or isinstance(horizon, bool) or not 0 < horizon < math.inf:
        raise ValueError(f"horizon must be a positive finite number, got {horizon!r}")
    if isinstance(hurst, torch.Tensor):
        dtype, device = hurst.dtype, hurst.device
    else:
        dtype, device = torch.float64, (generator.device if generator is not None else torch.device("cpu"))
    eigenvalues = circulant_eigenvalues(num_steps, hurst, device)
    size = 2 * num_steps
    num_draws = (num_paths + 1) // 2
    noise = torch.randn(2, num_draws, size, generator=generator, dtype=torch.float64, device=device)
    spectrum = torch.sqrt(eigenvalues / size) * torch.complex(noise[0], noise[1])
    both = torch.fft.fft(spectrum, dim=-1)[:, :num_steps]
    increments = torch.cat([both.real, both.imag])[:num_paths]
    h_power = (horizon / num_steps) ** (hurst.to(torch.float64) if isinstance(hurst, torch.Tensor) else hurst)
    paths = torch.cat([increments.new_zeros(num_paths, 1), torch.cumsum(h_power * increments, dim=-1)], dim=-1)
    return paths.to(dtype)


def sample_fou(num_paths: int, hurst, *, theta: float = 1.0, sigma: float = 1.0, horizon: float = 1.0,
               num_steps: int = 100, kind: str = "riemann_liouville",
               generator: torch.Generator | None = None) -> torch.Tensor:
    r"""Fractional Ornstein-Uhlenbeck paths driven by exact fBM.

    :math:`dX = -\theta X\,dt + \sigma\,dB^H`, :math:`X(0) = 0`.

    The fBM is exact on the grid (:func:`sample_fbm_cholesky` for either kind); the OU part is an
    Euler step on it, :math:`X_{k+1} = (1 - \theta h) X_k + \sigma (B^H_{k+1} - B^H_k)`, exact as
    :math:`h \to 0` and the data of the Hurst-recovery checks.  Returns ``(num_paths, num_steps + 1)``
    in float64.
    """
    num_steps = positive_int("num_steps", num_steps)
    step = float(horizon) / num_steps
    grid = torch.arange(num_steps + 1, dtype=torch.float64) * step
    driving = sample_fbm_cholesky(grid, hurst, num_paths, kind=kind, generator=generator)
    increments = sigma * driving.diff(dim=-1)
    paths = [torch.zeros(driving.shape[0], dtype=torch.float64)]
    for k in range(num_steps):
        paths.append(paths[-1] * (1 - theta * step) + increments[:, k])
    return torch.stack(paths, -1)
