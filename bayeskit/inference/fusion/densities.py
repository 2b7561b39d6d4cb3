r"""Sub-posterior densities as Fusion needs them: score, the Hessian trace, and bounds of phi.

Fusion (Dai, Pollock and Roberts 2019; Chan, Pollock, Johansen and Roberts
2023) reweights Brownian-bridge proposals by path integrals of

.. math:: \phi_c(x) = \tfrac12\big(\nabla\log f_c(x)^\top \Lambda_c \nabla\log f_c(x)
          + \operatorname{tr}(\Lambda_c \nabla^2 \log f_c(x))\big),

with :math:`\Lambda_c = A A^\top` the preconditioner of sub-posterior
:math:`f_c`. Every density here gives :meth:`ShardDensity.phi`; the exact
path-space estimators also need :meth:`ShardDensity.phi_bounds`, bounds of
phi on a ball :math:`\{x_0 + A u : |u| \le r\}`, and a global lower bound.
Those are derived in closed form for :class:`GaussianDensity` and
:class:`LogisticDensity` (Bayesian logistic regression with a Gaussian
prior, the authors' main example); any other log density
(:class:`LogDensity`, :class:`PyroDensity`) gets phi by autograd and no
bounds, so Fusion falls back to the discretised (approximate) estimator.

The bounds rest on one inequality: if :math:`-\nabla^2\log f` lies between
:math:`M_{lo}` and :math:`M_{hi}` (Loewner order) everywhere, then on the
ball :math:`|A^\top\nabla\log f(x)| \in [\,n_0 - K r,\ n_0 + K r\,]` with
:math:`n_0 = |A^\top \nabla\log f(x_0)|` and :math:`K = \|A^\top M_{hi} A\|_2`
(the mean-value theorem), while the trace term lies between the traces of
:math:`-A^\top M A` at the extremes.
"""

from __future__ import annotations

import torch

__all__ = ["ShardDensity", "GaussianDensity", "LogisticDensity", "LogDensity", "PyroDensity", "product_density"]


class ShardDensity:
    """A (sub-)posterior log density on the flat unconstrained vector, batched over rows.

    Subclasses give :meth:`score` and :meth:`hessian_trace`; those with
    closed-form curvature bounds also give :meth:`phi_bounds` and
    :meth:`phi_lower_bound` and set ``has_bounds = True``.
    ``num_data`` is the number of observations behind the density (the
    guidance for the time horizon uses it only through ratios).
    """

    has_bounds = False
    num_data = 1

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def score(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\nabla \\log f(z)`, ``(N, d)``."""
        raise NotImplementedError

    def hessian_trace(self, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """:math:`\\operatorname{tr}(A^\\top \\nabla^2\\log f(z) A)` for ``scale`` = A, ``(N,)``."""
        raise NotImplementedError

    def phi(self, z: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Fusion's phi at rows ``z`` (N, d) for the preconditioner ``scale @ scale.T``."""
        whitened_score = self.score(z) @ scale
        return 0.5 * (whitened_score.square().sum(-1) + self.hessian_trace(z, scale))

    def phi_bounds(self, centre: torch.Tensor, radius: torch.Tensor, scale: torch.Tensor):
        """``(lower, upper)``, each ``(N,)``: bounds of phi on ``{centre + scale @ u : |u| <= radius}``."""
        raise NotImplementedError(f"{type(self).__name__} has no bounds of phi; use the discretised estimator")

    def ball_bounds(self, centre: torch.Tensor, scale: torch.Tensor):
        """``bounds(radius) -> (lower, upper)`` on balls around fixed centres: lets a class reuse work across radii."""
        return lambda radius: self.phi_bounds(centre, radius, scale)

    def phi_lower_bound(self, scale: torch.Tensor) -> torch.Tensor:
        """A global lower bound of phi (0-d), which Monte Carlo Fusion's rejection step needs."""
        raise NotImplementedError(f"{type(self).__name__} has no bounds of phi")

    def combine(self, others):
        """The density of the product of ``self`` and ``others`` (same class)."""
        return _ProductDensity([self, *others])


def _ball_bounds(score_norm, curvature, radius, trace_low, trace_high):
    """phi's bounds from |A^T grad| in [n0 - K r, n0 + K r] and the trace term in [trace_low, trace_high]."""
    reach = curvature * radius
    low_norm = (score_norm - reach).clamp_min(0)
    return 0.5 * (low_norm.square() + trace_low), 0.5 * ((score_norm + reach).square() + trace_high)


class GaussianDensity(ShardDensity):
    """:math:`N(\\mu, P^{-1})`: phi is a quadratic, bounded on any ball in closed form.

    Parameters
    ----------
    mean : Tensor (d,)
    covariance, precision : Tensor (d, d)
        Give exactly one.
    """

    has_bounds = True

    def __init__(self, mean, covariance=None, precision=None, num_data=1):
        if (covariance is None) == (precision is None):
            raise ValueError("give exactly one of covariance= and precision=")
        self.mean = torch.as_tensor(mean)
        if self.mean.dim() != 1:
            raise ValueError(f"mean must be a vector (d,), got shape {tuple(self.mean.shape)}")
        matrix = torch.as_tensor(precision if covariance is None else covariance, dtype=self.mean.dtype)
        d = self.mean.shape[0]
        if matrix.shape != (d, d):
            raise ValueError(f"{'precision' if covariance is None else 'covariance'} must be ({d}, {d}), "
                             f"got {tuple(matrix.shape)}")
        self.precision = matrix if covariance is None else torch.linalg.inv(matrix)
        self.num_data = num_data

    def log_prob(self, z):
        centred = z - self.mean
        return -0.5 * ((centred @ self.precision) * centred).sum(-1)

    def score(self, z):
        return -(z - self.mean) @ self.precision

    def hessian_trace(self, z, scale):
        value = -torch.einsum("ij,ik,kj->", scale, self.precision, scale)
        return value.expand(z.shape[0])

    def phi_bounds(self, centre, radius, scale):
        curvature = torch.linalg.matrix_norm(scale.T @ self.precision @ scale, ord=2)
        trace = self.hessian_trace(centre, scale)
        return _ball_bounds((self.score(centre) @ scale).norm(dim=-1), curvature, radius, trace, trace)

    def phi_lower_bound(self, scale):
        return 0.5 * self.hessian_trace(self.mean[None], scale)[0]

    def combine(self, others):
        parts = [self, *others]
        precision = sum(part.precision for part in parts)
        weighted = sum(part.precision @ part.mean for part in parts)
        return GaussianDensity(torch.linalg.solve(precision, weighted), precision=precision,
                               num_data=sum(part.num_data for part in parts))


class LogisticDensity(ShardDensity):
    r"""Logistic regression with an :math:`N(0, s^2 I)` prior raised to ``prior_weight``.

    .. math:: \log f(z) = \sum_i \big(y_i \eta_i - \log(1 + e^{\eta_i})\big)
              - \frac{w}{2 s^2} |z|^2, \qquad \eta = \tilde X z,

    with :math:`\tilde X = (1, X)`: the flat layout ``(alpha, beta)`` of
    :func:`bayeskit.models.logistic_regression`. Its curvature
    :math:`-\nabla^2 \log f = \tilde X^\top D \tilde X + (w / s^2) I` with
    :math:`D = \operatorname{diag}(p_i(1 - p_i)) \preceq I/4` gives the bounds;
    on a ball the trace term is bounded row by row, from the range of each
    :math:`\eta_i` over the ball.
    """

    has_bounds = True

    def __init__(self, x, y, *, prior_scale=1.0, prior_weight=1.0):
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        if x.dim() != 2 or y.shape != x.shape[:1]:
            raise ValueError(f"x must be (n, p) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
        self.x, self.y = x, y.to(x.dtype)
        self.design = torch.cat([torch.ones(len(x), 1, dtype=x.dtype, device=x.device), x], dim=-1)
        self.prior_scale, self.prior_weight = float(prior_scale), float(prior_weight)
        self.num_data = len(x)

    @property
    def _prior_precision(self):
        return self.prior_weight / self.prior_scale ** 2

    def log_prob(self, z):
        eta = z @ self.design.T
        log_likelihood = (self.y * eta - torch.nn.functional.softplus(eta)).sum(-1)
        return log_likelihood - 0.5 * self._prior_precision * z.square().sum(-1)

    def score(self, z):
        observed = self.y @ self.design
        return _in_blocks(lambda z_block: observed - (z_block @ self.design.T).sigmoid_() @ self.design
                          - self._prior_precision * z_block, z, len(self.design))

    def _row_scales(self, scale):
        return (self.design @ scale).square().sum(-1)  # |A^T x_i|^2, (n,)

    def hessian_trace(self, z, scale):
        p = torch.sigmoid(z @ self.design.T)
        return -(p * (1 - p)) @ self._row_scales(scale) - self._prior_precision * scale.square().sum()

    def phi(self, z, scale):
        # sum_i (y_i - p_i) x_i = y X - p X and sum_i p_i (1 - p_i) q_i = p q - p^2 q: one GEMM against [X, q]
        # and one GEMV, in blocks of rows small enough that the (rows, n) intermediates stay in cache.
        rows = self._row_scales(scale)
        stacked = torch.cat([self.design, rows[:, None]], 1)
        observed = self.y @ self.design
        prior_trace = self._prior_precision * scale.square().sum()

        def block(z_block):
            p = (z_block @ self.design.T).sigmoid_()
            first = p @ stacked
            second = p.square_() @ rows
            score = observed - first[:, :-1] - self._prior_precision * z_block
            trace = second - first[:, -1] - prior_trace
            return 0.5 * ((score @ scale).square().sum(-1) + trace)
        return _in_blocks(block, z, len(self.design))

    def phi_bounds(self, centre, radius, scale):
        return self.ball_bounds(centre, scale)(radius)

    def ball_bounds(self, centre, scale):
        whitened_rows = self.design @ scale  # A^T x_i, (n, d)
        rows = whitened_rows.square().sum(-1)
        row_norms = rows.sqrt()
        prior = self._prior_precision * (scale.T @ scale)
        eta_abs = (centre @ self.design.T).abs()  # (N, n): each eta_i ranges over eta_i -+ r |A^T x_i| on the ball
        score_norm = (self.score(centre) @ scale).norm(dim=-1)

        def local_bounds(eta_block, radius_block):
            # The largest Bernoulli variance of each row on the ball bounds the whitened Hessian there:
            # -A^T H A <= sum_i v_i^max (A^T x_i)(A^T x_i)^T + w A^T A, much tighter than v <= 1/4 when the
            # ball lies where the fitted probabilities are near 0 or 1 (rare events).
            reach = radius_block[:, None] * row_norms
            nearest = _bernoulli_variance((eta_block - reach).clamp_min_(0))
            farthest = _bernoulli_variance(eta_block + reach)
            curvature = torch.linalg.eigvalsh(
                torch.einsum("bn,nd,ne->bde", nearest, whitened_rows, whitened_rows) + prior)[:, -1]
            trace_prior = prior.diagonal().sum()
            return torch.stack([-nearest @ rows - trace_prior, -farthest @ rows - trace_prior, curvature], -1)

        def bounds(radius):
            traces = _in_blocks(local_bounds, eta_abs, len(self.design), radius)
            return _ball_bounds(score_norm, traces[:, 2], radius, traces[:, 0], traces[:, 1])
        return bounds

    def phi_lower_bound(self, scale):
        return 0.5 * (-self._row_scales(scale).sum() / 4 - self._prior_precision * scale.square().sum())

    def combine(self, others):
        parts = [self, *others]
        if len({part.prior_scale for part in parts}) > 1:
            raise ValueError("logistic sub-posteriors combine only with one prior_scale")
        return LogisticDensity(torch.cat([part.x for part in parts]), torch.cat([part.y for part in parts]),
                               prior_scale=self.prior_scale, prior_weight=sum(part.prior_weight for part in parts))


def _bernoulli_variance(eta_abs):
    p = torch.sigmoid(eta_abs)
    return p.sub_(p.square())  # p (1 - p), decreasing in |eta|


def _in_blocks(fn, rows, width, *more, cells=1 << 19):
    """``fn`` over blocks of ``rows`` (and the matching blocks of ``more``), about ``cells`` = rows x width each."""
    size = max(1, cells // max(width, 1))
    if len(rows) <= size:
        return fn(rows, *more)
    return torch.cat([fn(rows[i:i + size], *(m[i:i + size] for m in more)) for i in range(0, len(rows), size)])


class LogDensity(ShardDensity):
    """Any batched log density ``fn((N, d)) -> (N,)``; score and Hessian trace by autograd (no bounds).

    The trace :math:`\\operatorname{tr}(A^\\top H A)` costs d Hessian-vector
    products, one per column of A.
    """

    def __init__(self, log_prob_fn, num_data=1):
        if not callable(log_prob_fn):
            raise TypeError(f"log_prob_fn must be callable, got {type(log_prob_fn).__name__}")
        self._log_prob_fn = log_prob_fn
        self.num_data = num_data

    def log_prob(self, z):
        return self._log_prob_fn(z)

    def score(self, z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(self.log_prob(z).sum(), z)[0]

    def hessian_trace(self, z, scale):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            score = torch.autograd.grad(self.log_prob(z).sum(), z, create_graph=True)[0]
            trace = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
            for column in scale.T:  # (A e_j)^T H (A e_j), summed over j
                hvp = torch.autograd.grad((score * column).sum(), z, retain_graph=True)[0]
                trace = trace + hvp @ column
        return trace.detach()


class PyroDensity(LogDensity):
    """The log density of a shard of a Pyro model, by autograd: :meth:`bayeskit.sharding.Shard.target`.

    That is :math:`\\log f_c(z) = \\tfrac1C(\\log p(T(z)) + \\log|\\det J_T(z)|) + \\log p(y_c \\mid T(z))`
    on the unconstrained vector, the same density the shard's draws come
    from, so the product over shards is the full posterior on ``z``.
    Holds the shard (model and arguments) rather than the Target, so it
    pickles (a Ray task can receive it); the Target is rebuilt on first use.
    """

    def __init__(self, shard):
        self.shard = shard
        self.num_data = shard.num_data
        self._target = None

    def log_prob(self, z):
        if self._target is None:
            self._target = self.shard.target()
        return self._target.log_prob(z)

    def __getstate__(self):
        return {**self.__dict__, "_target": None}


class _ProductDensity(ShardDensity):
    """The product of densities without a closed-form product: scores and traces add."""

    def __init__(self, parts):
        self.parts = list(parts)
        self.num_data = sum(part.num_data for part in self.parts)

    def log_prob(self, z):
        return sum(part.log_prob(z) for part in self.parts)

    def score(self, z):
        return sum(part.score(z) for part in self.parts)

    def hessian_trace(self, z, scale):
        return sum(part.hessian_trace(z, scale) for part in self.parts)

    def combine(self, others):
        return _ProductDensity([*self.parts, *others])


def product_density(densities):
    """One density for the product of ``densities``, in closed form where the class has one."""
    densities = list(densities)
    first, rest = densities[0], densities[1:]
    if rest and all(type(part) is type(first) for part in rest):
        return first.combine(rest)
    return _ProductDensity(densities) if rest else first
