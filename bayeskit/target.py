"""The log density every gradient-based engine consumes.

A :class:`Target` is a batched log density on a flat, unconstrained vector
``z`` of length :attr:`Target.dim`.  Each latent site of the model owns a
slice of ``z``; :meth:`Target.constrain` maps ``z`` back to the model's own
support with ``torch.distributions.biject_to(site.support)``.  The density
includes the log-Jacobian of that map, so that

.. math::

    \\log \\tilde p(z) = \\log p\\big(T(z), y\\big) + \\log\\lvert\\det J_T(z)\\rvert

is the density of the unconstrained variable, exactly as Pyro's and NumPyro's
``potential_fn`` define it (with the opposite sign).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch
from torch.distributions import constraints

from bayeskit._sites import Site, build_sites, flat_batch, site_block

__all__ = ["Site", "Target"]


class Target:
    """A batched log density on a flat unconstrained vector.

    Build one with :meth:`from_pyro`, :meth:`from_numpyro` or
    :meth:`from_log_prob`; the constructor is for those builders and for
    advanced users who bring all pieces themselves.

    Parameters
    ----------
    sites : dict[str, Site]
        Latent sites, laid out contiguously (see :func:`build_sites`).
    log_prob_fn : callable
        ``(N, dim) -> (N,)`` log density in unconstrained space, differentiable
        with torch autograd.
    log_prob_and_score_fn : callable, optional
        ``(N, dim) -> ((N,), (N, dim))``; used instead of autograd when given.
    init_fn : callable, optional
        ``(n, generator) -> (n, dim)`` initial points in unconstrained space
        (prior draws for model-based targets).
    constrain_fn : callable, optional
        ``(N, dim) -> dict[name, (N, *shape)]``; defaults to the sites' transforms.
    pointwise_log_likelihood_fn : callable, optional
        ``(N, dim) -> dict[name, (N, *obs_batch_shape)]``.
    observed_data : dict[str, Tensor], optional
        Observed values, exported with posteriors.
    site_log_prob_fn : callable, optional
        ``(N, dim) -> dict[name, (N,)]`` per-site contributions, used to name
        the culprit when the density is not finite.
    deterministic_fn : callable, optional
        ``(N, dim) -> dict[name, (N, *shape)]``: values the model derives from
        the latent sites (Pyro's ``pyro.deterministic``), reported by :meth:`draws`.
    dtype, device :
        Dtype and device of ``z``.
    description : str
        Short text for ``meta`` and error messages.
    subsampled : bool
        Each call scores a fresh minibatch (a Pyro plate with ``subsample_size``):
        the SG-MCMC engines then call it once per chain, and no full-data
        pointwise log-likelihood exists.
    vectorized : bool
        All points are scored in one model call (else one call per point).
    compiled : bool
        The density runs as a compiled function (``jit_compile``).
    captured : CapturedDensity, optional
        The density captured as a pure function of one point and the
        minibatch (``Target.from_pyro(..., jit_compile=True)``), for engines
        that compile a whole step around it (the SG-MCMC engines do).
    sampled_fisher : callable, optional
        ``(N, dim) -> (N, dim, dim)``: a Monte Carlo Fisher information from data
        simulated by the model, SVNG's default metric; None where the model cannot simulate.
    """

    def __init__(self, sites, log_prob_fn, *, log_prob_and_score_fn=None, init_fn=None,
                 constrain_fn=None, pointwise_log_likelihood_fn=None, observed_data=None,
                 site_log_prob_fn=None, deterministic_fn=None, dtype=None, device=None, description="target",
                 subsampled=False, vectorized=False, compiled=False, sampled_fisher=None, captured=None):
        if not sites:
            raise ValueError("a Target needs at least one latent site")
        self.sites: dict[str, Site] = dict(sites)
        self.dim = max(site.slice.stop for site in self.sites.values())
        self.dtype = dtype or torch.get_default_dtype()
        self.device = torch.device(device or "cpu")
        self.observed_data = dict(observed_data or {})
        self.description = description
        self.subsampled, self.vectorized, self.compiled = bool(subsampled), bool(vectorized), bool(compiled)
        self.sampled_fisher = sampled_fisher
        self.captured = captured
        self._log_prob_fn = log_prob_fn
        self._log_prob_and_score_fn = log_prob_and_score_fn
        self._init_fn = init_fn
        self._constrain_fn = constrain_fn
        self._pointwise_log_likelihood_fn = pointwise_log_likelihood_fn
        self._site_log_prob_fn = site_log_prob_fn
        self._deterministic_fn = deterministic_fn

    def __repr__(self):
        names = ", ".join(f"{s.name}{tuple(s.shape)}" for s in self.sites.values())
        return f"Target({self.description}; dim={self.dim}; sites: {names})"

    # ------------------------------------------------------------------ density
    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Log density of ``z`` of shape ``(..., dim)``; returns shape ``(...)``.

        Differentiable with torch autograd.
        """
        flat, batch_shape = flat_batch(z, self.dim)
        return self._log_prob_fn(flat).reshape(batch_shape)

    def log_prob_and_score(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log density and its gradient ``∇_z log p(z)`` for all points at once.

        Returns detached tensors of shapes ``(...)`` and ``(..., dim)``.
        """
        flat, batch_shape = flat_batch(z, self.dim)
        if self._log_prob_and_score_fn is not None:
            lp, score = self._log_prob_and_score_fn(flat)
        else:
            lp, score = self._autograd_score(flat)
        return lp.reshape(batch_shape), score.reshape(*batch_shape, self.dim)

    def _autograd_score(self, flat):
        with torch.enable_grad():
            leaf = flat.detach().requires_grad_(True)
            lp = self._log_prob_fn(leaf)
            if not lp.requires_grad:  # a density that does not depend on z
                return lp.detach(), torch.zeros_like(flat)
            # Points are independent, so the gradient of the sum is the
            # per-point gradient; one backward pass serves all of them.
            (score,) = torch.autograd.grad(lp.sum(), leaf, allow_unused=True)
        return lp.detach(), torch.zeros_like(flat) if score is None else score

    # --------------------------------------------------------------- transforms
    def constrain(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map ``z`` of shape ``(..., dim)`` to ``{site: (..., *site.shape)}``."""
        flat, batch_shape = flat_batch(z, self.dim)
        if self._constrain_fn is not None:
            values = self._constrain_fn(flat)
        else:
            values = {name: site.transform(self.site_block(flat, site))
                      for name, site in self.sites.items()}
        # a tuple, not unpacked arguments: a scalar site at a single point reshapes to ()
        return {name: v.reshape((*batch_shape, *self.sites[name].shape)) for name, v in values.items()}

    def draws(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """What a Posterior stores for ``z`` of shape ``(..., dim)``: latent and deterministic sites.

        Returns :meth:`constrain`'s ``{site: (..., *site.shape)}`` plus each
        ``pyro.deterministic`` site of the model computed at every point (one
        vectorised model run where the model broadcasts, else one run per
        point; all rows of a subsampling plate).  Deterministic sites are not
        latent sites: they own no part of ``z`` and :meth:`unconstrain` ignores them.
        """
        values = self.constrain(z)
        if self._deterministic_fn is None:
            return values
        flat, batch_shape = flat_batch(z.detach(), self.dim)
        with torch.no_grad():
            derived = self._deterministic_fn(flat)
        return {**values, **{name: v.reshape((*batch_shape, *v.shape[1:])) for name, v in derived.items()}}

    def unconstrain(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Inverse of :meth:`constrain` for targets whose sites carry transforms."""
        missing = set(self.sites) - set(values)
        if missing:
            raise ValueError(f"unconstrain needs a value for every site; missing {sorted(missing)}")
        blocks, batch_shape = [], None
        for name, site in self.sites.items():
            if site.transform is None:
                raise ValueError(f"site {name!r} has no transform; this target cannot unconstrain")
            value = torch.as_tensor(values[name], dtype=self.dtype, device=self.device)
            lead = value.shape[: value.dim() - len(site.shape)]
            if value.shape[len(lead):] != site.shape:
                raise ValueError(f"site {name!r}: expected trailing shape {tuple(site.shape)}, "
                                 f"got {tuple(value.shape)}")
            batch_shape = lead if batch_shape is None else batch_shape
            blocks.append(site.transform.inv(value).reshape(*lead, -1))
        return torch.cat(blocks, dim=-1).reshape(*batch_shape, self.dim)

    site_block = staticmethod(site_block)

    # ------------------------------------------------------------------- extras
    def init(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` initial points of shape ``(n, dim)`` (prior draws where the target has a prior).

        Without a prior, points are drawn uniformly in ``[-2, 2]^dim``, like
        Pyro's ``init_to_uniform``.
        """
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive int, got {n!r}")
        if self._init_fn is not None:
            return self._init_fn(n, generator).to(dtype=self.dtype, device=self.device)
        u = torch.rand(n, self.dim, generator=generator, dtype=self.dtype)
        return (4 * u - 2).to(self.device)

    def pointwise_log_likelihood(self, z: torch.Tensor) -> dict[str, torch.Tensor] | None:
        """``{observed site: (..., *obs_batch_shape)}``, or None when the target cannot tell."""
        if self._pointwise_log_likelihood_fn is None:
            return None
        flat, batch_shape = flat_batch(z, self.dim)
        with torch.no_grad():
            values = self._pointwise_log_likelihood_fn(flat)
        if values is None:
            return None
        return {name: v.reshape((*batch_shape, *v.shape[1:])) for name, v in values.items()}

    def nonfinite_sites(self, z: torch.Tensor, score: torch.Tensor | None = None) -> list[str]:
        """Names of the sites whose value, constrained value, score or log density is not finite."""
        flat, _ = flat_batch(z.detach(), self.dim)
        bad = {name for name, site in self.sites.items()
               if not torch.isfinite(flat[:, site.slice]).all()}
        if score is not None:
            flat_score, _ = flat_batch(score.detach(), self.dim)
            bad |= {name for name, site in self.sites.items()
                    if not torch.isfinite(flat_score[:, site.slice]).all()}
        finite_rows = torch.isfinite(flat).all(-1)
        if not bad and finite_rows.any():
            with torch.no_grad():
                rows = flat[finite_rows]
                bad |= self._sites_off_support(rows)
                if not bad:
                    bad |= self._sites_with_nonfinite_density(rows)
        order = list(self.sites) + sorted(set(bad) - set(self.sites))
        return [name for name in order if name in bad]

    def _sites_off_support(self, rows):
        """Sites whose constrained value is not finite or left its support (e.g. exp underflow to 0)."""
        bad = set()
        for name, value in self.constrain(rows).items():
            inside = self.sites[name].constraint.check(value)
            if not torch.isfinite(value).all() or not torch.as_tensor(inside).all():
                bad.add(name)
        return bad

    def _sites_with_nonfinite_density(self, rows):
        if self._site_log_prob_fn is None:
            return set()
        try:
            terms = self._site_log_prob_fn(rows)
        except (ValueError, RuntimeError):  # e.g. distribution validation refusing a parameter
            return set()
        return {name for name, lp in terms.items() if torch.isnan(lp).any() or (lp == math.inf).any()}

    # ------------------------------------------------------------- constructors
    @classmethod
    def from_log_prob(cls, fn: Callable[[torch.Tensor], torch.Tensor], dim: int, *,
                      name: str = "theta", support: constraints.Constraint = constraints.real,
                      dtype: torch.dtype | None = None, device=None, subsampled: bool = False) -> Target:
        """Wrap a batched log density ``fn(x)`` with ``x`` of shape ``(..., dim)``.

        ``fn`` receives points in the constrained space of ``support`` (real by
        default) and must return shape ``(...)``; the log-Jacobian of
        ``biject_to(support)`` is added so that engines work on ``R^dim``.
        ``subsampled=True`` says that each call scores a fresh minibatch (see the class).
        """
        if not callable(fn):
            raise TypeError("fn must be callable: (..., dim) tensor -> (...) log density")
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        sites = build_sites({name: (torch.Size([dim]), support)})
        site = sites[name]
        if site.unconstrained_shape != site.shape:
            raise ValueError(f"support {support} changes the dimension; pass dim as the constrained size "
                             "and use a Pyro model for such sites")

        def log_prob_fn(z):
            x = site.transform(z)
            lp = fn(x)
            if lp.shape != z.shape[:-1]:
                raise ValueError(f"fn must map (N, {dim}) to (N,), got {tuple(lp.shape)}; "
                                 "write it batched over leading dimensions")
            ldj = site.transform.log_abs_det_jacobian(z, x)
            return lp + ldj.reshape(z.shape[0], -1).sum(-1)

        return cls(sites, log_prob_fn, dtype=dtype, device=device, description="log_prob function",
                   site_log_prob_fn=lambda z: {name: log_prob_fn(z)}, vectorized=True, subsampled=subsampled)

    @classmethod
    def from_pyro(cls, model: Callable, *args, vectorize: bool | str = "auto", jit_compile: bool | str = False,
                  **kwargs) -> Target:
        """Build the target of a Pyro model conditioned on ``*args, **kwargs``.

        All points are evaluated in one model call by wrapping the model in an
        outer ``pyro.plate`` over points, left of every plate the model uses
        (the way ``pyro.infer.SVGD`` vectorises particles).  With
        ``vectorize="auto"`` this is checked once against per-point calls; a
        model that does not broadcast falls back, with a warning, to one call
        per point.  Subsampling plates (``pyro.plate(..., subsample_size=B)``)
        give an unbiased stochastic density at each call, the same minibatch
        for all points.

        The data are checked here, once, never per step (``ValueError`` in
        each case): every tensor argument (and tensors one level inside a dict
        or list argument) for NaN/inf, named by the model's parameter name and
        the first bad index, before the model runs; an argument the model
        indexes with a plate's indices must have the plate's length (the
        message names both arguments and both lengths); observed values must
        be finite and inside the likelihood's support (a 2 for a Bernoulli),
        named by site, value and index, over all rows even when a plate
        subsamples.  Discrete latent sites and ``pyro.param`` sites are refused
        by name.  ``pyro.deterministic`` sites are not latent: :meth:`draws`
        computes them at the posterior draws.

        ``jit_compile=True`` captures the density once as a graph of tensor
        operations (``make_fx``: the model's Python and Pyro's handlers run
        only then; minibatch indices are inputs, drawn afresh at each call),
        takes its score with ``torch.func`` (``grad``, ``vmap`` over points, or
        over chains with one minibatch each) and compiles it with
        ``torch.compile``; the SG-MCMC engines compile their whole step
        (score, update and noise) as one call, SVGD its score, kernel sums and
        optimiser step.  On small models, where Pyro's overhead dominates, a
        step is many times faster (a 30-50-1 network with 4 chains: 6.5 ms
        eager, 0.4 ms compiled; see ``benchmarks/sgmcmc_vs_peers.py``);
        compiling takes a few seconds once per function and shape.  The capture is checked against the
        eager density at three points; a model it cannot capture (Python
        branches on tensor values, random draws other than the minibatch, an
        operation ``vmap`` cannot batch) falls back to eager, with a warning
        that gives the reason.  A string is a ``torch.compile`` mode
        (``"reduce-overhead"``: CUDA graphs on a GPU); ``True`` keeps torch's
        own random generator inside compiled steps (inductor's
        ``fallback_random``), so that a seed gives the eager path's draws, up
        to float rounding.

        ``vectorize`` and ``jit_compile`` are reserved here and are not passed
        to the model; engines built on a model accept them in ``run()`` too.
        """
        from bayeskit._pyro_target import pyro_target

        return pyro_target(cls, model, args, kwargs, vectorize, jit_compile)

    @classmethod
    def from_numpyro(cls, model: Callable, *args, **kwargs) -> Target:
        """Build the target of a NumPyro model; JAX evaluates the potential.

        Needs the ``jax`` extra.  Arrays cross between torch and JAX by DLPack.
        """
        from bayeskit._numpyro_target import numpyro_target

        return numpyro_target(cls, model, args, kwargs)

