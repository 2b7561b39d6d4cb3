"""Target.from_numpyro: JAX evaluates a NumPyro model's potential; arrays cross by DLPack.

The flat vector ``z`` is laid out like NumPyro's unconstrained parameters, in
the order the model samples its latent sites. One jitted, vmapped
``value_and_grad`` of ``-potential_fn`` evaluates all points at once.

Precision follows JAX: with ``jax.config.update("jax_enable_x64", True)``
set before the target is built it runs in float64, otherwise in float32
(JAX would silently cast float64 inputs to float32 anyway).
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints as torch_constraints

from bayeskit._sites import Site


def _jax():
    try:
        import jax
        import numpyro  # noqa: F401
    except ImportError as error:
        raise ImportError("Target.from_numpyro needs JAX and NumPyro: pip install 'bayeskit[jax]'") from error
    return jax


def _to_jax(tensor):
    import jax

    return jax.dlpack.from_dlpack(tensor.detach().contiguous())


def _to_torch(array, dtype):
    return torch.from_dlpack(array).to(dtype)


def _torch_constraint(support):
    """The torch constraint equivalent to a NumPyro support (real when there is none)."""
    from numpyro.distributions import constraints as c

    simple = [(c.real, torch_constraints.real), (c.real_vector, torch_constraints.real_vector),
              (c.positive, torch_constraints.positive), (c.simplex, torch_constraints.simplex),
              (c.unit_interval, torch_constraints.unit_interval),
              (c.lower_cholesky, torch_constraints.lower_cholesky),
              (c.corr_cholesky, torch_constraints.corr_cholesky),
              (c.positive_definite, torch_constraints.positive_definite)]
    for numpyro_constraint, torch_constraint in simple:  # (constraints are not hashable)
        if support is numpyro_constraint:
            return torch_constraint
    if isinstance(support, c.independent):
        return torch_constraints.independent(_torch_constraint(support.base_constraint),
                                              support.reinterpreted_batch_ndims)
    if isinstance(support, c.interval):
        return torch_constraints.interval(float(support.lower_bound), float(support.upper_bound))
    if isinstance(support, c.greater_than):
        return torch_constraints.greater_than(float(support.lower_bound))
    return torch_constraints.real


def _prototype(model, args, kwargs):
    """One seeded run of the model, checked for discrete latent sites and non-finite data."""
    import numpy as np
    from numpyro import handlers

    trace = handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)
    for name, site in trace.items():
        if site["type"] != "sample":
            continue
        if not site["is_observed"] and site["fn"].support.is_discrete:
            raise ValueError(
                f"latent site {name!r} is discrete ({type(site['fn']).__name__}); gradient engines need "
                "continuous latent sites: marginalise it out (e.g. with logsumexp over its values) or observe it")
        if site["is_observed"]:
            value = np.asarray(site["value"])
            if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
                raise ValueError(f"observed site {name!r} has {int((~np.isfinite(value)).sum())} non-finite "
                                 "value(s) (NaN or inf); drop or impute them, or mask them")
    return trace


def _layout(trace, unconstrained):
    sites, offset = {}, 0
    for name, site in trace.items():
        if name not in unconstrained:
            continue
        shape = torch.Size(site["value"].shape)
        unconstrained_shape = torch.Size(unconstrained[name].shape)
        size = math.prod(unconstrained_shape)
        sites[name] = Site(name, shape, unconstrained_shape, _torch_constraint(site["fn"].support), None,
                           slice(offset, offset + size))
        offset += size
    return sites


class _JaxLogProb(torch.autograd.Function):
    """Torch autograd over a JAX density: forward returns values, backward uses JAX's gradient."""

    @staticmethod
    def forward(ctx, flat, evaluate):
        value, grad = evaluate(flat)
        ctx.save_for_backward(grad)
        return value

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad_output[:, None] * grad, None


def numpyro_target(cls, model, args, kwargs):
    jax = _jax()
    import jax.numpy as jnp
    from numpyro.infer import Predictive
    from numpyro.infer.util import constrain_fn, initialize_model, log_likelihood, unconstrain_fn

    if not callable(model):
        raise TypeError(f"model must be a callable NumPyro model, got {type(model).__name__}")
    trace = _prototype(model, args, kwargs)
    info = initialize_model(jax.random.PRNGKey(0), model, model_args=args, model_kwargs=kwargs)
    unconstrained = info.param_info.z
    sites = _layout(trace, unconstrained)
    if not sites:
        raise ValueError("the model has no latent sample sites: nothing to infer")
    dtype = torch.float64 if jax.config.jax_enable_x64 else torch.float32
    potential_fn = info.potential_fn

    def unravel(flat):
        return {name: flat[site.slice].reshape(site.unconstrained_shape) for name, site in sites.items()}

    value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(lambda flat: -potential_fn(unravel(flat)))))
    constrain = jax.jit(jax.vmap(lambda flat: constrain_fn(model, args, kwargs, unravel(flat))))
    unconstrain = jax.jit(jax.vmap(lambda values: unconstrain_fn(model, args, kwargs, values)))

    def evaluate(flat):
        value, grad = value_and_grad(_to_jax(flat.to(dtype)))
        return _to_torch(value, dtype).to(flat.device), _to_torch(grad, dtype).to(flat.device)

    def log_prob_fn(flat):
        return _JaxLogProb.apply(flat, evaluate)

    def constrain_torch(flat):
        values = constrain(_to_jax(flat.detach().to(dtype)))
        return {name: _to_torch(values[name], dtype).to(flat.device) for name in sites}

    def init_fn(n, generator):
        seed = int(torch.randint(0, 2**31 - 1, (), generator=generator))
        draws = Predictive(model, num_samples=n, return_sites=list(sites))(jax.random.PRNGKey(seed), *args,
                                                                          **kwargs)
        flat_values = unconstrain({name: draws[name] for name in sites})
        blocks = [jnp.reshape(flat_values[name], (n, -1)) for name in sites]
        return _to_torch(jnp.concatenate(blocks, axis=-1), dtype)

    observed = {name: site for name, site in trace.items() if site["type"] == "sample" and site["is_observed"]}

    def pointwise(flat):
        values = constrain(_to_jax(flat.detach().to(dtype)))
        result = log_likelihood(model, {name: values[name] for name in sites}, *args, batch_ndims=1, **kwargs)
        return {name: _to_torch(result[name], dtype).to(flat.device) for name in observed if name in result}

    import numpy as np

    target = cls(
        sites, log_prob_fn, log_prob_and_score_fn=evaluate, init_fn=init_fn, constrain_fn=constrain_torch,
        pointwise_log_likelihood_fn=pointwise if observed else None,
        observed_data={name: torch.from_numpy(np.array(site["value"])).to(dtype) for name, site in observed.items()},
        dtype=dtype, device="cpu", vectorized=True,
        description=f"NumPyro model {getattr(model, '__name__', type(model).__name__)}")
    return target
