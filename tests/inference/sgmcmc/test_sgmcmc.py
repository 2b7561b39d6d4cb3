"""SG-MCMC engines on a Bayesian linear regression whose posterior is known in closed form.

The must-show of the SG-MCMC issue: 10,000 rows, minibatches of 100;
posterior means within 0.1 posterior sd of the truth, variances within 20%,
for SGLD (small step), SGHMC and SGNHT.  Those are the sizes under
``BAYESKIT_FULL=1``.  CI runs
1,000 rows and minibatches of 200: the gradient noise relative to the
curvature scales with ``N / B``, and every SG-MCMC method's mixing time with
it, so a twenty times smaller ratio buys the same statistical power in a
twentieth of the steps.  The density is ``PerChainRegression`` (the same
posterior as one batched expression, one minibatch per chain, checked
against the model in ``test_sgmcmc_defaults.py``), so ``CHAINS`` chains cost
little more than one; the Pyro model costs one call per chain and step, which
at full size (SGLD: 16 chains x 327,000 steps) would take hours.  The Pyro
model's own path at 10,000 rows runs under ``BAYESKIT_FULL=1`` in
``test_sgmcmc_defaults.py``.

Bounds (fixed, never widened by the run's own mixing): every coordinate's
ArviZ bulk ESS at least ``MIN_ESS`` (else the run is too short to decide
and fails), then mean error < 0.1 sd + 2 MCSE, |variance ratio - 1| < 0.2
and r_hat < 1.01.  At ESS >= 1,000 the MCSE is at most 0.032 sd and the
Monte Carlo sd of a variance ratio at most sqrt(2 / 1000) = 0.045, so the
20% is the bias budget (SGLD's and pSGLD's steps add 9-15% here) with >= 1.1
Monte Carlo sd to spare.  r_hat < 1.01 needs about 150 effective draws per
chain (split-R-hat sits near 1 + 1 / ESS per chain): the chains' length is
set by that, their number by ``MIN_ESS``.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL, assert_steps_are_pure
from test_sgmcmc_defaults import PerChainRegression

from bayeskit import NonFiniteError, Target
from bayeskit.inference import (
    FSGLD,
    PSGLD,
    SGHMC,
    SGLD,
    SGNHT,
    AdaptiveSGHMC,
    CyclicalSchedule,
    PolynomialDecay,
    StructuredSGMCMC,
)
from bayeskit.inference.sgmcmc.engines import DrawLog
from bayeskit.inference.sgmcmc.scoring import log_prob_and_score_per_chain

# Thousands of steps on tiny tensors: one intra-op thread (torch's pool costs more than it saves here).
pytestmark = pytest.mark.usefixtures("one_thread")

NUM_ROWS, BATCH = (10_000, 100) if FULL else (1_000, 200)
DIM, PRIOR_SD, NOISE_SD = 4, 1.0, 1.0
#: Independent chains of the closed-form tests, and the bulk ESS every coordinate must reach (module docstring).
CHAINS, MIN_ESS = 16, 1_000


def linear_regression(x, y, batch_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), PRIOR_SD).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("y", dist.Normal((x[rows] * w).sum(-1), NOISE_SD), obs=y[rows])


def regression_data(num_rows=NUM_ROWS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, DIM, generator=generator, dtype=torch.float64)
    w = torch.randn(DIM, generator=generator, dtype=torch.float64)
    y = x @ w + NOISE_SD * torch.randn(num_rows, generator=generator, dtype=torch.float64)
    return x, y


def exact_posterior(x, y):
    precision = x.T @ x / NOISE_SD**2 + torch.eye(x.shape[1], dtype=x.dtype) / PRIOR_SD**2
    covariance = torch.linalg.inv(precision)
    return covariance @ x.T @ y / NOISE_SD**2, covariance.diagonal()


def engine_settings(name):
    """Settings from the problem's scales: curvature ~ N, gradient-noise variance ~ N^2 / B.

    Chains long enough for r_hat < 1.01 (~150 effective draws each), ``CHAINS`` of them for ``MIN_ESS``.
    """
    ratio = NUM_ROWS / BATCH
    if name == "SGLD":
        # eps * curvature = 0.3 B / N keeps the discretisation + gradient-noise excess variance near
        # eps * curvature * (N / B) / 4 = 7.5%; the chains' autocorrelation time is then about 13 N / B steps.
        return dict(step_size=0.3 / ratio / NUM_ROWS, num_warmup=2_000,
                    num_samples=int(250 * 13 * ratio) if FULL else 16_000)
    # SGHMC and SGNHT with mass ~ the posterior precision (N): unit-scale dynamics, eps = 0.05.
    # The minibatch noise variance in those units is N / B; SGHMC subtracts an estimate of it
    # (friction must exceed eps * noise / 2); SGNHT's thermostat finds it.
    steps = int(1_000 * ratio) if FULL else 8_000
    if name == "SGHMC":
        return dict(step_size=0.05, friction=max(1.0, 0.05 * ratio), noise_estimate="ema", mass=float(NUM_ROWS),
                    num_warmup=1_000, num_samples=steps)
    # From a prior draw, ~30-100 posterior sd away, the thermostat overshoots to xi ~ 100 and relaxes
    # back at about eps per step: SGNHT needs the longer warm-up (5,000 steps left r_hat at 1.07).
    return dict(step_size=0.05, diffusion=1.0, mass=float(NUM_ROWS), num_warmup=8_000, num_samples=steps)


ENGINES = {"SGLD": SGLD, "SGHMC": SGHMC, "SGNHT": SGNHT}


def run_on_the_regression(engine_class, x, y, batch, **settings):
    """``CHAINS`` chains on the regression's posterior through the batched density (module docstring)."""
    return engine_class(PerChainRegression(x, y, batch), num_chains=CHAINS, **settings).run(seed=1, progress=False)


def assert_matches_closed_form(post, x, y, label):
    """Fixed bounds, decided by a stated ESS floor (module docstring); an under-mixed run fails, never passes."""
    mean, variance = exact_posterior(x, y)
    summary = post.summary()
    draws = post.samples["w"]
    assert draws.shape[0] >= CHAINS
    pooled = draws.reshape(-1, DIM)
    sd = variance.sqrt()
    ess = torch.tensor(summary["ess_bulk"].to_numpy())
    mcse = torch.tensor(summary["mcse_mean"].to_numpy())
    r_hat = torch.tensor(summary["r_hat"].to_numpy())
    mean_error = (pooled.mean(0) - mean).abs() / sd
    variance_ratio = pooled.var(0) / variance
    print(f"{label}: mean error / sd {mean_error.tolist()}, MCSE / sd {(mcse / sd).tolist()}, variance ratio "
          f"{variance_ratio.tolist()}, ESS {ess.tolist()}, r_hat {r_hat.tolist()}")
    assert (ess >= MIN_ESS).all(), f"{label}: run too short to decide the bounds, ESS {ess.tolist()}"
    assert (mean_error < 0.1 + 2 * mcse / sd).all(), f"{label}: mean error / sd {mean_error.tolist()}"
    assert ((variance_ratio - 1).abs() < 0.2).all(), f"{label}: variance ratio {variance_ratio.tolist()}"
    assert (r_hat < 1.01).all(), f"{label}: r_hat {r_hat.tolist()}"


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ENGINES))
def test_linear_regression_matches_the_closed_form_posterior(name):
    x, y = regression_data()
    post = run_on_the_regression(ENGINES[name], x, y, BATCH, **engine_settings(name))
    assert_matches_closed_form(post, x, y, name)


def psgld_settings(num_rows, batch):
    # RMSprop scales steps by about 1 / sqrt(gradient-noise variance V), so the excess variance
    # is about eps sqrt(V) / 4: eps = 0.4 / sqrt(V) keeps it near 10%.  The chains then move
    # eps * curvature / sqrt(V) ~ 0.4 B / N per step: N / B = 5 needs 12,000 steps for r_hat < 1.01
    # (4,000 left it at 1.01-1.02, 8,000 at up to 1.012).
    noise_sd = num_rows / batch**0.5
    return dict(step_size=0.4 / noise_sd, num_warmup=2_000, num_samples=12_000)


def test_psgld_on_the_linear_regression():
    x, y = regression_data(num_rows=500)
    post = run_on_the_regression(PSGLD, x, y, 100, **psgld_settings(500, 100))
    assert_matches_closed_form(post, x, y, "pSGLD")


@pytest.mark.parametrize("jit_compile", [False, True])
def test_each_chain_is_scored_on_its_own_minibatch(jit_compile):
    # Scoring all chains in one model call would give them one minibatch per step, hence common
    # gradient noise: chains that drift together, and an r_hat and multi-chain ESS that overstate.
    x, y = regression_data(num_rows=200)
    target = Target.from_pyro(linear_regression, x, y, 10, jit_compile=jit_compile)
    assert target.subsampled
    torch.manual_seed(0)  # the model's minibatches come from the global stream
    point = torch.randn(DIM, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    _, score = log_prob_and_score_per_chain(target, point.expand(3, 2, DIM))  # 3 chains, 2 points each
    assert torch.equal(score[:, 0], score[:, 1])  # a chain's points (a curvature probe's pair) share its minibatch
    assert not torch.equal(score[0, 0], score[1, 0]) and not torch.equal(score[1, 0], score[2, 0])
    _, shared = log_prob_and_score_per_chain(target, point.expand(3, 2, DIM), share_minibatches=True)
    assert torch.equal(shared, shared[:1, :1].expand(3, 2, DIM))


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("engine", [SGLD, SGHMC, SGNHT])
def test_engines_call_a_subsampling_target_once_per_chain(engine, share):
    calls = []

    def log_prob(z):
        calls.append(z.shape[0])
        return -0.5 * (z * z).sum(-1)

    # as Target.from_pyro marks a model with a subsampling plate
    target = Target.from_log_prob(log_prob, 2, subsampled=True)
    post = engine(target, num_warmup=50, num_samples=5, num_chains=3, share_minibatches=share).run(
        seed=0, progress=False)
    assert post.meta["settings"]["share_minibatches"] is share
    # Every step scores each chain (1 point); the warm-up's curvature probes score pairs (2 points per chain).
    assert calls.count(3 if share else 1) == 55 * (1 if share else 3)
    assert set(calls) == ({3, 6} if share else {1, 2})
    single = []
    target = Target.from_log_prob(lambda z: single.append(z.shape[0]) or -0.5 * (z * z).sum(-1), 2)
    engine(target, num_warmup=50, num_samples=5, num_chains=3).run(seed=0, progress=False)
    assert set(single) == {3, 6}  # a target that does not subsample: one call for all chains


# ------------------------------------------------------------------ mechanics
def small_engine(**kwargs):
    settings = {"step_size": 1e-3, "num_warmup": 20, "num_samples": 30, "num_chains": 3, **kwargs}
    return SGLD(linear_regression, **settings)


def test_draws_are_chain_by_draw_and_export_to_arviz():
    x, y = regression_data(num_rows=200)
    post = small_engine(thin=2).run(x, y, 20, seed=0, progress=False)
    assert post.samples["w"].shape == (3, 30, DIM)
    assert post.meta["engine"] == "SGLD" and post.meta["steps_completed"] == 20 + 30 * 2
    assert post.meta["settings"]["thin"] == 2
    assert len(post.trace["step_size"]) == 80
    tree = post.to_arviz()
    assert tree["posterior"]["w"].shape == (3, 30, DIM)
    assert "r_hat" in post.summary().columns
    assert post.log_likelihood == {}  # a subsampled model has no full-data likelihood per call


def test_full_data_models_export_the_pointwise_log_likelihood():
    x, y = regression_data(num_rows=50)
    post = small_engine().run(x, y, None, seed=0, progress=False)
    expected = dist.Normal((x * post.samples["w"].unsqueeze(-2)).sum(-1), NOISE_SD).log_prob(y)
    torch.testing.assert_close(post.log_likelihood["y"], expected)


# 50 steps from prior draws: a chain not yet converged is flagged, rightly (test_a_chain_that_ran_off_is_flagged
# checks that warning, and the closed-form tests keep it).
@pytest.mark.filterwarnings(r"ignore:chain \d+. median log density of the draws far below")
def test_same_seed_same_draws_and_checkpoint_resume_is_exact(tmp_path):
    x, y = regression_data(num_rows=300)
    engine = SGHMC(linear_regression, step_size=1e-3, num_warmup=10, num_samples=40, num_chains=2)
    first = engine.run(x, y, 30, seed=3, progress=False)
    again = engine.run(x, y, 30, seed=3, progress=False)
    assert torch.equal(first.samples["w"], again.samples["w"])
    path = tmp_path / "sghmc.ckpt"
    engine.run(x, y, 30, seed=3, progress=False, checkpoint=path, checkpoint_every=7,
               callback=lambda step, state, info: step == 21)
    resumed = engine.run(x, y, 30, seed=3, progress=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.samples["w"], first.samples["w"])


def test_cyclical_schedule_keeps_draws_only_while_sampling():
    x, y = regression_data(num_rows=200)
    schedule = CyclicalSchedule(num_cycles=2, explore_fraction=0.5)
    post = small_engine(num_warmup=0, num_samples=20, schedule=schedule).run(x, y, 20, seed=0, progress=False)
    assert post.samples["w"].shape == (3, 20, DIM)
    sizes = post.trace["step_size"]
    assert len(sizes) == 2 * 20  # 10 draws a cycle, half of each cycle exploring
    torch.testing.assert_close(sizes[0].double(), torch.tensor(1e-3, dtype=torch.float64))
    assert sizes[19] < sizes[10] < sizes[0] and torch.isclose(sizes[20], sizes[0])


def test_polynomial_decay_follows_welling_and_teh():
    x, y = regression_data(num_rows=200)
    post = small_engine(schedule=PolynomialDecay(gamma=0.55, decay_steps=10)).run(x, y, 20, seed=0,
                                                                                  progress=False)
    t = torch.arange(50, dtype=torch.float64)
    torch.testing.assert_close(post.trace["step_size"].double(), 1e-3 * (1 + t / 10) ** -0.55)


def test_a_step_too_large_names_the_site_and_keeps_the_last_finite_draws():
    x, y = regression_data(num_rows=200)
    with pytest.raises(NonFiniteError, match=r"site\(s\) 'w'") as caught:
        SGLD(linear_regression, step_size=10.0, num_warmup=0, num_samples=200).run(x, y, 20, seed=0,
                                                                                 progress=False)
    posterior = caught.value.posterior
    assert torch.isfinite(posterior.samples["w"]).all()
    assert posterior.samples["w"].shape[1] == caught.value.step - 1


def test_stopping_during_warmup_still_returns_a_posterior():
    x, y = regression_data(num_rows=200)
    post = small_engine().run(x, y, 20, seed=0, progress=False, callback=lambda step, state, info: step == 5)
    assert post.samples["w"].shape == (3, 1, DIM)
    assert "no draws were kept" in post.meta["note"]


def test_init_sets_the_starting_point():
    x, y = regression_data(num_rows=200)
    start = torch.full((DIM,), 3.0, dtype=torch.float64)
    post = small_engine(num_warmup=0, num_samples=1, step_size=1e-12).run(x, y, 20, seed=0, progress=False)
    assert not torch.allclose(post.samples["w"], start)
    post = small_engine(num_warmup=0, num_samples=1, step_size=1e-12, init=start).run(x, y, 20, seed=0,
                                                                                      progress=False)
    torch.testing.assert_close(post.samples["w"], start.expand(3, 1, DIM), atol=1e-4, rtol=0)


@pytest.mark.parametrize("kwargs, message", [
    ({"step_size": 0.0}, "step_size must be a positive finite number"),
    ({"step_size": 1e-3, "num_samples": 0}, "num_samples must be an int >= 1"),
    ({"step_size": 1e-3, "thin": 1.5}, "thin must be an int >= 1"),
    ({"step_size": 1e-3, "schedule": "cosine"}, "unknown schedule 'cosine'"),
    ({"step_size": 1e-3, "num_samples": 10, "schedule": CyclicalSchedule(num_cycles=3)},
     r"num_samples \(10\) must be a multiple of num_cycles \(3\)"),
])
def test_bad_settings_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SGLD(linear_regression, **kwargs)


def test_run_refuses_num_steps_and_a_misshapen_init():
    x, y = regression_data(num_rows=50)
    with pytest.raises(TypeError, match="takes no num_steps"):
        small_engine().run(x, y, 10, num_steps=5)
    with pytest.raises(ValueError, match=r"init must have shape \(3, 4\) or \(4,\)"):
        small_engine(init=torch.zeros(2, DIM)).run(x, y, 10, seed=0, progress=False)


def test_friction_default_is_a_momentum_decay_of_a_tenth_per_step():
    engine = SGHMC(linear_regression, step_size=0.02)
    assert math.isclose(engine.kernel.friction * engine.step_size, 0.1)


def test_a_chain_that_ran_off_is_flagged():
    x, y = regression_data(num_rows=200)
    start = torch.zeros(3, DIM, dtype=torch.float64)
    start[1] = 1e3  # far out, and a step too small to come back: finite, but nowhere near the posterior
    with pytest.warns(UserWarning, match=r"chain 1: median log density of the draws far below the best chain's"):
        small_engine(init=start, step_size=1e-9).run(x, y, 20, seed=0, progress=False)


# ------------------------------------------------------------------ adaptive SGHMC
def full_data_regression(x, y):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), PRIOR_SD).to_event(1))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * w).sum(-1), NOISE_SD), obs=y)


@pytest.mark.slow
def test_adaptive_sghmc_samples_a_badly_scaled_posterior_without_a_hand_set_mass():
    # Covariate scales 0.1 to 10: posterior precisions differ 10^4-fold, so one step size
    # serves all coordinates only once the mass is learned. Adapted, the stiffest coordinate has
    # frequency ~ (N 10^2)^(1/4) ~ 18 in the mass-scaled time, and eps = 0.01 keeps eps * omega < 0.2;
    # a momentum decay of 0.02 (not the paper's 0.05) leaves the slowest coordinate less overdamped.
    x, y = regression_data(num_rows=1_000)
    x = x * torch.tensor([0.1, 1.0, 3.0, 10.0], dtype=x.dtype)
    y = x @ torch.tensor([1.0, -0.5, 0.3, 0.1], dtype=x.dtype) + NOISE_SD * torch.randn(
        len(y), generator=torch.Generator().manual_seed(3), dtype=x.dtype)
    # A full-data model is scored in one call for all chains: CHAINS cost little more than one.  The slowest
    # coordinate (scale 0.1) has ~1 effective draw per 130 steps: 8,000 draws left its r_hat at 1.024.
    post = AdaptiveSGHMC(full_data_regression, step_size=0.01, momentum_decay=0.02, num_warmup=2_000,
                         num_samples=40_000 if FULL else 24_000, num_chains=CHAINS).run(
        x, y, seed=0, progress=False, jit_compile=True)
    assert_matches_closed_form(post, x, y, "AdaptiveSGHMC")


def test_adaptive_sghmc_freezes_its_mass_after_warmup():
    from bayeskit.inference.sgmcmc.kernels import adaptive_sghmc_init, adaptive_sghmc_step

    generator = torch.Generator().manual_seed(0)
    state = adaptive_sghmc_init(torch.zeros(2, 3))
    scores = [torch.randn(2, 3, generator=generator) * torch.tensor([1.0, 10.0, 100.0]) for _ in range(200)]
    for score in scores:
        state = adaptive_sghmc_step(state, score, 0.01, adapt=True)
    # the learned Vhat tracks E[g^2] = scale^2 per coordinate
    ratio = state.square_avg / torch.tensor([1.0, 100.0, 10_000.0])
    assert ((ratio > 0.3) & (ratio < 3.0)).all()
    frozen = state.square_avg.clone()
    for score in scores[:20]:
        state = adaptive_sghmc_step(state, 5 * score, 0.01, adapt=False)
    assert torch.equal(state.square_avg, frozen)
    assert state.tensors().keys() >= {"position", "momentum", "square_avg", "grad_avg", "window"}


# ------------------------------------------------------------------ pure steps


def standard_normal(dim=3):
    return Target.from_log_prob(lambda x: -0.5 * (x * x).sum(-1), dim, dtype=torch.float64)


ADAPTED = dict(step_size=None, num_warmup=50, num_samples=6, num_chains=2)


@pytest.mark.parametrize("make", [
    lambda: SGLD(standard_normal(), **ADAPTED),
    lambda: SGHMC(standard_normal(), **ADAPTED),
    lambda: SGNHT(standard_normal(), **ADAPTED),
    lambda: AdaptiveSGHMC(standard_normal(), **ADAPTED),
    lambda: AdaptiveSGHMC(standard_normal(), step_size=0.1, num_warmup=4, num_samples=6, num_chains=2),
    lambda: PSGLD(standard_normal(), step_size=0.1, num_warmup=2, num_samples=6, num_chains=2, thin=2),
    lambda: StructuredSGMCMC(standard_normal(), groups=[[0], [1, 2]], kernel="sghmc", buffer_size=5, buffer_every=2,
                             num_context_draws=2, dropout=0.5, step_size=0.1, num_warmup=10, num_samples=20,
                             num_chains=2),
], ids=["SGLD-adapted", "SGHMC-adapted", "SGNHT-adapted", "AdaptiveSGHMC-adapted", "AdaptiveSGHMC", "PSGLD",
        "StructuredSGMCMC"])
def test_a_step_returns_a_new_state_and_leaves_its_input_unchanged(float64, make):
    # Through the whole plan: the adapted engines' warm-up windows and frozen kernel, thinning, the
    # structured engine's ring buffer wrapping round several times.
    engine = make()
    state = assert_steps_are_pure(engine, standard_normal(), engine.plan.num_steps)
    assert state.num_collected == engine.num_samples


def test_federated_rounds_leave_their_input_unchanged(float64):
    def model(x):
        mu = pyro.sample("mu", dist.Normal(torch.zeros(2, dtype=x.dtype), 2.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(mu, 1.0).to_event(1), obs=x)

    engine = FSGLD(model, step_size=1e-2, local_steps=3, surrogate_steps=20, kernel="sghmc", num_warmup=4,
                   num_samples=12, num_chains=3)
    shards = [(part,) for part in torch.randn(12, 2, generator=torch.Generator().manual_seed(0)).split(4)]
    state = assert_steps_are_pure(engine, engine.target(shards), engine.num_rounds)
    assert state.num_collected == 12 and len(state.draw_shard) == 12


def test_the_draw_log_keeps_every_draw_in_order_and_old_logs_as_they_were():
    generator = torch.Generator().manual_seed(0)
    pieces = [torch.randn(2, int(k), 3, generator=generator) for k in torch.randint(0, 3, (400,), generator=generator)]
    log, logs = DrawLog.empty(torch.zeros(2, 3)), []
    for piece in pieces:
        logs.append(log)
        log = log.append(piece)
    assert len(log) == sum(piece.shape[1] for piece in pieces) and len(log.joined) > 2  # joined along the way
    assert torch.equal(log.stacked(), torch.cat(pieces, 1))
    for count, old in enumerate(logs[::37]):  # every earlier log still holds exactly its own draws
        assert torch.equal(old.stacked(), torch.cat([torch.zeros(2, 0, 3), *pieces[:37 * count]], 1))
    assert torch.equal(DrawLog.from_saved(log.pieces(), len(log)).stacked(), log.stacked())
    # a checkpoint written before the log (a preallocated buffer and a count) loads too
    assert torch.equal(DrawLog.from_saved(torch.cat([log.stacked(), torch.zeros(2, 5, 3)], 1), len(log)).stacked(),
                       log.stacked())


def regression_with_noise_scale(x, y, batch_size):
    """A positive site too, so the captured graph holds a constraining transform and its log-Jacobian."""
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), PRIOR_SD).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0, dtype=x.dtype), 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("y", dist.Normal((x[rows] * w).sum(-1), sigma), obs=y[rows])


@pytest.mark.parametrize("engine, settings, batch", [
    (SGLD, dict(step_size=1e-4), 20),  # one minibatch per chain, in one vmapped call
    (SGHMC, dict(step_size=3e-3, friction=10.0), 20),
    (SGHMC, dict(step_size=3e-3, friction=10.0, share_minibatches=True), 20),
    (SGLD, dict(step_size=None), 20),  # the adaptive warm-up's probes, then the frozen kernel, compiled
    (PSGLD, dict(step_size=1e-4), None),  # no subsampling: all rows at every step
], ids=["SGLD", "SGHMC", "SGHMC-shared", "SGLD-adapted", "pSGLD-full-data"])
@pytest.mark.filterwarnings("ignore::bayeskit.HealthWarning")  # 100 draws: compared, not judged
def test_compiled_steps_give_the_eager_draws(engine, settings, batch):
    """``jit_compile=True`` compiles the whole step (score, update, noise); the seed gives the same draws.

    The minibatch indices are drawn before the compiled call in the eager
    path's order and the noise by torch's own generator inside it, so the
    two runs differ only by float rounding (float64 here: the compiled
    kernels reassociate sums; chaotic dynamics amplify that over the steps).
    """
    x, y = regression_data(num_rows=200)
    runs = {}
    for jit_compile in (False, True):
        sampler = engine(regression_with_noise_scale, num_chains=3, num_warmup=100, num_samples=100, **settings)
        runs[jit_compile] = sampler.run(x, y, batch, seed=3, progress=False, jit_compile=jit_compile)
    assert runs[True].meta["settings"] == runs[False].meta["settings"]
    for name in ("w", "sigma"):
        eager, compiled = runs[False].samples[name], runs[True].samples[name]
        assert not torch.equal(eager[:, 0], eager[:, -1])  # the chains moved
        torch.testing.assert_close(compiled, eager, rtol=1e-6, atol=1e-8)
