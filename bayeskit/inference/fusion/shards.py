"""Sampling each shard's sub-posterior, and its density, for Fusion.

Sub-posterior c of C is :math:`f_c(\\theta) \\propto p(\\theta)^{1/C} p(y_c \\mid \\theta)`,
on the flat unconstrained vector :math:`z` with the prior's log-Jacobian
tempered too: :math:`\\log f_c(z) = \\tfrac1C(\\log p(T(z)) + \\log|\\det J_T(z)|)
+ \\log p(y_c \\mid T(z))`, so that :math:`\\prod_c f_c(z) \\propto p(z \\mid y)`.
:func:`bayeskit.sharding.subposterior_target` (through :meth:`Shard.target`)
is that density; the samplers and :func:`shard_density` all start from it.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import pyro
import torch

from bayeskit.inference.fusion.densities import LogisticDensity, PyroDensity
from bayeskit.parallel import TaskContext
from bayeskit.sharding import Shard, has_log_jacobian, scale_prior

__all__ = ["NUTSSampler", "EngineSampler", "SubPosterior", "shard_density", "sample_shard"]


def shard_density(shard: Shard):
    """The closed-form density (with bounds of phi) where bayeskit knows the model, else autograd.

    Known: :func:`bayeskit.models.logistic_regression` (without minibatching).
    """
    from bayeskit.models.glm import logistic_regression

    if shard.model is logistic_regression:
        bound = inspect.signature(logistic_regression).bind(*shard.args, **shard.kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        if arguments["y"] is not None and arguments["subsample_size"] is None:
            # alpha and beta are real (identity map, no log-Jacobian): the prior's 1/C is the whole tempering,
            # so this closed form is the density of shard.target()
            return LogisticDensity(arguments["x"], arguments["y"], prior_scale=arguments["prior_scale"],
                                   prior_weight=shard.prior_exponent)
    return PyroDensity(shard)


@dataclass
class SubPosterior:
    """Draws ``samples`` (N, d) of one sub-posterior on the flat unconstrained vector, and its density.

    ``log_weights`` (N,) for weighted draws; ``seconds`` is the time it took to sample them.
    """

    samples: torch.Tensor
    density: object
    log_weights: torch.Tensor | None = None
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.samples, torch.Tensor) or self.samples.dim() != 2:
            raise ValueError("SubPosterior samples must be a tensor (N, d)")
        if not torch.isfinite(self.samples).all():
            raise ValueError("SubPosterior samples contain non-finite values")
        if self.log_weights is not None and self.log_weights.shape != self.samples.shape[:1]:
            raise ValueError(f"log_weights must be ({len(self.samples)},), got {tuple(self.log_weights.shape)}")


@dataclass
class NUTSSampler:
    """Pyro's NUTS on one shard: ``num_warmup`` steps of adaptation, then the draws (one chain).

    With a constrained site, NUTS runs on the potential :math:`-\\log f_c(z)`
    of the shard's :meth:`~bayeskit.sharding.Shard.target`, on the flat
    unconstrained vector, not on the tempered Pyro model: Pyro's NUTS would add
    each site's log-Jacobian in full, where the sub-posterior takes only its
    1/C share. It starts, as Pyro's default ``init_to_uniform`` does, from a
    uniform point of :math:`[-2, 2]^d`. When every site is real there is no
    log-Jacobian, and NUTS runs on the prior-scaled Pyro model (faster).
    """

    num_warmup: int = 500
    jit_compile: bool = False
    max_tree_depth: int = 10

    def __call__(self, shard: Shard, num_samples: int, seed: int) -> torch.Tensor:
        from pyro.infer import MCMC, NUTS

        pyro.set_rng_seed(seed)
        target = shard.target()
        options = {"jit_compile": self.jit_compile, "ignore_jit_warnings": True,
                   "max_tree_depth": self.max_tree_depth}
        if not any(has_log_jacobian(site) for site in target.sites.values()):
            # Every site is real, so there is no log-Jacobian to share and the prior-scaled model is the
            # sub-posterior itself: Pyro's own potential of it is 2-2.5x faster than the Target's.
            kernel = NUTS(scale_prior(shard.model, shard.prior_exponent), **options)
            mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=self.num_warmup, disable_progbar=True)
            mcmc.run(*shard.args, **shard.kwargs)
            return target.unconstrain(mcmc.get_samples())
        kernel = NUTS(potential_fn=_Potential(target), **options)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=self.num_warmup, disable_progbar=True,
                    initial_params={"z": _uniform_start(target, seed)})
        mcmc.run()
        return mcmc.get_samples()["z"].to(target.dtype)


@dataclass
class _Potential:
    """``{"z": (dim,)} -> -log f_c(z)``: a target as the potential energy Pyro's HMC/NUTS take."""

    target: object

    def __call__(self, params):
        return -self.target.log_prob(params["z"])


def _uniform_start(target, seed, tries=100):
    """A point of ``[-2, 2]^dim`` where the target's log density is finite (Pyro's ``init_to_uniform``)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(tries):
        start = (4 * torch.rand(target.dim, generator=generator, dtype=target.dtype) - 2).to(target.device)
        if torch.isfinite(target.log_prob(start)):
            return start
    raise ValueError(f"found no point of finite log density in [-2, 2]^{target.dim} for {target.description}")


@dataclass
class EngineSampler:
    """Any bayeskit engine as a sub-posterior sampler: ``engine(target, **options).run(num_steps=, seed=)``.

    All draws of the returned Posterior are pooled over chains (resampled by
    their weights when weighted) and thinned or resampled to ``num_samples``.
    """

    engine: type
    num_steps: int = 1000
    options: dict = field(default_factory=dict)

    def __call__(self, shard: Shard, num_samples: int, seed: int) -> torch.Tensor:
        target = shard.target()
        posterior = self.engine(target, **self.options).run(num_steps=self.num_steps, seed=seed, progress=False)
        draws = target.unconstrain({name: value.reshape(-1, *value.shape[2:])
                                    for name, value in posterior.samples.items()})
        generator = torch.Generator().manual_seed(seed)
        if posterior.log_weights is not None:
            weights = torch.softmax(posterior.log_weights.reshape(-1).double(), 0)
            return draws[torch.multinomial(weights, num_samples, replacement=True, generator=generator)]
        if len(draws) >= num_samples:
            return draws[torch.linspace(0, len(draws) - 1, num_samples).round().long()]
        return draws[torch.randint(len(draws), (num_samples,), generator=generator)]


def sample_shard(task) -> SubPosterior:
    """One Ray task or in-process call: draw ``num_samples`` from a shard's sub-posterior."""
    shard, sampler, num_samples, seed, dtype = task
    began = time.perf_counter()
    with TaskContext(dtype):
        draws = sampler(shard, num_samples, seed)
    if not isinstance(draws, torch.Tensor) or draws.shape[0] != num_samples or draws.dim() != 2:
        raise ValueError(f"the sampler must return a tensor ({num_samples}, dim); got "
                         f"{getattr(draws, 'shape', type(draws).__name__)}")
    return SubPosterior(draws.detach(), shard_density(shard), seconds=time.perf_counter() - began,
                        info={"shard": shard.index, "num_data": shard.num_data})



