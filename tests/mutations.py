"""Planted bugs: does the test suite notice a real mistake?

Each fault below is a one-line change a developer could plausibly make (drop the log-Jacobian, halve a
noise variance, flip a sign, off-by-one in a resampler, skip a normalisation ...), together with the
small, fast tests that should catch it. For every fault the script copies the package and its tests into
a temporary directory, plants the fault there (never in this checkout), and runs those tests with
``CI=true`` and the copy first on ``PYTHONPATH``. A fault is *caught* when pytest reports a failed test;
a collection or import error means the mutation itself is broken, and is reported as such. The selected
tests are first run once unmutated, so that a failure that was already there is not counted as a catch.

Run it from the repository root (it takes several minutes; the faults run one after another)::

    python tests/mutations.py                 # every fault; prints a markdown table
    python tests/mutations.py --list          # the faults and the tests meant to catch them
    python tests/mutations.py --only ID[,ID]  # some of them

The exit status is non-zero when a fault survives (or a mutation is broken, or the baseline fails).
The file's name does not start with ``test_``, so pytest does not collect it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# What the tests need from the checkout: the package, the tests, and the files they read.
COPIED = ("bayeskit", "tests", "pyproject.toml", "README.md")
# A fault's tests should take seconds; a run that takes longer than this is stopped and counted as not caught.
RUN_TIMEOUT_S = 300


@dataclass(frozen=True)
class Fault:
    """One planted bug: ``original`` (occurring exactly once in ``path``) becomes ``faulty``."""

    id: str
    description: str
    path: str
    original: str
    faulty: str
    tests: tuple[str, ...]


T = "tests/"
FAULTS = (
    # ---------------------------------------------------------------- Target
    Fault("target-ldj", "from_pyro drops the log-Jacobian of constrained sites",
          "bayeskit/_pyro_target.py",
          "out[name] = out[name] + ldj.reshape(n, -1).sum(-1)", "out[name] = out[name]",
          (T + "test_target.py::test_from_pyro_matches_pyro_potential",)),
    Fault("target-logprob-ldj", "from_log_prob drops the log-Jacobian of its support's map",
          "bayeskit/target.py",
          "return lp + ldj.reshape(z.shape[0], -1).sum(-1)", "return lp",
          (T + "test_target.py::test_from_log_prob_adds_the_log_jacobian",)),
    Fault("checks-inf", "the data check looks for NaN only, so inf passes",
          "bayeskit/_checks.py",
          "finite = torch.isfinite(value)", "finite = ~torch.isnan(value)",
          (T + "test_target_checks.py::test_shared_validators_name_argument_and_index",)),
    # ---------------------------------------------------------------- sharding
    Fault("shard-jacobian-share", "a shard keeps the whole log-Jacobian instead of its 1/C share",
          "bayeskit/sharding.py",
          "return inner.log_prob(flat) - (1.0 - scale) * log_jacobian(flat, sites)",
          "return inner.log_prob(flat)",
          (T + "test_sharding.py::test_shard_log_densities_sum_to_the_full_data_density",)),
    Fault("shard-prior-exponent", "a shard's prior exponent is C instead of 1/C",
          "bayeskit/sharding.py",
          "return 1.0 / self.num_shards", "return float(self.num_shards)",
          (T + "test_sharding.py::test_split_data_covers_every_row_once_and_records_the_shard_count",)),
    # ---------------------------------------------------------------- resampling
    Fault("resample-systematic-off-by-one", "systematic resampling's strata start at 1 instead of 0",
          "bayeskit/resampling.py",
          "torch.arange(num, dtype=weights.dtype, device=weights.device) + offset)",
          "torch.arange(1, num + 1, dtype=weights.dtype, device=weights.device) + offset)",
          (T + "inference/smc/test_smc.py::test_resampling_is_unbiased_and_respects_each_scheme_bounds[systematic]",)),
    Fault("resample-residual-round", "residual resampling keeps round(N W) copies instead of floor(N W)",
          "bayeskit/resampling.py",
          "copies = torch.floor(scaled)", "copies = torch.round(scaled)",
          (T + "inference/smc/test_smc.py::test_resampling_is_unbiased_and_respects_each_scheme_bounds[residual]",)),
    # ---------------------------------------------------------------- SMC
    Fault("smc-skip-normalise", "the particle filter skips the weight normalisation",
          "bayeskit/inference/smc/core.py",
          "return log_weights - total, total.squeeze(-1)", "return log_weights, total.squeeze(-1)",
          (T + "inference/smc/test_smc.py::test_filtering_means_and_ess_trace_follow_the_kalman_filter",)),
    Fault("paris-backward-weights", "PaRIS's exact backward kernel forgets the filter weights W_{t-1}",
          "bayeskit/inference/smc/core.py",
          "logits = log_w_prev.unsqueeze(1) + model.transition_log_prob(",
          "logits = 0 * log_w_prev.unsqueeze(1) + model.transition_log_prob(",
          (T + "inference/smc/test_smc.py::test_reject_and_exact_backward_draws_have_the_same_law",)),
    Fault("paris-sum-not-mean", "PaRIS sums the backward draws' statistics instead of averaging them",
          "bayeskit/inference/smc/core.py",
          "return total.mean(2)", "return total.sum(2)",
          (T + "inference/smc/test_smc.py::test_paris_smoothed_states_match_the_rts_means_in_two_dimensions",)),
    # ---------------------------------------------------------------- Stein
    Fault("svgd-repulsion-sign", "the kernel's repulsion has its sign flipped (attraction)",
          "bayeskit/inference/stein/kernels.py",
          "return 2 * (f_prime @ x - f_prime.sum(-1, keepdim=True) * x)",
          "return 2 * (f_prime.sum(-1, keepdim=True) * x - f_prime @ x)",
          (T + "inference/stein/test_svgd.py::test_kernel_repulsion_matches_autograd",)),
    Fault("svgd-ascent-sign", "the Stein step descends phi instead of ascending it (score sign flipped)",
          "bayeskit/inference/stein/core.py",
          "optimizer.update(-phi, state.optimizer_state, state.particles)",
          "optimizer.update(phi, state.optimizer_state, state.particles)",
          (T + "inference/stein/test_svgd.py::test_chains_are_independent_particle_sets",)),
    Fault("svgd-median-bandwidth", "the median heuristic divides by log(n) instead of log(n + 1)",
          "bayeskit/inference/stein/kernels.py",
          "h = h / math.log(n + 1)", "h = h / math.log(n)",
          (T + "inference/stein/test_svgd.py::test_median_bandwidth_follows_liu_and_wang",)),
    Fault("mirror-simplex-grad-logdet", "the simplex map's grad log det uses d instead of d + 1",
          "bayeskit/inference/stein/mirror_maps.py",
          "return 1 - (eta.shape[-1] + 1) * self.to_primal(eta)", "return 1 - eta.shape[-1] * self.to_primal(eta)",
          (T + "inference/stein/test_mirror_maps.py::test_log_det_and_its_gradient_match_autograd[simplex]",)),
    Fault("mirror-box-hessian", "the box map's Hessian loses a factor 2 on cosh",
          "bayeskit/inference/stein/mirror_maps.py",
          "return (2 + 2 * torch.cosh(eta)) / self.width * v", "return (2 + torch.cosh(eta)) / self.width * v",
          (T + "inference/stein/test_mirror_maps.py::test_inverse_hessian_and_hessian_match_autograd_jacobian[box]",)),
    # ---------------------------------------------------------------- SG-MCMC
    Fault("sgld-noise-halved", "SGLD injects half the noise variance (eps T / 2)",
          "bayeskit/inference/sgmcmc/kernels.py",
          "variance = step_size * temperature", "variance = 0.5 * step_size * temperature",
          (T + "inference/sgmcmc/test_sgmcmc_kernels.py::test_sgld_matches_the_ar1_stationary_variance",)),
    Fault("sghmc-friction-no-step", "SGHMC's friction forgets the step size (alpha m, not eps alpha m)",
          "bayeskit/inference/sgmcmc/kernels.py",
          "momentum = momentum + step_size * score - step_size * friction * momentum",
          "momentum = momentum + step_size * score - friction * momentum",
          (T + "inference/sgmcmc/test_sgmcmc_kernels.py::test_sghmc_matches_the_lyapunov_stationary_covariance",)),
    Fault("sghmc-noise-halved", "SGHMC injects eps alpha T instead of 2 eps alpha T",
          "bayeskit/inference/sgmcmc/kernels.py",
          "variance = step_size * (2 * friction * temperature - step_size * beta)",
          "variance = step_size * (friction * temperature - step_size * beta)",
          (T + "inference/sgmcmc/test_sgmcmc_kernels.py::test_sghmc_matches_the_lyapunov_stationary_covariance",)),
    Fault("psgld-noise-unpreconditioned", "pSGLD's noise is not preconditioned (N(0, eps T) instead of eps T G)",
          "bayeskit/inference/sgmcmc/kernels.py",
          "_gaussian(position, step_size * temperature * preconditioner)",
          "_gaussian(position, step_size * temperature)",
          (T + "test_contract.py::test_engine_matches_the_conjugate_posterior[PSGLD-normal_mean]",)),
    Fault("sgnht-thermostat-sign", "SGNHT's thermostat moves the wrong way",
          "bayeskit/inference/sgmcmc/kernels.py",
          "thermostat = state.thermostat + step_size * (kinetic - target_energy)",
          "thermostat = state.thermostat - step_size * (kinetic - target_energy)",
          (T + "test_contract.py::test_engine_matches_the_conjugate_posterior[SGNHT-normal_mean]",)),
    # ---------------------------------------------------------------- Fusion
    Fault("fusion-mcf-rejection", "Monte Carlo Fusion skips its rejection step and keeps every proposal",
          "bayeskit/inference/fusion/core.py",
          "accepted.append(y[uniforms.log() < log_accept])", "accepted.append(y)",
          (T + "inference/fusion/test_fusion.py::"
               "test_fused_gaussians_match_the_closed_form_product[mcf-balanced-auto-False]",)),
    Fault("fusion-bridge-variance", "the fusion bridge's shared noise has variance (t-s)/(T-s), not (t-s)^2/(T-s)",
          "bayeskit/inference/fusion/core.py",
          "shared = math.sqrt((t - s) ** 2 / (horizon - s))", "shared = math.sqrt((t - s) / (horizon - s))",
          (T + "inference/fusion/test_fusion.py::"
               "test_fused_gaussians_match_the_closed_form_product[gbf-balanced-auto-False]",)),
    Fault("fusion-nb-count-weight", "the negative-binomial estimator leaves out its 1/kappa! (lgamma(r + kappa))",
          "bayeskit/inference/fusion/bridges.py",
          "        - torch.lgamma(size + counts) - size * math.log(size)", "        - size * math.log(size)",
          (T + "inference/fusion/test_fusion.py::"
               "test_negative_binomial_estimator_is_unbiased_for_the_gaussian_path_integral",)),
    Fault("fusion-nb-padding", "the negative-binomial estimator counts the skeleton's padding as points",
          "bayeskit/inference/fusion/bridges.py",
          "        keep = real & (keys.argsort(1).argsort(1) < number[:, None])",
          "        keep = keys.argsort(1).argsort(1) < number[:, None]",
          (T + "inference/fusion/test_fusion.py::test_negative_binomial_estimator_is_unbiased_on_short_steps",)),
    Fault("fusion-row-blocks-scatter", "the exact estimator writes a block of rows' estimates back in reverse order",
          "bayeskit/inference/fusion/bridges.py",
          "        log_q[rows], block_info = estimate(rows)",
          "        log_q[rows.flip(0)], block_info = estimate(rows)",
          (T + "inference/fusion/test_fusion.py::"
               "test_exact_estimators_stay_unbiased_when_loose_bounds_split_the_rows_into_blocks",)),
    Fault("fusion-adaptive-mesh-spread", "the adaptive mesh ignores the trajectories' spread (E[nu_j] = 0)",
          "bayeskit/inference/fusion/core.py",
          "return float(_normalised(log_weights) @ spread)", "return 0.0",
          (T + "inference/fusion/test_fusion.py::test_adaptive_mesh_step_follows_the_authors_formulas",)),
    Fault("fusion-regular-mesh-spread", "the regular mesh leaves out the trajectories' spread (max E[nu_j])",
          "bayeskit/inference/fusion/core.py",
          "horizon, len(children), dim, cess_step, max_trajectory_variation(x, log_w, means, inverses, consensus))",
          "horizon, len(children), dim, cess_step)",
          (T + "inference/fusion/test_fusion.py::test_regular_mesh_bounds_the_trajectories_variation_as_the_authors",)),
    Fault("fusion-logistic-temper", "the logistic shard density ignores the prior exponent 1/C",
          "bayeskit/inference/fusion/densities.py",
          "return self.prior_weight / self.prior_scale ** 2", "return 1.0 / self.prior_scale ** 2",
          (T + "inference/fusion/test_fusion.py::test_logistic_density_matches_the_pyro_model_by_autograd",)),
    Fault("fusion-shard-temper", "Fusion's logistic shard density takes the whole prior, not p^(1/C)",
          "bayeskit/inference/fusion/shards.py",
          "prior_weight=shard.prior_exponent)", "prior_weight=1.0)",
          (T + "inference/fusion/test_fusion_tempering.py"
               "::test_the_logistic_shard_density_takes_one_cth_of_the_prior",)),
    # ---------------------------------------------------------------- diagnostics, posterior, health
    Fault("diag-kish-ess", "Kish's ESS drops the square of the weights' sum",
          "bayeskit/diagnostics.py",
          "torch.exp(2 * torch.logsumexp(log_weights, dim)", "torch.exp(torch.logsumexp(log_weights, dim)",
          (T + "test_diagnostics.py::test_weighted_ess_equal_dominating_and_by_hand",)),
    Fault("posterior-weights-per-chain", "Posterior.weights normalises within each chain, not over all draws",
          "bayeskit/posterior.py",
          "torch.exp(lw - torch.logsumexp(lw.reshape(-1), 0))", "torch.exp(lw - torch.logsumexp(lw, -1, keepdim=True))",
          (T + "test_posterior.py::test_weight_properties_match_numpy",)),
    Fault("posterior-arviz-log-weight", "to_arviz exports the normalised weights as log_weight",
          "bayeskit/posterior.py",
          "stats[LOG_WEIGHT] = self.log_weights.numpy()", "stats[LOG_WEIGHT] = self.weights.numpy()",
          (T + "test_posterior.py::test_to_arviz_has_the_groups_dims_coords_and_values",)),
    Fault("health-rhat-threshold", "the health report's r_hat threshold is the old 1.1, not 1.01",
          "bayeskit/health.py",
          '"r_hat": 1.01,', '"r_hat": 1.1,',
          # the existing test's shifted chain has an r_hat above 1.1 too, so it passes; the gap test catches it
          (T + "test_health.py::test_chains_that_disagree_are_named_with_a_fix",
           T + "test_health.py::test_chains_with_an_r_hat_between_the_old_and_new_thresholds_are_flagged")),
    # ---------------------------------------------------------------- models
    Fault("gp-matern52", "the Matern-5/2 correlation has r^2/2 instead of r^2/3",
          "bayeskit/models/gp_sic/kernels.py",
          "return (1.0 + r + r * r / 3.0) * torch.exp(-r)", "return (1.0 + r + r * r / 2.0) * torch.exp(-r)",
          (T + "models/gp_sic/test_gp_sic.py::test_kernels_match_pyro_and_gpytorch",)),
    Fault("gp-kl-constant", "the GP-SIC KL term drops its -1 (the ELBO is off by n/2)",
          "bayeskit/models/gp_sic/model.py",
          "0.5 * (quadratic + trace - 1.0)", "0.5 * (quadratic + trace)",
          (T + "models/gp_sic/test_gp_sic.py::test_full_pattern_elbo_and_posterior_are_exact",)),
    Fault("fsde-rl-covariance", "the Riemann-Liouville covariance swaps the exponents of s and t",
          "bayeskit/models/fractional_sde/exact.py",
          "s ** (hurst + 0.5) * t ** (hurst - 0.5)", "s ** (hurst - 0.5) * t ** (hurst + 0.5)",
          (T + "models/fractional_sde/test_fractional_exact.py::"
               "test_riemann_liouville_covariance_matches_quadrature",)),
    Fault("fsde-mvn-half", "the Mandelbrot-van Ness covariance loses its factor 1/2",
          "bayeskit/models/fractional_sde/exact.py",
          "return 0.5 * (powers[:, None] + powers[None, :] - lags)", "return powers[:, None] + powers[None, :] - lags",
          (T + "models/fractional_sde/test_fractional_exact.py::test_mandelbrot_van_ness_covariance_properties",)),
    # ---------------------------------------------------------------- runner, optimisers
    Fault("runner-resume-step", "resuming restarts one step before the checkpoint's step",
          "bayeskit/runner.py",
          'start, trace, elapsed = saved["step"], ', 'start, trace, elapsed = saved["step"] - 1, ',
          (T + "test_runner.py::test_resume_from_checkpoint_equals_an_uninterrupted_run",)),
    Fault("runner-resume-rng", "resuming does not restore the random number generators' states",
          "bayeskit/runner.py",
          '_set_rng_states(saved["rng"], devices)', "pass",
          (T + "test_runner.py::test_resume_from_checkpoint_equals_an_uninterrupted_run",)),
    Fault("adam-bias-correction", "Adam forgets the first moment's bias correction",
          "bayeskit/optim.py",
          "step_size = rate / (1 - beta1**t)", "step_size = rate",
          (T + "test_optim.py::test_each_pure_optimiser_follows_torch_optim[adam]",)),
    Fault("svmd-hessian-at-particles", "SVMD's default shortcut applies each particle's Hessian, not the mean's",
          "bayeskit/inference/stein/engines.py",
          "return geometry.at_mean().hessian(phi),", "return geometry.hessian(phi),",
          (T + "inference/stein/test_mirrored_stein.py::"
               "test_svmd_with_the_hessian_at_the_mean_is_msvgd_times_that_hessian",)),
    Fault("svng-metric-per-particle", "SVNG's shared metric is each particle's own",
          "bayeskit/inference/stein/core.py",
          'if metric_at == "mean" else metric', 'if metric_at == "never" else metric',
          (T + "inference/stein/test_mirrored_stein.py::"
               "test_svng_with_a_shared_metric_steps_along_svgd_preconditioned_by_the_average_metric",)),
    Fault("health-unsettled-direction", "a fit's loss is read as rising, so a falling one is never flagged",
          "bayeskit/health.py",
          'values = values if direction == "rising" else -values', "values = values",
          (T + "test_health.py::test_a_fit_stopped_mid_descent_is_flagged_and_a_settled_one_is_not",)),
    # ---------------------------------------------------------------- compiled steps (jit_compile)
    Fault("compiled-step-shares-minibatches", "the compiled SG-MCMC step scores every chain on one minibatch",
          "bayeskit/inference/sgmcmc/scoring.py",
          "per_chain = target.subsampled and not share_minibatches and num_chains > 1", "per_chain = False",
          (T + "inference/sgmcmc/test_sgmcmc.py::test_compiled_steps_give_the_eager_draws",)),
    Fault("compiled-noise-inductor-rng", "compiled steps draw their noise from inductor's generator, not torch's",
          "bayeskit/compiling.py",
          'COMPILE_OPTIONS = {"fallback_random": True}', 'COMPILE_OPTIONS = {"fallback_random": False}',
          (T + "inference/sgmcmc/test_sgmcmc.py::test_compiled_steps_give_the_eager_draws",)),
    Fault("compile-shares-code-object", "every compiled step shares one code object, so the ninth hits the limit",
          "bayeskit/compiling.py",
          "compiled = torch.compile(_with_own_code(function),", "compiled = torch.compile(function,",
          (T + "test_compiling.py::test_many_compiled_steps_in_one_process_stay_compiled",)),
    Fault("block-gradient-transposed", "the blocked solve's gradient pairs the solution's rows with the adjoint's",
          "bayeskit/models/gp_sic/factors.py",
          "stacked_adjoint.index_select(0, rows) * stacked_solution.index_select(0, columns)",
          "stacked_adjoint.index_select(0, columns) * stacked_solution.index_select(0, rows)",
          (T + "models/gp_sic/test_gp_sic.py::test_block_solves_and_their_gradients_match_dense_triangular_solves",)),
    Fault("ic0-one-level", "IC0 eliminates every column in one pass, reading columns not yet computed",
          "bayeskit/models/gp_sic/laplace.py",
          "    return np.split(order, np.flatnonzero(np.diff(level[order])) + 1)", "    return [order[::-1]]",
          (T + "models/gp_sic/test_gp_sic.py::test_incomplete_cholesky_reproduces_the_precision_on_its_pattern",)),
    Fault("width-parts-drop-rows", "the kernel blocks split by width leave out the widest part",
          "bayeskit/models/gp_sic/factors.py",
          "    return [order[start:stop] for start, stop in reversed(bounds)]",
          "    return [order[start:stop] for start, stop in reversed(bounds[1:])] or [order]",
          (T + "models/gp_sic/test_gp_sic.py::test_width_parts_cover_every_row_at_the_least_padded_cost",
           T + "models/gp_sic/test_gp_sic.py::test_sparse_prior_columns_are_the_kl_optimal_vecchia_columns")),
    Fault("compiled-filter-keeps-old-weights", "the compiled particle filter carries the previous step's weights",
          "bayeskit/inference/smc/engines.py",
          "return replace(state, t=state.t + 1, **tensors), info",
          'return replace(state, t=state.t + 1, **{**tensors, "log_weights": state.log_weights}), info',
          (T + "inference/smc/test_smc.py::test_a_compiled_filter_gives_the_eager_filter_s_particles",)),
)


# ------------------------------------------------------------------ copies and faults
def make_copy(destination: Path) -> Path:
    """The package, its tests and the files they read, copied under ``destination``.

    Bytecode comes along to save compiling every module in every copy: ``copy2`` keeps the sources' times,
    so the caches stay valid for the untouched files, and the planted file, written later, is recompiled.
    """
    ignore = shutil.ignore_patterns("*.egg-info")
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=ignore)
        else:
            shutil.copy2(source, destination / name)
    return destination


def line_of(fault: Fault) -> int:
    """The line of the checkout's file where the fault goes (what the table shows)."""
    text = (REPO / fault.path).read_text()
    return text[:text.index(fault.original)].count("\n") + 1


def assert_plantable(root: Path, fault: Fault) -> str:
    """The text of the fault's file under ``root``, after checking the original occurs there exactly once."""
    text = (root / fault.path).read_text()
    count = text.count(fault.original)
    assert count == 1, f"{fault.id}: the original text occurs {count} times in {fault.path}, not once"
    return text


def plant(root: Path, fault: Fault) -> None:
    """Replace the fault's original text in the copy under ``root`` (where it occurs exactly once)."""
    text = assert_plantable(root, fault)
    (root / fault.path).write_text(text.replace(fault.original, fault.faulty))


# ------------------------------------------------------------------ running pytest in a copy
def environment(root: Path) -> dict:
    """The copy first on the path (the checkout is installed editable, so it would win otherwise); CI sizes."""
    env = dict(os.environ, CI="true", PYTHONPATH=os.pathsep.join(filter(None, [str(root),
                                                                             os.environ.get("PYTHONPATH")])))
    env.pop("BAYESKIT_FULL", None)  # the full statistical sizes would take far longer
    return env


def check_the_copy_is_imported(root: Path) -> None:
    """Fail loudly if ``import bayeskit`` in the copy's environment would load the checkout instead."""
    out = subprocess.run([sys.executable, "-c", "import bayeskit; print(bayeskit.__file__)"], cwd=root,
                         env=environment(root), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"bayeskit was imported from {out}, not from the copy in {root}: the faults would not count")


@dataclass
class PytestRun:
    returncode: int | None  # None: stopped at the timeout
    failed: list[str]
    errors: list[str]
    output: str
    seconds: float


def run_pytest(root: Path, node_ids, *, stop_at_first=True) -> PytestRun:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *(["-x"] if stop_at_first else []),
               *node_ids]
    began = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=root, env=environment(root), capture_output=True, text=True,
                              timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return PytestRun(None, [], [], output, time.perf_counter() - began)
    output = done.stdout + done.stderr
    # the short summary (-ra, set in pyproject.toml) names each failed and erroring test
    failed = re.findall(r"^FAILED (\S+)", output, flags=re.MULTILINE)
    errors = re.findall(r"^ERROR (\S+)", output, flags=re.MULTILINE)
    return PytestRun(done.returncode, failed, errors, output, time.perf_counter() - began)


@dataclass
class Outcome:
    fault: Fault
    line: int
    verdict: str  # "yes", "no", "broken", "timeout" or "baseline fails"
    caught_by: str
    seconds: float
    detail: str = ""


def judge(fault: Fault, run: PytestRun) -> Outcome:
    """Caught only by a failed test: collection/import errors and setup errors mean a broken mutation."""
    line = line_of(fault)
    if run.returncode is None:
        return Outcome(fault, line, "timeout", "", run.seconds, f"stopped after {RUN_TIMEOUT_S} s")
    if run.returncode == 1 and run.failed and not run.errors:
        return Outcome(fault, line, "yes", run.failed[0], run.seconds)
    if run.returncode == 0:
        return Outcome(fault, line, "no", "", run.seconds)
    tail = "\n".join(run.output.strip().splitlines()[-15:])
    return Outcome(fault, line, "broken", "", run.seconds, f"pytest exit {run.returncode}:\n{tail}")


def run_fault(fault: Fault) -> Outcome:
    with tempfile.TemporaryDirectory(prefix=f"mutant-{fault.id}-") as tmp:
        root = make_copy(Path(tmp))
        plant(root, fault)
        return judge(fault, run_pytest(root, fault.tests))


def baseline(faults) -> set[str]:
    """Run every selected test once, unmutated, in a copy: the node ids that fail already (none expected).

    A test that fails without any fault cannot tell us whether a fault was caught, so its faults are
    reported as such instead of being run; anything worse (a test id not found, a collection error)
    stops the script, since then no failure can be attributed.
    """
    node_ids = list(dict.fromkeys(test for fault in faults for test in fault.tests))
    with tempfile.TemporaryDirectory(prefix="mutant-baseline-") as tmp:
        root = make_copy(Path(tmp))
        check_the_copy_is_imported(root)
        for fault in faults:  # every fault's text is there once, before any test time is spent
            assert_plantable(root, fault)
        run = run_pytest(root, node_ids, stop_at_first=False)
    print(f"baseline: {len(node_ids)} tests unmutated in {run.seconds:.0f} s, exit {run.returncode}", flush=True)
    if run.returncode == 0:
        return set()
    print(run.output[-4000:], flush=True)
    if run.returncode != 1 or run.errors or not run.failed:
        raise SystemExit("the unmutated tests did not run cleanly (see above); fix that first")
    return set(run.failed)


# ------------------------------------------------------------------ reporting
def table(outcomes) -> str:
    rows = ["| fault | description | file:line | caught | first failing test | seconds |",
            "| --- | --- | --- | --- | --- | --- |"]
    for o in outcomes:
        caught_by = f"`{o.caught_by}`" if o.caught_by else ""
        rows.append(f"| {o.fault.id} | {o.fault.description} | `{o.fault.path}:{o.line}` | {o.verdict} | "
                    f"{caught_by} | {o.seconds:.1f} |")
    return "\n".join(rows)


def select(only: str | None):
    if not only:
        return list(FAULTS)
    wanted = [name.strip() for name in only.split(",") if name.strip()]
    known = {fault.id: fault for fault in FAULTS}
    unknown = [name for name in wanted if name not in known]
    if unknown:
        raise SystemExit(f"unknown fault id(s) {unknown}; --list shows them")
    return [known[name] for name in wanted]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated fault ids to run")
    parser.add_argument("--list", action="store_true", help="list the faults and their tests, run nothing")
    args = parser.parse_args(argv)
    faults = select(args.only)
    if args.list:
        for fault in faults:
            print(f"{fault.id}: {fault.description}\n    {fault.path}:{line_of(fault)}\n"
                  + "".join(f"    {test}\n" for test in fault.tests), end="")
        return 0
    began = time.perf_counter()
    already_failing = baseline(faults)
    outcomes = []
    for fault in faults:
        if already_failing.intersection(fault.tests):
            outcome = Outcome(fault, line_of(fault), "baseline fails", "", 0.0,
                              f"fails unmutated: {sorted(already_failing.intersection(fault.tests))}")
        else:
            outcome = run_fault(fault)
        outcomes.append(outcome)
        print(f"{fault.id}: {outcome.verdict} {outcome.caught_by} ({outcome.seconds:.1f} s)", flush=True)
        if outcome.detail:
            print(outcome.detail, flush=True)
    print()
    print(table(outcomes))
    survivors = [o.fault.id for o in outcomes if o.verdict != "yes"]
    print(f"\n{len(outcomes) - len(survivors)} of {len(outcomes)} faults caught in "
          f"{time.perf_counter() - began:.0f} s" + (f"; not caught: {', '.join(survivors)}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
