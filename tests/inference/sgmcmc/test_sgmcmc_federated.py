"""Federated SG-MCMC (DSGLD, FSGLD) against closed-form posteriors.

Ground truth here is conjugate algebra, not the code under test: the mean of
2-D Gaussian data with known noise under a Gaussian prior has the posterior
``N(sum(x) / (N + 1/tau^2), 1 / (N + 1/tau^2))`` per coordinate (sigma = 1).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from test_sgmcmc_kernels import sghmc_stationary_covariance

from bayeskit.inference.sgmcmc import federated
from bayeskit.inference.sgmcmc.federated import (
    DSGLD,
    FSGLD,
    GaussianSurrogate,
    PriorScaleMessenger,
    SurrogateTask,
    fit_gaussian_surrogate,
    run_surrogate_task,
    subposterior_target,
)
from bayeskit.inference.sgmcmc.kernels import SGLDKernel
from bayeskit.target import Target

PRIOR_SCALE = 3.0  # tau


# Models live at module level so that Ray workers can unpickle them.
def gaussian_mean_model(x):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=x)


def minibatch_model(x, batch_size=8):
    theta = pyro.sample("theta", dist.Normal(torch.zeros(2, dtype=x.dtype), PRIOR_SCALE).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=x[rows])


def location_scale_model(x):
    # A positive site, so the log-Jacobian of the unconstrained map is part of the check.
    loc = pyro.sample("loc", dist.Normal(torch.zeros(2, dtype=x.dtype), 2.0).to_event(1))
    scale = pyro.sample("scale", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(loc, scale.unsqueeze(-1)).to_event(1), obs=x)


def width_model(x):
    # The parameter's size follows the data's width: shards of different widths disagree.
    theta = pyro.sample("theta", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("obs", dist.Normal(theta, 1.0).to_event(1), obs=x)


pytestmark = pytest.mark.usefixtures("one_thread")


def non_iid_shards(sizes, centres, seed=0):
    """Shard s holds data around its own centre: every client sees a different region."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.tensor(c) + torch.randn(n, 2, generator=generator),) for n, c in zip(sizes, centres)]


def closed_form_posterior(shards):
    x = torch.cat([shard[0] for shard in shards])
    precision = x.shape[0] + PRIOR_SCALE ** -2
    return x.sum(0) / precision, torch.full((2,), 1.0 / precision)


def posterior_errors(post, mean, variance):
    """Mean error in posterior standard deviations, and the worst |log variance ratio|."""
    draws = post.samples["theta"].reshape(-1, 2)
    mean_error = float(((draws.mean(0) - mean) / variance.sqrt()).norm())
    log_variance_ratio = float((draws.var(0) / variance).log().abs().max())
    return mean_error, log_variance_ratio


# --------------------------------------------------------------------- prior scaling
def test_sub_posteriors_sum_to_the_full_posterior(float64):
    shards = non_iid_shards([7, 12, 5], [[-2.0, 0.0], [1.0, 1.0], [0.0, 3.0]], seed=1)
    full = Target.from_pyro(location_scale_model, torch.cat([s[0] for s in shards]))
    parts = [subposterior_target(location_scale_model, len(shards), shard) for shard in shards]
    z = torch.randn(16, full.dim, generator=torch.Generator().manual_seed(2))
    summed = torch.stack([part.log_prob(z) for part in parts]).sum(0)
    torch.testing.assert_close(summed, full.log_prob(z), rtol=1e-10, atol=1e-10)
    summed_score = torch.stack([part.log_prob_and_score(z)[1] for part in parts]).sum(0)
    torch.testing.assert_close(summed_score, full.log_prob_and_score(z)[1], rtol=1e-10, atol=1e-10)


def test_prior_scale_messenger_scales_latent_sites_only(float64):
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    trace = pyro.poutine.trace(gaussian_mean_model).get_trace(x)
    with PriorScaleMessenger(0.25):
        scaled = pyro.poutine.trace(pyro.poutine.replay(gaussian_mean_model, trace=trace)).get_trace(x)
    trace.compute_log_prob()
    scaled.compute_log_prob()
    torch.testing.assert_close(scaled.nodes["theta"]["log_prob_sum"], 0.25 * trace.nodes["theta"]["log_prob_sum"])
    torch.testing.assert_close(scaled.nodes["obs"]["log_prob_sum"], trace.nodes["obs"]["log_prob_sum"])


def test_laplace_surrogate_recovers_a_gaussian_sub_posterior_exactly(float64):
    shards = non_iid_shards([30, 50], [[-1.0, 0.0], [1.0, 0.5]])
    target = subposterior_target(gaussian_mean_model, 2, shards[1])
    surrogate = fit_gaussian_surrogate(target, initial_position=torch.zeros(8, 2), step_size=1e-2, num_steps=40,
                                       covariance="laplace")
    # pi_s = N(0, tau^2)^(1/2) x prod N(x_i | theta, 1): precision N_s + 1 / (2 tau^2).
    expected = (50 + 0.5 / PRIOR_SCALE ** 2) * torch.eye(2)
    torch.testing.assert_close(surrogate.precision, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_short_surrogate_run_fits_a_far_off_shard(float64, seed):
    """The surrogate run starts at the shard's mode: a short run then fits a shard far from the prior.

    Shard posterior N(x_bar, 1 / 50) with x_bar near (8, -6): 57 and 42 of its sds from the prior's centre.
    SGLD at step * precision = 0.0125 is an AR(1) with rho = 0.9875: it forgets its start in ~80 steps and
    its integrated autocorrelation time is (1 + rho) / (1 - rho) = 159 steps. 400 steps (200 kept) started at
    prior draws pooled a still-relaxing transient (precisions 0.2-0.5x, means 1-1.7 sd off on the conformance
    matrix's Normal row). From the mode the error is Monte Carlo error: ESS ~ 64 x 200 / 159 = 80 per
    coordinate, so 0.45 sd on the mean is 4 standard errors, and 0.6-1.7 on a precision covers 4 of a
    variance's sqrt(2 / 80) = 0.16 relative error.
    """
    shard = non_iid_shards([50], [[8.0, -6.0]], seed=seed)[0]
    target = subposterior_target(gaussian_mean_model, 2, shard)
    precision = 50 + 0.5 / PRIOR_SCALE ** 2
    mean = shard[0].sum(0) / precision
    surrogate = run_surrogate_task(SurrogateTask(target, SGLDKernel(), num_chains=64, step_size=0.0125 / precision,
                                                 num_steps=400, covariance="full", seed=seed))
    assert float(((surrogate.mean - mean) * precision ** 0.5).abs().max()) < 0.45
    ratios = surrogate.precision.diagonal() / precision
    assert 0.6 < float(ratios.min()) and float(ratios.max()) < 1.7, ratios


# --------------------------------------------------------------------- FSGLD vs DSGLD
@pytest.mark.slow
def test_fsgld_reaches_the_full_posterior_where_dsgld_drifts(float64):
    # Three clients with data in three different regions and unequal sizes;
    # chains stay 50 steps on a shard (delayed communication), longer than
    # the ~20 steps a chain needs to settle at its shard's own mode.
    shards = non_iid_shards([80, 120, 100], [[-0.6, 0.0], [0.6, 0.3], [0.0, -0.6]])
    mean, variance = closed_form_posterior(shards)
    settings = dict(step_size=4e-4, num_samples=300, num_warmup=150, num_chains=64, local_steps=50)
    fsgld = FSGLD(gaussian_mean_model, surrogate_steps=200, surrogate_chains=128, surrogate_step_size=2e-3,
                  **settings).run(shards, seed=1, progress=False)
    dsgld = DSGLD(gaussian_mean_model, **settings).run(shards, seed=1, progress=False)
    fsgld_mean, fsgld_var = posterior_errors(fsgld, mean, variance)
    dsgld_mean, dsgld_var = posterior_errors(dsgld, mean, variance)
    print(f"\nposterior mean error (in posterior sd) FSGLD {fsgld_mean:.3f}, DSGLD {dsgld_mean:.3f}; "
          f"max |log variance ratio| FSGLD {fsgld_var:.3f}, DSGLD {dsgld_var:.3f}")
    # FSGLD: the mean within 0.25 sd and variances within ~25% (SGLD's own
    # step-size bias is ~3% here, the surrogates' Monte Carlo error the rest).
    assert fsgld_mean < 0.25 and fsgld_var < math.log(1.25)
    # DSGLD drifts to each shard's mode: its errors are an order of magnitude larger.
    assert dsgld_mean > 4 * max(fsgld_mean, 0.1) and dsgld_var > 10 * fsgld_var and dsgld_var > math.log(5)
    assert fsgld.samples["theta"].shape == (64, 300, 2)
    assert set(fsgld.sample_stats["shard"].unique().tolist()) == {0, 1, 2}


def test_posterior_layout_trace_and_checkpoint_resume(float64, tmp_path):
    shards = non_iid_shards([20, 30], [[-1.0, 0.0], [1.0, 0.0]])
    engine = FSGLD(gaussian_mean_model, step_size=1e-3, num_samples=12, num_warmup=8, num_chains=3, local_steps=5,
                   thin=2, surrogate_steps=10)
    post = engine.run(shards, seed=3, progress=False)
    assert post.samples["theta"].shape == (3, 12, 2)
    assert post.trace["log_prob"].shape == (engine.num_rounds,) == (7,)
    assert post.meta["engine"] == "FSGLD" and post.meta["settings"]["local_steps"] == 5
    assert post.summary() is not None  # r_hat and ESS over (chain, draw)
    checkpoint = tmp_path / "fsgld.pt"
    engine.run(shards, seed=3, progress=False, checkpoint=checkpoint, checkpoint_every=1,
               callback=lambda step, state, info: step == 3)
    resumed = engine.run(shards, seed=3, progress=False, checkpoint=checkpoint, resume=True)
    torch.testing.assert_close(resumed.samples["theta"], post.samples["theta"], rtol=0, atol=0)


def exact_surrogates(shards):
    """Each shard's sub-posterior, N(0, tau^2)^(1/S) prod_i N(x_i | theta, 1), is Gaussian: precision
    N_s + 1 / (S tau^2) per coordinate, mean sum(x_s) / precision.  Conjugate algebra, not a fit."""
    surrogates = []
    for (x,) in shards:
        precision = x.shape[0] + 1 / (len(shards) * PRIOR_SCALE**2)
        surrogates.append(GaussianSurrogate(x.sum(0) / precision, torch.full((2,), precision)))
    return surrogates


def test_given_surrogates_skip_the_fit_and_any_kernel_plugs_in(float64, monkeypatch):
    """Given surrogates, nothing is fitted (both fitting functions raise if called).  With exact ones
    (q_s = pi_s) FSGLD's estimator is the full posterior's gradient whatever the shard, so the SGHMC
    kernel's draws follow the closed-form posterior, up to its eps = 0.02 discretisation, which the
    stationary covariance of its recursion (scipy's discrete Lyapunov solver) gives.  The warm-up forgets a
    prior draw (~20 sd away, decay rate alpha / 2 = 2.5 per time unit: e^-7.5 in 150 steps); 256 chains with
    an integrated autocorrelation time of ~10 steps (2 alpha / omega^2 = 0.2 time units) then give an ESS
    of ~1,800 in 100 draws: the bounds are fixed (mean < 0.1 sd + 2 MCSE, variance within 10% of the recursion's), with
    an ESS floor of 1,000 that keeps the variance's Monte Carlo sd (sqrt(2 / ESS)) under a half of 10%."""
    def no_fit(*args, **kwargs):
        raise AssertionError("surrogates were given: nothing should be fitted")

    monkeypatch.setattr(federated, "run_surrogate_task", no_fit)
    monkeypatch.setattr(federated, "fit_gaussian_surrogate", no_fit)
    shards = non_iid_shards([20, 30], [[-1.0, 0.0], [1.0, 0.0]])
    mean, variance = closed_form_posterior(shards)
    step_size = 0.02
    post = FSGLD(gaussian_mean_model, step_size=step_size, num_samples=100, num_warmup=150, num_chains=256,
                 local_steps=5, kernel="sghmc").run(shards, surrogates=exact_surrogates(shards), seed=0,
                                                    progress=False)
    assert post.meta["settings"]["kernel"] == "SGHMC"
    friction = 0.1 / step_size  # the SGHMC engine's default (checked below)
    stationary = sghmc_stationary_covariance(step_size, friction, float(1 / variance[0]),
                                             momentum_noise=2 * friction * step_size)[0, 0]
    summary = post.summary()
    ess = torch.tensor(summary["ess_bulk"].to_numpy())
    mcse = torch.tensor(summary["mcse_mean"].to_numpy())
    draws = post.samples["theta"].reshape(-1, 2)
    mean_error = (draws.mean(0) - mean).abs() / variance.sqrt()
    variance_ratio = draws.var(0) / stationary
    print(f"FSGLD-SGHMC: ESS {ess.tolist()}, mean error / sd {mean_error.tolist()}, variance / Lyapunov "
          f"{variance_ratio.tolist()} (Lyapunov / posterior {stationary / float(variance[0]):.4f})")
    assert (ess >= 1_000).all(), ess
    assert (mean_error < 0.1 + 2 * mcse / variance.sqrt()).all(), mean_error
    assert ((variance_ratio - 1).abs() < 0.1).all(), variance_ratio


# --------------------------------------------------------------------- Ray
def test_ray_backend_gives_the_same_draws_as_in_process(ray_cluster):
    shards = non_iid_shards([40, 24], [[-1.0, 0.0], [1.0, 0.5]])
    settings = dict(step_size=2e-3, num_samples=10, num_warmup=10, num_chains=4, local_steps=5,
                    surrogate_steps=10)
    local = FSGLD(minibatch_model, **settings).run(shards, seed=7, progress=False)
    remote = FSGLD(minibatch_model, backend="ray", **settings).run(shards, seed=7, progress=False)
    torch.testing.assert_close(remote.samples["theta"], local.samples["theta"], rtol=0, atol=0)
    assert torch.equal(remote.sample_stats["shard"], local.sample_stats["shard"])
    # and a different seed gives different draws (the seed really reaches the clients)
    other = FSGLD(minibatch_model, **settings).run(shards, seed=8, progress=False)
    assert not torch.equal(other.samples["theta"], local.samples["theta"])


# --------------------------------------------------------------------- bad input
def seeded_randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


SHARDS = [(seeded_randn(5, 2),), (seeded_randn(6, 2, seed=1),)]


@pytest.mark.parametrize("options, match", [
    (dict(shard_probs=[0.5, 0.6]), "shard_probs must sum to 1"),
    (dict(shard_probs=[1.5, -0.5]), "shard_probs must be positive"),
    (dict(shard_probs=[[0.5, 0.5]]), "shard_probs must be a 1-d"),
    (dict(local_steps=0), "local_steps must be an int >= 1"),
    (dict(backend="dask"), "backend must be one of"),
    (dict(surrogate_covariance="dense"), "surrogate_covariance must be one of"),
    (dict(surrogate_steps=1), "surrogate_steps must be at least 2"),
    (dict(step_size=-1.0), "step_size must be a positive"),
])
def test_bad_engine_arguments_are_refused(options, match):
    with pytest.raises(ValueError, match=match):
        FSGLD(gaussian_mean_model, **{"step_size": 1e-3, **options})


@pytest.mark.parametrize("shards, options, error, match", [
    ([], {}, ValueError, "shards is empty"),
    (seeded_randn(5, 2), {}, TypeError, "shards must be a list"),
    ([(seeded_randn(5, 2),), "data"], {}, TypeError, r"shards\[1\] must be a tuple"),
    (SHARDS, dict(shard_probs=[0.2, 0.3, 0.5]), ValueError, "shard_probs has 3 entries but there are 2 shards"),
    ([(seeded_randn(5, 2),), (seeded_randn(5, 3, seed=1),)], {}, ValueError, r"shards\[1\] gives latent sites"),
])
def test_bad_shards_are_refused(shards, options, error, match):
    engine = DSGLD(width_model, step_size=1e-3, num_samples=2, num_warmup=0, **options)
    with pytest.raises(error, match=match):
        engine.run(shards, seed=0, progress=False)


def test_bad_surrogates_and_models_are_refused():
    engine = FSGLD(gaussian_mean_model, step_size=1e-3, num_samples=2, num_warmup=0)
    one = GaussianSurrogate(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="surrogates has 1 entries but there are 2 shards"):
        engine.run(SHARDS, surrogates=[one], seed=0, progress=False)
    with pytest.raises(ValueError, match=r"surrogates\[1\] must have mean \(2,\)"):
        engine.run(SHARDS, surrogates=[one, GaussianSurrogate(torch.zeros(3), torch.ones(3))], seed=0,
                   progress=False)
    with pytest.raises(TypeError, match="need a Pyro model"):
        FSGLD(Target.from_pyro(gaussian_mean_model, seeded_randn(3, 2)), step_size=1e-3)


def test_fsgld_with_the_sghmc_kernel_takes_the_sghmc_engines_default_friction():
    from bayeskit.inference import SGHMC

    federated = FSGLD(gaussian_mean_model, step_size=1e-3, kernel="sghmc")
    alone = SGHMC(gaussian_mean_model, step_size=1e-3)
    assert federated.kernel.friction == alone.kernel.friction == pytest.approx(0.1 / 1e-3)
