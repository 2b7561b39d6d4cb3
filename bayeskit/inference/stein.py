"""Stein variational gradient descent.

SVGD (Liu and Wang, 2016, "Stein Variational Gradient Descent: A General
Purpose Bayesian Inference Algorithm", NeurIPS) moves ``n`` particles along
the direction that decreases KL(q || p) fastest within the unit ball of a
reproducing-kernel Hilbert space:

.. math::

    \\phi(x_i) = \\frac{1}{n} \\sum_{j=1}^{n}
        \\big[ k(x_j, x_i)\\, \\nabla_{x_j} \\log p(x_j) + \\nabla_{x_j} k(x_j, x_i) \\big],
    \\qquad x_i \\leftarrow x_i + \\epsilon\\, \\phi(x_i).

The first term drives particles to high density, the second repels them
from each other so that they spread like the posterior.  Particles live in
the Target's unconstrained space, so constrained sites are handled by the
Target's bijections.  Any ``torch.optim`` optimizer applies the step
(Adagrad by default, as in the paper's experiments); ``num_chains``
independent particle sets run in one batched step.

The functional core is :func:`svgd_direction`, :func:`svgd_init` and
:func:`svgd_step`; :class:`SVGD` binds hyperparameters and runs them through
the shared runner.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from bayeskit.inference.kernels import make_kernel
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

__all__ = ["SVGD", "SVGDState", "svgd_direction", "svgd_init", "svgd_step", "make_optimizer"]

_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop}


@dataclass
class SVGDState:
    """Particles ``(num_chains, num_particles, dim)`` in unconstrained space and their optimizer."""

    particles: torch.Tensor
    optimizer: torch.optim.Optimizer


def svgd_direction(particles, score, kernel):
    """The SVGD update direction ``phi`` for particles ``(..., n, d)`` and scores ``(..., n, d)``.

    Returns ``(phi, bandwidth)``; the kernel sum runs within each leading batch.
    """
    k, repulsion, bandwidth = kernel(particles)
    n = particles.shape[-2]
    return (k @ score + repulsion) / n, bandwidth


def make_optimizer(optimizer, lr):
    """A factory ``params -> torch.optim.Optimizer`` from a name, an Optimizer class or a factory."""
    if isinstance(optimizer, str):
        if optimizer.lower() not in _OPTIMIZERS:
            raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(_OPTIMIZERS)}, "
                             "a torch.optim.Optimizer class or a callable params -> optimizer")
        optimizer = _OPTIMIZERS[optimizer.lower()]
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        cls = optimizer
        return lambda params: cls(params, lr=lr)
    if callable(optimizer):
        return optimizer
    raise TypeError(f"optimizer must be a name, a torch.optim.Optimizer class or a callable, got {optimizer!r}")


def svgd_init(particles, optimizer_factory) -> SVGDState:
    """Start from ``particles`` ``(num_chains, n, dim)``; the optimizer owns a leaf copy."""
    leaf = particles.detach().clone().requires_grad_(True)
    return SVGDState(leaf, optimizer_factory([leaf]))


def svgd_step(state: SVGDState, target, kernel) -> tuple[SVGDState, dict]:
    """One SVGD step: score all particles in one Target call, then let the optimizer ascend ``phi``."""
    log_prob, score = target.log_prob_and_score(state.particles.detach())
    phi, bandwidth = svgd_direction(state.particles.detach(), score, kernel)
    state.optimizer.zero_grad(set_to_none=False)
    state.particles.grad = -phi  # torch optimizers descend; SVGD ascends along phi
    state.optimizer.step()
    info = {
        "log_prob": log_prob.mean(),
        "phi_norm": phi.norm(dim=-1).mean(),
        "bandwidth": bandwidth.mean(),
        "finite": (torch.isfinite(state.particles.detach()).all() & torch.isfinite(score).all()
                   & torch.isfinite(log_prob).all()),
    }
    return state, info


class SVGD(Engine):
    """Stein variational gradient descent on a Pyro model or a Target.

    Parameters
    ----------
    model_or_target : callable or Target
        A Pyro model with continuous latent sites, or a :class:`~bayeskit.Target`.
    num_particles : int
        Particles per chain (default 100).
    num_chains : int
        Independent particle sets, advanced together in one batched step;
        with several, ``summary()`` reports r_hat across them.
    kernel : "rbf", "imq" or a kernel object
        See :mod:`bayeskit.inference.kernels`; the bandwidth follows the
        median heuristic by default.
    optimizer : str, torch.optim.Optimizer class or callable
        ``"adagrad"`` (default), ``"adam"``, ``"sgd"``, ``"rmsprop"``, any
        Optimizer class (built with ``lr``) or ``params -> Optimizer``.
    lr : float
        Learning rate for a named optimizer or an Optimizer class.
    dims, coords : dict, optional
        Dimension names and labels for the exported posterior (ArviZ style).

    Examples
    --------
    >>> post = SVGD(model, num_particles=100).run(x, y, num_steps=500, seed=0)  # doctest: +SKIP
    >>> post.summary()  # doctest: +SKIP
    """

    name = "SVGD"

    def __init__(self, model_or_target, *, num_particles=100, num_chains=1, kernel="rbf",
                 optimizer="adagrad", lr=0.5, dims=None, coords=None):
        super().__init__(model_or_target)
        for arg, value in (("num_particles", num_particles), ("num_chains", num_chains)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be a positive int, got {value!r}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        self.num_particles, self.num_chains = num_particles, num_chains
        self.kernel = make_kernel(kernel)
        self.optimizer_factory = make_optimizer(optimizer, lr)
        self.optimizer_name = getattr(optimizer, "__name__", str(optimizer))
        self.lr = lr
        self.dims, self.coords = dims, coords

    def settings(self):
        kernel = self.kernel.settings() if hasattr(self.kernel, "settings") else {"kernel": repr(self.kernel)}
        return {"num_particles": self.num_particles, "num_chains": self.num_chains,
                "optimizer": self.optimizer_name, "lr": self.lr, **kernel}

    # functional core, bound
    def init_state(self, target, generator):
        points = target.init(self.num_chains * self.num_particles, generator)
        return svgd_init(points.reshape(self.num_chains, self.num_particles, target.dim), self.optimizer_factory)

    def step(self, state, target):
        return svgd_step(state, target, self.kernel)

    def finite_values(self, state, target):
        particles = state.particles.detach()
        _, score = target.log_prob_and_score(particles)
        return particles, score

    # checkpoints
    def state_dict(self, state):
        return {"particles": state.particles.detach(), "optimizer": state.optimizer.state_dict()}

    def load_state(self, target, saved):
        particles = saved["particles"].to(device=target.device, dtype=target.dtype)
        state = svgd_init(particles, self.optimizer_factory)
        state.optimizer.load_state_dict(saved["optimizer"])
        return state

    def to_posterior(self, state, target, trace, meta):
        particles = state.particles.detach()
        with torch.no_grad():
            samples = target.constrain(particles)
            log_prob = target.log_prob(particles)
        return Posterior(
            samples,
            sample_stats={"log_prob": log_prob},
            trace=trace,
            meta={**meta, "sample_kind": "particles"},
            observed_data=target.observed_data or None,
            log_likelihood=target.pointwise_log_likelihood(particles),
            dims=self.dims, coords=self.coords,
        )
