"""SG-MCMC right by default: SGLD, SGHMC, AdaptiveSGHMC and SGNHT with ``step_size=None`` and nothing else tuned.

The target is a Bayesian linear regression (Gaussian prior, known noise, so
the posterior is exactly Gaussian, computed here with ``torch.linalg``)
whose covariates have scales 0.1 to 10: the posterior sds differ 100-fold,
so no scalar mass or step size serves every coordinate, and the warm-up
must find the diagonal mass, the gradient noise, the friction and the step.
Minibatches of 100; 1,000 and 10,000 rows in CI, 100,000 added under
``BAYESKIT_FULL=1``.

Bounds (the issue's, not widened): every posterior mean within 0.1
posterior sd of the closed form, every variance within 20%.  They are
decisive because each run first asserts an ESS of at least ``MIN_ESS``
(1,200, ArviZ's multi-chain ESS of the mean and of the sd, every
coordinate): the Monte Carlo sd of a mean is then at most 0.029 sd, so 0.1
sd is 3.5 of them, and that of a variance at most ~4%, a fifth of the 20%.
Too short a run fails on the ESS, never passes by luck; we raise chains or
steps rather than widen bounds.  ArviZ's ESS is honest here because every
chain draws its own minibatch (the engines call a subsampling model once
per chain), so the chains are independent; were they scored on one shared
minibatch per step (``share_minibatches=True``), the gradient noise would be
common to all of them and the multi-chain ESS would overstate the precision
many-fold (256 chains at 10,000 rows reported an ESS of 2,657 with a 0.25 sd
mean error shared by all chains).

Each chain needs about ``2 N / B`` to ``7 N / B`` steps per effective draw
(the adapted step is ``epsilon ~ 2 B / N`` in mass-scaled units), so the ESS
comes from many chains: up to 256 at 10,000 rows.  A Pyro model costs one
call per chain and step (~1 ms each on CPU), which would make that minutes
per engine; in CI the density is therefore :class:`PerChainRegression`, the
same posterior written as one batched tensor expression that draws one
minibatch per chain, shared by all points of that chain (a curvature probe's
pair), exactly what the engines' per-chain calls give a Pyro model.  It
draws rows with replacement (Pyro's plate: without), a gradient-noise
variance larger by ``1 / (1 - B / N)`` (11% at 1,000 rows), which the
warm-up measures like any other.  Under ``BAYESKIT_FULL=1`` the Pyro model
(``jit_compile=True``) runs too, at 1,000 and 10,000 rows: the user's path,
per-chain calls included.  That those calls give each chain its own
minibatch is checked in CI by ``tests/inference/sgmcmc/test_sgmcmc.py``.
"""

import time
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL
from torch.distributions import constraints

from bayeskit import HealthWarning, Target
from bayeskit.diagnostics import ess
from bayeskit.inference import SGHMC, SGLD, SGNHT, AdaptiveSGHMC
from bayeskit.target import build_sites

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

BATCH = 100
SCALES = torch.tensor([0.1, 0.5, 2.0, 10.0], dtype=torch.float64)
WEIGHTS = torch.tensor([1.0, -0.5, 0.3, 0.1], dtype=torch.float64)
ENGINES = {"SGLD": SGLD, "SGHMC": SGHMC, "AdaptiveSGHMC": AdaptiveSGHMC, "SGNHT": SGNHT}
#: Every coordinate's multi-chain ESS (of the mean and of the sd) must reach this: see the module docstring.
MIN_ESS = 1_200
#: (density, rows) -> (chains, draws per chain, warm-up).  The warm-up is >= 10 N / B steps (to forget the
#: prior draw and let the last estimation window see the posterior); chains x draws give an ESS of 1,600 to
#: 5,500 at CI size (the smallest: SGLD at 10,000 rows, SGNHT at 1,000), ~35% above MIN_ESS.
RUNS = {("vectorised", 1_000): (64, 2_000, 1_000),
        ("vectorised", 10_000): (256, 2_000, 1_000)}
if FULL:
    # ~2N/B to 7N/B steps per effective draw and chain: 100,000 rows need long chains (ArviZ's ESS wants
    # many autocorrelation times per chain), ~2 minutes per engine; the Pyro runs ~1 and ~7 minutes.
    RUNS.update({("vectorised", 100_000): (256, 30_000, 10_000),
                 ("pyro", 1_000): (16, 8_000, 1_000),
                 ("pyro", 10_000): (32, 16_000, 1_000)})


def regression(x, y, batch_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(x.shape[1], dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("y", dist.Normal((x[rows] * w).sum(-1), 1.0), obs=y[rows])


class PerChainRegression(Target):
    """``regression``'s posterior as one tensor expression, one minibatch per chain and call.

    ``log_prob_and_score(z)`` with ``z`` ``(chains, ..., dim)`` draws ``B`` rows
    (with replacement) per chain and scores every point of a chain on its rows.
    The score is written out: ``-w + (N / B) sum_batch x_i (y_i - x_i . w)``.
    """

    def __init__(self, x, y, batch_size):
        self.x, self.y, self.batch_size = x, y, batch_size
        super().__init__(build_sites({"w": (torch.Size([x.shape[1]]), constraints.real)}), self._full_data,
                         dtype=x.dtype, description="PerChainRegression")

    def _full_data(self, flat):  # the exact log density (used only for exports, e.g. a run stopped in warm-up)
        residual = self.y - flat @ self.x.T
        return -0.5 * (flat * flat).sum(-1) - 0.5 * (residual * residual).sum(-1)

    def log_prob_and_score(self, z):
        num_rows, dim = self.x.shape
        points = z.reshape(z.shape[0], -1, dim)  # (chains, points per chain, dim)
        rows = torch.randint(num_rows, (z.shape[0], self.batch_size), device=z.device)
        x, y = self.x[rows], self.y[rows]  # (chains, B, dim), (chains, B)
        residual = y.unsqueeze(1) - torch.einsum("cbd,cpd->cpb", x, points)
        scale = num_rows / self.batch_size
        log_prob = -0.5 * (points * points).sum(-1) - 0.5 * scale * (residual * residual).sum(-1)
        score = -points + scale * torch.einsum("cpb,cbd->cpd", residual, x)
        return log_prob.reshape(z.shape[:-1]), score.reshape(z.shape)


def regression_data(num_rows, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, len(SCALES), generator=generator, dtype=torch.float64) * SCALES
    return x, x @ WEIGHTS + torch.randn(num_rows, generator=generator, dtype=torch.float64)


def closed_form(x, y):
    """Posterior mean and variances: precision ``X'X + I`` (unit noise and prior)."""
    covariance = torch.linalg.inv(x.T @ x + torch.eye(x.shape[1], dtype=x.dtype))
    return covariance @ x.T @ y, covariance.diagonal()


def test_the_vectorised_density_scores_each_chain_on_its_own_minibatch_of_the_model():
    x, y = regression_data(300)
    # 3 chains, 2 points each (a probe's pair)
    z = torch.randn(3, 2, len(SCALES), dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    log_prob, score = PerChainRegression(x, y, 10).log_prob_and_score(z)
    torch.manual_seed(0)
    rows = torch.randint(len(y), (3, 10))  # the rows it drew, one minibatch per chain
    for chain in range(3):
        model = Target.from_pyro(pyro.poutine.condition(regression, data={"data": rows[chain]}), x, y, 10)
        expected_log_prob, expected_score = model.log_prob_and_score(z[chain])
        torch.testing.assert_close(score[chain], expected_score)
        difference = expected_log_prob - log_prob[chain]  # the same up to the likelihood's constant
        torch.testing.assert_close(difference, difference[:1].expand(2))
    assert len({tuple(row) for row in rows.tolist()}) == 3


@pytest.mark.parametrize("density, num_rows", list(RUNS))
@pytest.mark.parametrize("name", list(ENGINES))
def test_defaults_match_the_closed_form_posterior(name, density, num_rows):
    x, y = regression_data(num_rows)
    mean, variance = closed_form(x, y)
    sd = variance.sqrt()
    chains, num_samples, num_warmup = RUNS[density, num_rows]
    start = time.perf_counter()
    if density == "pyro":
        engine = ENGINES[name](regression, num_chains=chains, num_samples=num_samples, num_warmup=num_warmup)
        post = engine.run(x, y, BATCH, seed=1, progress=False, jit_compile=True)
    else:
        engine = ENGINES[name](PerChainRegression(x, y, BATCH), num_chains=chains, num_samples=num_samples,
                               num_warmup=num_warmup)
        post = engine.run(seed=1, progress=False)
    draws = post.samples["w"]
    pooled = draws.reshape(-1, len(SCALES))
    mean_error = (pooled.mean(0) - mean).abs() / sd
    variance_ratio = pooled.var(0) / variance
    ess_mean, ess_sd = ess(draws, "mean"), ess(draws, "sd")
    print(f"{name} {density} N={num_rows}: mean error / sd {mean_error.max():.3f}, variance ratio "
          f"{variance_ratio.min():.3f}-{variance_ratio.max():.3f}, ESS mean {ess_mean.min():.0f} sd "
          f"{ess_sd.min():.0f}, {time.perf_counter() - start:.1f}s, step {post.meta['adapted']['step_size']:.3g}")
    assert (ess_mean >= MIN_ESS).all() and (ess_sd >= MIN_ESS).all(), \
        f"run too short to decide the bounds: ESS of the mean {ess_mean.tolist()}, of the sd {ess_sd.tolist()}"
    assert (mean_error < 0.1).all(), mean_error
    assert ((variance_ratio - 1).abs() < 0.2).all(), variance_ratio


def rule_step_size_for_sghmc_alone(x, y, batch_size):
    """The step :func:`hmc_step_size_rule` gives SGHMC's settings for a given step (mass 1, friction
    ``0.1 / eps``), written out from the closed form: ``eps = min(alpha / max_i v_i, 0.25 / omega)`` with
    ``alpha = 0.1 / eps``, i.e. ``eps = min(sqrt(0.1 / max_i v_i), 0.25 / omega)``; ``v_i`` the variance of
    the minibatch score (rows with replacement) at the posterior mean, ``omega^2`` the largest eigenvalue
    of the posterior precision."""
    mean, _ = closed_form(x, y)
    residual = y - x @ mean
    noise = len(y) ** 2 / batch_size * (x * residual.unsqueeze(-1)).square().mean(0)
    omega = torch.linalg.eigvalsh(x.T @ x + torch.eye(x.shape[1], dtype=x.dtype)).max().sqrt()
    return min(float((0.1 / noise.max()).sqrt()), float(0.25 / omega))


@pytest.mark.xfail(strict=True, reason=(
    "SGHMC(model, step_size=eps) alone keeps noise_estimate=0, so the minibatch noise is never subtracted: "
    "at the rule's eps it is half the momentum noise and the variances come out ~1.5x the closed form "
    "(measured 1.42-1.53x at 500 rows, B = 100, eps = 0.0058, 16 chains, ESS 2,490-2,690; means within "
    "0.02 sd), and no HealthWarning says so"))
def test_sghmc_given_only_a_step_size_matches_the_closed_form_or_warns():
    """What a user gets from ``SGHMC(model, step_size=eps)`` and nothing else, with ``eps`` from the
    documented rule, on a unit-scale Bayesian linear regression (closed-form posterior): the means within
    0.1 sd and the variances within 20% (ESS >= MIN_ESS first), or a :class:`HealthWarning`.  500 rows:
    the overdamped chains (friction ~16, omega^2 ~500) have an autocorrelation time of ~10-20 steps, so
    3,000 draws per chain keep r_hat clear of its 1.01 warning unless the chains really disagree."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, len(SCALES), generator=generator, dtype=torch.float64)
    y = x @ WEIGHTS + torch.randn(500, generator=generator, dtype=torch.float64)
    mean, variance = closed_form(x, y)
    step_size = rule_step_size_for_sghmc_alone(x, y, BATCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = SGHMC(PerChainRegression(x, y, BATCH), step_size=step_size, num_chains=16, num_warmup=200,
                     num_samples=3_000).run(seed=1, progress=False)
    health = [str(warning.message) for warning in caught if issubclass(warning.category, HealthWarning)]
    draws = post.samples["w"]
    pooled = draws.reshape(-1, len(SCALES))
    mean_error = (pooled.mean(0) - mean).abs() / variance.sqrt()
    variance_ratio = pooled.var(0) / variance
    ess_mean, ess_sd = ess(draws, "mean"), ess(draws, "sd")
    print(f"SGHMC, step {step_size:.3g} alone: mean error / sd {mean_error.tolist()}, variance ratio "
          f"{variance_ratio.tolist()}, ESS {ess_mean.tolist()}, health warnings {health}")
    if health:
        return  # the user was told
    assert (ess_mean >= MIN_ESS).all() and (ess_sd >= MIN_ESS).all(), (ess_mean, ess_sd)
    assert (mean_error < 0.1).all(), mean_error
    assert ((variance_ratio - 1).abs() < 0.2).all(), variance_ratio


def test_explicit_settings_are_kept_and_defaults_are_recorded():
    x, y = regression_data(500)
    explicit = SGHMC(regression, step_size=0.01, num_warmup=20, num_samples=10, num_chains=2)
    assert explicit.kernel.friction == pytest.approx(10.0) and explicit.kernel.mass == 1.0
    assert explicit.settings(None)["step_size"] == 0.01
    post = SGHMC(regression, mass=500.0, num_warmup=60, num_samples=10, num_chains=2).run(
        x, y, 50, seed=0, progress=False)
    adapted = post.meta["adapted"]
    assert adapted["mass"] == [500.0] * len(SCALES)  # the user's mass; friction and step chosen for it
    assert {"step_size", "friction", "noise_estimate"} <= adapted.keys()
    assert post.meta["settings"]["step_size"] == "adapted" and post.meta["settings"]["friction"] == "adapted"
    assert len(post.trace["step_size"]) == 70


def test_adaptation_resumes_bit_exactly(tmp_path):
    x, y = regression_data(300)
    engine = SGNHT(regression, num_warmup=60, num_samples=20, num_chains=2)
    first = engine.run(x, y, 30, seed=3, progress=False)
    path = tmp_path / "sgnht.ckpt"
    engine.run(x, y, 30, seed=3, progress=False, checkpoint=path, checkpoint_every=7,
               callback=lambda step, state, info: step == 30)  # stop inside the warm-up's windows
    resumed = engine.run(x, y, 30, seed=3, progress=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.samples["w"], first.samples["w"])


@pytest.mark.parametrize("engine, message", [
    (lambda: SGLD(regression, num_warmup=10), "num_warmup must be >= 50"),
    (lambda: __import__("bayeskit").inference.PSGLD(regression), "needs a step_size"),
])
def test_adaptation_needs_a_warmup_and_a_rule(engine, message):
    with pytest.raises(ValueError, match=message):
        engine()


@pytest.mark.parametrize("name", list(ENGINES))
def test_defaults_run_a_bayesian_neural_network(name):
    """A small BNN, where the weights' coupling puts the largest eigenvalue of the preconditioned Hessian far
    above its largest diagonal entry (``omega^2`` of 50-300 against 1): sized by the diagonal, the warm-up
    diverged at step 35; sized by the power iteration's ``omega^2``, every engine runs and predicts."""
    from bayeskit.datasets import load_breast_cancer
    from bayeskit.models import bayesian_mlp
    from bayeskit.models.bnn import predict

    train, test = load_breast_cancer().standardized().split(test_fraction=0.2, seed=0)
    engine = ENGINES[name](bayesian_mlp, num_chains=2, num_warmup=150, num_samples=50, thin=2)
    post = engine.run(train.x, train.y, hidden=(20,), subsample_size=64, seed=0, progress=False, jit_compile=True)
    assert post.meta["steps_completed"] == engine.plan.num_steps
    assert all(torch.isfinite(value).all() for value in post.samples.values())
    assert post.meta["adapted"]["omega2"] > 1  # the coupling the diagonal misses
    probability = torch.sigmoid(predict(post, test.x)).mean((0, 1)).reshape(-1)
    accuracy = ((probability > 0.5) == (test.y.reshape(-1) > 0.5)).double().mean()
    print(f"BNN {name}: accuracy {accuracy:.3f}, step {post.meta['adapted']['step_size']:.3g}, "
          f"omega2 {post.meta['adapted']['omega2']:.3g}")
    assert accuracy > 0.9


def test_a_diverging_warmup_step_is_undone_and_halved(monkeypatch, tmp_path):
    """With ``omega^2`` pinned at 1 (the diagonal's value) the BNN's travel step diverges; the warm-up undoes
    those steps and halves the step instead of ending the run, and resumes bit-exactly in the middle of it."""
    import bayeskit.inference.sgmcmc.adaptation as adaptation
    from bayeskit.datasets import load_breast_cancer
    from bayeskit.models import bayesian_mlp

    monkeypatch.setattr(adaptation, "omega2_from", lambda quotients: torch.ones((), dtype=quotients.dtype))
    train, _ = load_breast_cancer().standardized().split(test_fraction=0.2, seed=0)
    engine = SGLD(bayesian_mlp, num_chains=2, num_warmup=100, num_samples=10)
    options = dict(hidden=(20,), subsample_size=64, seed=0, progress=False, jit_compile=True)
    backoffs = []
    post = engine.run(train.x, train.y, **options,
                      callback=lambda step, state, info: backoffs.append(float(state.adaptation.get("backoff", 1))))
    assert min(backoffs[:8]) < 1  # some early step was undone
    assert all(torch.isfinite(value).all() for value in post.samples.values())
    path = tmp_path / "sgld.ckpt"
    engine.run(train.x, train.y, **options, checkpoint=path, checkpoint_every=3,
               callback=lambda step, state, info: step == 8)
    resumed = engine.run(train.x, train.y, **options, checkpoint=path, resume=True)
    assert all(torch.equal(resumed.samples[name], post.samples[name]) for name in post.samples)
