"""The health report: what in a result not to trust, by parameter, with a fix.

Every engine's run, every fit, Fusion and ``find_modes`` end with :func:`check`,
through the one loop (:func:`bayeskit.runner.run_loop`). Each finding is one :class:`HealthWarning` and one
entry of ``posterior.meta["health"]``; :meth:`bayeskit.Posterior.health`
returns them and :meth:`bayeskit.Posterior.summary` prints them. What is
checked depends on what the result holds:

- **Markov chains** (``meta["sample_kind"]`` ``"mcmc"`` or ``"trajectories"``, unweighted): the
  rank-normalised split :math:`\\hat R` of every scalar element above
  ``r_hat`` (1.01, Vehtari et al. 2021) when there are two chains or more,
  and the bulk ESS over all chains below ``min_ess`` (100); in a site of more
  than 1,000 scalars, for the 400 most suspect by two cheap screens (split
  :math:`\\hat R`, lag-1 autocorrelation), as the exact ones cost seconds per 10^4. A chain whose
  median log density (``sample_stats["log_prob"]``) lies more than
  :math:`\\max(100, 10\\sqrt{d})` below the best chain's is stuck or ran off:
  at stationarity a draw's log density varies by about :math:`\\sqrt{d/2}`.
- **Weighted draws** (SMC, Fusion): the final Kish ESS over the number of
  draws below ``min_ess_fraction`` (0.1), and the smallest ESS/N or
  conditional ESS/N recorded in the trace (``trace["ess"]``,
  ``trace["cess"]``, as fractions) below ``min_cess_fraction`` (0.01):
  one step with almost all weight on one particle loses the rest for good.
  For Fusion, each tree node's share of its children's draws that still
  inform its particles (the Kish ESS of the final weights pooled by the
  starting draw each particle descends from, over N) below
  ``min_origin_fraction`` (0.05): the bridge moves make resampled copies
  look distinct, so the weights' ESS alone cannot see this, yet draws that
  all descend from a handful of starting points spread around those points
  rather than over the posterior.
- **Stein particles** (``meta["sample_kind"] == "particles"`` with a
  ``meta["particle_spread"]``, see :func:`particle_spread`): the median pairwise distance of a chain's
  particles against the posterior scale the score implies. For a Gaussian
  :math:`N(m, \\Sigma)`, :math:`E\\lVert\\nabla\\log p\\rVert^2 =
  \\operatorname{tr}\\Sigma^{-1}`, so :math:`s^2 = d / \\overline{\\lVert
  \\nabla \\log p\\rVert^2}` is a scale (the harmonic mean of the variances)
  and independent draws lie about :math:`\\sqrt{2d}\\,s` apart or more.
  Particles closer than ``collapse_ratio`` (0.1) times that have collapsed;
  particles piled on a mode have a near-zero score and so are caught too.
- **Runs still on their way** (Stein particles, and fits: ``sample_kind``
  ``"point"`` with a ``loss`` trace): with :math:`w` a tenth of the steps,
  the gain of the last :math:`w` steps' mean over the :math:`w` before
  (the particles' mean log density up, a fit's loss down) against the gain
  of the last :math:`w` over the first :math:`w`. A last-tenth gain above
  ``settle_fraction`` (0.05) of the whole run's, and above three standard
  errors of the two windows' means (minibatch noise), means the run
  stopped mid-descent: its particles or parameters are not yet what more
  steps would give. A particle set's gain must also exceed a tenth of a nat
  (about what redrawing the set would change). Runs under 20 steps, and runs
  that a callback stopped early (a fit's own convergence rule), are not
  judged.

Thresholds are the keyword arguments of :func:`check` and
:meth:`~bayeskit.Posterior.health`; :data:`DEFAULTS` holds the defaults that
runs use (change an entry to change them for the session).
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch

__all__ = ["Finding", "HealthWarning", "DEFAULTS", "check", "report", "particle_spread"]

#: Thresholds every run's health report uses; see the module docstring.
DEFAULTS = {"r_hat": 1.01, "min_ess": 100.0, "min_ess_fraction": 0.1, "min_cess_fraction": 0.01,
            "min_origin_fraction": 0.05, "collapse_ratio": 0.1, "settle_fraction": 0.05}

# Per engine family, the fix a finding should suggest first.
_MIXING_FIXES = {
    "SGHMC": "AdaptiveSGHMC (a diagonal mass learned in warm-up), a longer num_warmup, or more draws",
    "SGLD": "PSGLD (a per-coordinate preconditioner), a longer num_warmup, or more draws",
    "SGNHT": "AdaptiveSGHMC, a longer num_warmup, or more draws",
}
_DEFAULT_MIXING_FIX = "a longer num_warmup and more draws (num_samples), or more chains"


class HealthWarning(UserWarning):
    """A finding of the health report: the result may not be what it looks like."""


@dataclass(frozen=True)
class Finding:
    """One thing not to trust in a result.

    Attributes
    ----------
    check : str
        ``"r_hat"``, ``"ess"``, ``"stuck_chain"``, ``"weights"``, ``"cess"``, ``"ancestry"``, ``"collapse"``
        or ``"unsettled"``.
    parameter : str
        The parameter (``"tau"``, ``"beta[3]"``), chain or tree node the finding is about.
    value, threshold : float
        What was measured and the limit it crossed.
    message : str
        A sentence saying what is wrong and what to do about it.
    """

    check: str
    parameter: str
    value: float
    threshold: float
    message: str

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self):
        return self.message


def check(posterior, **thresholds) -> list[Finding]:
    """Every finding of the health report for ``posterior``, thresholds from :data:`DEFAULTS` unless given."""
    unknown = set(thresholds) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown health threshold(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    limits = {**DEFAULTS, **thresholds}
    kind = posterior.meta.get("sample_kind")
    engine = str(posterior.meta.get("engine", ""))
    findings = []
    if posterior.is_weighted:
        findings += _weight_findings(posterior, limits, engine)
    elif kind in ("mcmc", "trajectories"):
        findings += _chain_findings(posterior, limits, engine)
    if kind == "particles" and "particle_spread" in posterior.meta:
        findings += _collapse_findings(posterior, limits)
        if _ran_to_the_end(posterior):
            findings += _unsettled_findings(posterior.trace.get("log_prob"), limits, "the particles",
                                            "mean log density", "rising", min_gain=MIN_LOG_DENSITY_GAIN)
    if kind == "point" and _ran_to_the_end(posterior):
        findings += _unsettled_findings(posterior.trace.get("loss"), limits, "the fit", "loss", "falling")
    return findings


def report(posterior, *, stacklevel: int | None = None) -> list[Finding]:
    """Check ``posterior``, store the findings in ``meta["health"]`` and warn once for each.

    The warnings point at the user's line: the first frame outside bayeskit
    (an engine's ``run``, a model's ``fit`` and Fusion reach the loop through
    different depths), unless ``stacklevel`` (as for :func:`warnings.warn`, from the caller) is given.
    """
    findings = check(posterior)
    posterior.meta["health"] = [finding.to_dict() for finding in findings]
    level = _first_frame_outside_the_package() if stacklevel is None else stacklevel + 1
    for finding in findings:
        warnings.warn(finding.message, HealthWarning, stacklevel=level)
    return findings


def _first_frame_outside_the_package() -> int:
    """The ``stacklevel``, for a ``warnings.warn`` in the caller of this function, of the first frame whose
    code is not in bayeskit."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(2), 2  # 1: the caller's warnings.warn line itself
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


def particle_spread(z: torch.Tensor, scores: torch.Tensor) -> list[float]:
    r"""Per chain, the particles' median pairwise distance over :math:`\sqrt{2d}\,s`, the score's scale.

    ``z`` and ``scores`` are ``(chain, particle, d)``, in the coordinates the
    engine moves the particles in; :math:`s^2 = d / \overline{\lVert\nabla
    \log p\rVert^2}` (see the module docstring). About 1 or more for
    independent draws; 0 where every score is zero (particles on a mode).
    Empty with fewer than two particles per chain.
    """
    z, scores = z.detach().double(), scores.detach().double()
    dim = z.shape[-1]
    ratios = []
    if z.shape[1] < 2:
        return []  # one particle per chain: no spread to measure
    for points, score in zip(z, scores):
        mean_square = float(score.pow(2).sum(-1).mean())
        if mean_square == 0.0:
            ratios.append(0.0)
            continue
        scale = math.sqrt(dim / mean_square)
        ratios.append(float(torch.pdist(points).median()) / (math.sqrt(2 * dim) * scale))
    return ratios


# -------------------------------------------------------------------- chains
#: Above this many scalars in a site, the exact (rank-normalised) r_hat and bulk ESS are computed for its
#: most suspect elements only: arviz-stats takes about 13 s for 20,000 (a small network's weights).
EXACT_ELEMENTS = 1000
#: How many suspects each screen picks.
SCREENED = 200


def _suspects(draws):
    """Flat indices of a large site's elements most likely to fail, by two cheap vectorised screens.

    The classic split :math:`\\hat R` (Gelman et al., *BDA3*, 11.4: chains cut in half, between- over
    within-chain variance) for r_hat, and the lag-1 autocorrelation pooled over chains for a low ESS.
    """
    x = draws.detach().double().reshape(draws.shape[0], draws.shape[1], -1)
    half = x.shape[1] // 2
    split = torch.cat([x[:, :half], x[:, half:2 * half]], 0)
    n = split.shape[1]
    within = split.var(1).mean(0)
    pooled = (n - 1) / n * within + split.mean(1).var(0)
    split_rhat = (pooled / within).sqrt().nan_to_num(math.inf)
    centred = x - x.mean(1, keepdim=True)
    lag1 = ((centred[:, 1:] * centred[:, :-1]).mean((0, 1)) / centred.pow(2).mean((0, 1))).nan_to_num(1.0)
    k = min(SCREENED, x.shape[-1])
    return torch.unique(torch.cat([split_rhat.topk(k).indices, lag1.topk(k).indices]))


def _worst(values, name, shape, largest, indices=None):
    """The worst element of ``values`` (one per scalar checked; NaN never counts) and its label.

    ``indices`` are the flat indices in the site of the checked elements (all by default).
    """
    flat = values.reshape(-1)
    ignored = torch.tensor(-math.inf if largest else math.inf, dtype=flat.dtype)
    flat_finite = torch.where(torch.isnan(flat), ignored, flat)
    position = int(flat_finite.argmax() if largest else flat_finite.argmin())
    if not shape:
        return float(flat[position]), name
    index = position if indices is None else int(indices[position])
    return float(flat[position]), f"{name}[{', '.join(str(int(i)) for i in np.unravel_index(index, shape))}]"


def _chain_findings(posterior, limits, engine):
    from bayeskit.diagnostics import ess, rhat

    if posterior.num_draws < 4:
        return []
    fix = _MIXING_FIXES.get(engine, _DEFAULT_MIXING_FIX)
    findings = []
    for name, draws in posterior.samples.items():
        if not draws.is_floating_point():
            continue
        shape = tuple(draws.shape[2:])
        indices = _suspects(draws) if math.prod(shape) > EXACT_ELEMENTS else None
        checked = draws if indices is None else draws.reshape(*draws.shape[:2], -1)[:, :, indices]
        if posterior.num_chains >= 2:
            value, label = _worst(rhat(checked), name, shape, largest=True, indices=indices)
            if value > limits["r_hat"]:
                findings.append(Finding("r_hat", label, value, limits["r_hat"],
                                        f"{label}: r_hat {value:.3g} > {limits['r_hat']}: the chains disagree, "
                                        f"so they have not mixed. Try {fix}."))
        value, label = _worst(ess(checked), name, shape, largest=False, indices=indices)
        if value < limits["min_ess"]:
            findings.append(Finding("ess", label, value, limits["min_ess"],
                                    f"{label}: bulk ESS {value:.0f} < {limits['min_ess']:.0f} over all chains: "
                                    f"too few effective draws to trust its mean and interval. Try {fix}."))
    return findings + _stuck_chain_findings(posterior)


def _stuck_chain_findings(posterior):
    log_prob = posterior.sample_stats.get("log_prob")
    if log_prob is None or log_prob.shape[0] < 2 or log_prob.dim() != 2:
        return []
    dim = sum(math.prod(value.shape[2:]) for value in posterior.samples.values())
    medians = log_prob.double().median(dim=1).values
    best = float(medians.max())
    gap = max(100.0, 10 * math.sqrt(dim))
    return [Finding("stuck_chain", f"chain {chain}", float(medians[chain]), best - gap,
                    f"chain {chain}: median log density of the draws far below the best chain's "
                    f"({float(medians[chain]):.4g} against {best:.4g}): it has not converged (warm-up too short), "
                    "ran off (step size too large for it) or is stuck in a poor mode. Look at "
                    "post.sample_stats['log_prob'] per chain before pooling; lengthen num_warmup or lower "
                    "step_size.")
            for chain in (medians < best - gap).nonzero().flatten().tolist()]


# ------------------------------------------------------------------- weights
def _weight_fix(posterior, engine):
    if engine.lower() == "fusion":
        tree = posterior.meta.get("settings", {}).get("tree")
        other = "" if tree == "balanced" else "the balanced tree (tree='balanced'), "
        return f"{other}more particles (num_samples), or a finer mesh (a lower cess_step)"
    return "more particles (num_particles), a guided proposal, or a lower ess_threshold to resample earlier"


def _weight_findings(posterior, limits, engine):
    from bayeskit.diagnostics import weighted_ess

    findings = []
    fix = _weight_fix(posterior, engine)
    fractions = weighted_ess(posterior.log_weights.double(), dim=-1) / posterior.num_draws  # per chain
    for chain, fraction in enumerate(fractions.tolist()):
        if fraction < limits["min_ess_fraction"]:
            where = f"chain {chain}" if posterior.num_chains > 1 else "the weights"
            findings.append(Finding("weights", where, fraction, limits["min_ess_fraction"],
                                    f"{where}: final ESS/N {fraction:.3g} < {limits['min_ess_fraction']}: a few "
                                    f"draws carry the weight. Try {fix}."))
    return findings + _trace_ess_findings(posterior, limits, fix) + _origin_findings(posterior, limits, fix)


def _trace_ess_findings(posterior, limits, fix):
    findings = []
    for column in ("ess", "cess"):
        values = posterior.trace.get(column)
        if values is None or not values.is_floating_point() or values.numel() == 0:
            continue
        values = values.double()
        if float(values.max()) > 1.0:  # counts, not fractions (the SMC engines record ESS in particles)
            values = values / _particles_per_chain(posterior)
        step = int(values.reshape(values.shape[0], -1).min(-1).values.argmin())
        smallest = float(values[step].min())
        if smallest < limits["min_cess_fraction"]:
            where = _where_in_trace(posterior.trace, step)
            findings.append(Finding("cess", where, smallest, limits["min_cess_fraction"],
                                    f"{where}: {column.upper()}/N fell to {smallest:.3g} < "
                                    f"{limits['min_cess_fraction']} at step {step}: the weights degenerated "
                                    f"there, and resampling cannot bring back what was lost. Try {fix}."))
    return findings


def _origin_findings(posterior, limits, fix):
    """Fusion nodes whose particles descend from too few of their children's draws."""
    findings = []
    for node in posterior.meta.get("nodes", []):
        share = node.get("distinct_origins")
        if share is not None and share < limits["min_origin_fraction"]:
            where = f"tree node {node['node']} (height {node['height']})"
            findings.append(Finding("ancestry", where, share, limits["min_origin_fraction"],
                                    f"{where}: its particles descend from {share:.2g} x N of its children's draws "
                                    f"(the ESS of the weights pooled by origin): resampling left too few, and the "
                                    f"fused draws spread around those few rather than over the posterior. Try {fix}."))
    return findings


def _particles_per_chain(posterior):
    return posterior.meta.get("settings", {}).get("num_particles") or posterior.num_draws


def _where_in_trace(trace, step):
    """'node 3' for a Fusion trace (which has a node column), else 'time step 12'."""
    node = trace.get("node")
    if node is not None and node.numel() > step:
        return f"tree node {int(node[step])} (height {int(trace['height'][step])})"
    return f"time step {step}"


# ----------------------------------------------------------------- particles
def _collapse_findings(posterior, limits):
    findings = []
    ratios = posterior.meta["particle_spread"]
    for chain, ratio in enumerate(ratios):
        if ratio < limits["collapse_ratio"]:
            where = f"chain {chain}" if len(ratios) > 1 else "the particles"
            findings.append(Finding("collapse", where, ratio, limits["collapse_ratio"],
                                    f"{where}: the particles have collapsed (median pairwise distance "
                                    f"{ratio:.3g} times what independent draws would show): they describe a "
                                    "point, not the posterior. Try more particles, a larger kernel bandwidth, "
                                    "a smaller lr, or several chains started apart."))
    return findings


# ------------------------------------------------------------------ settling
MIN_STEPS_TO_JUDGE = 20
# A particle set's mean log density moves by about sqrt(d / 2 / n) nats between independent sets of n draws
# (0.09 for d = 3, n = 200): a drift below a tenth of a nat is within what redrawing the set would change.
MIN_LOG_DENSITY_GAIN = 0.1


def _ran_to_the_end(posterior):
    """False when a callback stopped the run early (a fit's own convergence rule, or the user's)."""
    meta = posterior.meta
    return "num_steps" not in meta or meta.get("steps_completed", meta["num_steps"]) >= meta["num_steps"]


def _unsettled_findings(series, limits, where, quantity, direction, min_gain=0.0):
    """A finding when ``series`` (per step; better is up for "rising", down for "falling") still gained, in its
    last tenth, more than ``settle_fraction`` of the whole run's gain, more than its noise allows and more
    than ``min_gain``."""
    if series is None or series.numel() < MIN_STEPS_TO_JUDGE:
        return []
    values = series.detach().double().cpu().reshape(-1)
    values = values if direction == "rising" else -values
    width = max(values.numel() // 10, 2)
    first, before, last = values[:width], values[-2 * width:-width], values[-width:]
    if not bool(torch.isfinite(values[-2 * width:]).all() and torch.isfinite(first).all()):
        return []  # a non-finite step stops the run with its own error
    late_gain = float(last.mean() - before.mean())
    total_gain = float(last.mean() - first.mean())
    noise = math.sqrt(float(last.var() + before.var()) / width)
    if (total_gain <= 0 or late_gain <= max(3 * noise, min_gain)
            or late_gain <= limits["settle_fraction"] * total_gain):
        return []
    share = late_gain / total_gain
    return [Finding("unsettled", quantity, share, limits["settle_fraction"],
                    f"{where}: the {quantity} was still {direction} when the run ended (the last tenth of the "
                    f"steps moved it by {late_gain:.3g}, {share:.0%} of the whole run's change): the result is not "
                    "yet what more steps would give. Run more steps or raise lr.")]
