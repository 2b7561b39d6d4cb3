"""Sample-quality diagnostics: KSD, energy and sliced Wasserstein distances, weighted ESS, IAD, r_hat and ESS.

The distances take torch tensors on any device and return tensors on that
device, batched where the docstring says so. ``rhat`` and ``ess`` go through
``arviz_stats.base.array_stats`` so that they agree with ArviZ's tables.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["kernel_stein_discrepancy", "energy_distance", "wasserstein_1d", "sliced_wasserstein",
           "DistributionalSlicedWasserstein", "weighted_ess", "kish_ess", "integrated_absolute_distance", "rhat", "ess"]

#: Elements in one (rows x n) block of pairwise terms: bounds the memory of the O(n^2) sums.
PAIRWISE_BLOCK_ELEMENTS = 2 ** 21
#: Most grid points per marginal that integrated_absolute_distance will use to resolve a narrow kernel.
MAX_GRID_SIZE = 2 ** 18


# --------------------------------------------------------------------------- inputs
def _as_float_tensor(value, argument, like=None):
    """``value`` as a floating tensor (on ``like``'s device/dtype when given)."""
    if not isinstance(value, torch.Tensor):
        try:
            value = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"{argument} must be a tensor or numeric array, got {type(value).__name__}") from error
    if like is not None:
        if value.device != like.device:
            raise ValueError(f"{argument} is on {value.device}, but the points are on {like.device}")
        return value.to(like.dtype)
    if value.is_complex():
        raise TypeError(f"{argument} must be real, got dtype {value.dtype}")
    return value if value.is_floating_point() else value.to(torch.get_default_dtype())


def _as_points(value, argument):
    """``(n, d)`` points; a 1-D ``(n,)`` input is ``n`` points in one dimension."""
    points = _as_float_tensor(value, argument)
    if points.dim() == 1:
        points = points[:, None]
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(f"{argument} must have shape (n, d) or (n,) with n >= 1, got {tuple(points.shape)}")
    return points


def _normalised_weights(weights, shape, like, argument):
    """Non-negative weights of ``shape``, normalised along the last dim; uniform when None."""
    if weights is None:
        return torch.full(shape, 1.0 / shape[-1], dtype=like.dtype, device=like.device)
    weights = _as_float_tensor(weights, argument, like=like)
    if tuple(weights.shape) != tuple(shape):
        raise ValueError(f"{argument} must have shape {tuple(shape)}, got {tuple(weights.shape)}")
    if not torch.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"{argument} must be finite and non-negative")
    total = weights.sum(-1, keepdim=True)
    if (total <= 0).any():
        raise ValueError(f"{argument} must not be all zero")
    return weights / total


def _row_blocks(n, columns, batch):
    """Row slices of an ``(n, columns)`` pairwise matrix, each within PAIRWISE_BLOCK_ELEMENTS."""
    rows = max(1, PAIRWISE_BLOCK_ELEMENTS // max(1, columns * batch))
    return [slice(start, min(start + rows, n)) for start in range(0, n, rows)]


# ----------------------------------------------------------- kernel Stein discrepancy
def _imq_stein_kernel(x_rows, score_rows, x, score, c, beta, lengthscale):
    r"""The Langevin Stein kernel of the IMQ kernel between ``x_rows`` and all of ``x``.

    With :math:`r = x - y`, :math:`u = c^2 + |r|^2/\ell^2`, :math:`k = u^\beta`:
    :math:`\nabla_x k = (2\beta/\ell^2) u^{\beta-1} r = -\nabla_y k` and
    :math:`\operatorname{tr}\nabla_x\nabla_y k = -(2\beta/\ell^2)
    [2(\beta-1) u^{\beta-2} |r|^2/\ell^2 + d\, u^{\beta-1}]`, so

    .. math::

        k_p(x, y) = u^{\beta-1} \Big[ u\, s_x^\top s_y + \frac{2\beta}{\ell^2} (s_y - s_x)^\top r
                    - \frac{2\beta}{\ell^2} \Big( 2(\beta-1) \frac{|r|^2/\ell^2}{u} + d \Big) \Big].

    Everything comes from inner products (``(rows, n)`` matrices), never an
    ``(rows, n, d)`` tensor of differences; the points arrive divided by
    :math:`\ell`, so :math:`|r|^2/\ell^2` is a plain squared distance.
    """
    d = x.shape[-1]
    scale = 2 * beta / lengthscale ** 2
    row_norms = (x_rows * x_rows).sum(-1, keepdim=True)  # (..., b, 1)
    col_norms = (x * x).sum(-1).unsqueeze(-2)  # (..., 1, n)
    scaled_sq = torch.sub(row_norms + col_norms, x_rows @ x.transpose(-1, -2), alpha=2).clamp_min(0)
    u = scaled_sq + c ** 2
    # (s_y - s_x)^T (x - y) = s_y.x + s_x.y - s_x.x - s_y.y: one product with 2d columns
    own = (score_rows * x_rows).sum(-1, keepdim=True) + (score * x).sum(-1).unsqueeze(-2)
    cross = torch.cat([x_rows, score_rows], -1) @ torch.cat([score, x], -1).transpose(-1, -2) - own
    bracket = torch.add(u * (score_rows @ score.transpose(-1, -2)), cross, alpha=scale * lengthscale)
    bracket = torch.add(bracket, scaled_sq / u, alpha=-2 * scale * (beta - 1)) - scale * d
    return u.pow(beta - 1) * bracket


def kernel_stein_discrepancy(x, score, *, weights=None, c=1.0, beta=-0.5, lengthscale=1.0):
    r"""Kernel Stein discrepancy with the inverse multiquadric (IMQ) kernel.

    Gorham and Mackey (2017), "Measuring sample quality with kernels", ICML.
    With the IMQ base kernel :math:`k(x, y) = (c^2 + |x - y|^2/\ell^2)^\beta`
    and the Langevin Stein kernel

    .. math::

        k_p(x, y) = s(x)^\top s(y)\, k(x, y) + s(x)^\top \nabla_y k(x, y)
                    + s(y)^\top \nabla_x k(x, y) + \operatorname{tr} \nabla_x \nabla_y k(x, y),

    where :math:`s = \nabla \log p` is the target's score, it returns the
    square root of the V-statistic

    .. math:: \mathrm{KSD} = \Big(\sum_{i,j} w_i w_j\, k_p(x_i, x_j)\Big)^{1/2}.

    Only the score is needed, not the normalising constant. For
    :math:`\beta \in (-1, 0)` the IMQ KSD detects non-convergence (Gorham and
    Mackey, 2017, Theorem 8). Cost :math:`O(n^2 d)` time; memory stays at
    blocks of ``PAIRWISE_BLOCK_ELEMENTS`` pairs.

    Parameters
    ----------
    x, score : Tensor
        ``(..., n, d)`` points and the target's score at them, batched over the leading dims.
    weights : Tensor, optional
        ``(..., n)`` non-negative weights (normalised here along the last dim); uniform by default.
    c, beta, lengthscale : float
        IMQ parameters: ``c > 0``, ``-1 < beta < 0``, ``lengthscale > 0``.

    Returns
    -------
    Tensor
        ``(...)`` the KSD of each batch member, on ``x``'s device.
    """
    x = _as_float_tensor(x, "x")
    score = _as_float_tensor(score, "score", like=x)
    if x.dim() < 2 or x.shape[-2] == 0:
        raise ValueError(f"x must have shape (..., n, d) with n >= 1, got {tuple(x.shape)}")
    if score.shape != x.shape:
        raise ValueError(f"score must have the shape of x {tuple(x.shape)}, got {tuple(score.shape)}")
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    if not -1 < beta < 0:
        raise ValueError(f"beta must lie in (-1, 0), got {beta}")
    if not lengthscale > 0:
        raise ValueError(f"lengthscale must be positive, got {lengthscale}")
    w = _normalised_weights(weights, x.shape[:-1], x, "weights")
    # centring changes no difference x_i - x_j but keeps |x|^2 small, so the Gram form loses less;
    # dividing by the lengthscale here saves a pass over every (n, n) block
    x = (x - x.mean(-2, keepdim=True)) / lengthscale
    n = x.shape[-2]
    total = torch.zeros(x.shape[:-2], dtype=x.dtype, device=x.device)
    for rows in _row_blocks(n, n, math.prod(x.shape[:-2])):
        block = _imq_stein_kernel(x[..., rows, :], score[..., rows, :], x, score, c, beta, lengthscale)
        total = total + (w[..., rows] * (block @ w.unsqueeze(-1)).squeeze(-1)).sum(-1)
    # the V-statistic of a positive-definite kernel is >= 0; clamp only round-off
    return total.clamp_min(0).sqrt()


# ------------------------------------------------------------------- energy distance
def _two_samples(x, y):
    """``x`` and ``y`` as ``(n, d)`` and ``(m, d)`` points on one device, with the same ``d``."""
    x, y = _as_points(x, "x"), _as_points(y, "y")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device}, but x is on {x.device}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension d, got {x.shape[1]} and {y.shape[1]}")
    return x, y


def _mean_distance(a, b, wa, wb):
    """``sum_ij wa_i wb_j |a_i - b_j|``, block by block."""
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for rows in _row_blocks(a.shape[0], b.shape[0], 1):
        # no matrix-product shortcut: it loses digits for nearby points (and gives |a - a| != 0)
        distances = torch.cdist(a[rows], b, compute_mode="donot_use_mm_for_euclid_dist")
        total = total + wa[rows] @ distances @ wb
    return total


def energy_distance(x, y, *, weights_x=None, weights_y=None):
    r"""Squared energy distance between two (weighted) samples, as a V-statistic.

    Székely and Rizzo (2013), "Energy statistics: a class of statistics based
    on distances", J. Stat. Plan. Inference 143:

    .. math:: \mathcal{E}^2 = 2\,E|X - Y| - E|X - X'| - E|Y - Y'|

    with Euclidean norms and expectations under the empirical (weighted)
    distributions. It is zero only when the two distributions agree. In one
    dimension it equals :math:`2\int (F - G)^2`, the square of
    ``scipy.stats.energy_distance``.

    Parameters
    ----------
    x, y : Tensor
        ``(n, d)`` and ``(m, d)`` points (``(n,)`` means ``d = 1``), on one device.
    weights_x, weights_y : Tensor, optional
        ``(n,)`` and ``(m,)`` non-negative weights, normalised here; uniform by default.

    Returns
    -------
    Tensor
        0-d, on ``x``'s device.
    """
    x, y = _two_samples(x, y)
    y = y.to(x.dtype)
    wx = _normalised_weights(weights_x, x.shape[:1], x, "weights_x")
    wy = _normalised_weights(weights_y, y.shape[:1], x, "weights_y")
    return 2 * _mean_distance(x, y, wx, wy) - _mean_distance(x, x, wx, wx) - _mean_distance(y, y, wy, wy)


# ------------------------------------------------------------------ sliced Wasserstein
def _sorted_rows(values):
    """``values.sort(-1).values``, differentiable (the gradient flows back to each value's place).

    On the CPU the order comes from NumPy's argsort, five to six times faster than torch's sort for the
    DSWD's thousand rows of a few thousand projections (one thread); the values are then gathered by
    torch, so autograd sees an ordinary index.  Ties may come in another order than torch's: the sorted
    values are the same, and the gradient is another valid split of it among the tied elements.
    """
    if values.device.type != "cpu" or values.dtype not in (torch.float32, torch.float64):
        return values.sort(-1).values
    try:
        plain = values.detach().numpy()
    except RuntimeError:  # no storage NumPy can read: a tensor inside torch.func's vmap or grad
        return values.sort(-1).values
    return values.gather(-1, torch.from_numpy(np.argsort(plain, axis=-1)).to(torch.long))


def wasserstein_1d(x, y, p: float = 2.0):
    r"""``W_p^p`` between the empirical distributions of ``x`` ``(..., n)`` and ``y`` ``(..., m)``, exactly.

    In one dimension the optimal coupling matches quantiles:
    :math:`W_p^p = \int_0^1 |F_x^{-1}(u) - F_y^{-1}(u)|^p\,du`.  Both empirical
    quantile functions are step functions, constant between the levels
    ``i / n`` and ``j / m``, so the integral is a finite sum over the merged
    levels; ``n`` and ``m`` may differ.  Batched over leading dimensions
    (one row per projection) and differentiable in ``x`` and ``y``.
    """
    n, m = x.shape[-1], y.shape[-1]
    xs, ys = _sorted_rows(x), _sorted_rows(y)
    options = {"dtype": xs.dtype, "device": xs.device}
    levels = torch.cat([torch.arange(1, n + 1, **options) / n, torch.arange(1, m + 1, **options) / m]).sort().values
    widths = torch.diff(levels, prepend=levels.new_zeros(1))
    middles = levels - widths / 2
    ix = (middles * n).long().clamp(max=n - 1)
    iy = (middles * m).long().clamp(max=m - 1)
    gaps = xs.index_select(-1, ix) - ys.index_select(-1, iy)  # index_select: a cheaper backward than [..., ix]
    return (gaps.square() if p == 2 else gaps.abs() ** p) @ widths


def _unit_directions(num, dim, like, generator=None):
    """``num`` directions uniform on the unit sphere in ``R^dim``."""
    device = "cpu" if generator else like.device  # a torch.Generator here lives on the CPU
    directions = torch.randn(num, dim, generator=generator, dtype=like.dtype, device=device)
    directions = directions.to(like.device)
    return directions / directions.norm(dim=-1, keepdim=True)


def _sliced_power(x, y, directions, p):
    """``W_p^p`` of the projections of ``x`` and ``y`` on each direction: ``(num_directions,)``."""
    return wasserstein_1d(directions @ x.T, directions @ y.T, p)


def sliced_wasserstein(x, y, *, num_projections: int = 1000, p: float = 2.0, directions=None, generator=None):
    r"""Sliced Wasserstein distance between two samples (Bonneel, Rabin, Peyré and Pfister, 2015).

    .. math:: SW_p(\mu, \nu) = \Big(\mathbb E_{\theta \sim U(S^{d-1})}
              W_p^p(\theta_\# \mu, \theta_\# \nu)\Big)^{1/p},

    the expectation over ``num_projections`` random directions (or the
    ``directions`` given, ``(L, d)`` unit rows), each 1-D distance exact
    (:func:`wasserstein_1d`).  ``x`` ``(n, d)`` and ``y`` ``(m, d)`` may
    have different sizes.  Differentiable, so it can serve as a training
    loss.  Returns a 0-d tensor on ``x``'s device.
    """
    x, y = _two_samples(x, y)
    y = y.to(x.dtype)
    if directions is None:
        directions = _unit_directions(num_projections, x.shape[1], x, generator)
    return _sliced_power(x, y, directions.to(x), p).mean() ** (1 / p)


class DistributionalSlicedWasserstein(torch.nn.Module):
    r"""Distributional sliced Wasserstein distance (Nguyen, Ho, Pham and Bui, ICLR 2021).

    Instead of averaging over uniform directions, DSWD looks for a
    distribution :math:`\sigma` over directions that separates the two
    samples best while staying spread out:

    .. math:: DSW_p(\mu, \nu) = \sup_{\sigma:\ \mathbb E_{\theta, \theta' \sim \sigma}
              |\theta^\top \theta'| \le C} \Big(\mathbb E_{\theta \sim \sigma}
              W_p^p(\theta_\# \mu, \theta_\# \nu)\Big)^{1/p}.

    :math:`\sigma` is the push-forward of the uniform distribution on the
    sphere by a linear map followed by normalisation, as in the authors' and
    Tran et al.'s (NeurIPS 2021) code.  Each call first takes ``num_steps``
    Adam steps (learning rate ``lr``) of ascent on the Lagrangian
    :math:`\mathbb E_\sigma W_p^p - \lambda\, \mathbb E|\theta^\top\theta'|`
    (``diversity`` is :math:`\lambda`) with the samples held fixed, then
    returns the distance under the improved :math:`\sigma`, differentiable in
    ``x`` and ``y`` (not in the map).  The map persists across calls, so
    inside a training loop it tracks the moving samples.  It lies between
    the sliced distance (uniform :math:`\sigma`) and the max-sliced one.
    """

    def __init__(self, dim: int, *, num_projections: int = 1000, p: float = 2.0, diversity: float = 100.0,
                 num_steps: int = 30, lr: float = 5e-4):
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not isinstance(num_projections, int) or num_projections < 2:
            raise ValueError(f"num_projections must be an int >= 2, got {num_projections!r}")
        if not diversity >= 0:
            raise ValueError(f"diversity must be >= 0, got {diversity!r}")
        self.num_projections, self.p, self.diversity, self.num_steps = num_projections, p, diversity, num_steps
        self.transform = torch.nn.Linear(dim, dim, dtype=torch.get_default_dtype())
        with torch.no_grad():  # start at the identity: sigma starts uniform, DSWD at the sliced distance
            self.transform.weight.copy_(torch.eye(dim))
            self.transform.bias.zero_()
        self.optimizer = torch.optim.Adam(self.transform.parameters(), lr=lr)

    def directions(self, like, generator=None):
        """Draws from the current direction distribution ``sigma``: ``(num_projections, dim)`` unit rows."""
        self.transform.to(device=like.device, dtype=like.dtype)
        mapped = self.transform(_unit_directions(self.num_projections, like.shape[-1], like, generator))
        return mapped / mapped.norm(dim=-1, keepdim=True)

    def forward(self, x, y, generator=None):
        x, y = _two_samples(x, y)
        y = y.to(x.dtype)
        fixed_x, fixed_y = x.detach(), y.detach()
        for _ in range(self.num_steps):
            with torch.enable_grad():
                theta = self.directions(fixed_x, generator)
                spread = (theta @ theta.T).abs().mean()
                objective = _sliced_power(fixed_x, fixed_y, theta, self.p).mean() ** (1 / self.p)
                self.optimizer.zero_grad(set_to_none=True)
                (self.diversity * spread - objective).backward()
                self.optimizer.step()
        with torch.no_grad():
            theta = self.directions(fixed_x, generator)
        return _sliced_power(x, y, theta, self.p).mean() ** (1 / self.p)


# ------------------------------------------------------------------------ weighted ESS
def weighted_ess(log_weights, dim=-1):
    r"""Kish's effective sample size of importance weights, from their logarithms.

    .. math:: \mathrm{ESS} = \frac{(\sum_i w_i)^2}{\sum_i w_i^2}
              = \exp\big(2 \operatorname{logsumexp}_i \ell_i - \operatorname{logsumexp}_i 2\ell_i\big)

    Kish (1965), *Survey Sampling*. Computed in log space so that log-weights
    of any magnitude neither overflow nor underflow; ``-inf`` entries count as
    zero weight. It lies in ``[1, n]``: ``n`` for equal weights, about one when
    a single weight dominates. All ``-inf`` gives NaN.

    Parameters
    ----------
    log_weights : Tensor
        Unnormalised log-weights.
    dim : int or None
        The dim holding the draws (the last by default); None uses all elements.

    Returns
    -------
    Tensor
        ``log_weights``' shape without ``dim`` (0-d for ``dim=None``).
    """
    log_weights = _as_float_tensor(log_weights, "log_weights")
    if dim is None:
        log_weights, dim = log_weights.reshape(-1), 0
    if log_weights.dim() == 0:
        raise ValueError("log_weights must have at least one dimension")
    if torch.isnan(log_weights).any():
        raise ValueError("log_weights contain NaN")
    return kish_ess(log_weights, dim)


def kish_ess(log_weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """:func:`weighted_ess` without the checks, for the engines' inner loops (no device sync).

    NaN where every weight along ``dim`` is zero (all ``-inf``), which never compares as large.
    """
    return torch.exp(2 * torch.logsumexp(log_weights, dim) - torch.logsumexp(2 * log_weights, dim))


# ---------------------------------------------------------------------------- IAD
def _bandwidth(values, rule):
    r"""Per-column Gaussian-KDE bandwidths of ``values`` ``(n, d)`` by a rule of thumb.

    Silverman (1986, eq. 3.31): :math:`0.9 \min(\hat\sigma, \mathrm{IQR}/1.34)\, n^{-1/5}`;
    Scott (1992): :math:`1.06\, \hat\sigma\, n^{-1/5}`.
    """
    n = values.shape[0]
    sd = values.std(0, unbiased=n > 1) if n > 1 else torch.zeros(values.shape[1], dtype=values.dtype,
                                                                  device=values.device)
    if rule == "scott":
        return 1.06 * sd * n ** -0.2
    quartiles = torch.quantile(values, torch.tensor([0.25, 0.75], dtype=values.dtype, device=values.device), dim=0)
    iqr = (quartiles[1] - quartiles[0]) / 1.34
    # a zero IQR (many ties) must not zero the bandwidth when the sd is positive
    spread = torch.where(iqr > 0, torch.minimum(sd, iqr), sd)
    return 0.9 * spread * n ** -0.2


def _resolve_bandwidth(bandwidth, values, argument):
    if bandwidth is None or bandwidth in ("silverman", "scott"):
        h = _bandwidth(values, bandwidth or "silverman")
    elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
        h = torch.full((values.shape[1],), float(bandwidth), dtype=values.dtype, device=values.device)
    else:
        raise ValueError(f"bandwidth must be None, 'silverman', 'scott' or a positive number, got {bandwidth!r}")
    bad = [int(j) for j in torch.nonzero(~(h > 0)).flatten()]
    if bad:
        raise ValueError(f"{argument} has no spread in dimension(s) {bad}, so its KDE bandwidth is zero; "
                         "pass a positive bandwidth=")
    return h


def _linear_binning(points, low, step, size):
    """Counts ``(d, G)`` of ``points`` ``(n, d)`` spread linearly over the two nearest grid nodes."""
    n, d = points.shape
    position = ((points - low) / step).clamp(0, size - 1)
    left = position.floor().clamp(max=size - 2)
    right_share = position - left
    index = left.long() + torch.arange(d, device=points.device) * size  # one row of G bins per marginal
    counts = torch.zeros(d * size, dtype=points.dtype, device=points.device)
    counts.index_add_(0, index.reshape(-1), (1 - right_share).reshape(-1))
    counts.index_add_(0, (index + 1).reshape(-1), right_share.reshape(-1))
    return counts.reshape(d, size)


def _binned_kde(points, h, low, step, size):
    r"""Gaussian KDE ``(d, G)`` of each column of ``points`` on the grid ``low + step * k``.

    Linear binning followed by a discrete convolution with the Gaussian
    kernel (Silverman, 1982, "Kernel density estimation using the fast
    Fourier transform", Appl. Stat. 31; Wand, 1994, J. Comput. Graph. Stat.
    3): :math:`\hat f(t_i) = \frac{1}{n h} \sum_k c_k\, \phi((t_i - t_k)/h)`,
    exact up to :math:`O(\delta^2/h^2)` for grid step :math:`\delta`, in
    :math:`O(n + G \log G)` instead of :math:`O(nG)`.
    """
    n = points.shape[0]
    counts = _linear_binning(points, low, step, size)
    # kernel at lags -(G-1)..(G-1), laid out for a circular convolution long enough not to wrap
    length = 1 << (3 * size - 2).bit_length()
    lags = torch.arange(-(size - 1), size, dtype=points.dtype, device=points.device)
    z = lags.unsqueeze(0) * step.unsqueeze(1) / h.unsqueeze(1)  # (d, 2G-1)
    kernel_values = torch.exp(-0.5 * z * z) / (n * h.unsqueeze(1) * math.sqrt(2 * math.pi))
    kernel = torch.zeros(points.shape[1], length, dtype=points.dtype, device=points.device)
    kernel[:, :size] = kernel_values[:, size - 1:]  # lags 0..G-1
    kernel[:, length - (size - 1):] = kernel_values[:, :size - 1]  # lags -(G-1)..-1
    density = torch.fft.irfft(torch.fft.rfft(counts, length) * torch.fft.rfft(kernel, length), length)
    return density[:, :size].clamp_min(0)  # FFT round-off can dip below zero in empty regions


def integrated_absolute_distance(x, y, *, bandwidth=None, grid_size=2048):
    r"""Integrated absolute distance between two samples, marginal by marginal.

    Chan, Pollock, Johansen and Roberts (2023), "Divide-and-conquer Fusion",
    JMLR 24:

    .. math:: \mathrm{IAD} = \frac{1}{2d} \sum_{j=1}^d \int |\hat f_j(t) - \hat g_j(t)|\, dt,

    where :math:`\hat f_j, \hat g_j` are Gaussian kernel density estimates of
    the j-th marginals of ``x`` and ``y``. Each term is the total-variation
    distance of the two KDE marginals, so the IAD lies in ``[0, 1]``. The
    integral is the trapezoid rule on an even grid spanning both samples plus
    five bandwidths (the Gaussian tails beyond hold < 1e-6 of the mass),
    refined up to ``MAX_GRID_SIZE`` points so that a bandwidth spans at
    least eight grid steps; the KDEs on the grid come from linear binning
    and an FFT convolution (:math:`O(n + G \log G)`).

    Parameters
    ----------
    x, y : Tensor
        ``(n, d)`` and ``(m, d)`` draws (``(n,)`` means ``d = 1``), on one device.
    bandwidth : None, "silverman", "scott" or float
        Kernel bandwidth: Silverman's rule of thumb (default) or Scott's, per
        sample and marginal, or one fixed value for all.
    grid_size : int
        Least number of grid points per marginal.

    Returns
    -------
    Tensor
        0-d, on ``x``'s device.
    """
    x, y = _two_samples(x, y)
    if isinstance(grid_size, bool) or not isinstance(grid_size, int) or grid_size < 16:
        raise ValueError(f"grid_size must be an integer >= 16, got {grid_size!r}")
    # float64 where the device has it: the two densities are subtracted
    dtype = torch.float32 if x.device.type == "mps" else torch.float64
    x, y = x.to(dtype), y.to(dtype)
    hx, hy = _resolve_bandwidth(bandwidth, x, "x"), _resolve_bandwidth(bandwidth, y, "y")
    low = torch.minimum(x.min(0).values - 5 * hx, y.min(0).values - 5 * hy)
    high = torch.maximum(x.max(0).values + 5 * hx, y.max(0).values + 5 * hy)
    narrowest = float(torch.minimum(hx, hy).min())
    size = min(MAX_GRID_SIZE, max(grid_size, math.ceil(float((high - low).max()) / (narrowest / 8)) + 1))
    step = (high - low) / (size - 1)  # (d,): one grid per marginal
    gap = (_binned_kde(x, hx, low, step, size) - _binned_kde(y, hy, low, step, size)).abs()
    per_marginal = torch.trapezoid(gap, dx=1.0, dim=1) * step
    return per_marginal.sum() / (2 * x.shape[1])


# -------------------------------------------------------------------- r_hat and ESS
def _chain_draw_array(samples):
    if isinstance(samples, torch.Tensor):
        array = samples.detach().cpu()
        array = (array.double() if array.dtype in (torch.bfloat16, torch.bool) else array).numpy()
    else:
        array = np.asarray(samples)
    if array.ndim < 2:
        raise ValueError(f"samples must have shape (chain, draw, ...), got {array.shape}")
    return array


def _result_tensor(values, samples):
    device = samples.device if isinstance(samples, torch.Tensor) else "cpu"
    return torch.as_tensor(np.asarray(values, dtype=np.float64), device=device)


def rhat(samples, method="rank"):
    """Potential scale reduction R-hat of ``(chain, draw, ...)`` draws, through arviz-stats.

    The default is the rank-normalised split-R-hat of Vehtari, Gelman,
    Simpson, Carpenter and Bürkner (2021), "Rank-normalization, folding, and
    localization: an improved R-hat", Bayesian Analysis 16: the larger of
    the bulk and folded (tail) values. Well-mixed chains give values below
    about 1.01.

    Parameters
    ----------
    samples : Tensor
        ``(chain, draw, ...)``; one value per trailing element.
    method : str
        ``rank`` (default), ``folded``, ``z_scale``, ``split`` or ``identity`` (ArviZ's names).

    Returns
    -------
    Tensor
        float64, shape ``samples.shape[2:]``, on ``samples``' device. ArviZ
        returns NaN, without a warning, for a single chain or fewer than 4 draws.
    """
    from arviz_stats.base import array_stats

    values = array_stats.rhat(_chain_draw_array(samples), chain_axis=0, draw_axis=1, method=method)
    return _result_tensor(values, samples)


def ess(samples, method="bulk", *, relative=False, prob=None):
    """Effective sample size of ``(chain, draw, ...)`` draws, through arviz-stats.

    Vehtari et al. (2021): ``bulk`` is the ESS of the rank-normalised split
    chains (reliable for the centre of the distribution), ``tail`` the
    smaller of the ESS of the indicator functions at the two tail quantiles.
    Other ArviZ methods (``mean``, ``sd``, ``quantile``, ``median``, ...) pass through.

    Parameters
    ----------
    samples : Tensor
        ``(chain, draw, ...)``; one value per trailing element.
    method : str
        ``bulk`` (default), ``tail`` or another ArviZ method.
    relative : bool
        Divide by ``chain * draw``.
    prob : float or (float, float), optional
        Quantiles for ``tail`` (and ``quantile``). None gives ``(0.05, 0.95)``
        for ``tail``, as in Vehtari et al.; arviz-stats' array interface
        requires it, and ArviZ 0.8's ``summary`` uses its 89% ``ci_prob``
        instead (quantiles 0.11 and 0.89): pass ``prob=0.89`` to match that
        column.

    Returns
    -------
    Tensor
        float64, shape ``samples.shape[2:]``, on ``samples``' device.
    """
    from arviz_stats.base import array_stats

    if method == "tail" and prob is None:
        prob = (0.05, 0.95)
    if method == "quantile" and prob is None:
        raise ValueError("prob is required for method='quantile'")
    values = array_stats.ess(_chain_draw_array(samples), chain_axis=0, draw_axis=1, method=method,
                             relative=relative, prob=prob)
    return _result_tensor(values, samples)
