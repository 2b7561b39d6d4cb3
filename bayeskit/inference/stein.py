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

import math
from dataclasses import dataclass

import torch

from bayeskit._checks import fraction
from bayeskit.inference.kernels import make_kernel
from bayeskit.posterior import Posterior
from bayeskit.runner import Engine

__all__ = ["SVGD", "SVGDState", "svgd_direction", "svgd_init", "svgd_step", "make_optimizer", "MirroredSVGD", "SVMD",
           "SVNG", "SVNGState", "msvgd_direction", "svmd_direction", "mirrored_step", "svng_step"]

class _RMSprop(torch.optim.RMSprop):
    """RMSprop with TensorFlow's decay (0.9) and epsilon (1e-7), the setting of the mirrored-Stein paper.

    torch's default decay of 0.99 makes the first steps about three times as
    long (the average of squared gradients starts at zero), which throws
    particles far past a nearby boundary.
    """

    def __init__(self, params, lr):
        super().__init__(params, lr=lr, alpha=0.9, eps=1e-7)


_OPTIMIZERS = {"adagrad": torch.optim.Adagrad, "adam": torch.optim.Adam, "sgd": torch.optim.SGD,
               "rmsprop": _RMSprop}


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
    return ascend(state, phi, log_prob, score, bandwidth=bandwidth.mean())


def ascend(state, phi, log_prob, score, **info):
    """Let the optimizer move the particles along ``phi``; return the state and the step's trace entry."""
    state.optimizer.zero_grad(set_to_none=False)
    state.particles.grad = -phi  # torch optimizers descend; Stein methods ascend along phi
    state.optimizer.step()
    info = {
        "log_prob": log_prob.mean(),
        "phi_norm": phi.norm(dim=-1).mean(),
        **info,
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
        Independent particle sets, advanced together in one batched step
        (compare their means to see whether the runs agree; ``summary()``
        gives particle posteriors statistics only, no r_hat).
    kernel : "rbf", "imq" or a kernel object
        See :mod:`bayeskit.inference.kernels`; the bandwidth follows the
        median heuristic by default.
    optimizer : str, torch.optim.Optimizer class or callable
        ``"adagrad"`` (default), ``"adam"``, ``"sgd"``, ``"rmsprop"``, any
        Optimizer class (built with ``lr``) or ``params -> Optimizer``.
    lr : float
        Learning rate for a named optimizer or an Optimizer class.
    init : dict, optional
        Starting particles in the model's own (constrained) space:
        ``{site: (num_particles, *shape)}``, shared by all chains, or
        ``(num_chains, num_particles, *shape)``.  Prior draws by default.
    dims, coords : dict, optional
        Dimension names and labels for the exported posterior (ArviZ style).

    Examples
    --------
    >>> post = SVGD(model, num_particles=100).run(x, y, num_steps=500, seed=0)  # doctest: +SKIP
    >>> post.summary()  # doctest: +SKIP
    """

    name = "SVGD"

    def __init__(self, model_or_target, *, num_particles=100, num_chains=1, kernel="rbf",
                 optimizer="adagrad", lr=0.5, init=None, dims=None, coords=None):
        super().__init__(model_or_target)
        if init is not None and not isinstance(init, dict):
            raise TypeError(f"init must be a dict of site values, got {type(init).__name__}")
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
        self.initial_values = init
        self.dims, self.coords = dims, coords

    def settings(self):
        kernel = self.kernel.settings() if hasattr(self.kernel, "settings") else {"kernel": repr(self.kernel)}
        return {"num_particles": self.num_particles, "num_chains": self.num_chains,
                "optimizer": self.optimizer_name, "lr": self.lr, **kernel}

    # functional core, bound
    def init_state(self, target, generator):
        shape = (self.num_chains, self.num_particles, target.dim)
        if self.initial_values is None:
            return svgd_init(target.init(shape[0] * shape[1], generator).reshape(shape), self.optimizer_factory)
        points = target.unconstrain(self.initial_values)
        if points.shape not in (shape, shape[1:]):
            raise ValueError(f"init must give ({self.num_particles}, *site shape) or ({self.num_chains}, "
                             f"{self.num_particles}, *site shape) values per site; got points of shape "
                             f"{tuple(points.shape[:-1])}")
        if not torch.isfinite(points).all():
            raise ValueError("init has values outside the sites' supports (non-finite in unconstrained space)")
        return svgd_init(points.expand(shape), self.optimizer_factory)

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
            samples = target.draws(particles)
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


# ============================================================================ mirrored Stein samplers
#
# Shi, Liu and Mackey (2022), "Sampling with Mirrored Stein Operators", ICLR.
# Particles live in the dual space eta = grad psi(theta) of a mirror map; the
# kernel acts on the primal points theta.  Both the mirror maps and the dense
# metric of SVNG are a "geometry": the inverse Hessian (and, for SVMD, the
# Hessian) of each particle, applied to vectors laid out (chain, particle, ..., d).


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


class MetricGeometry:
    """A dense positive-definite metric per particle, ``(C, n, D, D)``, used through its Cholesky factor."""

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


class SiteMirrors:
    """The mirror maps of all sites of a dual Target, acting block by block on flat vectors ``(..., D)``."""

    def __init__(self, target):
        from bayeskit.inference.mirror_maps import MirrorTransform

        self.blocks = []
        for name, site in target.sites.items():
            if not isinstance(site.transform, MirrorTransform):
                raise TypeError(f"site {name!r} of this target is not parameterised by a mirror map")
            self.blocks.append((site.slice, site.unconstrained_shape, site.transform.mirror))
        self.names = list(target.sites)

    def _map(self, method, eta, *vectors):
        out = []
        for sl, shape, mirror in self.blocks:
            args = [x[..., sl].reshape(*x.shape[:-1], *shape) for x in (eta, *vectors)]
            value = getattr(mirror, method)(*args)
            out.append(value.reshape(*value.shape[:value.dim() - len(shape)], -1))
        return torch.cat(out, dim=-1)

    def to_primal(self, eta):
        return self._map("to_primal", eta)

    def inverse_hessian_apply(self, eta, v):
        return self._map("inverse_hessian_apply", eta, v)

    def hessian_apply(self, eta, v):
        return self._map("hessian_apply", eta, v)

    def settings(self):
        return {name: mirror.settings() for name, (_, _, mirror) in zip(self.names, self.blocks)}


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


def svmd_direction(theta, dual_score, geometry, kernel, *, trace_fraction=0.98, jitter=1e-5):
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
    Returns ``(g, bandwidth, num_eigen)``.
    """
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
    return a_matrix @ geometry.hessian(q) / n**2, bandwidth, num_eigen


def mirrored_step(state: SVGDState, target, direction) -> tuple[SVGDState, dict]:
    """One mirrored step on a dual Target: dual scores in one call, then ascend ``direction`` in ``eta``.

    ``direction(theta, dual_score, geometry) -> (g, info)`` is a bound
    :func:`msvgd_direction` or :func:`svmd_direction`.
    """
    eta = state.particles.detach()
    log_prob, dual_score = target.log_prob_and_score(eta)
    theta = target.mirrors.to_primal(eta)
    phi, info = direction(theta, dual_score, MirrorGeometry(target.mirrors, eta))
    return ascend(state, phi, log_prob, dual_score, **info)


class MirroredSVGD(SVGD):
    r"""Mirrored Stein variational gradient descent (MSVGD) for constrained targets.

    Shi, Liu and Mackey (2022), "Sampling with Mirrored Stein Operators", ICLR.
    Each particle is a dual point :math:`\eta = \nabla\psi(\theta)` of a mirror
    map (:mod:`bayeskit.inference.mirror_maps`); the update

    .. math::

        \eta_i \leftarrow \eta_i + \epsilon\, \frac1n\sum_j \big[k(\theta_j, \theta_i)\, s_\eta(\eta_j)
            + \nabla^2\psi(\theta_j)^{-1}\nabla_{\theta_j}k(\theta_j, \theta_i)\big]

    keeps every :math:`\theta_i = \nabla\psi^*(\eta_i)` inside the domain, and
    the dual score :math:`s_\eta` stays bounded near the boundary where the
    primal score blows up (sparse Dirichlets, probabilities near 0 or 1).

    Parameters
    ----------
    model_or_target : callable or Target
        A Pyro model (sites with real, positive/greater_than, interval or
        simplex support), or a :class:`~bayeskit.Target`.
    mirror : "auto", str, MirrorMap or dict
        ``"auto"`` picks the entropic map matching each site's support;
        a name (``"simplex"``, ``"orthant"``, ``"box"``, ``"identity"``) must
        match it; a :class:`MirrorMap` applies to every site; a dict maps
        site names to maps (the rest ``"auto"``).
    num_particles, num_chains, optimizer, lr, init, dims, coords
        As for :class:`SVGD`.  RMSprop on the dual points, as in the paper;
        ``lr=0.03`` (the paper's 0.1 leaves MSVGD's particles jittering
        at a distance above the i.i.d. floor on a sparse Dirichlet, see
        ``benchmarks/mirrored_stein.py``).
    kernel : "imq" (default), "rbf" or a kernel object with ``matrices(x)``
        Scalar kernel on the primal points (on the dual points with
        ``kernel_space="dual"``); bandwidth by the median heuristic.
    kernel_space : "primal" or "dual"
        ``"dual"`` runs plain SVGD on ``eta`` with the dual score (the
        paper's MSVGD with the kernel on ``eta``).

    Examples
    --------
    >>> post = MirroredSVGD(model, num_particles=50).run(data, num_steps=500, seed=0)  # doctest: +SKIP
    """

    name = "MirroredSVGD"

    def __init__(self, model_or_target, *, mirror="auto", num_particles=50, num_chains=1, kernel="imq",
                 kernel_space="primal", optimizer="rmsprop", lr=0.03, init=None, dims=None, coords=None):
        super().__init__(model_or_target, num_particles=num_particles, num_chains=num_chains, kernel=kernel,
                         optimizer=optimizer, lr=lr, init=init, dims=dims, coords=coords)
        if kernel_space not in ("primal", "dual"):
            raise ValueError(f"kernel_space must be 'primal' or 'dual', got {kernel_space!r}")
        if kernel_space == "primal" and not hasattr(self.kernel, "matrices"):
            raise TypeError("a kernel for the mirrored samplers needs a matrices(x) -> (k, f', h) method "
                            "(see bayeskit.inference.kernels); RBFKernel and IMQKernel have one")
        self.mirror, self.kernel_space = mirror, kernel_space
        self._mirror_settings = None

    def target(self, *model_args, **model_kwargs):
        """The dual Target: the model's density in the mirror maps' coordinates."""
        from bayeskit.inference.mirror_maps import dual_target

        target = dual_target(self.model_or_target, self.mirror, model_args, model_kwargs)
        target.mirrors = SiteMirrors(target)
        self._mirror_settings = target.mirrors.settings()
        return target

    def settings(self):
        out = {**super().settings(), "kernel_space": self.kernel_space}
        if self._mirror_settings is not None:
            out["mirrors"] = self._mirror_settings
        return out

    def direction(self, theta, dual_score, geometry):
        phi, bandwidth = msvgd_direction(theta, dual_score, geometry, self.kernel)
        return phi, {"bandwidth": bandwidth.mean()}

    def step(self, state, target):
        if self.kernel_space == "dual":
            return svgd_step(state, target, self.kernel)  # SVGD on eta with the dual score
        return mirrored_step(state, target, self.direction)


class SVMD(MirroredSVGD):
    r"""Stein variational mirror descent: a kernel that adapts to the mirror map's geometry.

    Shi, Liu and Mackey (2022).  The scalar kernel's Gram matrix is
    eigendecomposed at every step; its top eigenpairs (covering
    ``trace_fraction`` of the trace) and the mirror map's Hessians at the
    particles build the matrix kernel
    :math:`K_{\psi}(\theta, \theta') = E_{q}[k^{1/2}(\theta, z)\nabla^2\psi(z)k^{1/2}(z, \theta')]`
    (see :func:`svmd_direction`).  With one particle it moves like mirror
    descent; with many it spreads them like MSVGD but with steps scaled to
    the local geometry.  Costs an ``n x n`` eigendecomposition per chain
    and step on top of MSVGD.

    The Hessian :math:`\nabla^2\psi` itself (not its inverse) enters the
    kernel, and it is large where a particle nears the boundary.  On a
    3-component mixture (simplex weights, real locations, a positive scale;
    ``tutorials/03_mirrored_stein_simplex.py``) one of four particle sets
    kept growing steps and stayed about 3x too wide after 2,500 steps, while
    MirroredSVGD matched NUTS: check SVMD against MirroredSVGD on new models.

    Parameters
    ----------
    trace_fraction : float
        Fraction of the Gram matrix's trace the kept eigenpairs cover: 0.998,
        the authors' value for their sparse Dirichlet (``dirichlet.ipynb``;
        0.98 is their function's default).  The discarded eigenpairs carry
        the fine-scale differences between particles: with 0.98 the kernel
        cannot move nearby particles apart, and on sparse Dirichlets whole
        sets stayed where they were when the small coordinates shrank (12x
        the i.i.d. energy-distance floor on the paper's target, seed 2, lr
        0.1; 0.30x with 0.998).
        With 0.998 and ``lr=0.03``, 1,000 steps from Dir(5) put SVMD below the
        floor on 5/5 seeds of the paper's target and on 33 of 36 runs of a
        family of sparse Dirichlets (``tests/test_mirrored_stein.py``; 500
        steps leave one seed of the paper's target at 1.35x).  The three
        misses are one target, d = 50 with its two large concentrations only
        3.3 and 2.4: SVMD leaves the 48 tiny coordinates too evenly filled
        (1.2-1.5x at 500 to 2,000 steps) where MirroredSVGD is at 0.8x.
    lr : float
        RMSprop's learning rate on the dual points: 0.03, as for
        :class:`MirroredSVGD` (the paper's 0.1 overshoots when one
        concentration is large: 1.4x the floor on Dir(3.1, 93, 0.06, 0.1, 19)).
        Not much smaller: at 0.02 the particles freeze again on the paper's
        target (39x the floor on seed 0), as RMSprop's per-coordinate scale
        is set by the rank-one :math:`\mathbf{1}\mathbf{1}^\top/\theta_K` term of
        the simplex Hessian when the reference coordinate is tiny.
    Other parameters as for :class:`MirroredSVGD` (``kernel_space`` is primal).
    """

    name = "SVMD"

    def __init__(self, model_or_target, *, mirror="auto", num_particles=50, num_chains=1, kernel="imq",
                 trace_fraction=0.998, optimizer="rmsprop", lr=0.03, init=None, dims=None, coords=None):
        super().__init__(model_or_target, mirror=mirror, num_particles=num_particles, num_chains=num_chains,
                         kernel=kernel, optimizer=optimizer, lr=lr, init=init, dims=dims, coords=coords)
        self.trace_fraction = fraction("trace_fraction", trace_fraction, include_one=True)

    def settings(self):
        return {**super().settings(), "trace_fraction": self.trace_fraction}

    def direction(self, theta, dual_score, geometry):
        phi, bandwidth, num_eigen = svmd_direction(theta, dual_score, geometry, self.kernel,
                                                   trace_fraction=self.trace_fraction)
        return phi, {"bandwidth": bandwidth.mean(), "num_eigen": num_eigen.to(theta.dtype).mean()}


@dataclass
class SVNGState(SVGDState):
    """SVGD's state plus the moving-average metric ``(num_chains, num_particles, dim, dim)`` and its count."""

    metric: torch.Tensor | None = None
    num_updates: int = 0


def svng_step(state: SVNGState, target, kernel, metric_fn, *, damping, trace_fraction, max_decay=0.95):
    r"""One SVNG step: update the metric, take SVMD's direction with it, map it back with :math:`G^{-1}`.

    ``metric_fn(z) -> (C, n, d, d)`` estimates the metric at the particles;
    it enters a moving average with weight :math:`\rho_t = \min(1 - 1/t, 0.95)`
    (the authors' schedule), and ``damping * I`` is added.
    """
    z = state.particles.detach()
    log_prob, score = target.log_prob_and_score(z)
    estimate = metric_fn(z).to(z)
    state.num_updates += 1
    decay = min(1 - 1 / state.num_updates, max_decay)
    state.metric = estimate if state.metric is None else decay * state.metric + (1 - decay) * estimate
    eye = torch.eye(z.shape[-1], dtype=z.dtype, device=z.device)
    geometry = MetricGeometry(state.metric + damping * eye)
    natural_score = geometry.inverse_hessian(score)
    phi, bandwidth, num_eigen = svmd_direction(z, natural_score, geometry, kernel, trace_fraction=trace_fraction)
    return ascend(state, geometry.inverse_hessian(phi), log_prob, score, bandwidth=bandwidth.mean(),
                  num_eigen=num_eigen.to(z.dtype).mean())


class SVNG(SVGD):
    r"""Stein variational natural gradient for unconstrained targets.

    Shi, Liu and Mackey (2022), Sec. 5: SVMD with the mirror map's Hessian
    replaced by a Riemannian metric :math:`G(\theta)`, here the Fisher
    information.  The dual direction :math:`g` of :func:`svmd_direction`
    (with :math:`G^{-1}\nabla\log p` as the dual score) moves the particles by
    :math:`\theta_i \leftarrow \theta_i + \epsilon\, G_i^{-1} g_i`, a natural-gradient step
    that needs far fewer steps than SVGD on ill-conditioned posteriors.

    The metric is treated as locally constant: the divergence term
    :math:`\nabla\cdot G^{-1}` of the exact operator is left out, as the
    moving-average estimate has no derivative (exact when :math:`G` is constant).

    Parameters
    ----------
    metric : "fisher" or callable
        ``"fisher"`` (default): the Fisher information of the model's
        likelihood, estimated by Monte Carlo from ``fisher_samples`` data
        sets simulated from the model at each particle (Pyro models that
        vectorise).  A callable ``metric(z) -> (..., d, d)`` gives a
        positive-(semi)definite metric at points ``z`` ``(..., d)``.
    fisher_samples : int
        Simulated data sets per particle and step for ``"fisher"``; with the
        moving average the estimate has full rank after a few steps.
    damping : float
        Added to the metric's diagonal (``G + damping * I``), like a
        unit-precision prior on the metric.  It keeps the natural-gradient
        step bounded where the Fisher is nearly singular (separable classes,
        a rank-deficient early estimate); 1e-2, the authors' value on
        covertype's 400,000 rows, diverged on the 455-row breast-cancer data.
    trace_fraction : float
        As for :class:`SVMD`.
    num_particles, num_chains, kernel, optimizer, lr, init, dims, coords
        As for :class:`SVGD`; plain SGD and the RBF kernel, as in the
        authors' logistic regression.  While the particles are spread
        wider than the kernel's bandwidth, each step is about ``lr / n`` of
        a Newton step, so ``lr`` of several units suits 20 particles
        (``benchmarks/mirrored_stein.py`` compares a grid).
    """

    name = "SVNG"

    def __init__(self, model_or_target, *, metric="fisher", fisher_samples=32, damping=1.0, num_particles=20,
                 num_chains=1, kernel="rbf", trace_fraction=0.98, optimizer="sgd", lr=2.0, init=None, dims=None,
                 coords=None):
        super().__init__(model_or_target, num_particles=num_particles, num_chains=num_chains, kernel=kernel,
                         optimizer=optimizer, lr=lr, init=init, dims=dims, coords=coords)
        if metric != "fisher" and not callable(metric):
            raise ValueError(f"metric must be 'fisher' or a callable z -> (..., d, d), got {metric!r}")
        if not isinstance(fisher_samples, int) or isinstance(fisher_samples, bool) or fisher_samples < 1:
            raise ValueError(f"fisher_samples must be a positive int, got {fisher_samples!r}")
        if not (isinstance(damping, (int, float)) and damping > 0):
            raise ValueError(f"damping must be a positive number, got {damping!r}")
        if not hasattr(self.kernel, "matrices"):
            raise TypeError("SVNG's kernel needs a matrices(x) -> (k, f', h) method (see bayeskit.inference.kernels)")
        self.metric, self.fisher_samples, self.damping = metric, fisher_samples, float(damping)
        self.trace_fraction = fraction("trace_fraction", trace_fraction, include_one=True)

    def settings(self):
        metric = self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "callable")
        return {**super().settings(), "metric": metric, "fisher_samples": self.fisher_samples,
                "damping": self.damping, "trace_fraction": self.trace_fraction}

    def metric_fn(self, target):
        if callable(self.metric):
            return self.metric
        sampled = getattr(target, "sampled_fisher", None)
        if sampled is None:
            raise ValueError("metric='fisher' needs a Pyro model (the Fisher is estimated by simulating its "
                             "observations); for this target pass metric=callable(z) -> (..., d, d)")

        def fisher(z):
            flat = z.reshape(-1, z.shape[-1])
            return sampled(flat, self.fisher_samples).reshape(*z.shape, z.shape[-1])
        return fisher

    def init_state(self, target, generator):
        base = super().init_state(target, generator)
        return SVNGState(base.particles, base.optimizer)

    def step(self, state, target):
        return svng_step(state, target, self.kernel, self.metric_fn(target), damping=self.damping,
                         trace_fraction=self.trace_fraction)

    def state_dict(self, state):
        out = super().state_dict(state)
        out["num_updates"] = state.num_updates
        if state.metric is not None:
            out["metric"] = state.metric.detach()
        return out

    def load_state(self, target, saved):
        base = super().load_state(target, saved)
        metric = saved.get("metric")
        if metric is not None:
            metric = metric.to(device=target.device, dtype=target.dtype)
        return SVNGState(base.particles, base.optimizer, metric, int(saved["num_updates"]))
