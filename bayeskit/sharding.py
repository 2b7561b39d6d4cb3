r"""Data shards and their sub-posteriors: the one implementation behind Fusion, DSGLD and FSGLD.

The data :math:`y` are split into :math:`C` shards :math:`y_1, \dots, y_C`.
Shard :math:`c` has the *sub-posterior*

.. math::

    f_c(\theta) \propto p(\theta)^{1/C}\, p(y_c \mid \theta),
    \qquad \prod_{c=1}^C f_c(\theta) \propto p(\theta \mid y).

Every engine here works on the flat unconstrained vector :math:`z`, with
:math:`\theta = T(z)` for the bijection :math:`T` of each latent site onto its
support. There the full posterior is

.. math:: \log p(z \mid y) = \log p(T(z)) + \log|\det J_T(z)| + \log p(y \mid T(z)) + \text{const},

and the log-Jacobian belongs to the prior: it is part of the prior's density
on :math:`z`. So each shard takes a :math:`1/C` share of it as well,

.. math::

    \log f_c(z) = \tfrac1C\big(\log p(T(z)) + \log|\det J_T(z)|\big) + \log p(y_c \mid T(z)),
    \qquad \sum_c \log f_c(z) = \log p(z \mid y) + \text{const}.

Tempering only :math:`\log p(\theta)` (Pyro's site ``scale``) and adding the
full log-Jacobian in every shard would make :math:`\prod_c f_c` carry the
Jacobian :math:`C` times: the fused posterior of any constrained site (a
rate, a probability, a simplex) would be biased, by more as :math:`C` grows.

- :class:`PriorScaleMessenger` / :func:`scale_prior` / :class:`PriorScaledModel`:
  the model with :math:`\log p(\theta)` scaled by :math:`1/C` (constrained space).
- :func:`subposterior_target`: the :class:`~bayeskit.Target` of :math:`f_c` on
  :math:`z`, log-Jacobian share included. Every sampler and density of a
  shard goes through it.
- :func:`split_data` / :class:`Shard`: shards of a model's data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

from bayeskit._checks import positive, positive_int
from bayeskit.target import Site, Target

__all__ = ["PriorScaleMessenger", "PriorScaledModel", "scale_prior", "subposterior_target", "has_log_jacobian",
           "log_jacobian", "Shard", "split_data"]


# ============================================================ the prior's share, constrained space
class PriorScaleMessenger(Messenger):
    """Multiply the log density of latent sample sites by ``scale``.

    With ``scale = 1/C`` a shard's model ``p(theta) p(y_c | theta)`` becomes
    ``p(theta)^(1/C) p(y_c | theta)`` *on the constrained space*. It works
    through Pyro's ``scale`` of each site (as ``poutine.scale`` does), so
    plates' ``N/B`` minibatch scaling composes with it. It does not touch
    the log-Jacobian, which Pyro's inference (and
    :meth:`bayeskit.Target.from_pyro`) adds outside the model: use
    :func:`subposterior_target` for the sub-posterior on the unconstrained space.

    Only sites that are latent *when the message reaches this handler* are
    scaled: observed sites (``obs=``) and subsample sites are left alone.
    Handlers applied outside this one (e.g. the ``condition`` with which
    :meth:`bayeskit.Target.from_pyro` fixes latent values) have not yet
    marked those sites observed, so the prior stays scaled there too.

    Parameters
    ----------
    scale : float
        Positive factor; ``1 / num_shards`` for sub-posteriors.
    sites : iterable of str, optional
        Restrict scaling to these site names.  By default every latent site is
        treated as a global parameter shared by all shards; a model with local
        latent variables (one per data row) should name its global sites here.
    """

    def __init__(self, scale: float, sites: Iterable[str] | None = None):
        super().__init__()
        self.scale = positive("scale", scale)
        self.sites = None if sites is None else frozenset(sites)

    def _process_message(self, msg):
        if msg["type"] != "sample" or msg["is_observed"] or site_is_subsample(msg):
            return
        if self.sites is None or msg["name"] in self.sites:
            msg["scale"] = self.scale * msg["scale"]


@dataclass(frozen=True)
class PriorScaledModel:
    """``model`` run under :class:`PriorScaleMessenger`; a plain object so Ray can pickle it."""

    model: object
    scale: float
    sites: frozenset | None = None

    def __call__(self, *args, **kwargs):
        with PriorScaleMessenger(self.scale, self.sites):
            return self.model(*args, **kwargs)

    @property
    def __name__(self):  # Target descriptions name the model
        return f"{getattr(self.model, '__name__', type(self.model).__name__)} (prior^{self.scale:.3g})"


def scale_prior(model, scale: float, sites: Iterable[str] | None = None) -> PriorScaledModel:
    """The model with its latent sites' log densities scaled by ``scale`` (see :class:`PriorScaleMessenger`).

    Constrained space only: for the sub-posterior on the unconstrained vector
    (what samplers and Fusion's densities use) take :func:`subposterior_target`.
    """
    if not callable(model):
        raise TypeError(f"model must be a callable Pyro model, got {type(model).__name__}")
    return PriorScaledModel(model, positive("scale", scale), None if sites is None else frozenset(sites))


# ============================================================ the log-Jacobian's share
def has_log_jacobian(site: Site) -> bool:
    """Whether the site's map onto its support has a log-Jacobian: all but real-valued sites (identity map)."""
    support = site.constraint
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is not constraints.real


def log_jacobian(flat: torch.Tensor, sites: Iterable[Site]) -> torch.Tensor:
    """:math:`\\sum_{\\text{sites}} \\log|\\det J_T(z)|` at the rows of ``flat`` (n, dim) -> (n,)."""
    total = flat.new_zeros(flat.shape[0])
    for site in sites:
        block = Target.site_block(flat, site)
        ldj = site.transform.log_abs_det_jacobian(block, site.transform(block))
        total = total + ldj.reshape(flat.shape[0], -1).sum(-1)
    return total


def subposterior_target(model, num_shards: int, args: tuple = (), kwargs: Mapping | None = None, *,
                        prior_sites: Iterable[str] | None = None, **target_options) -> Target:
    r"""The target of one shard's sub-posterior on the unconstrained vector, ``C = num_shards``.

    .. math:: \log f_c(z) = \tfrac1C\big(\log p(T(z)) + \log|\det J_T(z)|\big)
              + \log p(y_c \mid T(z)).

    ``Target.from_pyro`` of :func:`scale_prior` gives
    :math:`\tfrac1C \log p(T(z)) + \log|\det J_T(z)| + \log p(y_c \mid T(z))`: it
    adds the log-Jacobian in full. This subtracts
    :math:`(1 - \tfrac1C)\log|\det J_T(z)|` of the scaled sites, so that the
    shards' log densities (and scores) sum exactly to the full-data one,
    :math:`\sum_c \log f_c(z) = \log p(z \mid y)` up to a constant: what
    DSGLD/FSGLD's gradient estimators and Fusion's product rely on.

    ``args``/``kwargs`` are the shard's model arguments; ``prior_sites``
    restricts the tempering as in :class:`PriorScaleMessenger`;
    ``target_options`` (``vectorize``, ``jit_compile``) go to
    :meth:`~bayeskit.Target.from_pyro`.
    """
    scale = 1.0 / positive_int("num_shards", num_shards)
    inner = Target.from_pyro(scale_prior(model, scale, prior_sites), *args, **dict(kwargs or {}), **target_options)
    names = None if prior_sites is None else set(prior_sites)
    tempered = [site for name, site in inner.sites.items()
                if (names is None or name in names) and has_log_jacobian(site)]
    if not tempered or scale == 1.0:  # all-real sites, or one shard: nothing to correct
        return inner
    return _with_jacobian_share(inner, tempered, scale)


def _with_jacobian_share(inner: Target, sites: list[Site], scale: float) -> Target:
    """``inner`` with ``-(1 - scale) log|det J|`` of ``sites`` added to its log density; all else kept."""
    def log_prob(flat):
        return inner.log_prob(flat) - (1.0 - scale) * log_jacobian(flat, sites)

    def deterministic(flat):  # the model's pyro.deterministic sites: tempering changes none of them
        return {name: value for name, value in inner.draws(flat).items() if name not in inner.sites}

    target = Target(inner.sites, log_prob, init_fn=inner.init,
                    pointwise_log_likelihood_fn=inner.pointwise_log_likelihood,  # observed sites: untouched
                    deterministic_fn=deterministic, observed_data=inner.observed_data, dtype=inner.dtype,
                    device=inner.device, description=inner.description,
                    # what from_pyro found about the model (minibatching, vectorisation) holds when tempered too
                    subsampled=inner.subsampled, vectorized=inner.vectorized, compiled=inner.compiled,
                    sampled_fisher=inner.sampled_fisher)
    return target


# ============================================================ splitting the data
@dataclass
class Shard:
    """One shard of the data: the model, its arguments restricted to the shard's rows, and ``C``.

    :meth:`target` is the shard's sub-posterior (:func:`subposterior_target`);
    every sampler and density of the shard should start from it.
    """

    model: object
    args: tuple
    kwargs: dict
    num_shards: int
    num_data: int
    index: int = 0

    @property
    def prior_exponent(self) -> float:
        """``1 / C``: the shard's share of the prior (and of the log-Jacobian)."""
        return 1.0 / self.num_shards

    def target(self, **target_options) -> Target:
        """The sub-posterior's :class:`~bayeskit.Target` on the unconstrained vector (log-Jacobian share included)."""
        return subposterior_target(self.model, self.num_shards, self.args, self.kwargs, **target_options)


def split_data(model, args, kwargs, num_shards: int, *, generator=None) -> list[Shard]:
    """Shards of equal size (within one row) of every tensor argument sharing the first one's length.

    The rows are shuffled with ``generator`` first (None keeps their order),
    so that shards are exchangeable, as Fusion's experiments assume.
    """
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0]
    if not tensors:
        raise ValueError("sharding splits the model's tensor arguments by rows, but none was given")
    num_rows = tensors[0].shape[0]
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= num_rows:
        raise ValueError(f"num_shards must be an int in [1, {num_rows}] (the data's rows), got {num_shards!r}")
    order = torch.randperm(num_rows, generator=generator) if generator is not None else torch.arange(num_rows)
    pieces = torch.tensor_split(order, num_shards)

    def cut(value, rows):
        is_data = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_rows
        return value[rows.to(value.device)] if is_data else value

    return [Shard(model, tuple(cut(a, rows) for a in args), {k: cut(v, rows) for k, v in kwargs.items()},
                  num_shards, len(rows), c) for c, rows in enumerate(pieces)]
