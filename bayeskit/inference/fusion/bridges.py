r"""Unbiased estimators of :math:`\exp(-\int_s^t \phi(X_u)\,du)` along Brownian bridges.

Every Fusion weight is a product of such path integrals, where :math:`X` is
a Brownian bridge with covariance :math:`\Lambda = A A^\top` per unit time
between two known points. Two estimators:

* :func:`log_exact_estimate`, a Poisson estimator (Beskos, Papaspiliopoulos,
  Roberts and Fearnhead 2006) with bounds :math:`L \le \phi \le U` on a
  random box that provably holds the whole bridge (a *layer*, as in the
  layered Brownian bridges of Pollock, Johansen and Roberts 2016). With
  :math:`\kappa \sim \mathrm{Poisson}(\lambda\tau)` uniform times :math:`\xi_k`,

  .. math:: \hat Q = e^{-(U - \lambda) \tau} \prod_{k=1}^{\kappa} \frac{U - \phi(X_{\xi_k})}{\lambda},
            \qquad E[\hat Q] = e^{-\int \phi},

  exact (unbiased, non-negative: no discretisation) for any rate
  :math:`\lambda`. :math:`\lambda = U - L` keeps every factor in [0, 1]
  (Monte Carlo Fusion's rejection step needs that); importance weights use
  :math:`\lambda = U - \phi(\text{midpoint})`, near the variance-minimising
  choice.

  ``counts="negative_binomial"`` draws the number of points from a negative
  binomial instead (Chan, Pollock, Johansen and Roberts 2023), and weights
  them by :math:`\tau^\kappa / (\kappa!\, p(\kappa))`: exact too.

* :func:`log_discretised_estimate`, the trapezoid rule on the two end points:
  biased, of order :math:`\tau^2`; for densities without bounds of phi.

How the layer is simulated, exactly and without rejection in the common case.
Work in whitened coordinates :math:`W = A^{-1} X`, independent standard
bridges per coordinate. Layer :math:`l` of coordinate j is the interval
:math:`[\min(w_s, w_t) - a_l, \max(w_s, w_t) + a_l]`, :math:`a_l = l\,\sqrt{\tau}/2`,
and the coordinate's layer :math:`\ell_j` is the smallest that holds its
whole path. (1) Draw a skeleton of the bridge at the times of a Poisson
process of rate :math:`R` (independent of the path), :math:`R` the bound
width :math:`U - L` of the box at a *dominating* layer. (2) Draw each
:math:`\ell_j` from its law given the skeleton: the skeleton's segments are
independent bridges, so :math:`P(\ell_j \le l \mid S)` is a product of
bridge-stays-in-interval probabilities (an alternating series, summed to
double precision). (3) The box of the drawn layers gives :math:`L, U`;
thinning the rate-R times with probability :math:`\lambda/R` leaves a
Poisson process of rate :math:`\lambda`, still independent of the path given
the layers, whose path values are already in the skeleton. In the rare case
:math:`\lambda > R` (a layer above the dominating one), the missing
:math:`\mathrm{Poisson}((\lambda - R)\tau)` points are drawn from the bridge
given the skeleton *and* the layers, by rejection with acceptance
probability :math:`P(\ell_j = l_j \mid S')`.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["stay_probability", "log_exact_estimate", "log_discretised_estimate", "LAYER_STEP", "NB_SIZE"]

#: Layer l of a whitened coordinate over [s, t] widens its endpoints' range by l * LAYER_STEP * sqrt(t - s).
LAYER_STEP = 0.5
#: Images summed on each side in stay_probability. Layer boxes are at least sqrt(t - s) wide, so the first
#: image left out is below exp(-2 * 4**2) ~ 1e-14 for every segment of the interval.
_IMAGE_TERMS = 3
_MAX_LAYER = 200
_MAX_REJECTIONS = 1_000_000
#: The negative-binomial estimator's size r, Chan et al.'s (2023) ``beta_NB``.
NB_SIZE = 10.0
#: Skeleton points x coordinates of the bridges simulated at once (see _in_row_blocks).
_BLOCK_CELLS = 1 << 20


def stay_probability(x, y, lower, upper, duration):
    r"""P(a standard Brownian bridge from ``x`` to ``y`` over ``duration`` stays in ``(lower, upper)``).

    The method of images (e.g. Anderson 1960): with :math:`D = U - L`,

    .. math:: \sum_{k \in \mathbb Z} \Big[e^{-2kD(kD + y - x)/\tau}
              - e^{-2(kD + L - x)(kD + L - y)/\tau}\Big],

    every exponent non-positive when x and y lie in the interval. Broadcasts
    over its arguments; a zero duration gives 1 inside the interval.
    """
    inside = (x > lower) & (x < upper) & (y > lower) & (y < upper)
    width = (upper - lower)[..., None]
    images = torch.arange(-_IMAGE_TERMS, _IMAGE_TERMS + 1, dtype=x.dtype, device=x.device) * width
    tau = torch.as_tensor(duration, dtype=x.dtype, device=x.device).clamp_min(torch.finfo(x.dtype).tiny)[..., None]
    same = torch.exp(-2 * images * (images + (y - x)[..., None]) / tau)
    mirrored = torch.exp(-2 * (images + (lower - x)[..., None]) * (images + (lower - y)[..., None]) / tau)
    probability = (same - mirrored).sum(-1).clamp(0, 1)
    probability = torch.where(torch.as_tensor(duration, device=x.device) > 0, probability, 1.0)
    return torch.where(inside, probability, 0.0)


def _layer_box(start, end, layer, duration):
    """Per coordinate ``[min - a_l, max + a_l]`` for layer numbers ``layer`` (same shape as start)."""
    half = layer * LAYER_STEP * math.sqrt(duration)
    return torch.minimum(start, end) - half, torch.maximum(start, end) + half


class _Segments:
    """The skeleton's segments without padding, flattened: row, end points and duration of each."""

    def __init__(self, points, gaps):
        self.num_rows = points.shape[0]
        real = gaps > 0
        self.row = real.nonzero()[:, 0]
        self.left, self.right = points[:, :-1][real], points[:, 1:][real]
        self.duration = gaps[real]

    def subset(self, keep_rows):
        """The segments of the rows where ``keep_rows`` (bool, per current row) holds, renumbered."""
        chosen = keep_rows[self.row]
        new_index = keep_rows.long().cumsum(0) - 1
        out = object.__new__(_Segments)
        out.num_rows = int(keep_rows.sum())
        out.row, out.left, out.right = new_index[self.row[chosen]], self.left[chosen], self.right[chosen]
        out.duration = self.duration[chosen]
        return out

    def stay(self, lower, upper):
        """P(path within [lower, upper] | skeleton) per (row, coordinate): a product over the segments."""
        segment = stay_probability(self.left, self.right, lower[self.row], upper[self.row], self.duration[:, None])
        total = lower.new_zeros(self.num_rows, lower.shape[1]).index_add_(0, self.row, segment.log())
        return total.exp()


def _draw_layers(points, gaps, start, end, duration, uniforms):
    """The smallest layer whose box holds each coordinate's path, given the skeleton: inversion of its CDF."""
    layers = torch.zeros_like(start, dtype=torch.long)
    rows = torch.arange(len(start), device=start.device)  # rows with a coordinate still unresolved
    pending = torch.ones_like(start, dtype=torch.bool)
    segments = _Segments(points, gaps)
    for layer in range(1, _MAX_LAYER + 1):
        lower, upper = _layer_box(start[rows], end[rows], layer, duration)
        held = pending & (segments.stay(lower, upper) >= uniforms[rows])
        layers[rows] = torch.where(held, layer, layers[rows])
        pending &= ~held
        still = pending.any(-1)
        if not still.any():
            return layers
        rows, pending, segments = rows[still], pending[still], segments.subset(still)
    raise RuntimeError(f"a Brownian bridge left {_MAX_LAYER} layers; the bridge's end points are not finite?")


def _poisson_times(rates, duration, generator):
    """Sorted uniform times of Poisson(rate * duration) counts per row, padded with ``duration``; and the counts."""
    counts = torch.poisson(rates * duration, generator=generator).long()
    return _uniform_times(counts, duration, generator, rates.dtype), counts


def _uniform_times(counts, duration, generator, dtype):
    """Sorted uniform times on [0, duration), ``counts`` per row, padded with ``duration``."""
    width = int(counts.max()) if counts.numel() else 0
    times = torch.rand(len(counts), width, generator=generator, dtype=dtype, device=counts.device) * duration
    present = torch.arange(width, device=counts.device) < counts[:, None]
    return torch.where(present, times, duration).sort(-1).values


def _bridge_skeleton(times, start, end, duration, generator):
    """Bridge values at sorted ``times`` (N, K) from its ends.

    W_u = start + (u/tau)(end - start) + B_u - (u/tau) B_tau.
    """
    n, width = times.shape
    steps = torch.cat([times, times.new_full((n, 1), duration)], 1).diff(dim=1, prepend=times.new_zeros(n, 1))
    noise = torch.randn(n, width + 1, start.shape[-1], generator=generator, dtype=start.dtype, device=start.device)
    motion = (steps.clamp_min(0).sqrt()[..., None] * noise).cumsum(1)  # B at the times and at tau
    fraction = (times / duration)[..., None]
    return start[:, None] + fraction * (end - start)[:, None] + motion[:, :-1] - fraction * motion[:, -1:]


def _bridge_at(times, start, end, duration, generator, known_times=None, known_points=None):
    """Bridge values at sorted ``times`` (N, K), given the path at its ends and optionally at ``known_times``.

    Sequential Gaussian conditionals: each new point given the last point and
    the next known one (the end, or the next point of an earlier skeleton).
    """
    n, width = times.shape
    d = start.shape[-1]
    if known_times is None:
        known_times = times.new_empty(n, 0)
        known_points = start.new_empty(n, 0, d)
    anchor_times = torch.cat([known_times, times.new_full((n, 1), duration)], 1)
    anchor_points = torch.cat([known_points, end[:, None]], 1)
    previous_time, previous = times.new_zeros(n), start
    values = []
    for k in range(width):
        now = times[:, k]
        nxt = torch.searchsorted(anchor_times, now[:, None].contiguous(), right=False)
        nxt = nxt.clamp_max(anchor_times.shape[1] - 1)
        # the latest known point before `now` may be later than the last drawn point
        before = None
        if known_times.shape[1]:
            before = torch.searchsorted(known_times, now[:, None].contiguous(), right=False) - 1
        if before is not None:
            has_before = before[:, 0] >= 0
            known_before_time = torch.gather(known_times, 1, before.clamp_min(0))[:, 0]
            use_known = has_before & (known_before_time > previous_time)
            gathered = torch.gather(known_points, 1, before.clamp_min(0)[..., None].expand(-1, 1, d))[:, 0]
            previous = torch.where(use_known[:, None], gathered, previous)
            previous_time = torch.where(use_known, known_before_time, previous_time)
        next_time = torch.gather(anchor_times, 1, nxt)[:, 0]
        next_point = torch.gather(anchor_points, 1, nxt[..., None].expand(-1, 1, d))[:, 0]
        span = (next_time - previous_time).clamp_min(torch.finfo(times.dtype).tiny)
        fraction = ((now - previous_time) / span).clamp(0, 1)
        variance = ((now - previous_time) * (next_time - now) / span).clamp_min(0)
        noise = torch.randn(n, d, generator=generator, dtype=start.dtype, device=start.device)
        point = previous + fraction[:, None] * (next_point - previous) + variance.sqrt()[:, None] * noise
        values.append(point)
        previous_time, previous = now, point
    return torch.stack(values, 1) if values else start.new_empty(n, 0, d)


def _with_ends(start, end, times, points, duration):
    """Skeleton arrays from start to end: points (N, K + 2, d) and segment durations (N, K + 1)."""
    n = start.shape[0]
    all_times = torch.cat([times.new_zeros(n, 1), times, times.new_full((n, 1), duration)], 1)
    return torch.cat([start[:, None], points, end[:, None]], 1), all_times.diff(dim=1)


def _box_bounds(bounds_at, start, end, layers, duration):
    """phi's bounds on the box of ``layers`` (whitened): on the ball around its centre through its corners.

    Every layer's box has the same centre, the midpoint of the end points, so
    ``bounds_at`` (radius -> bounds) is prepared once per bridge.
    """
    lower, upper = _layer_box(start, end, layers.to(start.dtype), duration)
    low, high = bounds_at(0.5 * (upper - lower).norm(dim=-1))
    return low, torch.maximum(high, low + 1e-12 * (1 + low.abs()))  # U > L keeps the ratio defined


def log_exact_estimate(density, scale, start, end, duration, generator, *, dominating_layer=7, bounded=False,
                       counts="poisson", nb_size=NB_SIZE):
    r"""Log of an exact (Poisson or negative-binomial) estimate of :math:`\exp(-\int_0^\tau \phi(X_u) du)` per row.

    Parameters
    ----------
    density : ShardDensity with ``has_bounds``
    scale : Tensor (d, d)
        A with :math:`\Lambda = A A^\top`, the bridge's covariance per unit time.
    start, end : Tensor (N, d)
        The bridge's end points (unwhitened).
    duration : float
    generator : torch.Generator
    dominating_layer : int
        The layer whose bound width sets the skeleton's rate R. A coordinate
        passes layer 7 with probability about 2 exp(-7^2 / 2) ~ 5e-11, so the
        top-up (a rejection sampler whose cost grows as the drawn layer's
        conditional probability shrinks) practically never runs; the extra
        skeleton points cost a few bridge-probability evaluations each, much
        less than an evaluation of phi on a large shard.
    bounded : bool
        Keep every factor of the estimate in [0, 1], so that ``exp(L tau) Q``
        is a probability (Monte Carlo Fusion's rejection step). Otherwise the
        rate is tuned for a small variance.
    counts : str
        The law of the number of points: ``"poisson"`` (the rate above) or
        ``"negative_binomial"``, the generalised Poisson estimator of Chan et
        al. (2023) with mean :math:`\gamma = \tau U - \tau(\phi(x_s) + \phi(x_t))/2`
        and size ``nb_size`` (their 10): see :func:`_negative_binomial_counts`.
        Not with ``bounded``.

    Returns
    -------
    (Tensor (N,), dict)
        The log estimates and counts: ``phi_evaluations``, ``top_ups``.
    """
    if counts not in ("poisson", "negative_binomial") or (bounded and counts != "poisson"):
        raise ValueError(f"counts must be 'poisson' or (not bounded) 'negative_binomial', got {counts!r}")
    w_start = torch.linalg.solve_triangular(scale, start.T, upper=False).T
    w_end = torch.linalg.solve_triangular(scale, end.T, upper=False).T
    bounds_at = density.ball_bounds(0.5 * (start + end), scale)
    dominating = torch.full_like(w_start, dominating_layer, dtype=torch.long)
    rate_low, rate_high = _box_bounds(bounds_at, w_start, w_end, dominating, duration)
    rate = rate_high - rate_low
    if len(start) > 1 and float(rate.max()) * duration * len(start) * start.shape[1] > _BLOCK_CELLS:
        # loose bounds of phi (thousands of skeleton points a bridge): rows in blocks of similar rates, so that
        # they cost time, not memory (the blocks follow from the rates, not from any draw: each stays unbiased)
        return _in_row_blocks(rate * duration, start.shape[1], lambda rows: log_exact_estimate(
            density, scale, start[rows], end[rows], duration, generator, dominating_layer=dominating_layer,
            bounded=bounded, counts=counts, nb_size=nb_size))
    times, _ = _poisson_times(rate, duration, generator)
    skeleton = _bridge_skeleton(times, w_start, w_end, duration, generator)
    points, gaps = _with_ends(w_start, w_end, times, skeleton, duration)
    uniforms = torch.rand(w_start.shape, generator=generator, dtype=w_start.dtype, device=w_start.device)
    layers = _draw_layers(points, gaps, w_start, w_end, duration, uniforms)
    low, high = _box_bounds(bounds_at, w_start, w_end, layers, duration)
    real = times < duration
    if counts == "poisson":
        intensity = _intensity(density, scale, start, end, low, high, bounded)
        # thin the rate-R points to the estimator's intensity (all kept where it exceeds R)
        keep = real & (torch.rand(times.shape, generator=generator, dtype=times.dtype, device=times.device)
                       * rate[:, None] < intensity[:, None])
        log_q, divisor, evaluations = -(high - intensity) * duration, intensity, 0 if bounded else len(start)
        # the points the skeleton lacks: those of the rate above R
        top_up = intensity > rate
        rows = top_up.nonzero()[:, 0]
        extra = torch.poisson((intensity - rate)[rows] * duration, generator=generator).long() if len(rows) else None
    else:
        number, log_q = _negative_binomial_counts(density, scale, start, end, duration, generator, nb_size, low, high)
        # a uniform subset of the skeleton's real points (uniform times, chosen independently of the path)
        keys = torch.where(real, torch.rand(times.shape, generator=generator, dtype=times.dtype, device=times.device),
                           2.0)
        # (only real points: where the count exceeds them, the padding's ranks fall below it too)
        keep = real & (keys.argsort(1).argsort(1) < number[:, None])
        divisor, evaluations = torch.ones_like(high), 2 * len(start)
        # the points the skeleton lacks: the count above its real points
        top_up = number > real.sum(1)
        rows = top_up.nonzero()[:, 0]
        extra = number[rows] - real[rows].sum(1)
    log_q = log_q + _log_product(density, scale, skeleton, keep, low, high, divisor)
    if len(rows):
        extra_times = _uniform_times(extra, duration, generator, times.dtype)
        log_q[rows] += _top_up(density, scale, w_start[rows], w_end[rows], times[rows], skeleton[rows],
                               layers[rows], low[rows], high[rows], divisor[rows], extra_times, duration, generator)
        evaluations += int(extra.sum())
    return log_q, {"phi_evaluations": int(keep.sum()) + evaluations, "top_ups": int(top_up.sum())}


def _negative_binomial_counts(density, scale, start, end, duration, generator, size, low, high):
    r"""The generalised Poisson estimator's negative-binomial counts, and the log of its constant factor.

    With :math:`\kappa \sim p` on {0, 1, ...} and :math:`\kappa` uniform times,

    .. math:: \hat Q = e^{-U\tau} \frac{\tau^\kappa}{\kappa!\, p(\kappa)} \prod_{k=1}^{\kappa} (U - \phi(X_{\xi_k})),
              \qquad E[\hat Q] = e^{-U\tau} \sum_\kappa \frac{(\int (U - \phi))^\kappa}{\kappa!} = e^{-\int\phi},

    unbiased and non-negative for any p with full support (Fearnhead, Papaspiliopoulos and Roberts 2008).
    Chan et al. (2023) take p negative binomial of size r and mean
    :math:`\gamma = \tau U - \tau(\phi(x_s) + \phi(x_t))/2`, near :math:`\int(U - \phi)`: its tail,
    heavier than the Poisson's, keeps the variance finite when that guess is low. Returns the counts and
    :math:`-U\tau + \log(\tau^\kappa / (\kappa!\, p(\kappa)))`.
    """
    width = high - low
    guess = duration * (high - 0.5 * (density.phi(start, scale) + density.phi(end, scale)))
    mean = guess.clamp(min=0.05 * width * duration, max=width * duration)
    number = torch.poisson(_gamma(size, generator, mean.shape, mean.dtype, mean.device) * (mean / size),
                           generator=generator).long()
    return number, -high * duration + _log_count_weight(number, mean, duration, size)


def _log_count_weight(counts, mean, duration, size):
    r""":math:`\log(\tau^\kappa / (\kappa!\, p(\kappa)))`, p the negative binomial of ``size`` r and ``mean`` gamma."""
    counts = counts.to(mean.dtype)
    return counts * math.log(duration) + math.lgamma(size) + (size + counts) * torch.log(size + mean) \
        - torch.lgamma(size + counts) - size * math.log(size) - counts * torch.log(mean)


def _gamma(shape_parameter, generator, size, dtype, device):
    """Gamma(shape_parameter, 1) draws from ``generator`` (torch's gamma sampler takes none): Marsaglia and
    Tsang (2000), for a shape of at least 1."""
    d = shape_parameter - 1 / 3
    c = 1 / math.sqrt(9 * d)
    out = torch.empty(size, dtype=dtype, device=device)
    pending = torch.ones(size, dtype=torch.bool, device=device)
    while pending.any():
        normal = torch.randn(size, generator=generator, dtype=dtype, device=device)
        uniform = torch.rand(size, generator=generator, dtype=dtype, device=device)
        cube = (1 + c * normal) ** 3
        accept = pending & (cube > 0) & (uniform.log() < 0.5 * normal ** 2 + d - d * cube
                                         + d * cube.clamp_min(1e-300).log())
        out = torch.where(accept, d * cube, out)
        pending &= ~accept
    return out


def _in_row_blocks(expected, dim, estimate):
    """``estimate(rows)`` over blocks of rows sorted by ``expected`` points, each of at most about
    ``_BLOCK_CELLS`` points x coordinates (one row at least), gathered back in the rows' order."""
    order = expected.argsort()
    # the widest row of a block pads it: allow for the Poisson count's spread above its mean
    widths = (expected[order] + 6 * expected[order].sqrt() + 10).tolist()
    log_q = expected.new_zeros(expected.shape)
    info = {"phi_evaluations": 0, "top_ups": 0}
    first = 0
    while first < len(order):
        last = first + 1
        while last < len(order) and (last + 1 - first) * widths[last] * dim <= _BLOCK_CELLS:
            last += 1
        rows = order[first:last]
        log_q[rows], block_info = estimate(rows)
        info = {key: info[key] + block_info[key] for key in info}
        first = last
    return log_q, info


def _intensity(density, scale, start, end, low, high, bounded):
    """The Poisson estimator's rate: U - L for factors in [0, 1]; else U - phi(midpoint).

    Any rate gives an unbiased, non-negative estimate (every factor U - phi is
    non-negative on the layer); the variance is smallest near the path's mean
    of U - phi, which phi at the end points' midpoint approximates
    (Beskos, Papaspiliopoulos, Roberts and Fearnhead 2006).
    """
    width = high - low
    if bounded:
        return width
    guess = high - density.phi(0.5 * (start + end), scale)
    return guess.clamp(min=0.05 * width, max=width)


def _log_product(density, scale, whitened, mask, low, high, intensity):
    """sum_k log((U - phi(x_k)) / intensity) over the masked points; a bound that fails raises."""
    if not mask.any():
        return low.new_zeros(low.shape)
    rows, cols = mask.nonzero(as_tuple=True)
    phi = density.phi(whitened[rows, cols] @ scale.T, scale)
    slack = 1e-9 * (1 + high[rows].abs())
    if bool(((phi > high[rows] + slack) | (phi < low[rows] - slack)).any()):
        raise FloatingPointError("phi left its bounds on a layer; the density's phi_bounds are wrong")
    ratio = (high[rows] - phi).clamp_min(0) / intensity[rows]
    return low.new_zeros(low.shape).index_add(0, rows, ratio.log())


def _top_up(density, scale, w_start, w_end, times, skeleton, layers, low, high, intensity, extra_times, duration,
            generator):
    """The estimator's points beyond the skeleton's, at ``extra_times`` (sorted, padded with ``duration``),
    drawn given the skeleton and the layers (rejection).

    Coordinate j's proposal is the bridge given the skeleton; it is accepted
    with probability P(layer = l_j | skeleton and proposal), so accepted points
    follow the bridge given the skeleton and the layer.
    """
    order = torch.cat([times, extra_times], 1).sort(1).values
    extra_points = torch.zeros(*extra_times.shape, w_start.shape[1], dtype=w_start.dtype, device=w_start.device)
    pending = torch.ones(w_start.shape, dtype=torch.bool, device=w_start.device)
    rows = torch.arange(len(w_start), device=w_start.device)
    for _ in range(_MAX_REJECTIONS):
        proposal = _bridge_at(extra_times[rows], w_start[rows], w_end[rows], duration, generator,
                              known_times=times[rows], known_points=skeleton[rows])
        points, gaps = _with_ends(w_start[rows], w_end[rows], order[rows],
                                  _merge(times[rows], skeleton[rows], extra_times[rows], proposal), duration)
        segments = _Segments(points, gaps)
        box = functools.partial(_layer_box, w_start[rows], w_end[rows], duration=duration)
        probability = segments.stay(*box(layers[rows].to(w_start.dtype))) \
            - segments.stay(*box((layers[rows] - 1).to(w_start.dtype)))
        uniforms = torch.rand(proposal.shape[0], proposal.shape[2], generator=generator, dtype=w_start.dtype,
                              device=w_start.device)
        accepted = pending[rows] & (uniforms < probability)
        extra_points[rows] = torch.where(accepted[:, None], proposal, extra_points[rows])
        pending[rows] &= ~accepted
        rows = rows[pending[rows].any(-1)]
        if len(rows) == 0:
            return _log_product(density, scale, extra_points, extra_times < duration, low, high, intensity)
    raise RuntimeError("drawing a bridge given its layer took too many rejections")


def _merge(times, points, extra_times, extra_points):
    """Points of two sorted skeletons in time order."""
    order = torch.cat([times, extra_times], 1).argsort(1)
    stacked = torch.cat([points, extra_points], 1)
    return torch.gather(stacked, 1, order[..., None].expand(-1, -1, stacked.shape[-1]))


def log_discretised_estimate(phi_start, phi_end, duration):
    r"""Trapezoid rule :math:`-\tau(\phi(x_s) + \phi(x_t))/2`: biased (order :math:`\tau^2`), approximate."""
    return -0.5 * duration * (phi_start + phi_end)
