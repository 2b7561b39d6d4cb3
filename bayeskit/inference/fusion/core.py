r"""The functional core of Fusion: one node of the divide-and-conquer tree, and the trees.

A node fuses C children, each a particle set of its density :math:`f_c`,
into particles of :math:`\prod_c f_c`. Notation of Chan, Pollock, Johansen
and Roberts (2023), "Divide-and-Conquer Fusion", JMLR 24(193): preconditioners
:math:`\Lambda_c`, :math:`\Lambda = (\sum_c \Lambda_c^{-1})^{-1}`,
:math:`\tilde x = \Lambda \sum_c \Lambda_c^{-1} x_c`.

* **Generalised Bayesian Fusion** (:func:`fuse_gbf`), SMC over a mesh
  :math:`0 = t_0 < \dots < t_n = T`. Start from :math:`x_c \sim f_c` with
  weight :math:`\rho_0 = \exp(-\sum_c (x_c - \tilde x)^\top \Lambda_c^{-1} (x_c - \tilde x) / 2T)`.
  From s to t all C trajectories move jointly,
  :math:`X_t \sim N(M, V)`, :math:`M_c = \frac{T - t}{T - s} x_c + \frac{t - s}{T - s}\tilde x`,
  :math:`V = \frac{(t - s)(T - t)}{T - s}\operatorname{blockdiag}(\Lambda_c)
  + \frac{(t - s)^2}{T - s} (\mathbf 1 \mathbf 1^\top \otimes \Lambda)`, and the weight
  gains :math:`\prod_c \hat Q_c`, unbiased estimates of
  :math:`\exp(-\int_s^t \phi_c)` along the bridges. Resampling when the
  ESS falls below a fraction of N. At T all trajectories meet: the fused draw.
* **D&C Monte Carlo Fusion** (importance-weighted MCF) is the one-step mesh
  ``[0, T]``.
* **Monte Carlo Fusion** (:func:`fuse_mcf`, Dai, Pollock and Roberts 2019)
  accepts the one-step proposal with probability
  :math:`\rho_0 \prod_c \exp(-\int_0^T (\phi_c - \Phi_c))`, :math:`\Phi_c` a global
  lower bound of :math:`\phi_c`: exact draws, when the bounds exist.

Guidance (their Section 4, for preconditioners equal to the sub-posterior
covariances): T is set so that the conditional ESS of :math:`\rho_0` is
``cess0``, and the mesh so that each step's conditional ESS is about
``cess_step``. For Gaussian sub-posteriors
:math:`\sum_c (x_c - \tilde x)^\top \Lambda_c^{-1} (x_c - \tilde x)` is a non-central
:math:`\chi^2` with :math:`(C - 1)d` degrees of freedom and non-centrality
:math:`\lambda = \sum_c (\mu_c - \tilde\mu)^\top \Lambda_c^{-1} (\mu_c - \tilde\mu)`, whence
:math:`T = \sqrt{((C - 1)d/2 + \lambda) / (-\log \mathrm{CESS}_0)}`, their
:math:`T = b C^{3/2} k_1 / m` with :math:`k_1 = \sqrt{-(\lambda/C + d/2)/\log \mathrm{CESS}_0}`
as C grows. The mesh step (:func:`mesh_step`) is
:math:`\min(b^2 C k_3 / (E[\nu_j] m^2),\ \sqrt{b^2 C k_4 / (2 m^2 d)})`, which for :math:`b = m / C` is
:math:`\min(k_3 / (C E[\nu_j]),\ \sqrt{k_4 / (2 C d)})`, with :math:`k_3 + k_4 = -\log \mathrm{CESS}_j`
and :math:`E[\nu_j]` the trajectories' mean squared distance from their sub-posteriors' means
(:func:`trajectory_variation`): the regular mesh takes its largest value over the path
(:func:`max_trajectory_variation`), the adaptive mesh its value at each step.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field

import torch

from bayeskit.diagnostics import weighted_ess
from bayeskit.inference.fusion.baselines import check_rejection_budget
from bayeskit.inference.fusion.bridges import log_discretised_estimate, log_exact_estimate
from bayeskit.inference.fusion.densities import product_density
from bayeskit.resampling import systematic

__all__ = ["ParticleSet", "NodeResult", "fuse_gbf", "fuse_mcf", "time_horizon_guidance", "mesh_guidance",
           "mesh_step", "adaptive_mesh_step", "trajectory_variation",
           "max_trajectory_variation", "build_tree", "TREES", "preconditioner_scale", "resample_indices"]

TREES = ("fork_and_join", "balanced", "progressive")
#: The most steps an adaptive mesh may take in one node before fuse_gbf gives up (its steps shrink as
#: k3 / (C E[nu_j]) when the trajectories are far from their sub-posteriors' means).
MAX_MESH_STEPS = 100_000


@dataclass
class ParticleSet:
    """Particles ``(N, d)`` of ``density`` with ``log_weights`` ``(N,)`` (None: equal weights)."""

    particles: torch.Tensor
    density: object
    log_weights: torch.Tensor | None = None


@dataclass
class NodeResult:
    """A fused particle set and the node's record: trace rows and a summary."""

    particles: ParticleSet
    trace: dict[str, torch.Tensor] = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


# ----------------------------------------------------------------- weights
def _normalised(log_weights):
    return torch.softmax(log_weights, 0)


def ess_fraction(log_weights):
    """Kish's ESS over N, in (0, 1]."""
    return weighted_ess(log_weights) / len(log_weights)


def cess_fraction(log_weights, log_increments):
    """Conditional ESS over N (Zhou, Johansen and Aston 2016): (sum W w)^2 / sum W w^2, W the old weights."""
    log_w = torch.log_softmax(log_weights, 0)
    return torch.exp(2 * torch.logsumexp(log_w + log_increments, 0) - torch.logsumexp(log_w + 2 * log_increments, 0))


def resample_indices(log_weights, num, generator):
    """Systematic resampling from the node's own generator (Ray tasks do not share the global RNG): ``num``
    ancestor indices."""
    return systematic(_normalised(log_weights), num, generator=generator)


def equal_weight_draws(child: ParticleSet, num, generator):
    """``num`` equally weighted particles of a child, in random order (so that children pair independently)."""
    x = child.particles
    if child.log_weights is not None:
        x = x[resample_indices(child.log_weights, num, generator)]
    elif len(x) != num:
        x = x[torch.randint(len(x), (num,), generator=generator, device=x.device)]
    return x[torch.randperm(num, generator=generator, device=x.device)]


# ----------------------------------------------------------- preconditioning
def preconditioner_scale(child: ParticleSet, kind: str):
    """A with Lambda_c = A A^T: the Cholesky factor of the child's (weighted) covariance, or I."""
    x = child.particles
    if kind == "identity":
        return torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weights = None if child.log_weights is None else _normalised(child.log_weights)
    covariance = torch.cov(x.T, aweights=weights).reshape(x.shape[1], x.shape[1])
    jitter = 1e-10 * covariance.diagonal().mean()
    return torch.linalg.cholesky(covariance + jitter * torch.eye(x.shape[1], dtype=x.dtype, device=x.device))


def combine_preconditioners(scales):
    """Lambda_c^{-1} for each child, Lambda, and the Cholesky factor of Lambda."""
    inverses = torch.stack([torch.cholesky_inverse(a) for a in scales])
    combined = torch.linalg.inv(inverses.sum(0))
    combined = 0.5 * (combined + combined.T)
    return inverses, combined, torch.linalg.cholesky(combined)


def consensus_mean(x, inverses, combined):
    """x~ = Lambda sum_c Lambda_c^{-1} x_c for x (C, N, d)."""
    return torch.einsum("cij,cnj->ni", inverses, x) @ combined.T


def log_rho(x, consensus, inverses, horizon):
    centred = x - consensus
    return -0.5 * torch.einsum("cni,cij,cnj->n", centred, inverses, centred) / horizon


# ----------------------------------------------------------------- guidance
def time_horizon_guidance(children, scales, cess0: float = 0.2):
    """T with the initial weights' CESS about ``cess0`` (Gaussian approximation; see the module doc)."""
    means = torch.stack([_weighted_mean(child) for child in children])
    inverses, combined, _ = combine_preconditioners(scales)
    consensus = combined @ torch.einsum("cij,cj->i", inverses, means)
    centred = means - consensus
    heterogeneity = float(torch.einsum("ci,cij,cj->", centred, inverses, centred))
    dim = means.shape[1]
    return math.sqrt(((len(children) - 1) * dim / 2 + heterogeneity) / -math.log(cess0))


def mesh_guidance(horizon: float, num_children: int, dim: int, cess_step: float = 0.05,
                  max_variation: float = 0.0) -> torch.Tensor:
    r"""Chan et al.'s regular mesh 0 = t_0 < ... < t_n = T, with the step of :func:`mesh_step` at ``max_variation``.

    ``max_variation`` bounds :math:`E[\nu_j]` over the whole path (:func:`max_trajectory_variation`, as
    their ``BF_guidance`` does); at 0 the step is :math:`\sqrt{-\log \mathrm{CESS}_j / (2 C d)}`.
    """
    step = mesh_step(max_variation, num_children, dim, cess_step)
    steps = max(1, math.ceil(horizon / step))
    return torch.linspace(0, horizon, steps + 1, dtype=torch.float64)


def mesh_step(variation: float, num_children: int, dim: int, cess_step: float = 0.05) -> float:
    r"""The longest step whose conditional ESS stays near ``cess_step`` where :math:`E[\nu_j]` = ``variation``.

    The step is :math:`\min(k_3 / (C E[\nu_j]),\ \sqrt{k_4 / (2 C d)})` (their
    :math:`\min(b^2 C k_3 / (E[\nu_j] m^2),\ \sqrt{b^2 C k_4 / (2 m^2 d)})` for :math:`b = m / C`), where
    :math:`k_3 + k_4 = -\log \mathrm{CESS}_j` is split so that the two terms are equal: :math:`k_4` is the root of
    :math:`k_4^2 + (2\log\mathrm{CESS}_j - E[\nu_j]^2 C / 2d) k_4 + \log^2\mathrm{CESS}_j` in
    :math:`(0, -\log\mathrm{CESS}_j)`, as in the authors' ``mesh_guidance_regular`` and
    ``mesh_guidance_adaptive``. The first term shortens the step where the trajectories lie far from their
    sub-posteriors' means, where phi varies most. At that root the two terms are equal, so the step is the
    second term, which has no cancellation as :math:`E[\nu_j] \to 0` (then :math:`k_4 \to -\log\mathrm{CESS}_j`).
    """
    budget = -math.log(cess_step)
    linear = -2 * budget - variation ** 2 * num_children / (2 * dim)
    k4 = 0.5 * (-linear - math.sqrt(max(linear ** 2 - 4 * budget ** 2, 0.0)))
    return math.sqrt(k4 / (2 * num_children * dim))


def trajectory_variation(x, log_weights, means, inverses) -> float:
    r""":math:`E[\nu_j]`: the weighted mean over particles of :math:`\frac1C \sum_c (x_c - a_c)^\top
    \Lambda_c^{-1} (x_c - a_c)`, for trajectories ``x`` (C, N, d) and the children's means :math:`a_c`."""
    centred = x - means[:, None]
    spread = torch.einsum("cni,cij,cnj->n", centred, inverses, centred) / x.shape[0]
    return float(_normalised(log_weights) @ spread)


def max_trajectory_variation(x, log_weights, means, inverses, consensus) -> float:
    r"""A bound of :math:`E[\nu_j]` over the path, from its two ends, as the authors' ``compute_max_E_nu_j``.

    The bridges run from the children's draws ``x`` (C, N, d; weights ``log_weights``, the initial
    :math:`\rho_0`) at t = 0 to their ``consensus`` mean (N, d; :func:`consensus_mean`) at T, so the larger
    of the variation at the start (with their 5% margin) and at the consensus is the regular mesh's
    :math:`\max_j E[\nu_j]`.
    """
    start = 1.05 * trajectory_variation(x, log_weights, means, inverses)
    return max(start, trajectory_variation(consensus.expand_as(x), log_weights, means, inverses))


def adaptive_mesh_step(x, log_weights, means, inverses, cess_step: float = 0.05) -> float:
    """The next step of Chan et al.'s adaptive mesh: :func:`mesh_step` at the current trajectories' ``x``
    (C, N, d) :func:`trajectory_variation` (their ``mesh_guidance_adaptive``)."""
    num_children, _, dim = x.shape
    return mesh_step(trajectory_variation(x, log_weights, means, inverses), num_children, dim, cess_step)


def _weighted_mean(child):
    if child.log_weights is None:
        return child.particles.mean(0)
    return _normalised(child.log_weights) @ child.particles


# ----------------------------------------------------------- path estimates
def _log_path_weight(density, scale, start, end, duration, generator, exact, counts, cache):
    """log Q-hat for one child's bridges, and phi at the end points (for the next step) when discretised.

    ``exact`` is False or the law of the exact estimator's counts (``"poisson"``, ``"negative_binomial"``).
    """
    if exact:
        log_q, info = log_exact_estimate(density, scale, start, end, duration, generator, counts=exact)
        counts["phi_evaluations"] += info["phi_evaluations"]
        counts["top_ups"] += info["top_ups"]
        return log_q, None
    phi_start = cache if cache is not None else density.phi(start, scale)
    phi_end = density.phi(end, scale)
    counts["phi_evaluations"] += 2 * len(start) if cache is None else len(start)
    return log_discretised_estimate(phi_start, phi_end, duration), phi_end


def _bridge_step(x, scales, combined_scale, inverses, combined, s, t, horizon, generator):
    """Draw X_t | X_s ~ N(M, V) for all children at once."""
    consensus = consensus_mean(x, inverses, combined)
    ahead = (t - s) / (horizon - s)
    mean = (1 - ahead) * x + ahead * consensus
    own = math.sqrt(max((t - s) * (horizon - t) / (horizon - s), 0.0))
    shared = math.sqrt((t - s) ** 2 / (horizon - s))
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    common = torch.randn(x.shape[1:], generator=generator, dtype=x.dtype, device=x.device)
    return mean + own * torch.einsum("cij,cnj->cni", scales, noise) + shared * (common @ combined_scale.T)


def fuse_gbf(children, *, num_particles, generator, horizon=None, mesh=None, preconditioner="covariance",
             exact=None, cess0=0.2, cess_step=0.05, ess_threshold=0.5, counts="poisson", adaptive_mesh=False,
             max_mesh_steps=MAX_MESH_STEPS):
    """Generalised Bayesian Fusion of ``children`` (ParticleSets) into ``num_particles`` weighted particles.

    ``horizon`` (T) and ``mesh`` (an increasing tensor from 0 to T) default
    to the guidance; ``mesh=torch.tensor([0, T])`` is D&C Monte Carlo Fusion;
    ``adaptive_mesh=True`` chooses each step from the particles (:func:`adaptive_mesh_step`).
    ``exact=None`` uses the exact estimator when every density has bounds;
    ``counts`` is its law of the number of points (``"poisson"`` or ``"negative_binomial"``).
    An adaptive mesh that would take more than ``max_mesh_steps`` steps stops with an error.
    """
    began = time.perf_counter()
    densities = [child.density for child in children]
    exact = all(d.has_bounds for d in densities) if exact is None else exact
    if exact and not all(d.has_bounds for d in densities):
        raise ValueError("the exact estimator needs bounds of phi for every sub-posterior; use exact=False")
    if adaptive_mesh and mesh is not None:
        raise ValueError("give a mesh or adaptive_mesh=True, not both")
    scales = torch.stack([preconditioner_scale(child, preconditioner) for child in children])
    horizon = float(time_horizon_guidance(children, scales, cess0) if horizon is None else horizon)
    dim = children[0].particles.shape[1]
    x = torch.stack([equal_weight_draws(child, num_particles, generator) for child in children])
    inverses, combined, combined_scale = combine_preconditioners(scales)
    means = torch.stack([_weighted_mean(child) for child in children])
    consensus = consensus_mean(x, inverses, combined)
    log_w = log_rho(x, consensus, inverses, horizon)
    if not adaptive_mesh:
        mesh = torch.as_tensor(mesh) if mesh is not None else mesh_guidance(
            horizon, len(children), dim, cess_step, max_trajectory_variation(x, log_w, means, inverses, consensus))
    trace = {"time": [0.0], "ess": [float(ess_fraction(log_w))], "cess": [float(ess_fraction(log_w))],
             "resampled": [False]}
    tally = {"phi_evaluations": 0, "top_ups": 0}
    phi_cache = [None] * len(children)
    # Which of the children's draws each particle descends from: resampling can leave few of them, which no
    # ESS of the current weights shows (the bridge moves make duplicates look distinct again).
    origin = torch.arange(num_particles, device=x.device)
    path_estimator = counts if exact else False
    fixed = None if adaptive_mesh else [float(v) for v in mesh[1:]]
    s = 0.0
    for index in itertools.count():
        if fixed is not None and index == len(fixed) or fixed is None and s >= horizon:
            break
        if fixed is None and index == max_mesh_steps:
            raise RuntimeError(f"the adaptive mesh reached {max_mesh_steps} steps at t = {s:.3g} of T = {horizon:.3g}: "
                               "the trajectories lie far from their sub-posteriors' means, which shortens every "
                               "step; use the regular mesh (adaptive_mesh=False) or a shorter time_horizon")
        resampled = float(ess_fraction(log_w)) < ess_threshold
        if resampled:
            ancestors = resample_indices(log_w, num_particles, generator)
            x, log_w, origin = x[:, ancestors], torch.zeros_like(log_w), origin[ancestors]
            phi_cache = [None if c is None else c[ancestors] for c in phi_cache]
        if fixed is not None:
            t = fixed[index]
        else:  # from the resampled particles, as the authors do; the last step ends at T exactly
            t = s + adaptive_mesh_step(x, log_w, means, inverses, cess_step)
            t = horizon if t >= horizon * (1 - 1e-9) else t
        x_new = _bridge_step(x, scales, combined_scale, inverses, combined, s, t, horizon, generator)
        increment = torch.zeros_like(log_w)
        for c, density in enumerate(densities):
            log_q, phi_cache[c] = _log_path_weight(density, scales[c], x[c], x_new[c], t - s, generator,
                                                   path_estimator, tally, phi_cache[c])
            increment += log_q
        trace["cess"].append(float(cess_fraction(log_w, increment)))
        log_w = log_w + increment
        x, s = x_new, t
        trace["time"].append(t)
        trace["ess"].append(float(ess_fraction(log_w)))
        trace["resampled"].append(resampled)
    if not torch.isfinite(torch.logsumexp(log_w, 0)):
        raise FloatingPointError("every fused particle has weight zero; raise num_particles or the time horizon")
    fused = ParticleSet(x[0], product_density(densities), log_w)
    estimator = "discretised" if not exact else "exact" if counts == "poisson" else f"exact ({counts})"
    summary = {"time_horizon": horizon, "mesh_steps": len(trace["time"]) - 1, "estimator": estimator,
               "adaptive_mesh": bool(adaptive_mesh), "num_children": len(children),
               "seconds": time.perf_counter() - began, "distinct_origins": _distinct_fraction(origin, log_w), **tally}
    return NodeResult(fused, {key: torch.tensor(value) for key, value in trace.items()}, summary)


def _distinct_fraction(origin, log_w):
    """The Kish ESS of the weights pooled by origin, over N.

    The share of the starting draws that still inform the fusion.
    """
    pooled = torch.zeros(len(origin), dtype=log_w.dtype, device=log_w.device).index_add_(0, origin, _normalised(log_w))
    return float(ess_fraction(pooled.log()))


def fuse_mcf(children, *, num_particles, generator, horizon=None, preconditioner="covariance", cess0=0.2,
             max_proposals=None):
    """Monte Carlo Fusion by rejection: ``num_particles`` exact draws of the product (needs bounds of phi)."""
    began = time.perf_counter()
    densities = [child.density for child in children]
    if not all(d.has_bounds for d in densities):
        raise ValueError("Monte Carlo Fusion's rejection step needs bounds of phi for every sub-posterior "
                         "(GaussianDensity, LogisticDensity); use method='dc_mcf' or 'gbf'")
    scales = torch.stack([preconditioner_scale(child, preconditioner) for child in children])
    horizon = float(time_horizon_guidance(children, scales, cess0) if horizon is None else horizon)
    inverses, combined, combined_scale = combine_preconditioners(scales)
    floors = [d.phi_lower_bound(a) for d, a in zip(densities, scales)]
    max_proposals = max_proposals or 1000 * num_particles
    accepted, proposed = [], 0
    while (count := sum(len(a) for a in accepted)) < num_particles:
        if proposed:  # stop once the budget is spent or, at the rate seen so far, cannot suffice
            check_rejection_budget("Monte Carlo Fusion", count, num_particles, proposed, max_proposals,
                                   "The acceptance rate falls fast with the number of sub-posteriors a node "
                                   "fuses and with their spread: use tree='balanced' or 'progressive' (two "
                                   "per node), or method='gbf' or 'dc_mcf'. `time_horizon` trades the rate's "
                                   "two factors: the spread term wants it longer, the path term shorter.")
        x = torch.stack([equal_weight_draws(child, num_particles, generator) for child in children])
        consensus = consensus_mean(x, inverses, combined)
        y = consensus + math.sqrt(horizon) * torch.randn(consensus.shape, generator=generator, dtype=x.dtype,
                                                         device=x.device) @ combined_scale.T
        log_accept = log_rho(x, consensus, inverses, horizon)
        for c, density in enumerate(densities):
            log_q, _ = log_exact_estimate(density, scales[c], x[c], y, horizon, generator, bounded=True)
            log_accept = log_accept + log_q + floors[c] * horizon  # exp(-int (phi - Phi)) <= 1
        uniforms = torch.rand(log_accept.shape, generator=generator, dtype=x.dtype, device=x.device)
        accepted.append(y[uniforms.log() < log_accept])
        proposed += num_particles
    draws = torch.cat(accepted)[:num_particles]
    summary = {"time_horizon": horizon, "acceptance_rate": num_particles / proposed if proposed else 1.0,
               "proposals": proposed, "estimator": "exact", "num_children": len(children),
               "seconds": time.perf_counter() - began}
    return NodeResult(ParticleSet(draws, product_density(densities)), {}, summary)


# --------------------------------------------------------------------- trees
def build_tree(kind: str, num_leaves: int):
    """The tree as nested tuples of leaf indices.

    ``fork_and_join``: one node of all leaves; ``balanced``: pairs, level by
    level (an odd one out goes up unchanged); ``progressive``: each node adds
    one leaf to the fusion of the previous ones.
    """
    if kind not in TREES:
        raise ValueError(f"unknown tree {kind!r}; choose one of {list(TREES)}")
    leaves = list(range(num_leaves))
    if num_leaves == 1:
        return 0
    if kind == "fork_and_join":
        return tuple(leaves)
    if kind == "progressive":
        node = (leaves[0], leaves[1])
        for leaf in leaves[2:]:
            node = (node, leaf)
        return node
    level = leaves
    while len(level) > 1:
        paired = [tuple(level[i:i + 2]) for i in range(0, len(level) - 1, 2)]
        level = paired + ([level[-1]] if len(level) % 2 else [])
    return level[0]


def tree_levels(tree):
    """The tree's internal nodes grouped by height (leaves' parents first), each as (path, children)."""
    levels: dict[int, list] = {}

    def visit(node, path):
        if isinstance(node, int):
            return 0
        height = 1 + max(visit(child, path + (i,)) for i, child in enumerate(node))
        levels.setdefault(height, []).append((path, node))
        return height

    visit(tree, ())
    return [levels[h] for h in sorted(levels)]
