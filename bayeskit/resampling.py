r"""Resampling schemes, batched over replicates: each maps normalised weights to ancestor indices.

All four are unbiased (each particle's expected number of offspring is
:math:`N W^i`) and take weights ``(..., N)`` that sum to one over the last
axis; they differ in variance: multinomial > stratified >= systematic, and
residual keeps :math:`\lfloor N W^i \rfloor` copies deterministically
(Douc, Cappé and Moulines 2005, "Comparison of resampling schemes for
particle filtering"). Each draws its uniforms from ``generator`` when given
(Fusion's tree nodes and :meth:`bayeskit.Posterior.resample` own theirs, which
Ray tasks need), else from the global torch RNG on the weights' device (the
SMC engines, whose seed fixes it). Used by the SMC engines, Fusion and
:meth:`~bayeskit.Posterior.resample`: the project's only resamplers.
"""

from __future__ import annotations

import torch

__all__ = ["RESAMPLING", "resample", "inverse_cdf", "multinomial", "stratified", "systematic", "residual"]


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Indices ``i`` with ``cdf[i-1] <= u < cdf[i]`` for uniforms on [0, 1), batched over leading dims."""
    cdf = torch.cumsum(weights, -1)
    # Scaling by the last cumsum instead of trusting it to be 1 keeps round-off from indexing past the end.
    indices = torch.searchsorted(cdf, uniforms * cdf[..., -1:], right=True)
    return indices.clamp_(max=weights.shape[-1] - 1)


def _uniforms(weights, *shape, generator=None):
    return torch.rand(*weights.shape[:-1], *shape, dtype=weights.dtype, device=weights.device, generator=generator)


def multinomial(weights: torch.Tensor, num: int | None = None, *, generator=None) -> torch.Tensor:
    """Independent draws from the categorical law of ``weights``."""
    num = weights.shape[-1] if num is None else num
    return inverse_cdf(weights, _uniforms(weights, num, generator=generator))


def stratified(weights: torch.Tensor, num: int | None = None, *, generator=None) -> torch.Tensor:
    """One uniform in each stratum :math:`[k/N, (k+1)/N)`."""
    num = weights.shape[-1] if num is None else num
    offsets = _uniforms(weights, num, generator=generator)
    return inverse_cdf(weights, (torch.arange(num, dtype=weights.dtype, device=weights.device) + offsets) / num)


def systematic(weights: torch.Tensor, num: int | None = None, *, generator=None) -> torch.Tensor:
    """One uniform shared by all strata: :math:`u_k = (k + U) / N`."""
    num = weights.shape[-1] if num is None else num
    offset = _uniforms(weights, 1, generator=generator)
    return inverse_cdf(weights, (torch.arange(num, dtype=weights.dtype, device=weights.device) + offset) / num)


def residual(weights: torch.Tensor, num: int | None = None, *, generator=None) -> torch.Tensor:
    r""":math:`\lfloor N W^i \rfloor` copies of each particle, the remaining slots drawn from the residuals."""
    num = weights.shape[-1] if num is None else num
    scaled = num * weights
    copies = torch.floor(scaled)
    kept = copies.sum(-1, keepdim=True)
    slots = torch.arange(num, device=weights.device)
    # Slot k < kept holds the particle whose cumulative copy count first exceeds k.
    deterministic = torch.searchsorted(torch.cumsum(copies, -1).to(weights.dtype),
                                       slots.to(weights.dtype).expand_as(scaled).contiguous(), right=True)
    remainder = (scaled - copies).clamp_min(0)
    # A cloud of exactly N W^i copies has no remainder; any index will do for the (unused) residual draws.
    remainder = torch.where(remainder.sum(-1, keepdim=True) > 0, remainder, torch.ones_like(remainder))
    drawn = multinomial(remainder, num, generator=generator)
    shifted = (slots - kept.long()).clamp_min(0)
    indices = torch.where(slots < kept, deterministic, torch.gather(drawn, -1, shifted))
    return indices.clamp_(max=weights.shape[-1] - 1)


RESAMPLING = {"multinomial": multinomial, "stratified": stratified, "systematic": systematic, "residual": residual}


def resample(weights: torch.Tensor, scheme: str = "systematic", num: int | None = None, *,
             generator=None) -> torch.Tensor:
    """Ancestor indices ``(..., num)`` drawn from normalised ``weights`` ``(..., N)`` by ``scheme``."""
    if scheme not in RESAMPLING:
        raise ValueError(f"resampling must be one of {sorted(RESAMPLING)}, got {scheme!r}")
    return RESAMPLING[scheme](weights, num, generator=generator)
