"""The Stein family's functional core: update directions and steps on batched particles.

``svgd_direction`` (Liu and Wang 2016), ``msvgd_direction`` and ``svmd_direction``
(Shi, Liu and Mackey 2022) and the Stein variational natural gradient step
``svng_step``; the engines in :mod:`bayeskit.inference.stein.engines` bind
their hyperparameters and run them through the shared runner.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from bayeskit.inference.stein.mirror_maps import SiteMirrors
from bayeskit.optim import PureOptimizer, step_count

__all__ = ["SVGDState", "svgd_direction", "svgd_init", "svgd_step", "svgd_update", "compiled_svgd_step", "ascend",
           "MirrorGeometry", "MetricGeometry",
           "msvgd_direction", "svmd_direction", "mirrored_step", "SVNGState", "svng_init", "svng_step"]


@dataclass(frozen=True)
class SVGDState:
    """Particles ``(num_chains, num_particles, dim)`` in unconstrained space and their optimiser's state.

    Tensors only: the optimiser itself (its hyperparameters) is an argument of
    the steps, and a step returns a new state (see :mod:`bayeskit.optim`).
    """

    particles: torch.Tensor
    optimizer_state: dict[str, torch.Tensor]


def svgd_direction(particles, score, kernel):
    """The SVGD update direction ``phi`` for particles ``(..., n, d)`` and scores ``(..., n, d)``.

    Returns ``(phi, bandwidth)``; the kernel sum runs within each leading batch.
    """
    k, repulsion, bandwidth = kernel(particles)
    n = particles.shape[-2]
    return (k @ score + repulsion) / n, bandwidth


def svgd_init(particles, optimizer: PureOptimizer) -> SVGDState:
    """Start from ``particles`` ``(num_chains, n, dim)`` (copied: the state owns its tensors)."""
    particles = particles.detach().clone()
    return SVGDState(particles, optimizer.init(particles))


def svgd_step(state: SVGDState, target, kernel, optimizer: PureOptimizer) -> tuple[SVGDState, dict]:
    """One SVGD step: score all particles in one Target call, then let the optimiser ascend ``phi``.

    On a captured target (``jit_compile=True``) the score, the kernel's sums
    and the optimiser's update run as one compiled call (:func:`compiled_svgd_step`).
    """
    if target.captured is not None:
        return compiled_svgd_step(target, kernel, optimizer)(state)
    log_prob, score = target.log_prob_and_score(state.particles)
    return svgd_update(state, log_prob, score, kernel, optimizer)


def svgd_update(state: SVGDState, log_prob, score, kernel, optimizer: PureOptimizer) -> tuple[SVGDState, dict]:
    """The SVGD step given the particles' log densities and scores."""
    phi, bandwidth = svgd_direction(state.particles, score, kernel)
    return ascend(state, optimizer, phi, log_prob, score, bandwidth=bandwidth.mean())


def compiled_svgd_step(target, kernel, optimizer: PureOptimizer):
    """:func:`svgd_step` on a captured target as one compiled call: ``step(state) -> (new state, info)``.

    The minibatch (one for all particles, as in the eager step) is drawn
    before the call; the compiled function is kept on the target per kernel
    and optimiser.
    """
    captured = target.captured

    def build():
        score_function = captured.score_function(per_chain=False)

        def update(particles, optimizer_state, minibatch):
            log_prob, score = score_function(particles.reshape(-1, particles.shape[-1]), *minibatch)
            new, info = svgd_update(SVGDState(particles, optimizer_state), log_prob.reshape(particles.shape[:-1]),
                                    score.reshape(particles.shape), kernel, optimizer)
            return new.particles, new.optimizer_state, info
        return update

    compiled = captured.compiled(("svgd step", kernel, optimizer), build)

    def step(state):
        particles, optimizer_state, info = compiled(state.particles, state.optimizer_state, captured.minibatch())
        return SVGDState(particles, optimizer_state), info
    return step


def ascend(state, optimizer: PureOptimizer, phi, log_prob, score, **info):
    r"""The optimiser's step along ``phi``: a new state (the input's other fields kept) and the trace entry.

    The optimisers descend a gradient; a Stein method ascends along
    :math:`\phi`, so the gradient is :math:`-\phi` (:math:`x + \epsilon\phi` with plain SGD).
    """
    particles, optimizer_state = optimizer.update(-phi, state.optimizer_state, state.particles)
    info = {
        "log_prob": log_prob.mean(),
        "phi_norm": phi.norm(dim=-1).mean(),
        **info,
        "finite": torch.isfinite(particles).all() & torch.isfinite(score).all() & torch.isfinite(log_prob).all(),
    }
    return replace(state, particles=particles, optimizer_state=optimizer_state), info


class MirrorGeometry:
    """Per-particle (inverse) Hessians of the sites' mirror maps at dual points ``eta`` ``(C, n, D)``."""

    def __init__(self, mirrors, eta):
        self.mirrors, self.eta = mirrors, eta

    def _points(self, v):
        return self.eta.reshape(*self.eta.shape[:2], *([1] * (v.dim() - 3)), self.eta.shape[-1])

    def inverse_hessian(self, v):
        return self.mirrors.inverse_hessian_apply(self._points(v), v)

    def hessian(self, v):
        return self.mirrors.hessian_apply(self._points(v), v)

    def at_mean(self):
        """The same maps at the particles' mean (per chain, primal): one point ``(C, 1, D)`` that every
        particle's vectors broadcast against."""
        return MirrorGeometry(self.mirrors, self.mirrors.dual_mean(self.eta))


class MetricGeometry:
    """A dense positive-definite metric per particle, ``(C, n, D, D)`` (or ``(C, 1, D, D)``, one shared by a
    chain's particles), used through its Cholesky factor."""

    def __init__(self, metric):
        self.metric = metric
        self.cholesky = torch.linalg.cholesky(metric)

    def _columns(self, v):
        c, n, d = v.shape[0], v.shape[1], v.shape[-1]
        return v.reshape(c, n, -1, d).transpose(-1, -2)  # (C, n, D, M)

    def inverse_hessian(self, v):
        return torch.cholesky_solve(self._columns(v), self.cholesky).transpose(-1, -2).reshape(v.shape)

    def hessian(self, v):
        return (self.metric @ self._columns(v)).transpose(-1, -2).reshape(v.shape)


def msvgd_direction(theta, dual_score, geometry, kernel):
    r"""The mirrored SVGD direction in the dual space, for primal particles ``theta`` ``(C, n, d)``.

    .. math::

        g_i = \frac1n \sum_j \big[ k(\theta_j, \theta_i)\, s_\eta(\eta_j)
              + \nabla^2\psi(\theta_j)^{-1} \nabla_{\theta_j} k(\theta_j, \theta_i) \big].

    Returns ``(g, bandwidth)``.
    """
    n = theta.shape[-2]
    k, f_prime, bandwidth = kernel.matrices(theta)
    # pair[j, i] = grad_{theta_j} k(theta_j, theta_i) = 2 f'_ij (theta_j - theta_i), particle j first
    # so that its own inverse Hessian applies; then sum over j.
    pair = 2 * f_prime[..., None] * (theta[..., :, None, :] - theta[..., None, :, :])
    repulsion = geometry.inverse_hessian(pair).sum(-3)
    return (k @ dual_score + repulsion) / n, bandwidth


def svmd_direction(theta, dual_score, geometry, kernel, *, trace_fraction=0.98, jitter=1e-5, kernel_geometry=None):
    r"""The Stein variational mirror descent direction in the dual space.

    The kernel adapts to the mirror map:
    :math:`K(\theta, \theta') = \frac1n\sum_m A(\theta, \theta_m) A(\theta', \theta_m)\nabla^2\psi(\theta_m)`
    with :math:`A(\theta, \theta') = \sum_{a \le r} \sqrt{\lambda_a} u_a(\theta) u_a(\theta')`, the
    truncated square root of the scalar kernel from the eigenpairs of its Gram
    matrix (:math:`\lambda_a = \mu_a / n`, :math:`u_a(\theta_m) = \sqrt n V_{ma}`, gradients
    by the Nyström extension), keeping the top ``r`` eigenpairs that cover
    ``trace_fraction`` of the trace.  Then

    .. math::

        g_k = \frac{1}{n^2}\sum_m A_{km}\,\nabla^2\psi(\theta_m)
              \sum_l \big[A_{lm}\, s_\eta(\eta_l)
              + \nabla^2\psi(\theta_l)^{-1}\nabla_{\theta_l} A(\theta_l, \theta_m)\big],

    computed in O(n^2 r d) with O(d) (inverse) Hessian actions.
    ``kernel_geometry`` supplies the :math:`\nabla^2\psi(\theta_m)` inside the
    kernel (default ``geometry``, the paper's choice); the inverse Hessians of
    the divergence term always come from ``geometry``, as they change the
    variable of the derivative.  The kernel's matrices are held fixed in the
    divergence, so any positive-definite choice keeps the target a fixed point
    (:class:`SVMD` documents ``hessian_at="mean"``).
    Returns ``(g, bandwidth, num_eigen)``.
    """
    kernel_geometry = geometry if kernel_geometry is None else kernel_geometry
    n = theta.shape[-2]
    gram, f_prime, bandwidth = kernel.matrices(theta)
    if not bool(torch.isfinite(gram).all()):
        # eigh would fail with a LAPACK error; NaN lets the runner name the step and the site
        nan = torch.full_like(theta, float("nan"))
        return nan, bandwidth, torch.zeros(theta.shape[:-2], dtype=torch.long, device=theta.device)
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    mu, vectors = torch.linalg.eigh(gram + jitter * eye)
    mu, vectors = mu.flip(-1), vectors.flip(-1)  # largest first
    covered = mu.cumsum(-1) / mu.sum(-1, keepdim=True)
    keep = torch.cat([torch.ones_like(covered[..., :1], dtype=torch.bool), covered[..., :-1] < trace_fraction], -1)
    num_eigen = keep.sum(-1)
    rank = int(num_eigen.max())  # the eigendecomposition already waited for the device
    mu, vectors, keep = mu[..., :rank], vectors[..., :rank], keep[..., :rank]
    sqrt_n = math.sqrt(n)
    sqrt_lambda = torch.where(keep, (mu.clamp_min(0) / n).sqrt(), torch.zeros_like(mu))
    u = sqrt_n * vectors  # u_a(theta_m) = u[..., m, a]
    weighted_u = u * sqrt_lambda[..., None, :]
    a_matrix = weighted_u @ u.transpose(-1, -2)
    # Nyström: grad u_a(theta_l) = sqrt(n)/mu_a sum_m 2 f'_lm (theta_l - theta_m) V_ma, shape (l, a, d)
    inv_mu = torch.where(keep, 1 / mu.clamp_min(torch.finfo(mu.dtype).tiny), torch.zeros_like(mu))
    fv = f_prime @ vectors
    grad_u = 2 * sqrt_n * inv_mu[..., None, :, None] * (
        fv[..., None] * theta[..., :, None, :] - torch.einsum("...lm,...ma,...md->...lad", f_prime, vectors, theta))
    b = geometry.inverse_hessian(grad_u).sum(-3)  # (a, d): sum_l H_l^{-1} grad u_a(theta_l)
    q = a_matrix.transpose(-1, -2) @ dual_score + weighted_u @ b
    return a_matrix @ kernel_geometry.hessian(q) / n**2, bandwidth, num_eigen


def mirrored_step(state: SVGDState, target, direction, optimizer: PureOptimizer) -> tuple[SVGDState, dict]:
    """One mirrored step on a dual Target: dual scores in one call, then ascend ``direction`` in ``eta``.

    ``direction(theta, dual_score, geometry) -> (g, info)`` is a bound
    :func:`msvgd_direction` or :func:`svmd_direction`.
    """
    eta = state.particles
    log_prob, dual_score = target.log_prob_and_score(eta)
    mirrors = SiteMirrors(target)  # a loop over the sites: cheap next to the kernel's O(n^2) terms
    theta = mirrors.to_primal(eta)
    phi, info = direction(theta, dual_score, MirrorGeometry(mirrors, eta))
    return ascend(state, optimizer, phi, log_prob, dual_score, **info)


@dataclass(frozen=True)
class SVNGState(SVGDState):
    """SVGD's state plus the moving-average metric ``(num_chains, num_particles, dim, dim)`` and its count.

    The count is a 0-d int64 tensor on the CPU, so that reading it for the
    average's weight never waits for the device.
    """

    metric: torch.Tensor
    num_updates: torch.Tensor


def svng_init(particles, optimizer: PureOptimizer) -> SVNGState:
    """SVGD's start with a zero metric and count 0 (the first average's weight on the old metric is 0)."""
    base = svgd_init(particles, optimizer)
    metric = base.particles.new_zeros(*base.particles.shape, base.particles.shape[-1])
    return SVNGState(base.particles, base.optimizer_state, metric, step_count())


def svng_step(state: SVNGState, target, kernel, metric_fn, optimizer: PureOptimizer, *, damping, trace_fraction,
              max_decay=0.95, metric_at="mean"):
    r"""One SVNG step: update the metric, take SVMD's direction with it, map it back with :math:`G^{-1}`.

    ``metric_fn(z) -> (C, n, d, d)`` estimates the metric :math:`\hat G_t` at the
    particles; it enters a moving average

    .. math::

        G_t = \rho_t\, G_{t-1} + (1 - \rho_t)\, \hat G_t, \qquad \rho_t = \min(1 - 1/t,\ 0.95)

    (the authors' schedule; :math:`\rho_1 = 0` forgets the zero start), and
    ``damping * I`` is added.  With ``metric_at="mean"`` every particle of a
    chain uses the chain's average :math:`\bar G_t = \frac1n\sum_i G_{t,i}`;
    with ``"particles"`` each its own :math:`G_{t,i}` (the paper's).
    """
    z = state.particles
    log_prob, score = target.log_prob_and_score(z)
    estimate = metric_fn(z).to(z)
    num_updates = state.num_updates + 1
    decay = min(1 - 1 / int(num_updates), max_decay)
    metric = decay * state.metric + (1 - decay) * estimate
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    used = metric.mean(-3, keepdim=True) if metric_at == "mean" else metric  # (C, 1, d, d): one Cholesky a chain
    geometry = MetricGeometry(used + damping * eye)
    natural_score = geometry.inverse_hessian(score)
    phi, bandwidth, num_eigen = svmd_direction(z, natural_score, geometry, kernel, trace_fraction=trace_fraction)
    return ascend(replace(state, metric=metric, num_updates=num_updates), optimizer, geometry.inverse_hessian(phi),
                  log_prob, score, bandwidth=bandwidth.mean(), num_eigen=num_eigen.to(z.dtype).mean())
