r"""Mirror maps for the mirrored Stein samplers.

A mirror map is the gradient of a strictly convex function :math:`\psi` on a
constrained domain :math:`\Theta`.  It sends a point :math:`\theta \in \Theta`
to the unconstrained dual point :math:`\eta = \nabla\psi(\theta) \in \mathbb{R}^d`
and back with :math:`\theta = \nabla\psi^*(\eta)`.  The mirrored samplers of
Shi, Liu and Mackey (2022, "Sampling with Mirrored Stein Operators", ICLR)
move particles in :math:`\eta` and need, per particle, only

- the primal point :math:`\theta = \nabla\psi^*(\eta)`,
- the inverse Hessian :math:`\nabla^2\psi(\theta)^{-1} = \nabla^2\psi^*(\eta)`
  applied to vectors, and, for SVMD, the Hessian :math:`\nabla^2\psi(\theta)`,
- :math:`\log\det\nabla^2\psi^*(\eta)`, the log-Jacobian of
  :math:`\eta \mapsto \theta`, whose gradient enters the dual score

.. math::

    s_\eta = \nabla^2\psi(\theta)^{-1}\,\nabla_\theta \log p(\theta)
             + \nabla_\eta \log\det\nabla^2\psi^*(\eta),

which is the score of the density of :math:`\eta` (:meth:`MirrorMap.dual_score`).
All maps here act on the last dimension and apply their (inverse) Hessians
in O(d) per vector, never as dense d x d matrices, except
:class:`CustomMirrorMap` when it is not told the Hessian.

The built-in maps are entropic, as in the paper:

=================  ===================================  =====================================
map                :math:`\nabla\psi^*(\eta)`            :math:`\nabla^2\psi(\theta)^{-1}`
=================  ===================================  =====================================
``identity``       :math:`\eta`                          :math:`I` (plain SVGD)
``orthant``        :math:`a + e^{\eta}`                  :math:`\mathrm{diag}(\theta - a)`
``box``            :math:`a + (b-a)\,\sigma(\eta)`       :math:`\mathrm{diag}((\theta-a)(b-\theta)/(b-a))`
``simplex``        :math:`\mathrm{softmax}(\eta, 0)_{1:d}`  :math:`\mathrm{diag}(\theta) - \theta\theta^\top`
=================  ===================================  =====================================

The simplex map works on the first ``d = K - 1`` coordinates of a point of
the K-simplex (the last is one minus their sum); :meth:`MirrorMap.expand`
and :meth:`MirrorMap.reduce` convert between the two.  Its geometry is
computed from :math:`\eta` so that coordinates far below machine precision
(sparse Dirichlet draws) keep their relative accuracy.
"""

from __future__ import annotations

import math

import torch
from torch.distributions import constraints
from torch.distributions.transforms import Transform

__all__ = ["MirrorMap", "IdentityMap", "OrthantMap", "BoxMap", "SimplexMap", "CustomMirrorMap",
           "MirrorTransform", "mirror_for_support", "SiteMirrors", "SUPPORTED_CONSTRAINTS"]

#: What :func:`mirror_for_support` accepts, for error messages.
SUPPORTED_CONSTRAINTS = ("real", "positive / greater_than", "interval / unit_interval", "simplex")


class MirrorMap:
    """Base class; subclasses implement the maps and their geometry along the last dimension.

    Every method taking ``eta`` accepts any leading batch shape; ``v`` in the
    Hessian actions broadcasts against ``eta`` (one point, many vectors).
    """

    name = "mirror"
    #: 0 for maps acting coordinate by coordinate, 1 for maps acting on whole vectors (the simplex)
    event_dim = 0

    # shape bookkeeping: the simplex drops its last coordinate, the others keep all
    def reduce(self, value: torch.Tensor) -> torch.Tensor:
        """A point of the domain in the coordinates the map works on."""
        return value

    def expand(self, theta: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`reduce`: the point as the model's site sees it."""
        return theta

    def reduced_size(self, size: int) -> int:
        return size

    def site_size(self, reduced_size: int) -> int:
        """Inverse of :meth:`reduced_size`."""
        return reduced_size

    def site_to_dual(self, value: torch.Tensor) -> torch.Tensor:
        """:meth:`to_dual` of a point given as the model's site sees it."""
        return self.to_dual(self.reduce(value))

    def site_from_dual(self, eta: torch.Tensor) -> torch.Tensor:
        """The point of ``eta`` as the model's site sees it: ``expand(to_primal(eta))``."""
        return self.expand(self.to_primal(eta))

    # the map
    def to_dual(self, theta: torch.Tensor) -> torch.Tensor:
        r""":math:`\eta = \nabla\psi(\theta)`."""
        raise NotImplementedError

    def to_primal(self, eta: torch.Tensor) -> torch.Tensor:
        r""":math:`\theta = \nabla\psi^*(\eta)`."""
        raise NotImplementedError

    # geometry, as functions of the dual point
    def inverse_hessian_apply(self, eta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla^2\psi(\theta)^{-1} v` at :math:`\theta = \nabla\psi^*(\eta)`."""
        raise NotImplementedError

    def hessian_apply(self, eta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla^2\psi(\theta)\, v` at :math:`\theta = \nabla\psi^*(\eta)`."""
        raise NotImplementedError

    def log_det_inverse_hessian(self, eta: torch.Tensor) -> torch.Tensor:
        r""":math:`\log\det\nabla^2\psi^*(\eta)`, shape ``eta.shape[:-1]``."""
        raise NotImplementedError

    def grad_log_det_inverse_hessian(self, eta: torch.Tensor) -> torch.Tensor:
        r""":math:`\nabla_\eta \log\det\nabla^2\psi^*(\eta)`, which equals the divergence
        :math:`\nabla_\theta\cdot\nabla^2\psi(\theta)^{-1}`."""
        raise NotImplementedError

    def dual_score(self, eta: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
        r"""Score of the density of :math:`\eta` from the primal score :math:`\nabla_\theta \log p(\theta)`."""
        return self.inverse_hessian_apply(eta, score) + self.grad_log_det_inverse_hessian(eta)

    def settings(self) -> dict:
        return {"mirror": self.name}

    def __repr__(self):
        extra = {k: v for k, v in self.settings().items() if k != "mirror"}
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in extra.items())})"


class IdentityMap(MirrorMap):
    r""":math:`\psi(\theta) = \tfrac12\|\theta\|^2`: the dual is the primal and the samplers reduce to SVGD."""

    name = "identity"

    def to_dual(self, theta):
        return theta

    def to_primal(self, eta):
        return eta

    def inverse_hessian_apply(self, eta, v):
        return v.expand(torch.broadcast_shapes(eta.shape, v.shape))

    hessian_apply = inverse_hessian_apply

    def log_det_inverse_hessian(self, eta):
        return eta.new_zeros(eta.shape[:-1])

    def grad_log_det_inverse_hessian(self, eta):
        return torch.zeros_like(eta)


def _bound(value, name):
    if torch.is_tensor(value):
        if not torch.isfinite(value).all():
            raise ValueError(f"{name} must be finite")
        return value
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


class OrthantMap(MirrorMap):
    r"""Entropic map of :math:`\{\theta > a\}`:
    :math:`\psi(\theta) = \sum_i (\theta_i - a)\log(\theta_i - a) - \theta_i`.

    :math:`\nabla\psi^*(\eta) = a + e^\eta`, :math:`\nabla^2\psi^{-1} = \mathrm{diag}(\theta - a)`,
    :math:`\log\det\nabla^2\psi^* = \sum_i \eta_i`.
    """

    name = "orthant"

    def __init__(self, lower=0.0):
        self.lower = _bound(lower, "lower")

    def to_dual(self, theta):
        return torch.log(theta - self.lower)

    def to_primal(self, eta):
        return self.lower + torch.exp(eta)

    def inverse_hessian_apply(self, eta, v):
        return torch.exp(eta) * v

    def hessian_apply(self, eta, v):
        return torch.exp(-eta) * v

    def log_det_inverse_hessian(self, eta):
        return eta.sum(-1)

    def grad_log_det_inverse_hessian(self, eta):
        return torch.ones_like(eta)

    def settings(self):
        return {"mirror": self.name, "lower": _plain(self.lower)}


class BoxMap(MirrorMap):
    r"""Entropic map of the box :math:`(a, b)^d`, with :math:`u = (\theta - a)/(b - a)`:
    :math:`\psi(\theta) = (b - a)\sum_i u_i\log u_i + (1 - u_i)\log(1 - u_i)`.

    :math:`\nabla\psi^*(\eta) = a + (b - a)\,\sigma(\eta)`,
    :math:`\nabla^2\psi^{-1} = \mathrm{diag}((b - a)\,u(1 - u))`,
    :math:`\nabla_\eta\log\det\nabla^2\psi^* = 1 - 2u`.  On :math:`(-1, 1)` this is the
    paper's map, :math:`\tanh(\eta/2)`.
    """

    name = "box"

    def __init__(self, lower=0.0, upper=1.0):
        self.lower, self.upper = _bound(lower, "lower"), _bound(upper, "upper")
        if not bool(torch.all(torch.as_tensor(self.upper) > torch.as_tensor(self.lower))):
            raise ValueError(f"the box needs upper > lower, got lower={lower}, upper={upper}")

    @property
    def width(self):
        return self.upper - self.lower

    def to_dual(self, theta):
        u = (theta - self.lower) / self.width
        return torch.log(u) - torch.log1p(-u)

    def to_primal(self, eta):
        return self.lower + self.width * torch.sigmoid(eta)

    def inverse_hessian_apply(self, eta, v):
        return self.width * torch.sigmoid(eta) * torch.sigmoid(-eta) * v

    def hessian_apply(self, eta, v):
        # 1 / (sigma(eta) sigma(-eta)) = 2 + 2 cosh(eta), finite for any eta
        return (2 + 2 * torch.cosh(eta)) / self.width * v

    def log_det_inverse_hessian(self, eta):
        log_width = torch.log(torch.as_tensor(self.width, dtype=eta.dtype, device=eta.device))
        terms = log_width + torch.nn.functional.logsigmoid(eta) + torch.nn.functional.logsigmoid(-eta)
        return terms.sum(-1)

    def grad_log_det_inverse_hessian(self, eta):
        return -torch.tanh(eta / 2)  # = 1 - 2 sigma(eta)

    def settings(self):
        return {"mirror": self.name, "lower": _plain(self.lower), "upper": _plain(self.upper)}


class SimplexMap(MirrorMap):
    r"""Entropic map of the probability simplex, on the first ``d = K - 1`` coordinates.

    :math:`\psi(\theta) = \sum_{i=1}^{K} \theta_i\log\theta_i` with
    :math:`\theta_K = 1 - \sum_{i<K}\theta_i`, so that

    .. math::

        \nabla\psi(\theta) = \log\theta_{1:d} - \log\theta_K, \qquad
        \nabla\psi^*(\eta) = \mathrm{softmax}(\eta_1, \dots, \eta_d, 0)_{1:d},

        \nabla^2\psi(\theta)^{-1} = \mathrm{diag}(\theta) - \theta\theta^\top, \qquad
        \nabla^2\psi(\theta) = \mathrm{diag}(1/\theta) + \tfrac{1}{\theta_K}\mathbf{1}\mathbf{1}^\top,

        \log\det\nabla^2\psi^*(\eta) = \sum_{i=1}^{K}\log\theta_i, \qquad
        \nabla_\eta\log\det\nabla^2\psi^*(\eta) = \mathbf{1} - K\theta.

    For a Dirichlet(alpha) target the dual score is
    :math:`\alpha_{1:d} - (\sum_i\alpha_i)\,\theta`, bounded however close to
    the boundary a particle comes, which is why mirrored samplers handle
    sparse Dirichlets that defeat samplers working through a bijection.
    """

    name = "simplex"
    event_dim = 1

    def reduce(self, value):
        return value[..., :-1]

    def expand(self, theta):
        return torch.cat([theta, (1 - theta.sum(-1, keepdim=True)).clamp_min(0)], dim=-1)

    def reduced_size(self, size):
        if size < 2:
            raise ValueError("a simplex site needs at least 2 coordinates")
        return size - 1

    def site_size(self, reduced_size):
        return reduced_size + 1

    def to_dual(self, theta):
        return torch.log(theta) - torch.log(1 - theta.sum(-1, keepdim=True))

    def site_to_dual(self, value):
        # from all K coordinates: no 1 - sum cancellation for a tiny last one
        return torch.log(value[..., :-1]) - torch.log(value[..., -1:])

    @staticmethod
    def _log_theta(eta):
        """log of all K coordinates, exactly from eta (no 1 - sum cancellation)."""
        full = torch.cat([eta, eta.new_zeros(eta.shape[:-1] + (1,))], dim=-1)
        return torch.log_softmax(full, dim=-1)

    def site_from_dual(self, eta):
        # all K coordinates from eta: accurate even where they underflow the reduced sum
        return self._log_theta(eta).exp()

    def to_primal(self, eta):
        return self.site_from_dual(eta)[..., :-1]

    def inverse_hessian_apply(self, eta, v):
        theta = self.to_primal(eta)
        return theta * v - theta * (theta * v).sum(-1, keepdim=True)

    def hessian_apply(self, eta, v):
        log_theta = self._log_theta(eta)
        # 1/theta from log theta: stays finite where theta itself underflows
        return torch.exp(-log_theta[..., :-1]) * v + torch.exp(-log_theta[..., -1:]) * v.sum(-1, keepdim=True)

    def log_det_inverse_hessian(self, eta):
        return self._log_theta(eta).sum(-1)

    def grad_log_det_inverse_hessian(self, eta):
        return 1 - (eta.shape[-1] + 1) * self.to_primal(eta)


class CustomMirrorMap(MirrorMap):
    r"""A mirror map from user functions.

    Parameters
    ----------
    grad_psi : callable
        :math:`\theta \mapsto \eta = \nabla\psi(\theta)`, along the last dimension.
    grad_psi_star : callable
        :math:`\eta \mapsto \theta = \nabla\psi^*(\eta)`.
    inverse_hessian_apply : callable
        ``(theta, v) -> \nabla^2\psi(\theta)^{-1} v``, broadcasting ``v`` against ``theta``.
    log_det_inverse_hessian : callable
        ``eta -> \log\det\nabla^2\psi^*(\eta)`` (shape ``eta.shape[:-1]``), differentiable;
        its gradient is taken with autograd.
    hessian_apply : callable, optional
        ``(theta, v) -> \nabla^2\psi(\theta)\, v``; SVMD needs it.  Without it the
        inverse Hessian is built densely from ``inverse_hessian_apply`` and
        inverted (O(d^3) per particle).
    name : str
        Shown in ``meta``.
    """

    def __init__(self, grad_psi, grad_psi_star, inverse_hessian_apply, log_det_inverse_hessian, *,
                 hessian_apply=None, name="custom"):
        for arg, fn in (("grad_psi", grad_psi), ("grad_psi_star", grad_psi_star),
                        ("inverse_hessian_apply", inverse_hessian_apply),
                        ("log_det_inverse_hessian", log_det_inverse_hessian)):
            if not callable(fn):
                raise TypeError(f"{arg} must be callable, got {type(fn).__name__}")
        if hessian_apply is not None and not callable(hessian_apply):
            raise TypeError(f"hessian_apply must be callable or None, got {type(hessian_apply).__name__}")
        self._grad_psi, self._grad_psi_star = grad_psi, grad_psi_star
        self._inverse_hessian_apply, self._log_det = inverse_hessian_apply, log_det_inverse_hessian
        self._hessian_apply = hessian_apply
        self.name = name

    def to_dual(self, theta):
        return self._grad_psi(theta)

    def to_primal(self, eta):
        return self._grad_psi_star(eta)

    def inverse_hessian_apply(self, eta, v):
        return self._inverse_hessian_apply(self.to_primal(eta), v)

    def hessian_apply(self, eta, v):
        theta = self.to_primal(eta)
        if self._hessian_apply is not None:
            return self._hessian_apply(theta, v)
        d = eta.shape[-1]
        eye = torch.eye(d, dtype=eta.dtype, device=eta.device)
        # columns H^{-1} e_j, for each point: (..., d, d)
        dense = self._inverse_hessian_apply(theta.unsqueeze(-2), eye).transpose(-1, -2)
        batch = torch.broadcast_shapes(dense.shape[:-2], v.shape[:-1])
        return torch.linalg.solve(dense.expand(*batch, d, d), v.expand(*batch, d).unsqueeze(-1)).squeeze(-1)

    def log_det_inverse_hessian(self, eta):
        return self._log_det(eta)

    def grad_log_det_inverse_hessian(self, eta):
        with torch.enable_grad():
            leaf = eta.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._log_det(leaf).sum(), leaf)
        return grad


def _plain(value):
    return value.tolist() if torch.is_tensor(value) else value


# ----------------------------------------------------------------------------- site transforms
class MirrorTransform(Transform):
    """The bijection from a site's dual block to its value: ``expand(to_primal(eta))``.

    Its log-Jacobian is :math:`\\log\\det\\nabla^2\\psi^*(\\eta)`, so a Target
    built with these transforms has exactly the dual density, and its
    autograd score is the dual score :math:`s_\\eta`.
    """

    bijective = True

    def __init__(self, mirror: MirrorMap, domain_constraint):
        super().__init__(cache_size=0)
        self.mirror = mirror
        self._codomain = domain_constraint

    @property
    def domain(self):
        return constraints.independent(constraints.real, self.mirror.event_dim)

    @property
    def codomain(self):
        return self._codomain

    def _call(self, eta):
        return self.mirror.site_from_dual(eta)

    def _inverse(self, value):
        return self.mirror.site_to_dual(value)

    def log_abs_det_jacobian(self, eta, value):
        if self.mirror.event_dim:
            return self.mirror.log_det_inverse_hessian(eta)
        # elementwise maps: one term per coordinate, summed by the caller
        return self.mirror.log_det_inverse_hessian(eta.unsqueeze(-1))

    def forward_shape(self, shape):
        return (*shape[:-1], self.mirror.site_size(shape[-1])) if shape else shape

    def inverse_shape(self, shape):
        return (*shape[:-1], self.mirror.reduced_size(shape[-1])) if shape else shape


def _base_constraint(constraint):
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def mirror_for_support(support) -> MirrorMap | None:
    """The entropic mirror map that matches a support, or None when there is none.

    real -> identity, positive / greater_than(a) -> orthant, interval(a, b)
    (open, closed or half-open) -> box, simplex -> simplex.
    """
    base = _base_constraint(support)
    if base is constraints.real:
        return IdentityMap()
    if base is constraints.simplex:
        return SimplexMap()
    if isinstance(base, (constraints.greater_than, constraints.greater_than_eq)):
        return OrthantMap(base.lower_bound)
    if isinstance(base, (constraints.interval, constraints.half_open_interval)):
        return BoxMap(base.lower_bound, base.upper_bound)
    return None


# ------------------------------------------------------------------------------ dual targets
_BUILT_IN = {"identity": IdentityMap, "orthant": OrthantMap, "box": BoxMap, "simplex": SimplexMap}


def resolve_mirror(name: str, support, mirror) -> MirrorMap:
    """The mirror map for one site: ``"auto"`` from its support, a built-in name, a dict entry or a MirrorMap."""
    if isinstance(mirror, dict):
        mirror = mirror.get(name, "auto")
    if isinstance(mirror, MirrorMap):
        return mirror
    matching = mirror_for_support(support)
    if mirror == "auto":
        if matching is None:
            raise ValueError(
                f"site {name!r} has support {support}, which no built-in mirror map covers; supported: "
                f"{', '.join(SUPPORTED_CONSTRAINTS)}. Pass mirror={{{name!r}: CustomMirrorMap(...)}} "
                "or reparameterise the site")
        return matching
    if isinstance(mirror, str) and mirror in _BUILT_IN:
        if matching is None or matching.name != mirror:
            raise ValueError(f"mirror {mirror!r} does not match site {name!r}, whose support is {support}; "
                             "use mirror='auto' or a dict of per-site maps")
        return matching
    raise ValueError(f"mirror must be 'auto', one of {sorted(_BUILT_IN)}, a MirrorMap or a dict of them "
                     f"per site, got {mirror!r}")


def dual_target(model_or_target, mirror, model_args=(), model_kwargs=None):
    """The Target of the dual coordinates ``eta``: its sites' transforms are :class:`MirrorTransform`.

    Its log density is that of ``eta``, :math:`\\log p(\\nabla\\psi^*(\\eta)) + \\log\\det\\nabla^2\\psi^*(\\eta)`,
    so its score is the dual score.  A Pyro model is evaluated directly at the
    mirror maps' points.  A ready Target is composed with its own bijections
    (``z = T^{-1}(\\theta)``), exact for real sites and slightly less precise than
    a model for points extremely close to a boundary.
    """
    from bayeskit.target import Target

    def site_transform(name, support):
        return MirrorTransform(resolve_mirror(name, support, mirror), support)

    if isinstance(model_or_target, Target):
        if model_args or model_kwargs:
            raise TypeError("model arguments were given, but the engine was built on a Target, "
                            "which is already conditioned on its data")
        return _composed_dual_target(model_or_target, site_transform)
    from bayeskit._pyro_target import pyro_target

    kwargs = dict(model_kwargs or {})
    vectorize, jit_compile = kwargs.pop("vectorize", "auto"), kwargs.pop("jit_compile", False)
    return pyro_target(Target, model_or_target, model_args, kwargs, vectorize, jit_compile, site_transform)


def _composed_dual_target(target, site_transform):
    from bayeskit.target import Target, build_sites

    for name, site in target.sites.items():
        if site.transform is None:
            raise ValueError(f"site {name!r} of {target.description} has no transform to compose a mirror map "
                             "with; pass the model itself (a Pyro model) to the mirrored sampler")
    specs = {name: (site.shape, site.constraint) for name, site in target.sites.items()}
    sites = build_sites(specs, site_transform)

    def values_and_z(eta):
        values = {name: site.transform(Target.site_block(eta, site)) for name, site in sites.items()}
        blocks = [old.transform.inv(values[name]).reshape(eta.shape[0], -1) for name, old in target.sites.items()]
        return values, torch.cat(blocks, dim=-1)

    def log_prob_fn(eta):
        values, z = values_and_z(eta)
        lp = target.log_prob(z)
        for name, site in sites.items():
            old = target.sites[name]
            lp = lp - old.transform.log_abs_det_jacobian(Target.site_block(z, old), values[name]).reshape(
                eta.shape[0], -1).sum(-1)
            lp = lp + site.transform.log_abs_det_jacobian(Target.site_block(eta, site), values[name]).reshape(
                eta.shape[0], -1).sum(-1)
        return lp

    def init_fn(n, generator):
        return dual.unconstrain(target.constrain(target.init(n, generator)))

    dual = Target(sites, log_prob_fn, init_fn=init_fn,
                  pointwise_log_likelihood_fn=lambda eta: target.pointwise_log_likelihood(values_and_z(eta)[1]),
                  observed_data=target.observed_data, dtype=target.dtype, device=target.device,
                  description=f"{target.description} (mirror coordinates)")
    return dual


class SiteMirrors:
    """The mirror maps of all sites of a dual Target, acting block by block on flat vectors ``(..., D)``."""

    def __init__(self, target):
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

    def dual_mean(self, eta):
        """Dual coordinates of the particles' mean taken in the primal space, per chain.

        ``eta`` ``(C, n, D)`` gives ``(C, 1, D)``.  Every mirror map's domain is
        convex, so the mean is a point of it; each site is averaged as the
        model sees it (all K coordinates of a simplex, so a tiny last one
        keeps its relative accuracy).
        """
        particle_dim = eta.dim() - 2
        out = []
        for sl, shape, mirror in self.blocks:
            points = mirror.site_from_dual(eta[..., sl].reshape(*eta.shape[:-1], *shape))
            dual = mirror.site_to_dual(points.mean(particle_dim, keepdim=True))
            out.append(dual.reshape(*dual.shape[:particle_dim + 1], -1))
        return torch.cat(out, dim=-1)

    def settings(self):
        return {name: mirror.settings() for name, (_, _, mirror) in zip(self.names, self.blocks)}
