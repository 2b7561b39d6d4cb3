"""The layout of latent sites in a flat unconstrained vector: what :class:`~bayeskit.Target` and its builders share.

Kept apart from ``target.py`` so that the builders (``_pyro_target.py``,
``_numpyro_target.py``), which ``Target.from_pyro``/``from_numpyro`` call,
import it and not ``target.py``: no import cycle.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch.distributions import biject_to, constraints
from torch.distributions.transforms import Transform

__all__ = ["Site", "build_sites", "flat_batch", "site_block"]


@dataclass(frozen=True)
class Site:
    """One latent site of a target.

    Attributes
    ----------
    name : str
        The site's name in the model.
    shape : torch.Size
        Shape of one draw in constrained space (the model's batch + event shape).
    unconstrained_shape : torch.Size
        Shape of the site's block of ``z`` before flattening (differs from
        ``shape`` for e.g. the simplex, whose unconstrained form has K - 1 entries).
    constraint : torch.distributions.constraints.Constraint
        The support of the site.
    transform : Transform or None
        Map from unconstrained to constrained space; ``None`` when the target
        brings its own ``constrain_fn`` (the NumPyro bridge).
    slice : slice
        Position of the site's block in the flat vector ``z``.
    """

    name: str
    shape: torch.Size
    unconstrained_shape: torch.Size
    constraint: constraints.Constraint
    transform: Transform | None
    slice: slice

    @property
    def numel(self) -> int:
        return self.slice.stop - self.slice.start


def build_sites(specs: Mapping[str, tuple[torch.Size, constraints.Constraint]],
                site_transform: Callable[[str, constraints.Constraint], Transform] | None = None
                ) -> dict[str, Site]:
    """Lay out sites in a flat vector, in the order given.

    ``specs`` maps a name to ``(constrained shape, support)``.  The
    unconstrained shape comes from ``biject_to(support)``, or from
    ``site_transform(name, support)`` when given (the mirrored Stein samplers
    parameterise sites by their mirror maps' dual coordinates).
    """
    sites, offset = {}, 0
    for name, (shape, support) in specs.items():
        shape = torch.Size(shape)
        transform = biject_to(support) if site_transform is None else site_transform(name, support)
        unconstrained_shape = torch.Size(transform.inverse_shape(shape))
        size = math.prod(unconstrained_shape)
        sites[name] = Site(name, shape, unconstrained_shape, support, transform,
                           slice(offset, offset + size))
        offset += size
    return sites


def flat_batch(z: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Size]:
    """Flatten ``z`` of shape ``(..., dim)`` to ``(N, dim)``; return it and the batch shape."""
    if not isinstance(z, torch.Tensor):
        raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
    if z.dim() == 0 or z.shape[-1] != dim:
        raise ValueError(f"z must have shape (..., {dim}), got {tuple(z.shape)}")
    return z.reshape(-1, dim), z.shape[:-1]


def site_block(flat: torch.Tensor, site: Site) -> torch.Tensor:
    """The site's unconstrained block of ``flat`` (N, dim), shaped ``(N, *unconstrained_shape)``."""
    return flat[:, site.slice].reshape(flat.shape[0], *site.unconstrained_shape)
