"""The conformance matrix: every engine against closed-form posteriors of every support type.

Each cell runs one engine on one conjugate model of ``tests/contract_models.py``
(real: a 3-d Normal mean; positive: a Poisson rate and a Normal precision;
unit interval: a Binomial probability; simplex: 3 Categorical probabilities),
takes the posterior mean and sd of every coordinate of the site in
constrained space -- weighted by ``post.weights`` when the engine returns
weighted draws -- and compares them with the conjugate posterior from
scipy.stats.  ``pytest -s`` prints the whole matrix at the end of the module.

Tolerances come from the Monte Carlo error of a run with a *fixed* minimum
effective sample size ``ESS_min`` per engine, which the run lengths are sized
to reach, and which each MCMC cell checks it did reach (bulk ESS from
arviz-stats; Kish's ESS of the weights for Fusion):

* mean:  ``|mean - exact| / sd <= 4 / sqrt(ESS_min)`` (4 standard errors);
* sd:    ``|sd_hat / sd - 1| <= 3 / sqrt(ESS_min)``: the relative standard
  error of a sample sd is ``sqrt((kurtosis - 1) / 4n)``, ``1 / sqrt(2n)`` for a
  Gaussian; these posteriors are close to Gaussian (excess kurtosis < 0.3),
  so 3 / sqrt(n) is about 4 standard errors.

Interacting particles (the Stein family) are no i.i.d. sample, but a
deterministic quadrature that is at least as accurate in these dimensions:
their ``ESS_min`` is the number of particles in all chains, with no check.

Engines approximate by design get a documented systematic allowance on top
(``mean_bias`` in posterior sds, ``sd_bias`` relative), written next to
their settings with the reason; every other engine gets none.
``BAYESKIT_FULL=1`` runs every engine about ten times longer, which shrinks
the Monte Carlo part of each tolerance about threefold.

ParticleGibbs is for state-space models: it has its own row, a scalar
linear-Gaussian model whose smoothing marginals are computed by conditioning
the joint Gaussian in numpy (not with bayeskit's Kalman smoother); the other
engines do not run on that row, nor ParticleGibbs on the others.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pytest
import torch
from conftest import FULL
from contract_models import MODELS, lgssm_smoothing_marginals

import bayeskit as bk
from bayeskit.inference import (
    DSGLD,
    FSGLD,
    PSGLD,
    SGHMC,
    SGLD,
    SGNHT,
    SVGD,
    SVMD,
    SVNG,
    AdaptiveSGHMC,
    Fusion,
    MirroredSVGD,
    ParticleGibbs,
    StructuredSGMCMC,
)

SEED = 0
Z_MEAN, Z_SD = 4.0, 3.0  # standard errors in the mean and sd tolerances (see the module docstring)
SCALE = 10 if FULL else 1  # run lengths (draws, particles) under BAYESKIT_FULL=1

# The models' posteriors all have sd ~0.1 in the engines' unconstrained coordinates (log, logit,
# stick-breaking; see contract_models), i.e. a curvature LAMBDA ~ 100: the step sizes below are set
# from it once per engine and shared by every model.
LAMBDA = 100.0

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("float64", "one_thread")]


# ===================================================================== engine specifications
@dataclass(frozen=True)
class Spec:
    """How one engine runs on a conjugate model, and what its tolerance rests on.

    ``run(model, y, seed) -> Posterior``; ``ess_min`` the effective sample size
    the tolerances assume; ``ess_kind`` how the cell checks it (``"bulk"``:
    arviz-stats over chains and draws, ``"kish"``: of the weights, None: not
    checked); ``mean_bias``/``sd_bias`` a documented systematic allowance and
    ``why`` its reason; ``skip(model) -> reason or None`` for cells that do
    not apply.
    """

    name: str
    run: Callable
    ess_min: int
    ess_kind: str | None = "bulk"
    mean_bias: float = 0.0
    sd_bias: float = 0.0
    why: str = ""
    skip: Callable = field(default=lambda model: None)


# ------------------------------------------------------------------------- Stein family
# num_chains independent particle sets run batched in one step: 4 sets of 50 particles cost about
# what one set costs and give 200 particles to average over.
STEIN_CHAINS, STEIN_PARTICLES = 4, 50 * (4 if FULL else 1)
STEIN_STEPS = 400 * (2 if FULL else 1)


def _stein(engine_cls, steps=STEIN_STEPS, **options):
    def run(model, y, seed):
        engine = engine_cls(model.model, num_particles=STEIN_PARTICLES, num_chains=STEIN_CHAINS, **options)
        return engine.run(y, num_steps=steps, seed=seed, progress=False)
    return run


STEIN_ESS = STEIN_CHAINS * STEIN_PARTICLES


# -------------------------------------------------------------------------- SG-MCMC
# Many chains batched in one step cost little more than one, so the ESS comes from chains: 32 chains
# of 1,200 kept draws after 1,000 warm-up steps (SGLD's
# autocorrelation time at epsilon * lambda = 0.05 is ~80 steps: ESS ~200-400, ~100 on the Dirichlet,
# whose stick-breaking coordinates have half the curvature and mix twice as slowly).
SG_CHAINS, SG_WARMUP, SG_SAMPLES = 32, 1000, 1200 * SCALE
SG_ESS = 100 * SCALE  # reached with room on every row but the Dirichlet (~100-120 there)


def _batch(y):
    # Full data: each chain scoring its own minibatch costs one model call per chain per step (32 here),
    # which this matrix cannot afford; minibatch noise has its own closed-form tests
    # (tests/inference/sgmcmc/test_sgmcmc_defaults.py, tests/inference/sgmcmc/test_sgmcmc.py). The settings and
    # allowances below were derived for minibatches of a quarter of the rows (V ~ 3 lambda); with full data
    # V = 0, so the minibatch terms in them are upper bounds.
    return None


def _sgmcmc(engine_cls, **options):
    def run(model, y, seed):
        engine = engine_cls(model.model, num_chains=SG_CHAINS, num_warmup=SG_WARMUP, num_samples=SG_SAMPLES,
                            **options)
        # Eager at CI sizes: compiling each cell's step (seconds, on a cold cache) costs more than it saves there
        # (measured 149 s eager against 204 s compiled for the SG-MCMC rows); compiled at full size, ten times
        # longer. That compiled steps give the eager draws is tested in tests/inference/sgmcmc/test_sgmcmc.py.
        return engine.run(y, _batch(y), seed=seed, progress=False, jit_compile=FULL)
    return run


# SGLD: epsilon * lambda = 0.05, a relaxation time of ~40 steps. A constant step leaves a bias by
# design: the stationary variance is (1 + epsilon V / 4) / (lambda (1 - epsilon lambda / 4)) with the
# minibatch noise V ~ (N / B - 1) lambda = 3 lambda, i.e. ~5% too wide (sd ~2.5%).
SGLD_STEP = 0.05 / LAMBDA
SGLD_WHY = "constant-step SGLD: Euler + minibatch noise widen the posterior by ~eps (lambda + V/4) / 2 in sd"
# pSGLD: RMSprop divides the step by sqrt(E g^2) ~ sqrt(N / B) sqrt(lambda) = 20, so a step 40 times
# SGLD's gives epsilon * lambda = 0.1. Far from the posterior the normalised step moves ~epsilon / 2 per
# step whatever the distance: from a prior draw of the Normal mean (up to ~5 units away) the chains
# need most of the 1,000 warm-up steps to arrive (at 20 times SGLD's step they had not, 50 sd off).
PSGLD_STEP = 40 * SGLD_STEP
# SGHMC and SGNHT with the mass at the curvature: unit-frequency dynamics, time step 0.1 (10% of a
# radian per step), friction 1 (critically damped within a factor 2); SGHMC subtracts the minibatch
# noise it estimates, SGNHT's thermostat absorbs it.
HMC_STEP = 0.1
# AdaptiveSGHMC learns the mass M = sqrt(E g^2) ~ 20 during warm-up and does not subtract the
# minibatch noise V ~ 3 lambda = 300 (as in the paper): per step it adds eps^4 V / M^2 to the velocity's
# variance against the injected 2 eps^2 mdecay / M, a variance excess of eps^2 V / (2 mdecay M). At
# eps = 0.1 that is 1.5, sd 1.5-1.8 times too wide (measured); eps = 0.02 makes it 6% (sd +3%).
ADAPTIVE_STEP = 0.02


SGMCMC_SPECS = [
    Spec("SGLD", _sgmcmc(SGLD, step_size=SGLD_STEP), SG_ESS, sd_bias=0.04, why=SGLD_WHY),
    Spec("PSGLD", _sgmcmc(PSGLD, step_size=PSGLD_STEP), SG_ESS, sd_bias=0.05, why=SGLD_WHY),
    Spec("SGHMC", _sgmcmc(SGHMC, step_size=HMC_STEP, friction=1.0, noise_estimate="ema", mass=LAMBDA),
         SG_ESS, sd_bias=0.03, why="Euler discretisation of SGHMC at eps * omega = 0.1: ~1% in variance"),
    Spec("AdaptiveSGHMC", _sgmcmc(AdaptiveSGHMC, step_size=ADAPTIVE_STEP), SG_ESS, sd_bias=0.04,
         why="no minibatch-noise correction (as in the paper): variance a few % wide"),
    Spec("SGNHT", _sgmcmc(SGNHT, step_size=HMC_STEP, diffusion=1.0, mass=LAMBDA), SG_ESS, sd_bias=0.03,
         why="Euler discretisation at eps * omega = 0.1"),
    # One group per site: with one latent site per model the structured chain is SGLD on the joint, so
    # it must match the posterior exactly (its factorised approximation needs several groups).
    Spec("StructuredSGMCMC", _sgmcmc(StructuredSGMCMC, step_size=SGLD_STEP, buffer_size=200), SG_ESS,
         sd_bias=0.04, why=SGLD_WHY),
]


# ---------------------------------------------------------------------- federated SG-MCMC
NUM_SHARDS = 4


def _shards(y):
    """Four shards of consecutive rows (the rows are exchangeable)."""
    return [(part, None) for part in torch.tensor_split(y, NUM_SHARDS)]  # full shards: see _batch


def _federated(engine_cls, **options):
    def run(model, y, seed):
        engine = engine_cls(model.model, step_size=SGLD_STEP, num_chains=SG_CHAINS, num_warmup=SG_WARMUP,
                            num_samples=SG_SAMPLES, **options)
        return engine.run(_shards(y), seed=seed, progress=False)
    return run


# DSGLD and FSGLD pay a round's overhead every few steps (11-22 s a cell, half of the matrix): at CI size
# they run on the two rows whose sites have a log-Jacobian for the shared tempering to get right (a
# positive and a simplex site); BAYESKIT_FULL=1 runs every row.
FEDERATED_CI_ROWS = ("gamma_poisson", "dirichlet_categorical")


def _federated_skip(model):
    if FULL or model.name in FEDERATED_CI_ROWS:
        return None
    return f"federated SG-MCMC runs on {', '.join(FEDERATED_CI_ROWS)} at CI size (cost); all rows with BAYESKIT_FULL=1"


FEDERATED_SPECS = [
    # DSGLD with a shard redrawn every step (local_steps=1) is unbiased; longer rounds drift towards each
    # shard's own posterior by design (see test_sgmcmc_federated.py), which is not what this matrix tests.
    Spec("DSGLD", _federated(DSGLD, local_steps=1), SG_ESS, sd_bias=0.06,
         why="SGLD's bias, with the shard draw adding gradient noise ~ (S - 1) lambda", skip=_federated_skip),
    # FSGLD's conducive gradient removes the drift of long rounds: 10 local steps.
    Spec("FSGLD", _federated(FSGLD, local_steps=10, surrogate_steps=400), SG_ESS, sd_bias=0.06,
         why="SGLD's bias, with the shard draw adding gradient noise ~ (S - 1) lambda", skip=_federated_skip),
]


# ----------------------------------------------------------------------------------- Fusion
# Fusion's own cost is small next to sampling the shards: 4,000 particles, so that a shift of 0.25 sd
# (the double-counted log-Jacobian of a positive site) is outside the CI tolerance.
FUSION_SAMPLES = 4000 * (5 if FULL else 1)
FUSION_ESS = FUSION_SAMPLES // 5  # the guidance aims at a conditional ESS of 0.2 N for the first weights
_SUBPOSTERIORS: dict = {}  # per model: one set of sub-posterior draws shared by every method and tree


@dataclass(frozen=True)
class IndependenceMetropolis:
    """A Fusion sub-posterior sampler owned by the test: ``sampler(shard, num_samples, seed)``.

    Independence Metropolis on the shard's own target (``shard.target()``, the density Fusion fuses):
    ``num_samples`` chains, each started from and proposing a Student-t (5 degrees of freedom) centred
    at the mode with 1.5 times the Laplace covariance; a chain's last state after ``num_steps`` steps
    is its draw. With the acceptance near 0.8 on these near-Gaussian targets a chain has forgotten its
    start many times over, so the draws are exact and independent. Pyro's NUTS (the default sampler,
    tested in test_fusion.py) costs 20-40 s per model here, over the budget; this keeps the cells
    about the fusion step.
    """

    num_steps: int = 30
    df: float = 5.0
    inflate: float = 1.5

    def __call__(self, shard, num_samples, seed):
        target = shard.target()
        mode = _mode(target)
        hessian = torch.autograd.functional.hessian(lambda z: target.log_prob(z[None])[0], mode)
        scale = torch.linalg.cholesky(torch.linalg.inv(-(hessian + hessian.T) / 2)) * self.inflate
        generator = torch.Generator().manual_seed(seed)
        state, log_ratio = self._propose(target, mode, scale, num_samples, generator)
        for _ in range(self.num_steps):
            proposal, proposal_ratio = self._propose(target, mode, scale, num_samples, generator)
            uniform = torch.rand(num_samples, generator=generator, dtype=mode.dtype)
            accept = uniform.log() < proposal_ratio - log_ratio
            state = torch.where(accept[:, None], proposal, state)
            log_ratio = torch.where(accept, proposal_ratio, log_ratio)
        return state.detach()

    def _propose(self, target, mode, scale, n, generator):
        """Student-t draws and their log target / proposal ratio (up to a constant)."""
        dim = len(mode)
        normal = torch.randn(n, dim, generator=generator, dtype=mode.dtype)
        chi2 = 2 * torch._standard_gamma(torch.full((n,), self.df / 2, dtype=mode.dtype), generator=generator)
        whitened = normal / (chi2 / self.df).sqrt()[:, None]
        points = mode + whitened @ scale.T
        log_proposal = -(self.df + dim) / 2 * torch.log1p((whitened ** 2).sum(-1) / self.df)
        with torch.no_grad():
            return points, target.log_prob(points) - log_proposal


def _mode(target):
    z = torch.zeros(target.dim, dtype=target.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([z], max_iter=200, line_search_fn="strong_wolfe", tolerance_grad=1e-10)

    def closure():
        optimizer.zero_grad()
        loss = -target.log_prob(z[None])[0]
        loss.backward()
        return loss
    optimizer.step(closure)
    return z.detach()


def _fusion(method, tree, num_samples=FUSION_SAMPLES):
    """Fusion(model, num_shards=4, method, tree).run(y), with the sub-posterior draws of a model shared.

    Exactly what ``run()`` does -- split the rows (shuffled by the seed), sample every shard, fuse on the
    first shard's target -- but the sampling is cached per model across the 10 methods and trees.
    """
    def run(model, y, seed):
        engine = Fusion(model.model, num_shards=NUM_SHARDS, method=method, tree=tree, num_particles=num_samples,
                        sampler=IndependenceMetropolis())
        key = (model.name, seed, num_samples)
        if key not in _SUBPOSTERIORS:
            _SUBPOSTERIORS[key] = engine.sample_subposteriors(y, seed=seed)
        target = engine.shards(y, seed=seed)[0].target()
        subposteriors = _SUBPOSTERIORS[key]
        if method == "mcf":
            subposteriors = _gaussian_subposteriors(engine, y, seed, subposteriors)
        return engine.fuse(subposteriors, seed=seed, progress=False, target=target)
    return run


def _gaussian_subposteriors(engine, y, seed, subposteriors):
    """MCF's rejection step needs bounds of phi, which bayeskit has for Gaussian and logistic densities only:
    on the Normal-mean model give it each shard's exact Gaussian sub-posterior density (prior^(1/C))."""
    from contract_models import NORMAL_NOISE_SD, NORMAL_PRIOR_LOC, NORMAL_PRIOR_SD

    from bayeskit.inference.fusion import GaussianDensity, SubPosterior

    out = []
    for shard, sub in zip(engine.shards(y, seed=seed), subposteriors):
        data = shard.args[0]
        precision = 1 / (NUM_SHARDS * NORMAL_PRIOR_SD**2) + len(data) / NORMAL_NOISE_SD**2
        mean = (NORMAL_PRIOR_LOC / (NUM_SHARDS * NORMAL_PRIOR_SD**2) + data.sum(0) / NORMAL_NOISE_SD**2) / precision
        density = GaussianDensity(mean.to(data.dtype), precision=precision * torch.eye(3, dtype=data.dtype))
        out.append(SubPosterior(sub.samples, density, sub.log_weights))
    return out


MCF_SAMPLES = 1000


def _mcf_skip(model):
    if model.name != "normal_mean":
        return ("MCF's rejection step needs bounds of phi: bayeskit has them for Gaussian and logistic "
                "densities only, not for a Pyro model's autograd density")
    if not FULL:
        return ("MCF's rejection sampler took over 4 CPU-minutes for 1,000 particles on this row (over 2 for "
                "300): BAYESKIT_FULL=1 only; test_fusion.py checks it on a Gaussian product")
    return None


DISCRETISED_WHY = ("no bounds of phi for a Pyro model: the discretised (trapezoid) path estimator, biased by "
                   "design (meta['approximate']); test_fusion.py allows 0.05 sd on the mean, 15% on the sd")
FUSION_SPECS = [
    Spec(f"Fusion-{method}-{tree}", _fusion(method, tree), FUSION_ESS, "kish",
         mean_bias=0.05, sd_bias=0.05, why=DISCRETISED_WHY)
    for method in ("gbf", "dc_mcf") for tree in ("fork_and_join", "balanced", "progressive")
] + [
    Spec(f"Fusion-mcf-{tree}", _fusion("mcf", tree, MCF_SAMPLES), MCF_SAMPLES // 5, "kish", skip=_mcf_skip)
    for tree in ("fork_and_join", "balanced", "progressive")
] + [
    # Consensus MC is a Gaussian approximation: exact for Gaussian sub-posteriors, biased by their skewness
    # otherwise. In the unconstrained coordinates these sub-posteriors (a quarter of the data each) have
    # skewness ~ 1 / sqrt(shape) ~ 0.2, which moves the combined mean by a fraction of that in sds. On the
    # Normal precision the shard posteriors of log tau are log-Gamma, so Consensus's limit (infinitely many
    # draws, inverse-variance weights) has a closed form: +0.160 sd off, sd ratio 1.028, at this seed's split.
    # Measured +0.166 sd at CI size and +0.184 at full size (Monte Carlo share up to 0.028 there).
    Spec("Fusion-consensus", _fusion("consensus", "balanced"), FUSION_SAMPLES, None, mean_bias=0.17,
         sd_bias=0.05, why="Consensus MC: a Gaussian approximation, biased on skewed sub-posteriors"),
]


# ------------------------------------------------------------------------------- the matrix
STEIN_SPECS = [
    # SVGD with few particles shrinks the variance (Ba et al. 2021, "Understanding the variance collapse
    # of SVGD"); at 50 particles in <= 3 dimensions the shrinkage is a few %.
    Spec("SVGD", _stein(SVGD), STEIN_ESS, None, sd_bias=0.05, why="SVGD's variance shrinkage at 50 particles"),
    Spec("MirroredSVGD", _stein(MirroredSVGD), STEIN_ESS, None, sd_bias=0.05,
         why="SVGD's variance shrinkage at 50 particles"),
    # SVMD's default lr (0.1, the paper's) is an RMSprop step: about lr per step in the dual coordinates
    # whatever the gradient's size, so particles jitter by ~1 posterior sd here (sd ~0.1) and the mean
    # stays 0.3-0.5 sd off however long the run; MirroredSVGD's default 0.03 serves both.
    Spec("SVMD", _stein(SVMD, lr=0.03), STEIN_ESS, None, sd_bias=0.05,
         why="SVGD's variance shrinkage at 50 particles"),
    # SVNG estimates the Fisher by simulating data sets at every particle: 16 per step (not 32) and 150
    # natural-gradient steps (not 400) cost 20 CPU s on the Dirichlet row instead of ~2 minutes. With 8
    # the 1-d estimate (a chi-square with 8 degrees of freedom) can be 10 times too small at a particle,
    # its natural-gradient step 10 times too long: on the Normal precision a particle ran off at step 3.
    Spec("SVNG", _stein(SVNG, steps=150 * (2 if FULL else 1), fisher_samples=16), STEIN_ESS, None, sd_bias=0.05,
         why="SVGD's variance shrinkage at 50 particles"),
]

SPECS = {spec.name: spec for spec in STEIN_SPECS + SGMCMC_SPECS + FEDERATED_SPECS + FUSION_SPECS}


# ===================================================================== the harness
@dataclass
class Cell:
    engine: str
    model: str
    mean_error: np.ndarray  # (mean - exact) / sd per coordinate
    sd_ratio: np.ndarray
    ess: float
    mean_tol: float
    sd_tol: float
    seconds: float
    passed: bool = False
    note: str = ""


class Matrix(dict):
    """The cells run so far, by (engine, model); a short repr for pytest's tracebacks."""

    def __repr__(self):
        return f"<{len(self)} cells>"


@pytest.fixture(scope="module")
def matrix():
    """Collects every cell; prints the table when the module is done (visible with ``pytest -s``)."""
    cells = Matrix()
    # CPU seconds of this process: on one thread what the module costs a free core, whatever the load
    began = time.process_time()
    yield cells
    print(_table(cells, time.process_time() - began))


def _table(cells, seconds):
    lines = ["", f"conformance matrix ({'full' if FULL else 'CI'} sizes, {seconds:.0f} CPU s): "
             "max |mean error| in posterior sd (tolerance) / sd ratio furthest from 1 (tolerance) / ESS / time"]
    width = max([len(c.engine) for c in cells.values()] + [6])
    for cell in cells.values():
        worst = cell.sd_ratio[np.argmax(np.abs(cell.sd_ratio - 1))] if len(cell.sd_ratio) else float("nan")
        status = "pass" if cell.passed else "FAIL"
        lines.append(f"{cell.engine:{width}s}  {cell.model:22s} mean {np.max(np.abs(cell.mean_error)):6.3f} "
                     f"({cell.mean_tol:.3f})  sd {worst:6.3f} (1+-{cell.sd_tol:.3f})  ESS {cell.ess:8.0f}  "
                     f"{cell.seconds:5.1f}s  {status} {cell.note}")
    return "\n".join(lines)


def weighted_moments(draws, weights):
    """Mean and sd per coordinate of draws ``(n, k)`` under normalised weights ``(n,)``."""
    mean = weights @ draws
    return mean, (weights @ (draws - mean) ** 2).sqrt()


def flat_draws(post, site):
    """The site's draws ``(chain * draw, k)`` and their normalised weights (uniform when unweighted)."""
    samples = post.samples[site].double()
    draws = samples.reshape(samples.shape[0] * samples.shape[1], -1)
    return draws, post.weights.reshape(-1)


def measured_ess(post, site, kind):
    if kind == "kish":
        return post.ess
    if kind == "bulk":
        from arviz_stats import ess

        samples = post.samples[site].double().numpy()
        values = ess(samples.reshape(*samples.shape[:2], -1), method="bulk")
        return float(np.min(values))
    return float(post.num_chains * post.num_draws)


def check_cell(cell, spec):
    """The cell's verdict; failures name the coordinate and the size of the miss."""
    failures = []
    if spec.ess_kind is not None and cell.ess < spec.ess_min:
        failures.append(f"ESS {cell.ess:.0f} < {spec.ess_min}, the run length the tolerances assume")
    for i, (error, ratio) in enumerate(zip(cell.mean_error, cell.sd_ratio)):
        if abs(error) > cell.mean_tol:
            failures.append(f"coordinate {i}: mean off by {error:+.3f} sd (tolerance {cell.mean_tol:.3f})")
        if abs(ratio - 1) > cell.sd_tol:
            failures.append(f"coordinate {i}: sd ratio {ratio:.3f} (tolerance 1 +- {cell.sd_tol:.3f})")
    return failures


def run_cell(spec, model, matrix):
    y = model.data()
    exact_mean, exact_sd = model.exact(y)
    began = time.process_time()
    post = spec.run(model, y, SEED)
    seconds = time.process_time() - began
    draws, weights = flat_draws(post, model.site)
    mean, sd = weighted_moments(draws, weights)
    cell = Cell(spec.name, model.name, (mean.numpy() - exact_mean) / exact_sd, sd.numpy() / exact_sd,
                measured_ess(post, model.site, spec.ess_kind),
                Z_MEAN / math.sqrt(spec.ess_min) + spec.mean_bias, Z_SD / math.sqrt(spec.ess_min) + spec.sd_bias,
                seconds)
    matrix[(spec.name, model.name)] = cell
    failures = check_cell(cell, spec)
    cell.passed, cell.note = not failures, "; ".join(failures)
    return cell, failures


# Known gaps: (reason, strict). A strict one turns its cell red when fixed, until it leaves this list.
# D&C-MCF fuses a node in one importance step over the whole time horizon; on Pyro models (no bounds of
# phi, so the trapezoid rule over that single step) with four children at once, its weights degenerate
# and the fused sd comes out 16-21% narrow (ESS 212-981 of 4,000). Fusion's health report flags such runs
# (final ESS/N). Which rows of the fork-and-join tree fail depends on the seed (Fusion's task seeds from
# parallel.derived_seed: Normal precision and Beta-Binomial once swapped places with Normal mean); at these
# seeds the three below fail and Gamma-Poisson and Beta-Binomial pass. Strict all the same, so that a
# change of seeds or of the estimator that moves a row shows here instead of passing unseen.
DC_MCF_GAP = "D&C-MCF: one discretised importance step over the whole horizon narrows the fused sd (see above)"
KNOWN_GAPS = {**{("Fusion-dc_mcf-fork_and_join", model): (DC_MCF_GAP + "; fails at these seeds", True)
                 for model in ("normal_mean", "normal_precision", "dirichlet_categorical")},
              ("Fusion-dc_mcf-progressive", "normal_mean"): (DC_MCF_GAP + "; here the ESS, 766 < 800", True)}
if FULL:
    # At full size (200 particles, 800 steps; SVNG 300) the Monte Carlo tolerances shrink below the sd that
    # SVNG leaves on the Gamma-Poisson row, measured once: its full-size sd ratios run 1.06-1.18 on all five
    # rows, a widening whose cause was not traced (the sampled Fisher's noise is the first suspect).
    KNOWN_GAPS.update({
        ("SVNG", "gamma_poisson"): ("full size: sd ratio 1.182 (tolerance 1 +- 0.156); the mean, +0.149 sd "
                                    "with each particle's own metric, is +0.055 with the shared one", True),
        # the D&C-MCF gap above reaches two more rows at full size (seen failing in a partial full-size run
        # of the matrix; the fork-and-join rows and progressive normal_mean stayed failing, as listed)
        **{("Fusion-dc_mcf-balanced", "normal_precision"): (DC_MCF_GAP + "; fails at full size", True),
           ("Fusion-dc_mcf-progressive", "dirichlet_categorical"): (DC_MCF_GAP + "; fails at full size", True)},
        # MCF's rejection rate collapses when one node fuses all shards (what D&C-MCF and the trees avoid)
        ("Fusion-mcf-fork_and_join", "normal_mean"): (
            "MCF fusing all 4 shards in one node at 1,000 particles: 0 of the first 9,000 proposals accepted, so "
            "the 1,000,000-proposal budget cannot suffice and fuse_mcf stops (36 s; before the early stop it "
            "spent the whole budget, about 90 CPU-minutes, and raised); the balanced and progressive trees pass",
            True)})


def _cells():
    for engine_name in SPECS:
        for model_name in MODELS:
            reason, strict = KNOWN_GAPS.get((engine_name, model_name), (None, True))
            marks = [pytest.mark.xfail(strict=strict, reason=reason)] if reason else []
            yield pytest.param(engine_name, model_name, marks=marks, id=f"{engine_name}-{model_name}")


@pytest.mark.parametrize("engine_name,model_name", list(_cells()))
def test_engine_matches_the_conjugate_posterior(engine_name, model_name, matrix):
    spec, model = SPECS[engine_name], MODELS[model_name]
    reason = spec.skip(model)
    if reason:
        pytest.skip(reason)
    cell, failures = run_cell(spec, model, matrix)
    assert not failures, f"{engine_name} on {model_name} ({model.support}): " + "; ".join(failures)


# ===================================================================== ParticleGibbs
PG_A, PG_Q, PG_R, PG_STEPS = 0.8, 0.5, 1.0, 15
PG_REPLICATES, PG_ITERATIONS, PG_BURN = 8, 150 * SCALE, 20
PG_ESS = 200 * SCALE


def test_particle_gibbs_matches_the_smoothing_marginals(matrix):
    """PPG's reference trajectories against the exact smoothing marginals of a scalar AR(1) + noise model."""
    model = bk.models.LinearGaussianSSM([[PG_A]], [[1.0]], [[PG_Q]], [[PG_R]])  # x_0 ~ N(0, Q)
    y = model.simulate(PG_STEPS, seed=1)[1]
    exact_mean, exact_sd = lgssm_smoothing_marginals(PG_A, PG_Q, PG_R, PG_Q, y.numpy())
    began = time.process_time()
    post = ParticleGibbs(model, num_particles=30, num_chains=PG_REPLICATES).run(y, num_steps=PG_ITERATIONS, seed=SEED,
                                                                                progress=False)
    seconds = time.process_time() - began
    samples = post.samples["x"][:, PG_BURN:, :, 0].double()  # (replicate, iteration, time)
    draws = samples.reshape(-1, PG_STEPS)
    mean, sd = weighted_moments(draws, torch.full((len(draws),), 1 / len(draws), dtype=draws.dtype))
    from arviz_stats import ess

    cell = Cell("ParticleGibbs", "lgssm (real, 15 states)", (mean.numpy() - exact_mean) / exact_sd,
                sd.numpy() / exact_sd, float(np.min(ess(samples.numpy(), method="bulk"))),
                Z_MEAN / math.sqrt(PG_ESS), Z_SD / math.sqrt(PG_ESS), seconds)
    matrix[("ParticleGibbs", "lgssm")] = cell
    failures = check_cell(cell, Spec("ParticleGibbs", None, PG_ESS))
    cell.passed, cell.note = not failures, "; ".join(failures)
    assert not failures, "ParticleGibbs: " + "; ".join(failures)
