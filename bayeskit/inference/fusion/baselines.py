"""Approximate fusion baselines: Consensus Monte Carlo and the Weierstrass rejection sampler.

The data are split into ``C`` shards; shard ``c`` gives the sub-posterior

.. math::

    f_c(\\theta) \\propto p(\\theta)^{1/C}\\, p(x_c \\mid \\theta),
    \\qquad f(\\theta) \\propto \\prod_{c=1}^C f_c(\\theta) = p(\\theta \\mid x).

Both functions here take ``N`` draws of each ``f_c`` (``samples[c]`` of shape
``(N, d)``) and return draws that approximate ``f``.  They are the
approximate methods that exact fusion is compared with:

- :func:`consensus_monte_carlo` (Scott, Blocker, Bonassi, Chipman, George and
  McCulloch, "Bayes and big data: the consensus Monte Carlo algorithm",
  Int. J. Management Science and Engineering Management 11, 2016) averages
  the ``i``-th draws of the ``C`` sets with precision weights.  It is exact
  when every ``f_c`` is Gaussian and biased otherwise.
- :func:`weierstrass` (Wang and Dunson, "Parallelizing MCMC via Weierstrass
  sampler", arXiv:1312.4605, 2013), the rejection-sampling combination: it
  returns exact draws of the product of the ``C`` sub-posteriors' Weierstrass
  transforms (each ``f_c`` smoothed by a Gaussian kernel of width ``h``),
  with each ``f_c`` replaced by its draws.  Its bias is ``O(h^2)``; its cost
  grows as ``h`` shrinks, roughly as ``h^{-(C-1)d}``.

Both are pure functions of tensors and follow the inputs' device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from bayeskit._checks import positive_int

__all__ = ["consensus_monte_carlo", "weierstrass", "default_bandwidth", "CMC_WEIGHTINGS",
           "DEFAULT_MAX_PROPOSALS"]

#: The weightings :func:`consensus_monte_carlo` accepts.
CMC_WEIGHTINGS = ("covariance", "equal")

#: :func:`weierstrass` stops after this many proposed tuples unless told otherwise.
DEFAULT_MAX_PROPOSALS = 10**8

# Proposals per batch are capped so that a batch's C * batch indices (int64, the largest of its tensors now
# that coordinates are gathered one at a time) stay near 32 MiB whatever C is.
_BATCH_ELEMENTS = 2**22
_MIN_BATCH = 1024


# ============================================================ validation
def _stack_samples(samples) -> Tensor:
    """The sets of draws as one ``(C, N, d)`` tensor, after checking what both methods need."""
    if isinstance(samples, Tensor):
        # A stacked (C, N, d) tensor is accepted as C sets.
        if samples.dim() != 3:
            raise ValueError(f"samples given as one tensor must be (C, N, d), got shape {tuple(samples.shape)}")
        samples = list(samples.unbind(0))
    if not isinstance(samples, Sequence) or isinstance(samples, (str, bytes)):
        raise ValueError(f"samples must be a sequence of (N, d) tensors, got {type(samples).__name__}")
    if len(samples) < 2:
        raise ValueError(f"samples must hold at least 2 sets of draws, got {len(samples)}")
    first = samples[0]
    for c, s in enumerate(samples):
        if not isinstance(s, Tensor):
            raise ValueError(f"samples[{c}] must be a tensor, got {type(s).__name__}")
        if not s.is_floating_point():
            raise ValueError(f"samples[{c}] must be floating point, got {s.dtype}")
        if s.dim() != 2:
            raise ValueError(f"samples[{c}] must be (N, d), got shape {tuple(s.shape)}")
        if s.dtype != first.dtype or s.device != first.device:
            raise ValueError(f"samples[{c}] is {s.dtype} on {s.device} but samples[0] is "
                             f"{first.dtype} on {first.device}")
        if s.shape[1] != first.shape[1]:
            raise ValueError(f"samples[{c}] has d = {s.shape[1]} coordinates but samples[0] has {first.shape[1]}")
        if s.shape[0] != first.shape[0]:
            raise ValueError(f"samples[{c}] has N = {s.shape[0]} draws but samples[0] has {first.shape[0]}; "
                             "every set must hold the same number of draws")
    if first.shape[0] < 2 or first.shape[1] < 1:
        raise ValueError(f"samples must hold at least 2 draws of at least 1 coordinate, got shape "
                         f"{tuple(first.shape)}")
    x = torch.stack(list(samples))
    if not torch.isfinite(x).all():
        raise ValueError("samples contain non-finite values (nan or inf)")
    return x


# ============================================================ Consensus Monte Carlo
def consensus_monte_carlo(samples: Sequence[Tensor], *, weighting: str = "covariance") -> Tensor:
    """Consensus Monte Carlo (Scott et al., 2016): precision-weighted averages of the sets' draws.

    Draw ``i`` of the result combines draw ``i`` of every set,

    .. math::

        \\theta^{(i)} = \\Big(\\sum_{c=1}^C W_c\\Big)^{-1} \\sum_{c=1}^C W_c\\, \\theta_c^{(i)},

    with ``W_c = \\hat\\Sigma_c^{-1}``, the inverse of the sample covariance of
    set ``c`` (``weighting="covariance"``, the paper's choice), or ``W_c = I``
    (``weighting="equal"``, the plain average).  When every ``f_c`` is
    ``N(m_c, S_c)`` and ``W_c = S_c^{-1}``, the result is distributed exactly as
    the product ``N(A \\sum_c S_c^{-1} m_c, A)`` with ``A = (\\sum_c S_c^{-1})^{-1}``;
    estimating ``W_c`` from the draws changes the covariance only at second
    order in the estimation error.  For non-Gaussian ``f_c`` the result is
    biased, and equal weights are biased whenever the ``S_c`` differ.

    Parameters
    ----------
    samples : sequence of Tensor
        ``C >= 2`` tensors of shape ``(N, d)``, draws of ``f_1, ..., f_C`` with
        the same ``N``, dtype and device (or one ``(C, N, d)`` tensor).  Draw
        ``i`` of each set is paired with draw ``i`` of the others, so the sets
        should be independent of one another (e.g. chains run on different
        shards).
    weighting : {"covariance", "equal"}

    Returns
    -------
    Tensor
        ``(N, d)`` draws approximating ``f``, on the inputs' device and dtype.
    """
    x = _stack_samples(samples)
    if weighting not in CMC_WEIGHTINGS:
        raise ValueError(f"weighting must be one of {CMC_WEIGHTINGS}, got {weighting!r}")
    if weighting == "equal":
        return x.mean(0)
    weights = _inverse_covariances(x)
    # sum_c W_c theta_c^(i) for every i at once, then one solve with the summed precision.
    weighted = torch.einsum("cjk,cnk->nj", weights, x)
    total = torch.linalg.cholesky(weights.sum(0))
    return torch.cholesky_solve(weighted.T, total).T


def _inverse_covariances(x: Tensor) -> Tensor:
    """``(C, d, d)`` inverses of the sets' sample covariances; a singular one is a ValueError."""
    centred = x - x.mean(1, keepdim=True)
    covariances = centred.mT @ centred / (x.shape[1] - 1)
    factors, info = torch.linalg.cholesky_ex(covariances)
    if (info != 0).any():
        c = int(torch.nonzero(info)[0])
        raise ValueError(f"samples[{c}] has a singular sample covariance: covariance weighting needs more draws "
                         f"than coordinates (N = {x.shape[1]}, d = {x.shape[2]}) and no constant coordinate; "
                         "use weighting='equal' or more draws")
    return torch.cholesky_inverse(factors)


# ============================================================ Weierstrass rejection sampler
def default_bandwidth(num_draws: int, dim: int) -> float:
    """The default Weierstrass bandwidth ``h`` in units of the pooled sub-posterior sd.

    .. math::

        h = \\Big(\\frac{4}{d + 2}\\Big)^{1/(d+4)} N^{-1/(d+4)}.

    Why: :func:`weierstrass` draws exactly from the product of the ``C``
    Gaussian kernel density estimates built on the sets' ``N`` draws with
    bandwidth ``h`` (per coordinate, ``h`` times the pooled sd).  Smoothing a
    smooth density by a kernel of sd ``h`` biases it by ``O(h^2)`` (the kernel's
    second moment times the curvature), and Wang and Dunson (2013) let ``h``
    shrink as the number of draws grows.  Balancing the squared
    ``O(h^2)`` bias of each factor against its ``O(1 / (N h^d))`` variance gives
    ``h \\propto N^{-1/(d+4)}``; the constant is Silverman's normal-reference
    rule (the asymptotically MISE-optimal bandwidth for a unit-sd Gaussian),
    which is the right scale because the coordinates are measured in sds.

    The rule ignores ``C``: the rejection sampler accepts a tuple with
    probability roughly ``(1 + 1/h^2)^{-(C-1)d/2}`` even when the sub-posteriors
    agree, so for ``(C - 1) d`` beyond a handful this ``h`` may need more
    proposals than ``max_proposals`` allows; pass a larger ``bandwidth`` then.
    """
    num_draws, dim = positive_int("num_draws", num_draws), positive_int("dim", dim)
    return (4.0 / (dim + 2)) ** (1.0 / (dim + 4)) * num_draws ** (-1.0 / (dim + 4))


def weierstrass(samples: Sequence[Tensor], *, num_samples: int | None = None, bandwidth: float | Tensor | None = None,
                generator: torch.Generator | None = None, max_proposals: int | None = None) -> Tensor:
    """The Weierstrass rejection sampler (Wang and Dunson, 2013): draws of the product of smoothed sub-posteriors.

    Each ``f_c`` is replaced by its Weierstrass transform, ``f_c`` convolved
    with a Gaussian kernel ``K_h = N(0, h^2 D)``, and the product
    ``\\prod_c (f_c * K_h)`` (normalised) is sampled exactly.  The product
    of the transforms is the ``theta``-marginal of

    .. math::

        p(\\theta, t_1, \\dots, t_C) \\propto \\prod_c f_c(t_c)\\, K_h(\\theta - t_c),
        \\qquad \\sum_c \\lVert\\theta - t_c\\rVert^2 =
        C \\lVert\\theta - \\bar t\\rVert^2 + \\sum_c \\lVert t_c - \\bar t\\rVert^2,

    (norms in the metric ``D^{-1}``, ``K_h(v) \\propto \\exp(-\\lVert v\\rVert^2_{D^{-1}} / (2h^2))``), so that
    ``theta | t ~ N(\\bar t, h^2 D / C)``
    and ``t`` has density proportional to
    ``\\prod_c f_c(t_c) \\exp(-\\sum_c \\lVert t_c - \\bar t\\rVert^2_{D^{-1}} / (2h^2))``.
    Hence, per proposal:

    1. pick one draw ``t_c`` uniformly from each set ``c`` (a draw of ``f_c``
       with ``f_c`` replaced by its draws);
    2. accept the tuple with probability
       ``exp(-\\sum_c \\sum_j (t_{cj} - \\bar t_j)^2 / (2 h_j^2 s_j^2))``, which is at most 1;
    3. on acceptance return ``\\bar t + (h / \\sqrt{C})\\, s \\odot z`` with ``z ~ N(0, I)``.

    Scaling: ``D = diag(s^2)`` where ``s_j^2 = C^{-1} \\sum_c \\hat\\sigma^2_{cj}`` is
    the pooled within-set variance of coordinate ``j`` (the mean over sets of
    each set's unbiased sample variance).  ``h`` is therefore unit-free: it is
    the kernel's sd in units of a typical sub-posterior sd, per coordinate.
    A ``(d,)`` bandwidth replaces ``h^2 D`` by ``diag(h_j^2 s_j^2)`` throughout.

    With the draws in place of ``f_c`` the result is an exact draw of the
    product of ``C`` Gaussian kernel density estimates.  For Gaussian
    ``f_c = N(m_c, S_c)`` it is ``\\prod_c N(m_c, S_c + h^2 D)``: the
    covariance is inflated and the mean shifted by ``O(h^2)``.  Accepted tuples
    reuse the sets' draws, so the result's Monte Carlo error is larger than
    that of ``num_samples`` independent draws, and much larger when the
    acceptance rate is so low that few draws of each set lie where the
    product has its mass (sub-posteriors that disagree).

    Parameters
    ----------
    samples : sequence of Tensor
        ``C >= 2`` tensors of shape ``(N, d)`` with the same ``N``, dtype and
        device (or one ``(C, N, d)`` tensor).
    num_samples : int, optional
        Draws to return; ``N`` by default.
    bandwidth : float or Tensor, optional
        ``h > 0`` in units of the pooled sd: a number, a 0-d tensor or a
        ``(d,)`` tensor (one ``h_j`` per coordinate).  Default
        :func:`default_bandwidth` ``(N, d)``.  Smaller is less biased and
        slower: the acceptance rate falls roughly as ``h^{(C-1)d}``.
    generator : torch.Generator, optional
        Source of every random number (on the generator's device, then moved
        to the inputs'); the same seed gives the same draws.  Torch's default
        generator for the inputs' device when omitted.
    max_proposals : int, optional
        The most tuples to propose; :data:`DEFAULT_MAX_PROPOSALS` by default
        (about 20 s of one CPU core for ``C = 4``, ``d = 3``).

    Returns
    -------
    Tensor
        ``(num_samples, d)`` draws, on the inputs' device and dtype.

    Raises
    ------
    RuntimeError
        When ``max_proposals`` tuples gave fewer than ``num_samples``
        acceptances, or as soon as the acceptance rate seen so far shows
        (by an upper confidence bound) that they cannot; the message gives the
        rate, the proposals needed and what to change.
    """
    x = _stack_samples(samples)
    num_sets, num_draws, dim = x.shape
    num_samples = num_draws if num_samples is None else positive_int("num_samples", num_samples)
    max_proposals = DEFAULT_MAX_PROPOSALS if max_proposals is None else positive_int("max_proposals", max_proposals)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    sd = _pooled_sd(x)
    h = _bandwidth(bandwidth, num_draws, dim, x)
    kernel_sd = h * sd  # (d,): the kernel's sd per coordinate in the draws' units
    rng = _Random(generator, x.device, x.dtype)

    # Coordinates first and in kernel units, so that a batch's gathered tuples form one (d, C, batch) block
    # whose deviations from their means are computed in place, and the acceptance needs no division.
    scaled = (x / kernel_sd).permute(2, 0, 1).reshape(dim, num_sets * num_draws)
    offsets = torch.arange(num_sets, device=x.device).unsqueeze(1) * num_draws
    max_batch = max(_MIN_BATCH, _BATCH_ELEMENTS // num_sets)
    accepted, count, proposed = [], 0, 0
    batch = min(max_batch, max(_MIN_BATCH, 4 * num_samples))
    while count < num_samples:
        size = min(batch, max_proposals - proposed)
        means = _accepted_means(scaled, offsets, num_draws, size, rng)
        accepted.append(means[:num_samples - count])
        count += accepted[-1].shape[0]
        proposed += size
        if count < num_samples:
            _check_budget(count, num_samples, proposed, max_proposals, num_sets, dim)
        # Size the next batch for the draws still missing at the rate seen so far (+1 keeps it finite
        # before the first acceptance); the cap bounds memory, and the batch sizes depend only on the
        # draws made so far, so a seeded generator reproduces them.
        rate = (count + 1) / (proposed + 1)
        batch = min(max_batch, max(_MIN_BATCH, math.ceil(1.2 * (num_samples - count) / rate)))
    # theta = t_bar + (h / sqrt(C)) s * z, computed in kernel units and scaled back once.
    centres = torch.cat(accepted)
    return (centres + rng.normal(centres.shape) / math.sqrt(num_sets)) * kernel_sd


def _pooled_sd(x: Tensor) -> Tensor:
    """``(d,)``: root of the mean over sets of each set's unbiased sample variance, per coordinate."""
    sd = x.var(1).mean(0).sqrt()
    if not (sd > 0).all():
        j = int(torch.nonzero(sd <= 0)[0])
        raise ValueError(f"samples have zero variance in coordinate {j} in every set; the unit-free bandwidth "
                         "needs a positive pooled sd")
    return sd


def _bandwidth(bandwidth, num_draws: int, dim: int, x: Tensor) -> Tensor:
    """``h`` as a ``(d,)`` tensor on ``x``'s device and dtype, checked positive and finite."""
    if bandwidth is None:
        bandwidth = default_bandwidth(num_draws, dim)
    if isinstance(bandwidth, Tensor):
        if bandwidth.dim() > 1 or (bandwidth.dim() == 1 and bandwidth.shape[0] != dim):
            raise ValueError(f"bandwidth as a tensor must be 0-d or of shape ({dim},), got {tuple(bandwidth.shape)}")
        h = bandwidth.detach().to(device=x.device, dtype=x.dtype)
    elif isinstance(bandwidth, (int, float)) and not isinstance(bandwidth, bool):
        h = torch.tensor(float(bandwidth), device=x.device, dtype=x.dtype)
    else:
        raise ValueError(f"bandwidth must be a positive number or tensor, got {type(bandwidth).__name__}")
    if not (torch.isfinite(h) & (h > 0)).all():
        raise ValueError(f"bandwidth must be positive and finite, got {bandwidth!r}")
    return h.expand(dim)


class _Random:
    """Random numbers from ``generator`` on its own device, moved to the draws' device and dtype.

    Drawing on the generator's device lets a CPU generator seed a CUDA run (torch refuses a
    generator on another device), and keeps the stream the same wherever the draws live.
    """

    def __init__(self, generator, device, dtype):
        self.generator, self.device, self.dtype = generator, device, dtype
        self.source = device if generator is None else generator.device

    def integers(self, high: int, shape) -> Tensor:
        return torch.randint(high, shape, generator=self.generator, device=self.source).to(self.device)

    def uniform(self, shape) -> Tensor:
        return torch.rand(shape, generator=self.generator, device=self.source, dtype=self.dtype).to(self.device)

    def normal(self, shape) -> Tensor:
        return torch.randn(shape, generator=self.generator, device=self.source, dtype=self.dtype).to(self.device)


def _accepted_means(scaled: Tensor, offsets: Tensor, num_draws: int, size: int, rng: _Random) -> Tensor:
    """Propose ``size`` tuples (one draw per set, uniformly); return the ``(accepted, d)`` means of those accepted.

    ``scaled`` is ``(d, C * N)``: the draws in kernel units (divided by ``h * s``), set after set, so that
    a tuple is accepted when ``u < exp(-sum_c ||t_c - t_bar||^2 / 2)``, i.e. when its squared deviations,
    summed over coordinates, stay within the budget ``-2 log u``.
    """
    index = rng.integers(num_draws, (offsets.shape[0], size)) + offsets  # (C, size) rows of `scaled`
    # The log scale keeps tiny acceptance probabilities from underflowing to 0.
    budget = -2.0 * rng.uniform(size).log()
    centres = []
    # One coordinate at a time: every term is >= 0, so a tuple whose budget is spent can be dropped before
    # the remaining coordinates are gathered; the decisions are those of the full sum, at a fraction of the
    # cost when most tuples are rejected.  Deviations from the tuple's mean rather than the shortcut
    # sum ||t_c||^2 - C ||t_bar||^2, which cancels badly in float32 far from the origin.
    for coordinate in scaled:
        values = coordinate[index]  # (C, alive)
        centre = values.mean(0)
        budget = budget - (values - centre).square().sum(0)
        alive = budget >= 0
        index, budget = index[:, alive], budget[alive]
        centres = [c[alive] for c in centres] + [centre[alive]]
    return torch.stack(centres, 1)


def _check_budget(count: int, wanted: int, proposed: int, max_proposals: int, num_sets: int, dim: int) -> None:
    """Weierstrass's rejection budget (see :func:`check_rejection_budget`), with its advice."""
    check_rejection_budget(
        "weierstrass", count, wanted, proposed, max_proposals,
        f"Raise `bandwidth` (the rate grows roughly as h^{(num_sets - 1) * dim} for small h, here with "
        f"C = {num_sets} and d = {dim}), raise `max_proposals`, or ask for fewer `num_samples`.")


def check_rejection_budget(sampler: str, count: int, wanted: int, proposed: int, max_proposals: int,
                           advice: str) -> None:
    """Raise when a rejection sampler's ``max_proposals`` is spent, or cannot plausibly suffice, before
    ``wanted`` acceptances (Weierstrass here, Monte Carlo Fusion in ``core.fuse_mcf``).

    The second case spares a run at a hopeless acceptance rate from proposing all ``max_proposals`` first:
    ``count + 3 sqrt(count) + 9`` acceptances bound the Poisson count from above (for ``count = 0`` a
    rate that high would have shown no acceptance with probability ``e^-9``), so with the rate at that
    bound the proposals still needed, ``needed``, are a lower bound on the truth.
    """
    optimistic_rate = (count + 3.0 * math.sqrt(count) + 9.0) / proposed
    needed = proposed + (wanted - count) / optimistic_rate
    if proposed < max_proposals and needed <= max_proposals:
        return
    reason = "were spent" if proposed >= max_proposals else "cannot suffice"
    raise RuntimeError(
        f"{sampler} accepted {count} of the {wanted} draws wanted in {proposed} proposals (acceptance rate "
        f"{count / proposed:.3g}): max_proposals = {max_proposals} {reason}, at least about {needed:.2g} would be "
        f"needed. {advice}")
