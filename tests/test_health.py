"""The health report: each check fires on a result that should not be trusted, and stays quiet on a good one.

Ground truth: exact i.i.d. draws (which mix perfectly), runs that cannot have
mixed (chains started apart and stopped early), a particle filter whose
model's observations are far sharper than its bootstrap proposal, and
Fusion's fork-and-join tree on many sub-posteriors, whose weights the
authors show degenerate (Chan et al., 2023, section 4).
"""

import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from arviz_stats.base import array_stats

import bayeskit as bk
from bayeskit import health
from bayeskit.inference import SGHMC, SGLD, SVGD, ParticleFilter
from bayeskit.models import LinearGaussianSSM
from bayeskit.runner import Fit


def _findings(run):
    """Run ``run()`` and return (result, the HealthWarnings it raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run()
    return result, [w for w in caught if issubclass(w.category, bk.HealthWarning)]


# --------------------------------------------------------------- Markov chains
def _iid_posterior(num_chains=4, num_draws=500, seed=0):
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randn(num_chains, num_draws, 3, generator=generator, dtype=torch.float64)
    log_prob = -0.5 * draws.square().sum(-1)
    return bk.Posterior({"theta": draws}, sample_stats={"log_prob": log_prob}, meta={"sample_kind": "mcmc"})


def test_exact_draws_are_healthy():
    assert _iid_posterior().health() == []


def test_chains_that_disagree_are_named_with_a_fix():
    post = _iid_posterior()
    shifted = post.samples["theta"].clone()
    shifted[2, :, 1] += 1.0  # one chain sits a posterior sd away from the others in one coordinate
    bad = bk.Posterior({"theta": shifted}, meta={"sample_kind": "mcmc", "engine": "SGHMC"})
    findings = {(f.check, f.parameter) for f in bad.health()}
    assert ("r_hat", "theta[1]") in findings
    assert all(f.parameter == "theta[1]" for f in bad.health())
    assert "AdaptiveSGHMC" in bad.health()[0].message


def test_too_few_effective_draws_are_flagged():
    # a random walk: strongly autocorrelated, every chain's ESS in single figures
    walk = torch.randn(4, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64).cumsum(1)
    findings = bk.Posterior({"x": walk}, meta={"sample_kind": "mcmc"}).health()
    assert {"r_hat", "ess"} <= {f.check for f in findings}
    assert all(f.parameter == "x" for f in findings)


def test_a_stuck_chain_is_named():
    post = _iid_posterior()
    log_prob = post.sample_stats["log_prob"].clone()
    log_prob[3] -= 500.0
    stuck = bk.Posterior(post.samples, sample_stats={"log_prob": log_prob}, meta={"sample_kind": "mcmc"})
    assert [(f.check, f.parameter) for f in stuck.health()] == [("stuck_chain", "chain 3")]


def test_thresholds_can_be_changed_and_unknown_ones_are_refused():
    walk = torch.randn(4, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64).cumsum(1)
    post = bk.Posterior({"x": walk}, meta={"sample_kind": "mcmc"})
    assert post.health(r_hat=100.0, min_ess=1.0) == []
    with pytest.raises(ValueError, match="r_hats"):
        post.health(r_hats=1.1)


def _schools(y, sigma):
    """Eight schools, non-centred: the hierarchical model with a scale parameter."""
    mu = pyro.sample("mu", dist.Normal(0.0, 5.0))
    tau = pyro.sample("tau", dist.HalfCauchy(5.0))
    with pyro.plate("schools", len(y)):
        eta = pyro.sample("eta", dist.Normal(0.0, 1.0))
        pyro.sample("obs", dist.Normal(mu + tau * eta, sigma), obs=y)


SCHOOLS = (torch.tensor([28.0, 8.0, -3.0, 7.0, -1.0, 1.0, 18.0, 12.0], dtype=torch.float64),
           torch.tensor([15.0, 10.0, 16.0, 11.0, 9.0, 11.0, 10.0, 18.0], dtype=torch.float64))


def test_sghmc_that_did_not_mix_ends_with_warnings_naming_the_parameter_and_a_fix(one_thread):
    engine = SGHMC(_schools, step_size=0.05, num_chains=4, num_warmup=100, num_samples=200)
    post, caught = _findings(lambda: engine.run(*SCHOOLS, seed=0, progress=False))
    messages = [str(w.message) for w in caught]
    assert messages == [f["message"] for f in post.meta["health"]]
    assert any(m.startswith("tau") and "r_hat" in m and "AdaptiveSGHMC" in m for m in messages), messages


def test_a_well_mixed_run_emits_no_health_warning(one_thread):
    target = bk.Target.from_log_prob(lambda x: -0.5 * (x / torch.tensor([1.0, 3.0])).square().sum(-1), 2)
    engine = SGLD(target, step_size=0.5, num_chains=4, num_warmup=200, num_samples=2000, thin=4)
    post, caught = _findings(lambda: engine.run(seed=0, progress=False))
    assert caught == [] and post.meta["health"] == []
    # and the sampler really is right, so the silence is earned: sd 1 and 3 within 10%
    sd = post.samples["theta"].reshape(-1, 2).std(0)
    assert torch.allclose(sd, torch.tensor([1.0, 3.0]), rtol=0.1), sd


def test_health_survives_save_and_load(tmp_path):
    walk = torch.randn(4, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64).cumsum(1)
    post = bk.Posterior({"x": walk}, meta={"sample_kind": "mcmc"})
    post.meta["health"] = [f.to_dict() for f in health.check(post)]
    path = post.save(tmp_path / "p.nc")
    assert bk.load(path).health() == post.health() != []


def test_summary_prints_the_findings(capsys):
    walk = torch.randn(4, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64).cumsum(1)
    bk.Posterior({"x": walk}, meta={"sample_kind": "mcmc"}).summary()
    assert "health: x: r_hat" in capsys.readouterr().out
    _iid_posterior().summary()
    assert "health" not in capsys.readouterr().out


# ------------------------------------------------------------ Stein particles
def test_particle_spread_is_one_for_independent_gaussian_draws_and_zero_on_a_mode():
    generator = torch.Generator().manual_seed(0)
    scale = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    z = torch.randn(2, 400, 4, generator=generator, dtype=torch.float64) * scale
    ratios = health.particle_spread(z, -z / scale ** 2)
    # the harmonic-mean scale makes anisotropic draws look spread *more*, never less
    assert all(1.0 <= r < 3.0 for r in ratios), ratios
    at_mode = torch.zeros(1, 50, 4, dtype=torch.float64) + 1e-6 * torch.randn(1, 50, 4, generator=generator)
    assert health.particle_spread(at_mode, -at_mode / scale ** 2)[0] < 1e-3


def test_svgd_on_a_gaussian_is_not_flagged_and_collapsed_particles_are(one_thread):
    target = bk.Target.from_log_prob(lambda x: -0.5 * x.square().sum(-1), 3)
    post, caught = _findings(lambda: SVGD(target, num_particles=50).run(num_steps=300, seed=0, progress=False))
    assert caught == [] and post.meta["particle_spread"][0] > 0.3
    recorded = {key: value for key, value in post.meta.items() if key != "health"}  # so health() checks anew
    collapsed = bk.Posterior(post.samples, meta={**recorded, "particle_spread": [0.01]})
    assert [(f.check, f.parameter) for f in collapsed.health()] == [("collapse", "the particles")]


def _quadratic_fit(num_steps, lr, noise=0.0, callback=None):
    """Adam on (w - 3)^2 from w = 0, the loss value optionally jittered (minibatch-like noise, no gradient)."""
    weight = torch.zeros((), requires_grad=True)
    generator = torch.Generator().manual_seed(0)

    def loss(step):
        return (weight - 3) ** 2 + noise * torch.randn((), generator=generator)
    fit = Fit(loss, {"w": weight}, lr=lr)
    return _findings(lambda: fit.run(num_steps=num_steps, seed=0, progress=False, callback=callback))


def test_a_fit_stopped_mid_descent_is_flagged_and_a_settled_one_is_not():
    # Adam moves w by about lr a step: 100 steps at 0.01 cover a third of the way to the minimum at 3
    post, caught = _quadratic_fit(100, 0.01)
    assert [(f.check, f.parameter) for f in post.health()] == [("unsettled", "loss")] and len(caught) == 1
    assert "still falling" in str(caught[0].message)
    # a callback that ends the run (a fit's own convergence rule, or the user's) is taken at its word
    post, caught = _quadratic_fit(1000, 0.01, callback=lambda step, state, info: step == 100)
    assert post.meta["steps_completed"] == 100 and caught == []
    for noise in (0.0, 0.5):  # settled, with and without noise on the loss values
        post, caught = _quadratic_fit(2000, 0.05, noise)
        assert abs(float(post.samples["w"]) - 3) < 0.05 and caught == [], (noise, caught)


def test_stein_particles_stopped_on_their_way_are_flagged():
    target = bk.Target.from_log_prob(lambda x: -0.5 * (x - 20).square().sum(-1), 2)
    post, caught = _findings(lambda: SVGD(target, num_particles=20, optimizer="sgd", lr=0.01).run(
        num_steps=50, seed=0, progress=False))
    assert float(post.samples["theta"].mean()) < 15  # still far from the mean at 20
    assert ("unsettled", "mean log density") in [(f.check, f.parameter) for f in post.health()]


# ------------------------------------------------------------------ weights
def test_a_degenerate_particle_filter_is_flagged_and_a_good_one_is_not():
    # observation sd 100x below the state noise: a bootstrap filter's weights pile onto one particle
    sharp = LinearGaussianSSM([[0.9]], [[1.0]], [[1.0]], [[1e-4]])
    y = sharp.simulate(30, seed=0)[1]
    post, caught = _findings(lambda: ParticleFilter(sharp, num_particles=500).run(y, seed=0, progress=False))
    assert {f.check for f in post.health()} & {"weights", "cess"}, post.health()
    assert len(caught) == len(post.health())
    calm = LinearGaussianSSM([[0.9]], [[1.0]], [[1.0]], [[1.0]])
    y = calm.simulate(30, seed=0)[1]
    post, caught = _findings(lambda: ParticleFilter(calm, num_particles=500).run(y, seed=0, progress=False))
    assert caught == [] and post.health() == []


def _gaussian_subposteriors(num_shards, dim, num_draws, seed, spread=0.1):
    """Exact draws of Gaussian sub-posteriors, and the closed-form product's mean and sd."""
    from bayeskit.inference.fusion import GaussianDensity, SubPosterior

    generator = torch.Generator().manual_seed(seed)
    subposteriors = []
    for _ in range(num_shards):
        mean = spread * torch.randn(dim, generator=generator, dtype=torch.float64)
        root = 0.4 * torch.randn(dim, dim, generator=generator, dtype=torch.float64) + torch.eye(dim)
        covariance = root @ root.T
        draws = mean + torch.randn(num_draws, dim, generator=generator, dtype=torch.float64) \
            @ torch.linalg.cholesky(covariance).T
        subposteriors.append(SubPosterior(draws, GaussianDensity(mean, covariance)))
    precision = sum(sub.density.precision for sub in subposteriors)
    mean = torch.linalg.solve(precision, sum(sub.density.precision @ sub.density.mean for sub in subposteriors))
    return subposteriors, mean, torch.linalg.inv(precision).diagonal().sqrt()


@pytest.mark.slow
def test_fork_and_join_on_many_subposteriors_is_flagged_and_the_balanced_tree_is_not(one_thread):
    from bayeskit.inference.fusion import Fusion

    subposteriors, mean, sd = _gaussian_subposteriors(16, 5, 500, seed=1)
    results = {}
    for tree in ("fork_and_join", "balanced"):
        engine = Fusion(method="gbf", tree=tree, num_particles=500)
        results[tree] = _findings(lambda: engine.fuse(subposteriors, seed=0, progress=False))
    fork, caught = results["fork_and_join"]
    assert caught and all("balanced" in str(w.message) for w in caught)
    assert [(f.check, f.parameter) for f in fork.health()] == [("ancestry", "tree node root (height 1)")]
    # the warning is earned: the fused mean is off the closed-form product by 0.27 sd when measured (0.49 before
    # the regular mesh took the trajectories' spread into its step), three times the balanced tree's 0.09
    def error(posterior):
        return float(((posterior.weights[0] @ posterior.samples["theta"][0] - mean) / sd).abs().max())

    balanced, caught = results["balanced"]
    assert caught == [] and balanced.health() == []
    assert error(fork) > max(0.2, 2 * error(balanced)), (error(fork), error(balanced))


def test_chains_with_an_r_hat_between_the_old_and_new_thresholds_are_flagged():
    """Chains whose ArviZ r_hat lies in (1.01, 1.1) are flagged: the threshold is 1.01 (Vehtari et al. 2021).

    The r_hat comes from arviz-stats directly, so the test holds the report to the value, not to itself.
    """
    generator = torch.Generator().manual_seed(0)
    draws = torch.randn(4, 1000, generator=generator, dtype=torch.float64)
    draws[0] += 0.4  # one chain 0.4 sd off: r_hat about 1.02
    r_hat = float(array_stats.rhat(draws.numpy(), chain_axis=0, draw_axis=1, method="rank"))
    assert 1.01 < r_hat < 1.1, r_hat
    findings = bk.Posterior({"x": draws}, meta={"sample_kind": "mcmc"}).health()
    assert ("r_hat", "x") in {(finding.check, finding.parameter) for finding in findings}

