"""Splitting a Pyro model's data into shards, and sampling each shard's sub-posterior.

Sub-posterior c of C is :math:`f_c(\\theta) \\propto p(\\theta)^{1/C} p(y_c \\mid \\theta)`:
the prior raised to 1/C (every latent site's log density scaled by the
exponent, observed sites untouched), so that :math:`\\prod_c f_c` is the
full posterior.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import pyro
import torch
from pyro.poutine.messenger import Messenger

from bayeskit.inference.fusion.densities import LogisticDensity, PyroDensity

__all__ = ["Shard", "split_data", "NUTSSampler", "EngineSampler", "SubPosterior", "shard_density"]


class _TemperedPrior(Messenger):
    """Scale the log density of every unobserved sample site by ``exponent``."""

    def __init__(self, exponent):
        super().__init__()
        self.exponent = exponent

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.exponent * msg["scale"]


@dataclass
class _TemperedModel:
    """``model`` with its prior raised to ``exponent``; a picklable callable (for Ray tasks)."""

    model: object
    exponent: float

    def __call__(self, *args, **kwargs):
        with _TemperedPrior(self.exponent):
            return self.model(*args, **kwargs)


@dataclass
class Shard:
    """One shard of the data: the model's arguments restricted to its rows, and the prior's exponent."""

    model: object
    args: tuple
    kwargs: dict
    prior_exponent: float
    num_data: int
    index: int = 0

    def tempered_model(self):
        return _TemperedModel(self.model, self.prior_exponent)

    def target(self):
        from bayeskit.target import Target
        return Target.from_pyro(self.tempered_model(), *self.args, **self.kwargs)


def split_data(model, args, kwargs, num_shards: int, *, generator=None) -> list[Shard]:
    """Shards of equal size (within one row) of every tensor argument sharing the first one's length.

    The rows are shuffled with ``generator`` first (None keeps their order),
    so that shards are exchangeable, as the paper's experiments assume.
    """
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.dim() > 0]
    if not tensors:
        raise ValueError("Fusion splits the model's tensor arguments by rows, but none was given")
    num_rows = tensors[0].shape[0]
    if isinstance(num_shards, bool) or not isinstance(num_shards, int) or not 1 <= num_shards <= num_rows:
        raise ValueError(f"num_shards must be an int in [1, {num_rows}] (the data's rows), got {num_shards!r}")
    order = torch.randperm(num_rows, generator=generator) if generator is not None else torch.arange(num_rows)
    pieces = torch.tensor_split(order, num_shards)

    def cut(value, rows):
        is_data = isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == num_rows
        return value[rows.to(value.device)] if is_data else value

    return [Shard(model, tuple(cut(a, rows) for a in args), {k: cut(v, rows) for k, v in kwargs.items()},
                  1.0 / num_shards, len(rows), c) for c, rows in enumerate(pieces)]


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


class _TaskContext:
    """Inside a task: torch on one thread and the caller's default dtype.

    So that in-process and Ray runs give the same floating point: a Ray
    worker neither shares the caller's thread count nor its default dtype.
    """

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.threads, self.previous_dtype = torch.get_num_threads(), torch.get_default_dtype()
        torch.set_num_threads(1)
        torch.set_default_dtype(self.dtype)

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.previous_dtype)


@dataclass
class NUTSSampler:
    """Pyro's NUTS on one shard: ``num_warmup`` steps of adaptation, then the draws (one chain)."""

    num_warmup: int = 500
    jit_compile: bool = False
    max_tree_depth: int = 10

    def __call__(self, shard: Shard, num_samples: int, seed: int) -> torch.Tensor:
        from pyro.infer import MCMC, NUTS

        pyro.set_rng_seed(seed)
        kernel = NUTS(shard.tempered_model(), jit_compile=self.jit_compile, ignore_jit_warnings=True,
                      max_tree_depth=self.max_tree_depth)
        mcmc = MCMC(kernel, num_samples=num_samples, warmup_steps=self.num_warmup, disable_progbar=True)
        mcmc.run(*shard.args, **shard.kwargs)
        return shard.target().unconstrain(mcmc.get_samples())


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
    with _TaskContext(dtype):
        draws = sampler(shard, num_samples, seed)
    if not isinstance(draws, torch.Tensor) or draws.shape[0] != num_samples or draws.dim() != 2:
        raise ValueError(f"the sampler must return a tensor ({num_samples}, dim); got "
                         f"{getattr(draws, 'shape', type(draws).__name__)}")
    return SubPosterior(draws.detach(), shard_density(shard), seconds=time.perf_counter() - began,
                        info={"shard": shard.index, "num_data": shard.num_data})


def task_seed(seed: int, *path) -> int:
    """A seed for one task from the run's seed and the task's place (shard, or tree node): no shared RNG."""
    value = seed
    for part in path:
        value = (value * 1_000_003 + int(part) + 1) % 4_294_967_291  # a prime below 2**32: numpy seeds
    return value

