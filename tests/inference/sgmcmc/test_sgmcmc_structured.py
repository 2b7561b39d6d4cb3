"""Structured SG-MCMC (Alexos, Boyd and Mandt, ICML 2022) against closed-form Gaussian answers.

Ground truth: for a Gaussian target N(mu, Lambda^-1) split into blocks, the
fully factorised (mean-field) variational posterior has block k equal to
N(mu_k, (Lambda_kk)^-1) (Bishop, PRML section 10.1.2), narrower than the
marginal Sigma_kk.  With dropout rho (each other group kept at its current
value with probability rho) the averaged drift of block k is
-Lambda_kk d_k - rho Lambda_k,-k d_-k (the history term has mean zero), the
gradient of log N(mu, Lambda_rho^-1) with Lambda_rho = blockdiag(Lambda) +
rho * offdiag(Lambda): rho = 0 is mean-field, rho = 1 the target itself.

Discretisation: SGLD (and SGHMC, with its momentum in the state) with step
eps on a Gaussian is a linear recursion whose stationary covariance solves a
discrete Lyapunov equation (scipy, not the code under test); the tolerances
add its distance from the eps -> 0 answer to four Monte Carlo standard errors.
"""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.linalg
import torch
from test_sgmcmc_kernels import sghmc_stationary_covariance

from bayeskit import Target
from bayeskit.inference.sgmcmc.engines import SGLD
from bayeskit.inference.sgmcmc.structured import (
    ChainHistory,
    StructuredSGMCMC,
    context_slots,
    draw_contexts,
    resolve_groups,
    structured_points,
    structured_score,
)

# A 4-D Gaussian, groups {0, 1} and {2, 3}, strongly correlated across groups:
# mean-field block variance 0.587 against a marginal variance of 1.
COVARIANCE = np.array([[1.0, 0.3, 0.6, 0.4],
                       [0.3, 1.0, 0.4, 0.6],
                       [0.6, 0.4, 1.0, 0.3],
                       [0.4, 0.6, 0.3, 1.0]])
PRECISION = np.linalg.inv(COVARIANCE)
MEAN = np.array([1.0, -1.0, 0.5, 2.0])
BLOCKS = (slice(0, 2), slice(2, 4))


def gaussian_target():
    precision, mean = torch.tensor(PRECISION), torch.tensor(MEAN)

    def log_prob(x):
        d = x - mean
        # elementwise rather than a matmul: tiny float64 matmuls are slow on a busy 2-core machine
        return -0.5 * (d.unsqueeze(-1) * precision * d.unsqueeze(-2)).sum((-2, -1))

    return Target.from_log_prob(log_prob, 4)


def dropout_precision(rho):
    """Lambda_rho: the precision whose Gaussian is the fixed point of dropout rho."""
    mixed = rho * PRECISION
    for block in BLOCKS:
        mixed[block, block] = PRECISION[block, block]
    return mixed


def sgld_covariance(precision, step_size):
    """Stationary covariance of theta <- theta - (eps/2) Lambda (theta - mu) + N(0, eps I)."""
    transition = np.eye(len(precision)) - 0.5 * step_size * precision
    return scipy.linalg.solve_discrete_lyapunov(transition, step_size * np.eye(len(precision)))


def mean_field_sgld_covariances(step_size):
    """Stationary block covariances of fully factorised SGLD with one context per step.

    Block k: theta_k <- theta_k - (eps/2)[Lambda_kk d_k + Lambda_k,-k e_-k] + N(0, eps I) with
    e_-k an independent draw of the other block, so its covariance V_-k enters as gradient noise.
    """
    covariances = [np.linalg.inv(PRECISION[b, b]) for b in BLOCKS]
    for _ in range(100):  # a contraction: the noise term is O(eps^2)
        updated = []
        for k, (own, other) in enumerate([BLOCKS, BLOCKS[::-1]]):
            transition = np.eye(2) - 0.5 * step_size * PRECISION[own, own]
            coupling = PRECISION[own, other]
            noise = 0.25 * step_size**2 * coupling @ covariances[1 - k] @ coupling.T + step_size * np.eye(2)
            updated.append(scipy.linalg.solve_discrete_lyapunov(transition, noise))
        covariances = updated
    return covariances


def mean_field_sghmc_covariances(step_size, friction):
    """Stationary position covariances of fully factorised SGHMC (unit mass) with one context per step.

    Block k, state (d_k, m_k) with d_k = theta_k - mu_k:
    m_k <- (1 - eps alpha) m_k - eps [Lambda_kk d_k + Lambda_k,-k e_-k] + N(0, 2 alpha eps I),
    d_k <- d_k + eps m_k (the new momentum), with e_-k an independent draw of the other block, whose
    covariance V_-k enters the momentum as gradient noise eps^2 Lambda_k,-k V_-k Lambda_-k,k.
    """
    eye = np.eye(2)
    covariances = [np.linalg.inv(PRECISION[b, b]) for b in BLOCKS]
    for _ in range(100):  # a contraction: the context noise is O(eps^2)
        updated = []
        for k, (own, other) in enumerate([BLOCKS, BLOCKS[::-1]]):
            coupling = PRECISION[own, other]
            momentum_noise = (step_size**2 * coupling @ covariances[1 - k] @ coupling.T
                              + 2 * friction * step_size * eye)
            joint = sghmc_stationary_covariance(step_size, friction, PRECISION[own, own], momentum_noise)
            updated.append(joint[:2, :2])
        covariances = updated
    return covariances


def covariance_about_mean(posterior):
    """Sampled covariance about the true mean, and its standard error from the spread over chains."""
    d = posterior.samples["theta"] - torch.tensor(MEAN)
    per_chain = torch.einsum("cni,cnj->cij", d, d).numpy() / d.shape[1]
    return per_chain.mean(0), per_chain.std(0, ddof=1) / np.sqrt(len(per_chain))


def assert_block_covariances(estimate, standard_error, expected, allowance):
    for k, block in enumerate(BLOCKS):
        error = np.abs(estimate[block, block] - expected[block, block])
        tolerance = 4 * standard_error[block, block] + allowance[block, block]
        assert (error < tolerance).all(), (f"group {k}: sampled {estimate[block, block].round(4).tolist()}, "
                                           f"expected {expected[block, block].round(4).tolist()}")


# ------------------------------------------------------------------------- functional core
def test_structured_score_is_each_groups_gradient_at_its_context(float64):
    # Closed form: grad_k log N = -Lambda_kk (theta_k - mu_k) - Lambda_k,-k (context_-k - mu_-k).
    target = gaussian_target()
    layout = resolve_groups([slice(0, 2), slice(2, 4)], target)
    generator = torch.Generator().manual_seed(0)
    position = torch.randn(3, 4, generator=generator)
    contexts = torch.randn(3, 2, 1, 4, generator=generator)
    points = structured_points(position, contexts, layout.group_index)
    _, scores = target.log_prob_and_score(points)
    score = structured_score(scores, layout.group_index)
    precision, mean = torch.tensor(PRECISION), torch.tensor(MEAN)
    for k, (own, other) in enumerate([BLOCKS, BLOCKS[::-1]]):
        expected = (-(position[:, own] - mean[own]) @ precision[own, own]
                    - (contexts[:, k, 0, other] - mean[other]) @ precision[other, own])
        torch.testing.assert_close(score[:, own], expected)
        torch.testing.assert_close(points[:, k, 0, own], position[:, own])
        torch.testing.assert_close(points[:, k, 0, other], contexts[:, k, 0, other])


def test_points_keep_current_values_where_dropout_says(float64):
    layout = resolve_groups([[0, 2], [1]], Target.from_log_prob(lambda x: -0.5 * (x * x).sum(-1), 3))
    position, contexts = torch.zeros(1, 3), torch.ones(1, 2, 2, 3)
    keep = torch.tensor([[[[False, True], [False, False]],    # group 0's points: keep group 1, then nothing
                          [[True, False], [False, False]]]])  # group 1's points: keep group 0, then nothing
    points = structured_points(position, contexts, layout.group_index, keep)
    expected = torch.tensor([[[[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                              [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0]]]])
    torch.testing.assert_close(points, expected)
    scores = torch.arange(12.0).reshape(1, 2, 2, 3)  # group 0 from points (0, m), group 1 from points (1, m)
    torch.testing.assert_close(structured_score(scores, layout.group_index),
                               torch.tensor([[1.5, 8.5, 3.5]]))


# ---------------------------------------------------------------------------- engine runs
def two_layer_model(x, y):
    # Written to broadcast over leading particle/chain dimensions (scalar sites then carry a trailing 1).
    w0 = pyro.sample("w0", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
    b0 = pyro.sample("b0", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    w1 = pyro.sample("w1", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    b1 = pyro.sample("b1", dist.Normal(0.0, 1.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.5))
    with pyro.plate("data", len(y), subsample_size=16) as index:
        hidden = torch.tanh((x[index].unsqueeze(-1) * w0).sum(-2) + b0)
        pyro.sample("y", dist.Normal((hidden * w1).sum(-1) + b1, scale), obs=y[index])


def regression_data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=g)
    return x, torch.sin(x[:, 0]) - 0.5 * x[:, 1] + 0.1 * torch.randn(64, generator=g)


LAYERS = [["w0", "b0"], ["w1", "b1", "scale"]]


@pytest.mark.filterwarnings(r"ignore:chain \d+. median log density of the draws far below")  # 10 steps
@pytest.mark.parametrize("kernel", ["sgld", "psgld", "sghmc", "sgnht"])
def test_groups_by_site_name_on_a_minibatched_pyro_model(kernel):
    x, y = regression_data()
    engine = StructuredSGMCMC(two_layer_model, groups=LAYERS, kernel=kernel, step_size=1e-3, num_samples=5,
                              num_warmup=5, num_chains=2, buffer_size=4, num_context_draws=2, dropout="uniform")
    post = engine.run(x, y, seed=0, progress=False)
    assert post.samples["w0"].shape == (2, 5, 2, 3) and post.samples["scale"].shape == (2, 5)
    assert (post.samples["scale"] > 0).all() and all(torch.isfinite(v).all() for v in post.samples.values())
    settings = post.meta["settings"]
    assert settings["groups"] == ["w0+b0", "w1+b1+scale"] and settings["dropout"] == "beta(1.0, 1.0)"
    assert post.meta["engine"] == "StructuredSGMCMC" and post.trace["log_prob"].shape == (10,)


def test_default_is_one_group_per_site():
    target = Target.from_pyro(two_layer_model, *regression_data())
    layout = resolve_groups(None, target)
    assert layout.labels == ("w0", "b0", "w1", "b1", "scale")
    assert layout.group_index.tolist() == [0] * 6 + [1] * 3 + [2] * 3 + [3] + [4]


def test_same_seed_same_draws_and_resume_from_checkpoint(float64, tmp_path):
    def engine():
        return StructuredSGMCMC(gaussian_target(), groups=[slice(0, 2), slice(2, 4)], step_size=0.1,
                                num_samples=20, num_warmup=10, num_chains=3, buffer_size=7, dropout=0.3)

    first = engine().run(seed=5, progress=False)
    assert torch.equal(first.samples["theta"], engine().run(seed=5, progress=False).samples["theta"])
    assert not torch.equal(first.samples["theta"], engine().run(seed=6, progress=False).samples["theta"])
    # The buffer is part of the state: a resumed run ends exactly where the straight one does.
    path = tmp_path / "s-sgmcmc.ckpt"
    stopped = engine()
    stopped.run(seed=5, progress=False, checkpoint=path, checkpoint_every=4,
                callback=lambda step, state, info: step == 13)
    resumed = engine().run(seed=5, progress=False, checkpoint=path, resume=True)
    assert torch.equal(resumed.samples["theta"], first.samples["theta"])


def test_dropout_one_is_plain_sgld(float64):
    # Every context is the current state, so the structured score is the full score.
    settings = dict(step_size=0.1, num_samples=30, num_warmup=10, num_chains=3)
    structured = StructuredSGMCMC(gaussian_target(), groups=[slice(0, 2), slice(2, 4)], dropout=1.0, **settings)
    plain = SGLD(gaussian_target(), **settings)
    torch.testing.assert_close(structured.run(seed=2, progress=False).samples["theta"],
                               plain.run(seed=2, progress=False).samples["theta"])


def test_single_group_warns_that_it_is_plain_sgmcmc(float64):
    engine = StructuredSGMCMC(gaussian_target(), step_size=0.1, num_samples=2, num_warmup=0, num_chains=1)
    with pytest.warns(UserWarning, match="single group"):
        engine.run(seed=0, progress=False)


# ------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("groups, message", [
    ([["w0", "b0"], ["w1", "bias"]], "unknown site 'bias'"),
    ([["w0", "b0"], ["w1", "b1"]], r"leave site 'scale' in no group"),
    ([["w0", "b0", "w1"], ["w1", "b1", "scale"]], r"groups\[0\] and groups\[1\] overlap at site 'w1'"),
    ([["w0", "b0"], [], ["w1", "b1", "scale"]], r"groups\[1\] is empty"),
    ([], "groups is empty"),
    ([slice(0, 9), slice(9, 20)], r"reaches outside"),
    ([slice(0, 9), [9, 10, 11, 12, 13, 99]], r"index 99 is outside"),
])
def test_bad_groups_are_refused_naming_the_site(groups, message):
    target = Target.from_pyro(two_layer_model, *regression_data())
    with pytest.raises(ValueError, match=message):
        StructuredSGMCMC(target, groups=groups, step_size=0.1)


def test_bad_groups_on_a_model_are_refused_when_it_runs():
    engine = StructuredSGMCMC(two_layer_model, groups=[["w0"], ["nope"]], step_size=0.1, num_samples=2)
    with pytest.raises(ValueError, match="unknown site 'nope'.*'w0', 'b0'"):
        engine.run(*regression_data(), seed=0, progress=False)


@pytest.mark.parametrize("options, error, message", [
    (dict(dropout=-0.1), ValueError, r"dropout must be a probability in \[0, 1\]"),
    (dict(dropout=1.5), ValueError, r"dropout must be a probability in \[0, 1\]"),
    (dict(dropout=float("nan")), ValueError, r"dropout must be a probability"),
    (dict(dropout="gaussian"), ValueError, "dropout must be None"),
    (dict(dropout=("beta", 0.0, 1.0)), ValueError, "positive finite a and b"),
    (dict(buffer_size=0), ValueError, "buffer_size must be an int >= 1"),
    (dict(buffer_size=2.5), ValueError, "buffer_size must be an int >= 1"),
    (dict(buffer_every=0), ValueError, "buffer_every"),
    (dict(num_context_draws=0), ValueError, "num_context_draws"),
    (dict(share_history="yes"), TypeError, "share_history"),
    (dict(groups="w0"), TypeError, "groups must be a list of groups"),
    (dict(groups=[[0.5, 1.0]]), TypeError, r"groups\[0\] holds 0.5"),
    (dict(kernel="langevin"), ValueError, "unknown SG-MCMC kernel"),
    (dict(kernel_options={"friction": 1.0}), TypeError, "do not fit kernel 'sgld'"),
])
def test_bad_hyperparameters_are_refused(float64, options, error, message):
    with pytest.raises(error, match=message):
        StructuredSGMCMC(gaussian_target(), **{"step_size": 0.1, "groups": [[0, 1], [2, 3]], **options})


# ------------------------------------------------------------------------- statistical
@pytest.mark.slow
def test_factorised_scheme_samples_the_mean_field_posterior(float64):
    # Pooled histories (share_history) estimate q_-k from 256 chains, so the
    # history's own O(tau / T) error is negligible and what is left is Monte
    # Carlo error and the eps = 0.1 discretisation, predicted by the Lyapunov
    # recursion (+6% on the variances).  Chains start at the mean: this test is
    # about the fixed point, not the transient.
    step_size = 0.1
    engine = StructuredSGMCMC(gaussian_target(), groups=[slice(0, 2), slice(2, 4)], step_size=step_size,
                              num_chains=256, num_warmup=600, num_samples=1200, buffer_size=300, buffer_every=4,
                              share_history=True, init=torch.tensor(MEAN))
    estimate, standard_error = covariance_about_mean(engine.run(seed=0, progress=False))
    mean_field = np.linalg.inv(dropout_precision(0.0))
    discrete = scipy.linalg.block_diag(*mean_field_sgld_covariances(step_size))
    assert_block_covariances(estimate, standard_error, mean_field, np.abs(discrete - mean_field))
    # Sharper: the eps = 0.1 recursion's own fixed point (measured within about one standard error of it).
    assert_block_covariances(estimate, standard_error, discrete, np.zeros((4, 4)))
    # ... and not the marginal, which is far outside that band; nor any cross-group correlation
    for block in BLOCKS:
        halfway = 0.5 * (np.diag(mean_field[block, block]) + np.diag(COVARIANCE[block, block]))
        assert (np.diag(estimate[block, block]) < halfway).all()
    assert (np.abs(estimate[BLOCKS[0], BLOCKS[1]]) < 4 * standard_error[BLOCKS[0], BLOCKS[1]] + 0.01).all()


@pytest.mark.slow
def test_factorised_sghmc_samples_the_mean_field_posterior(float64):
    """The SGHMC kernel (default friction, 0.1 momentum decay per step) at the mean-field fixed point.

    Ground truth: PRML's mean-field blocks (eps -> 0) and, sharper, the stationary covariance of the
    eps = 0.1 recursion itself from scipy's discrete Lyapunov solver (momentum included; the other
    block's context enters as gradient noise).  Bound: 4 standard errors over chains, plus, for the
    eps -> 0 answer, its distance from the recursion's.  The chains' autocorrelation time is ~20 steps
    (decay rate alpha / 2 = 0.5 per unit time), so 128 chains x 800 draws resolve the variances to ~1.5%.
    """
    step_size = 0.1
    engine = StructuredSGMCMC(gaussian_target(), groups=[slice(0, 2), slice(2, 4)], kernel="sghmc",
                              step_size=step_size, num_chains=128, num_warmup=600, num_samples=800,
                              buffer_size=300, buffer_every=4, share_history=True, init=torch.tensor(MEAN))
    assert engine.kernel.friction == pytest.approx(1.0)
    estimate, standard_error = covariance_about_mean(engine.run(seed=0, progress=False))
    mean_field = np.linalg.inv(dropout_precision(0.0))
    discrete = scipy.linalg.block_diag(*mean_field_sghmc_covariances(step_size, engine.kernel.friction))
    assert_block_covariances(estimate, standard_error, mean_field, np.abs(discrete - mean_field))
    assert_block_covariances(estimate, standard_error, discrete, np.zeros((4, 4)))
    for block in BLOCKS:  # not the marginal
        halfway = 0.5 * (np.diag(mean_field[block, block]) + np.diag(COVARIANCE[block, block]))
        assert (np.diag(estimate[block, block]) < halfway).all()
    assert (np.abs(estimate[BLOCKS[0], BLOCKS[1]]) < 4 * standard_error[BLOCKS[0], BLOCKS[1]] + 0.01).all()


@pytest.mark.slow
def test_each_chains_own_history_lands_near_the_mean_field_posterior(float64):
    # The paper's scheme: each chain draws contexts from its own last states.
    # Chains are independent, so the spread over chains gives honest standard
    # errors for the means.  A single history estimates q_-k with a slowly
    # drifting error of relative order tau / T (tau ~ 2.6 time units, T = 200
    # to 400 here), which leaves the variances a few percent high and a
    # cross-group covariance of about 0.01: allowed for with 0.03 on top of the
    # Lyapunov prediction for eps = 0.2.  Chains start at the mean: from afar
    # the means converge only on the time scale of the history (it lags), which
    # would need a warm-up of several buffer spans.
    step_size = 0.2
    engine = StructuredSGMCMC(gaussian_target(), groups=[[0, 1], [2, 3]], step_size=step_size, num_chains=256,
                              num_warmup=1000, num_samples=800, buffer_size=500, buffer_every=4,
                              init=torch.tensor(MEAN))
    posterior = engine.run(seed=1, progress=False)
    draws = posterior.samples["theta"]
    chain_means = draws.mean(1)
    mean_error = (chain_means.mean(0) - torch.tensor(MEAN)).abs()
    assert (mean_error < 4 * chain_means.std(0) / 256**0.5).all(), mean_error
    estimate, standard_error = covariance_about_mean(posterior)
    discrete = scipy.linalg.block_diag(*mean_field_sgld_covariances(step_size))
    assert_block_covariances(estimate, standard_error, discrete, np.full((4, 4), 0.03))


@pytest.mark.slow
@pytest.mark.parametrize("rho", [0.5, 1.0])
def test_dropout_interpolates_towards_the_full_posterior(float64, rho):
    # rho = 1 keeps every group current: SGLD on the target, whose block
    # covariance is the marginal Sigma_kk (here with the known eps bias of SGLD).
    # rho = 0.5: the fixed point N(mu, Lambda_rho^-1), in between.  The allowance
    # doubles the deterministic discretisation bias to cover the O(eps) term of
    # the random mask's gradient noise.
    step_size = 0.1
    engine = StructuredSGMCMC(gaussian_target(), groups=[slice(0, 2), slice(2, 4)], step_size=step_size,
                              num_chains=256, num_warmup=600, num_samples=1000, buffer_size=300, buffer_every=4,
                              share_history=True, dropout=rho, init=torch.tensor(MEAN))
    estimate, standard_error = covariance_about_mean(engine.run(seed=3, progress=False))
    precision = dropout_precision(rho)
    expected = np.linalg.inv(precision)
    allowance = (1 if rho == 1.0 else 2) * np.abs(sgld_covariance(precision, step_size) - expected)
    assert_block_covariances(estimate, standard_error, expected, allowance)
    if rho < 1:
        mean_field_variance, marginal_variance = np.linalg.inv(PRECISION[:2, :2])[0, 0], COVARIANCE[0, 0]
        variances = np.diag(estimate)
        assert (variances > mean_field_variance + 0.05).all() and (variances < marginal_variance - 0.05).all()
    else:
        cross = estimate[BLOCKS[0], BLOCKS[1]]
        assert (np.abs(cross - expected[BLOCKS[0], BLOCKS[1]])
                < 4 * standard_error[BLOCKS[0], BLOCKS[1]] + allowance[BLOCKS[0], BLOCKS[1]]).all()


# ------------------------------------------------------------------------ device and dtype
def float32_gaussian_target(device):
    precision = torch.tensor(PRECISION, dtype=torch.float32, device=device)
    mean = torch.tensor(MEAN, dtype=torch.float32, device=device)

    def log_prob(x):
        d = x - mean
        return -0.5 * (d.unsqueeze(-1) * precision * d.unsqueeze(-2)).sum((-2, -1))

    return Target.from_log_prob(log_prob, 4, dtype=torch.float32, device=device)


def run_on(device):
    engine = StructuredSGMCMC(float32_gaussian_target(device), groups=[[0, 1], [2, 3]], step_size=0.1,
                              num_samples=10, num_warmup=5, num_chains=3, buffer_size=4, share_history=True,
                              num_context_draws=2, dropout="uniform")
    return engine.run(seed=0, progress=False)


def test_dtype_follows_the_target():
    post = run_on("cpu")
    assert post.samples["theta"].dtype == torch.float32 and post.meta["dtype"] == "float32"


@pytest.mark.gpu
def test_runs_on_cuda():
    post = run_on("cuda")
    assert post.meta["device"].startswith("cuda") and torch.isfinite(post.samples["theta"]).all()


# ------------------------------------------------------------------------- the chain history
@pytest.mark.parametrize("buffer_size", [1, 2, 4, 7, 30])
@pytest.mark.parametrize("share_history", [False, True])
def test_the_chain_history_reads_as_a_ring_buffer_and_keeps_old_versions(buffer_size, share_history):
    # Against the plain ring buffer written in place: state p in slot p % buffer_size.
    generator = torch.Generator().manual_seed(buffer_size)
    states = torch.randn(80, 3, 2, generator=generator)
    ring = torch.zeros(3, buffer_size, 2)
    ring[:, 0] = states[0]
    history, versions = ChainHistory.start(states[0], buffer_size), []
    for count, state in enumerate(states[1:], start=1):
        versions.append((history, ring.clone()))
        history = history.push(state)
        ring[:, count % buffer_size] = state
        assert history.num_filled == min(count + 1, buffer_size) and torch.equal(history.buffer(), ring)
        torch.manual_seed(count)
        expected = draw_contexts(ring, history.num_filled, 2, 3, share_history=share_history)
        torch.manual_seed(count)
        rows, slots = context_slots(3, history.num_filled, 2, 3, device=ring.device, share_history=share_history)
        assert torch.equal(history.gather(rows, slots), expected)
    for old, old_ring in versions:  # pushing never changed an earlier history
        assert torch.equal(old.buffer(), old_ring)
    restored = ChainHistory.of(history.buffer(), history.count)
    assert torch.equal(restored.push(states[0]).buffer(), history.push(states[0]).buffer())
