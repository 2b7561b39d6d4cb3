"""Mixtures of experts: the marginal likelihood against a by-hand enumeration, vectorisation, predictive
densities, relabelling, and posterior recovery against the truth and against NumPyro NUTS."""

import math

import numpy as np
import pyro
import pytest
import torch
from conftest import FULL
from scipy import stats
from scipy.special import logsumexp, softmax

import bayeskit as bk
from bayeskit.inference import SGHMC, SVGD, find_modes
from bayeskit.models import MixtureOfExperts
from bayeskit.models.moe import nest

TRUTH = {  # three experts along x: expert 0 left of -4/3, expert 2 right of 4/3 (the reference gate)
    "gate_intercept": torch.tensor([0.0, 2.0]), "gate_coef": torch.tensor([[-3.0], [-1.5]]),
    "expert_intercept": torch.tensor([-2.0, 0.0, 2.0]), "expert_coef": torch.tensor([[1.0], [-1.5], [0.5]]),
    "expert_scale": torch.tensor([0.3, 0.2, 0.4]),
}


def simulate(truth, n, seed, groups=None, effects=None):
    """Draw (x, y, labels) from a Gaussian MoE with one covariate on [-3, 3]; optional gate effects per group."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=generator) * 6 - 3
    logits = truth["gate_intercept"] + x @ truth["gate_coef"].T
    if effects is not None:
        logits = logits + effects[groups]
    logits = torch.cat([logits, torch.zeros(n, 1)], dim=-1)
    labels = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
    mean = truth["expert_intercept"][labels] + (x * truth["expert_coef"][labels]).sum(-1)
    y = mean + truth["expert_scale"][labels] * torch.randn(n, generator=generator)
    return x, y, labels


def random_params(moe, p, num_draws, seed):
    """Arbitrary parameter values for every site, ``(num_draws, *shape)``, drawn from a prior-like spread."""
    target = bk.Target.from_pyro(moe, torch.zeros(3, p), torch.zeros(3) if moe.family != "bernoulli" else
                                 torch.tensor([0.0, 1.0, 0.0]), groups=_zero_groups(moe, 3))
    return target.constrain(0.7 * torch.randn(num_draws, target.dim, generator=torch.Generator().manual_seed(seed)))


def _zero_groups(moe, n):
    return {level: torch.zeros(n, dtype=torch.long) for level in moe.level_sizes}


def as_posterior(values, num_chains=1):
    return bk.Posterior({name: v.reshape(num_chains, -1, *v.shape[1:]) for name, v in values.items()})


def manual_log_joint(moe, params, x, y, groups):
    """log softmax(eta_i)_k + log f_k(y_i), ``(rows, K)``, with numpy and scipy.stats, one row at a time."""
    p = {name: v.double().numpy() for name, v in params.items()}
    K = moe.num_experts
    if moe.prior == "horseshoe":
        for block in ("gate", "expert"):
            if f"{block}_coef_raw" in p:
                tau, lam = p[f"{block}_global"], p["coef_local"]
                if f"{block}_slab" in p:  # Piironen and Vehtari's lambda_tilde^2 = c^2 lam^2 / (c^2 + tau^2 lam^2)
                    c2 = p[f"{block}_slab"]
                    lam = np.sqrt(c2 * lam**2 / (c2 + tau**2 * lam**2))
                p[f"{block}_coef"] = p[f"{block}_coef_raw"] * tau * lam
    x, y = x.double().numpy(), y.double().numpy()
    rows = []
    for i in range(len(y)):
        eta = np.zeros(K)
        if K > 1:
            eta[:-1] = p["gate_intercept"] + p["gate_coef"] @ x[i]
            for level in moe.level_sizes:
                eta[:-1] += p[f"gate_{level}_sd"] * p[f"gate_{level}_z"][int(groups[level][i])]
        log_gate = eta - logsumexp(eta)
        linear = p["expert_intercept"] + p["expert_coef"] @ x[i]
        if moe.family == "gaussian":
            log_f = stats.norm.logpdf(y[i], linear, p["expert_scale"])
        elif moe.family == "bernoulli":
            log_f = stats.bernoulli.logpmf(y[i], 1 / (1 + np.exp(-linear)))
        else:
            log_f = stats.poisson.logpmf(y[i], np.exp(linear))
        rows.append(log_gate + log_f)
    return np.array(rows)


def manual_log_likelihood(moe, params, x, y, groups):
    """sum_i log sum_k softmax(eta_i)_k f_k(y_i)."""
    return float(logsumexp(manual_log_joint(moe, params, x, y, groups), axis=-1).sum())


def manual_expert_moments(moe, params, x):
    """Per row and expert, the gate probability and the expert's mean and variance, ``(rows, K)`` each, by hand."""
    p = {name: v.double().numpy() for name, v in params.items()}
    x = x.double().numpy()
    eta = np.zeros((len(x), moe.num_experts))
    if moe.num_experts > 1:
        eta[:, :-1] = p["gate_intercept"] + x @ p["gate_coef"].T
    gate = np.exp(eta - logsumexp(eta, axis=-1, keepdims=True))
    linear = p["expert_intercept"] + x @ p["expert_coef"].T
    if moe.family == "gaussian":
        mean, variance = linear, np.broadcast_to(p["expert_scale"] ** 2, linear.shape)
    elif moe.family == "bernoulli":
        mean = 1 / (1 + np.exp(-linear))
        variance = mean * (1 - mean)
    else:
        mean = variance = np.exp(linear)
    return gate, mean, variance


MODELS = {
    "gaussian": lambda: MixtureOfExperts(3),
    "bernoulli": lambda: MixtureOfExperts(2, "bernoulli"),
    "poisson": lambda: MixtureOfExperts(2, "poisson", coef_scale=0.5),
    "mixed": lambda: MixtureOfExperts(3, levels={"site": 4, "year": ["a", "b", "c"]}),
    "horseshoe": lambda: MixtureOfExperts(2, prior="horseshoe", levels={"site": 4}),
    "horseshoe_plain": lambda: MixtureOfExperts(2, prior="horseshoe", slab_scale=None),
    "laplace_ordered": lambda: MixtureOfExperts(3, prior="laplace", ordered=True, noise_floor=0.1),
    "glm": lambda: MixtureOfExperts(1),
}


def data_for(moe, n=12, p=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator, dtype=torch.float64)
    y = {"gaussian": torch.randn(n, generator=generator, dtype=torch.float64),
         "bernoulli": torch.randint(0, 2, (n,), generator=generator).double(),
         "poisson": torch.randint(0, 6, (n,), generator=generator).double()}[moe.family]
    groups = {level: torch.randint(0, size, (n,), generator=generator) for level, size in moe.level_sizes.items()}
    return x, y, groups


@pytest.mark.parametrize("name", sorted(MODELS))
def test_marginal_likelihood_matches_enumeration_by_hand(name, float64):
    moe = MODELS[name]()
    x, y, groups = data_for(moe)
    params = {k: v[0] for k, v in random_params(moe, x.shape[1], 1, seed=1).items()}
    trace = pyro.poutine.trace(pyro.poutine.condition(moe, data=params)).get_trace(x, y, groups=groups)
    ours = float(trace.nodes["y"]["fn"].log_prob(y).sum())
    assert ours == pytest.approx(manual_log_likelihood(moe, params, x, y, groups), rel=1e-10, abs=1e-10)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_vectorised_density_equals_point_by_point(name, float64):
    """The particle plate's slot is dropped and restored correctly for every site layout."""
    moe = MODELS[name]()
    x, y, groups = data_for(moe)
    batched = bk.Target.from_pyro(moe, x, y, groups=groups, vectorize=True)
    single = bk.Target.from_pyro(moe, x, y, groups=groups, vectorize=False)
    z = 0.5 * torch.randn(5, batched.dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (lp_b, score_b), (lp_s, score_s) = batched.log_prob_and_score(z), single.log_prob_and_score(z)
    assert torch.allclose(lp_b, lp_s, rtol=1e-10) and torch.allclose(score_b, score_s, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("name", ["gaussian", "mixed", "bernoulli", "poisson"])
def test_predictive_is_the_weighted_mixture_over_draws_and_experts(name, float64):
    moe = MODELS[name]()
    x, y, groups = data_for(moe, n=6)
    draws = random_params(moe, x.shape[1], 5, seed=2)
    log_weights = torch.log(torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64))
    post = bk.Posterior({k: v[None] for k, v in draws.items()}, log_weights=log_weights[None])
    lpd = moe.log_predictive_density(post, x, y, groups=groups)
    for i in range(len(y)):
        row = {level: ids[i:i + 1] for level, ids in groups.items()}
        per_draw = [manual_log_likelihood(moe, {k: v[s] for k, v in draws.items()}, x[i:i + 1], y[i:i + 1], row)
                    for s in range(5)]
        assert float(lpd[i]) == pytest.approx(float(logsumexp(np.array(per_draw) + log_weights.numpy())),
                                              rel=1e-10)


def _weighted_draws(moe, p, seed):
    """Five random draws with unequal weights, as a Posterior, and the draws and weights themselves."""
    draws = random_params(moe, p, 5, seed=seed)
    weights = torch.tensor([0.1, 0.3, 0.2, 0.25, 0.15], dtype=torch.float64)
    return bk.Posterior({k: v[None] for k, v in draws.items()}, log_weights=weights.log()[None]), draws, weights


@pytest.mark.parametrize("name", ["gaussian", "mixed", "bernoulli", "poisson"])
def test_responsibilities_are_the_weighted_posterior_expert_probabilities_by_hand(name, float64):
    """sum_s w_s softmax_k(log gate_k + log f_k(y_i)) at fixed draws, the softmax taken with scipy by hand."""
    moe = MODELS[name]()
    x, y, groups = data_for(moe, n=6)
    post, draws, weights = _weighted_draws(moe, x.shape[1], seed=3)
    ours = moe.responsibilities(post, x, y, groups=groups)
    by_hand = sum(float(weights[s]) * softmax(manual_log_joint(moe, {k: v[s] for k, v in draws.items()}, x, y, groups),
                                              axis=-1) for s in range(5))
    np.testing.assert_allclose(ours.numpy(), by_hand, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ours.sum(-1).numpy(), 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", ["gaussian", "bernoulli", "poisson"])
def test_predictive_variance_is_the_mixture_variance_by_hand(name, float64):
    """Law of total variance over draws s and experts k, with the experts' own means m and variances v:
    Var = sum_sk w_s pi_sk (v_sk + m_sk^2) - (sum_sk w_s pi_sk m_sk)^2."""
    moe = MODELS[name]()
    x, _, _ = data_for(moe, n=6)
    post, draws, weights = _weighted_draws(moe, x.shape[1], seed=4)
    predictive = moe.predictive(post, x)
    first, second = 0.0, 0.0
    for s in range(5):
        gate, mean, variance = manual_expert_moments(moe, {k: v[s] for k, v in draws.items()}, x)
        first = first + float(weights[s]) * (gate * mean).sum(-1)
        second = second + float(weights[s]) * (gate * (variance + mean**2)).sum(-1)
    np.testing.assert_allclose(predictive.mean.numpy(), first, rtol=1e-9)
    np.testing.assert_allclose(predictive.variance.numpy(), second - first**2, rtol=1e-9)


def test_new_groups_draw_their_effects_from_the_prior(float64):
    """Id -1 marks an unseen group: the predictive averages the gate over N(0, sd^2) effects."""
    moe = MixtureOfExperts(2, levels={"site": 3})
    x = torch.zeros(1, 1, dtype=torch.float64)
    one = {"gate_intercept": torch.zeros(1, 1), "gate_coef": torch.zeros(1, 1, 1), "gate_site_sd": torch.ones(1),
           "gate_site_z": torch.full((1, 3, 1), 5.0), "expert_intercept": torch.tensor([[1.0, -1.0]]),
           "expert_coef": torch.zeros(1, 2, 1), "expert_scale": torch.ones(1, 2)}
    post = as_posterior({k: v.double().expand(4000, *v.shape[1:]) for k, v in one.items()})
    seen = moe.predictive(post, x, groups={"site": torch.tensor([0])}).mean
    new = moe.predictive(post, x, groups={"site": torch.tensor([-1])}, seed=3).mean
    assert float(seen) == pytest.approx(2 * torch.sigmoid(torch.tensor(5.0)).item() - 1, rel=1e-9)
    assert abs(float(new)) < 4 * 1 / math.sqrt(4000)  # E[2 sigmoid(w) - 1] = 0 for w ~ N(0, 1)
    with pytest.raises(ValueError, match="ids must lie in 0 to 2"):
        moe(x, torch.zeros(1, dtype=torch.float64), groups={"site": torch.tensor([-1])})


@pytest.mark.parametrize("name", ["gaussian", "mixed", "horseshoe", "horseshoe_plain"])
def test_relabel_undoes_label_switching_and_keeps_predictions(name, float64):
    moe = MODELS[name]()
    x, y, groups = data_for(moe, n=8)
    base = random_params(moe, x.shape[1], 1, seed=4)
    base["expert_intercept"] = torch.linspace(-2.0, 2.0, moe.num_experts, dtype=torch.float64)[None]  # distinct
    noise = random_params(moe, x.shape[1], 60, seed=5)
    # 60 draws near one point: small perturbations of its unconstrained value
    target = bk.Target.from_pyro(moe, x, y, groups=groups)
    centre = target.unconstrain(base)
    jitter = target.unconstrain(noise) - target.unconstrain(noise).mean(0)
    draws = target.constrain(centre + 0.02 * jitter)
    scramble = torch.stack([torch.randperm(moe.num_experts, generator=torch.Generator().manual_seed(s))
                            for s in range(60)])
    scrambled = moe._permute(moe.draws(as_posterior(draws))[0], scramble)
    scrambled_post = as_posterior({**draws, **{k: v for k, v in scrambled.items() if k in draws}})
    assert int((scramble != torch.arange(moe.num_experts)).any(-1).sum()) > 20
    relabelled = moe.relabel(scrambled_post, reference={k: v[0] for k, v in base.items()})
    for site in ("expert_intercept", "expert_coef", "gate_intercept", "gate_coef"):
        restored = moe.draws(relabelled)[0][site]
        assert torch.allclose(restored, moe.draws(as_posterior(draws))[0][site], atol=1e-8), site
    lpd = [moe.log_predictive_density(post, x, y, groups=groups) for post in (scrambled_post, relabelled)]
    assert torch.allclose(*lpd, rtol=1e-10)
    assert relabelled.meta["relabelled"] > 20


def test_nest_numbers_distinct_pairs():
    outer, inner = torch.tensor([0, 0, 1, 1, 0]), torch.tensor([0, 1, 0, 1, 0])
    ids, count = nest(outer, inner)
    assert count == 4 and ids[0] == ids[4] and len(set(ids[:4].tolist())) == 4


@pytest.mark.parametrize("kwargs, message", [
    ({"num_experts": 0}, "num_experts"), ({"num_experts": 2, "family": "gamma"}, "family"),
    ({"num_experts": 2, "prior": "spike"}, "prior"), ({"num_experts": 1, "levels": {"g": 2}}, "no gate"),
    ({"num_experts": 2, "coef_scale": 0.0}, "coef_scale"), ({"num_experts": 2, "levels": {"a b": 2}}, "identifiers"),
    ({"num_experts": 2, "slab_scale": -1.0}, "slab_scale"), ({"num_experts": 2, "slab_df": 0.0}, "slab_df"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MixtureOfExperts(**kwargs)


def test_bad_data_is_refused():
    moe = MixtureOfExperts(2, "bernoulli", levels={"g": 2})
    x, groups = torch.zeros(3, 2), {"g": torch.tensor([0, 1, 1])}
    with pytest.raises(ValueError, match="y in"):
        moe(x, torch.tensor([0.0, 2.0, 1.0]), groups=groups)
    with pytest.raises(ValueError, match="exactly the levels"):
        moe(x, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="ids must lie in 0 to 1"):
        moe(x, torch.tensor([0.0, 1.0, 1.0]), groups={"g": torch.tensor([0, 1, 2])})
    with pytest.raises(ValueError, match="shape"):
        moe(torch.zeros(3), None, groups=groups)
    with pytest.raises(ValueError, match="lacks the sites"):
        moe.predictive(bk.Posterior({"alpha": torch.zeros(1, 2)}), x, groups=groups)


@pytest.mark.parametrize("block", ["gate", "expert"])
def test_regularised_horseshoe_caps_escaped_coefficients_at_the_slab(block):
    """With the local scale far beyond the global one (lambda = 1e6, tau = 1), Piironen and Vehtari's
    lambda_tilde makes a coefficient N(0, c^2) with c^2 ~ Inv-Gamma(nu/2, nu s^2/2): marginally a Student-t
    with nu degrees of freedom and scale s, checked against scipy by Kolmogorov-Smirnov on prior draws of
    the model. This is what keeps a separable gate bounded: without the slab (the plain horseshoe) the
    same coefficients have sd tau * lambda = 1e6, and NumPyro's NUTS on the p = 200, n = 150 problem put
    mean gate coefficients of up to 93 on true gate covariates and up to 26 on noise ones, which outranked
    true expert covariates (benchmarks/moe_sparse_priors.py). 2,000 draws (20,000 with BAYESKIT_FULL=1).
    Measured at CI size: KS p-value 0.56 against t(5, 1.5), 0.11 against a 5% wider t; with
    ``slab_scale=None`` 0.0."""
    assert {"gate_slab", "expert_slab"} <= set(MixtureOfExperts(2, prior="horseshoe").sites)  # the default
    num_draws = 20_000 if FULL else 2_000
    moe = MixtureOfExperts(2, prior="horseshoe", slab_scale=1.5, slab_df=5.0)
    fixed = {"coef_local": torch.full((num_draws, 1, 3), 1e6), f"{block}_global": torch.ones(num_draws, 1)}
    pyro.set_rng_seed(0)
    with pyro.plate("draws", num_draws, dim=-2):
        trace = pyro.poutine.trace(pyro.poutine.condition(moe, data=fixed)).get_trace(torch.zeros(1, 3))
    slab = trace.nodes[f"{block}_slab"]["value"].reshape(-1)
    raw = trace.nodes[f"{block}_coef_raw"]["value"].reshape(num_draws, -1)[:, 0]
    coef = moe._with_derived({name: trace.nodes[name]["value"].squeeze(1) for name in moe.sites})[f"{block}_coef"]
    coef = coef.reshape(num_draws, -1)[:, 0]
    assert torch.allclose(coef, raw * slab.sqrt(), rtol=1e-5)  # tau * lambda >> c: the sd is c itself
    assert stats.kstest(coef.double().numpy(), stats.t(df=5.0, scale=1.5).cdf).pvalue > 1e-3
    assert stats.kstest(slab.double().numpy(), stats.invgamma(2.5, scale=2.5 * 1.5**2).cdf).pvalue > 1e-3


def test_pyro_predictive_simulates_from_the_same_mixture():
    """Pyro's Predictive draws y through the model; its mean is the predictive distribution's."""
    moe = MixtureOfExperts(3)
    x = torch.linspace(-2.5, 2.5, 5)[:, None]
    draws = {k: v.expand(1000, *v.shape) for k, v in TRUTH.items()}
    pyro.set_rng_seed(0)  # the draws feed a 4-SE test: reproducible alone and in any order
    simulated = pyro.infer.Predictive(moe, posterior_samples=draws, return_sites=["y"])(x)["y"]
    exact = moe.predictive(as_posterior(draws), x)
    assert simulated.shape == (1000, 5)
    error = 4 * exact.stddev / math.sqrt(1000)
    assert ((simulated.mean(0) - exact.mean).abs() < error).all()
    # the spread too: the mean squared deviation from the exact mean is unbiased for the variance; its
    # standard error from the draws' own fourth moment
    squared = (simulated - exact.mean) ** 2
    assert ((squared.mean(0) - exact.variance).abs() < 4 * squared.std(0) / math.sqrt(1000)).all()


# ------------------------------------------------------------------ statistical: recovery and engines
@pytest.fixture(scope="module")
def three_experts():
    x, y, labels = simulate(TRUTH, 400 if FULL else 300, seed=0)
    return x, y


def start(moe, x, y, num, **kwargs):
    """``num`` starts at the good modes (within 10 nats of the best), jittered where repeated."""
    return find_modes(moe, x, y, num_restarts=32, num_steps=400, seed=0, **kwargs).starts(num, within=10.0, seed=0)


def predictive_means(moe, post, grid):
    """Per draw, E[y | x] on the grid: (draws, grid), label invariant."""
    params, _ = moe.draws(post)
    mixture = moe.mixture(params, grid)
    return (mixture.mixture_distribution.probs * mixture.component_distribution.mean).sum(-1)


RECOVERY_ESS_FLOOR = 400


class TooFewEffectiveDraws(Exception):
    """The chains mixed too little for their summary to be trusted (a known shortfall, strict xfail below)."""


@pytest.mark.slow
@pytest.mark.xfail(strict=True, raises=TooFewEffectiveDraws, reason=(
    "SGHMC (step 2e-3, 1,000 + 1,000 steps, 4 chains from find_modes) barely moves the gate: after relabelling "
    "bulk ESS 4.5-5.6 for gate_intercept and gate_coef[0], 17-30 for others (r_hat up to 3.1), against a floor "
    "of 400; the z-scores themselves pass (max |z| 1.49) and are asserted first, so a biased posterior still "
    "fails outright"))
def test_sghmc_recovers_the_three_experts_after_relabelling(three_experts):
    x, y = three_experts
    moe = MixtureOfExperts(3)
    post = SGHMC(moe, step_size=2e-3, num_chains=4, num_warmup=1000, num_samples=1000,
                 init=start(moe, x, y, 4)).run(x, y, seed=0, progress=False)
    post = moe.relabel(post, reference=TRUTH)
    summary = post.summary(var_names=list(TRUTH))
    # The simulating truth is one draw from the posterior's sampling distribution: its z-scores are about
    # N(0, 1) for a calibrated posterior, so over 17 scalars max |z| ~ 2.4, and 3.5 is exceeded with
    # probability ~1%; a bias of 1.5-3 sd in any scalar shows.  The ESS floor keeps the posterior sd and
    # mean honest (a stuck chain shrinks sd and inflates z, or hides behind a wide sd).
    z = (summary["mean"] - np.concatenate([v.flatten().numpy() for v in TRUTH.values()])) / summary["sd"]
    print("z-scores against the truth:", z.round(2).to_dict(), "min ESS", summary["ess_bulk"].min())
    assert z.abs().max() < 3.5, summary.assign(z=z)
    if (summary["ess_bulk"] < RECOVERY_ESS_FLOOR).any():
        raise TooFewEffectiveDraws(summary["ess_bulk"].round(1).to_dict())


@pytest.fixture(scope="module")
def numpyro_reference(three_experts):
    """NumPyro NUTS on an independently written NumPyro copy of the model: per-draw E[y | x] on a grid."""
    pytest.importorskip("numpyro")
    import jax
    import jax.numpy as jnp
    import numpyro
    import numpyro.distributions as nd

    x, y = (jnp.asarray(t.numpy()) for t in three_experts)

    def model(x, y):
        a = numpyro.sample("a", nd.Normal(0, 5).expand([2]).to_event(1))
        g = numpyro.sample("g", nd.Normal(0, 2.5).expand([2, 1]).to_event(2))
        b = numpyro.sample("b", nd.Normal(0, 5).expand([3]).to_event(1))
        c = numpyro.sample("c", nd.Normal(0, 2.5).expand([3, 1]).to_event(2))
        s = numpyro.sample("s", nd.HalfNormal(1.0).expand([3]).to_event(1))
        logits = jnp.concatenate([a + x @ g.T, jnp.zeros((x.shape[0], 1))], axis=-1)
        numpyro.sample("y", nd.MixtureSameFamily(nd.Categorical(logits=logits), nd.Normal(b + x @ c.T, s)), obs=y)

    mcmc = numpyro.infer.MCMC(numpyro.infer.NUTS(model), num_warmup=500, num_samples=1000, num_chains=2,
                              chain_method="sequential", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(0), x, y)
    d = {k: np.asarray(v) for k, v in mcmc.get_samples().items()}
    grid = np.linspace(-2.8, 2.8, 9)[:, None]
    logits = np.concatenate([d["a"][:, None, :] + np.einsum("gp,skp->sgk", grid, d["g"]),
                             np.zeros((len(d["a"]), len(grid), 1))], axis=-1)
    probs = np.exp(logits - logsumexp(logits, axis=-1, keepdims=True))
    means = (probs * (d["b"][:, None, :] + np.einsum("gp,skp->sgk", grid, d["c"]))).sum(-1)
    ess = np.array([float(bk.diagnostics.ess(torch.as_tensor(means[:, j]).reshape(2, -1)))
                    for j in range(len(grid))])
    return torch.as_tensor(grid, dtype=torch.float32), torch.as_tensor(means), torch.as_tensor(ess)


def _mc_error(means, ess):
    return means.std(0) / ess.sqrt()


@pytest.mark.slow
def test_pyro_nuts_predictive_matches_numpyro_nuts(three_experts, numpyro_reference):
    """Exact samplers on the same model: predictive means agree within 4 combined Monte Carlo errors."""
    from pyro.infer import MCMC, NUTS

    x, y = three_experts
    grid, reference, reference_ess = numpyro_reference
    moe = MixtureOfExperts(3)
    pyro.set_rng_seed(0)
    mcmc = MCMC(NUTS(moe, jit_compile=True, ignore_jit_warnings=True), num_samples=300, warmup_steps=300,
                num_chains=1, disable_progbar=True)
    mcmc.run(x, y)
    post = bk.Posterior(mcmc.get_samples(group_by_chain=True), dims=moe.dims, coords=moe.coords)
    ours = predictive_means(moe, post, grid).double()
    ours_ess = torch.tensor([float(bk.diagnostics.ess(ours[:, j].reshape(1, -1))) for j in range(len(grid))])
    error = torch.sqrt(_mc_error(ours, ours_ess) ** 2 + _mc_error(reference, reference_ess) ** 2)
    assert ((ours.mean(0) - reference.mean(0)).abs() <= 4 * error).all(), (ours.mean(0), reference.mean(0))
    assert "expert" in post.to_arviz().posterior["expert_coef"].dims


def _ess_per_point(means, num_chains):
    """Bulk ESS of each grid point's E[y | x] draws ``(chains * draws, grid)``."""
    return torch.tensor([float(bk.diagnostics.ess(means[:, j].reshape(num_chains, -1))) for j in range(means.shape[1])])


# SVGD's 32 particles in the 17-dimensional MoE posterior shrink the posterior spread of E[y | x], as SVGD
# does beyond 2-D (see tests/inference/stein/test_svgd.py): measured sd ratio 0.54-0.75 to NUTS's on the
# 9 grid points.  Stated bound: a ratio in (0.45, 1.1), never wider than NUTS's.  Its mean error has no Monte
# Carlo term of its own (the particles are a deterministic quadrature): the 0.2 sd budget and NUTS's error
# only (measured at most 0.05 sd).
SVGD_SD_RATIO = (0.45, 1.1)


# Below this ESS per grid point the 4-MC-error term outgrows the 0.2 sd bias budget (4 / sqrt(400) = 0.2 sd)
PREDICTIVE_ESS_FLOOR = 400
# At full size the same shortfall already fails the sd check (ratios 0.45-1.35 over the grid, measured once),
# before the ESS floor is reached: there the xfail takes the AssertionError too.
_SGHMC_MIXING = pytest.mark.xfail(strict=True, raises=(TooFewEffectiveDraws, AssertionError) if FULL else
                                  TooFewEffectiveDraws, reason=(
    "SGHMC (step 1e-3, 1,000 + 1,000 steps, 4 chains from find_modes): E[y | x] passes the mean and sd checks "
    "(mean errors 0.05-0.62 NUTS sd, sd ratio 0.74-1.07) only because 4 MC errors are 1.2-1.9 NUTS sd there: "
    "bulk ESS 4.7-5.8 per grid point (4,000 draws), against a floor of 400"))


@pytest.mark.slow
@pytest.mark.parametrize("engine", [pytest.param("sghmc", marks=_SGHMC_MIXING), "svgd"])
def test_gradient_engines_predictive_matches_numpyro_nuts(engine, three_experts, numpyro_reference):
    """Approximate engines from find_modes against NumPyro NUTS on E[y | x] over a 9-point grid:
    the posterior mean within 0.2 NUTS posterior sd + 4 combined Monte Carlo errors, and the posterior sd
    within a ratio of 0.7-1.3 for SGHMC (SVGD: its stated shrinkage bound, SVGD_SD_RATIO); SGHMC's ESS at
    least PREDICTIVE_ESS_FLOOR per grid point, checked last (strict xfail: a known mixing shortfall)."""
    x, y = three_experts
    grid, reference, reference_ess = numpyro_reference
    moe = MixtureOfExperts(3)
    if engine == "sghmc":
        sampler = SGHMC(moe, step_size=1e-3, num_chains=4, num_warmup=1000, num_samples=1000,
                        init=start(moe, x, y, 4), dims=moe.dims, coords=moe.coords)
        post = sampler.run(x, y, seed=0, progress=False)
    else:
        sampler = SVGD(moe, num_particles=32, init=start(moe, x, y, 32), dims=moe.dims, coords=moe.coords)
        post = sampler.run(x, y, num_steps=300, seed=0, progress=False)
    ours = predictive_means(moe, post, grid).double()
    ours_ess = _ess_per_point(ours, 4) if engine == "sghmc" else None
    ours_error = _mc_error(ours, ours_ess) if engine == "sghmc" else torch.zeros(len(grid))
    mc_error = torch.sqrt(ours_error**2 + _mc_error(reference, reference_ess) ** 2)
    z_bias = (ours.mean(0) - reference.mean(0)).abs() / reference.std(0)
    sd_ratio = ours.std(0) / reference.std(0)
    print(f"{engine}: |mean error| / NUTS sd {z_bias.numpy().round(3)}, sd ratio {sd_ratio.numpy().round(3)}, "
          f"4 MC errors / NUTS sd {(4 * mc_error / reference.std(0)).numpy().round(3)}, ESS {ours_ess}")
    assert ((ours.mean(0) - reference.mean(0)).abs() <= 0.2 * reference.std(0) + 4 * mc_error).all(), z_bias
    low, high = (0.7, 1.3) if engine == "sghmc" else SVGD_SD_RATIO
    assert ((sd_ratio > low) & (sd_ratio < high)).all(), sd_ratio
    if ours_ess is not None and (ours_ess < PREDICTIVE_ESS_FLOOR).any():
        raise TooFewEffectiveDraws(f"bulk ESS of E[y | x] per grid point {ours_ess.numpy().round(1)}")


@pytest.mark.slow
def test_mixed_moe_beats_plain_moe_on_grouped_data():
    """Gate effects per group (sd 1.5): modelling them raises the held-out log predictive density."""
    num_groups, n = 20, 800 if FULL else 600
    generator = torch.Generator().manual_seed(1)
    groups = torch.randint(0, num_groups, (n,), generator=generator)
    effects = 1.5 * torch.randn(num_groups, 2, generator=generator)
    x, y, _ = simulate(TRUTH, n, seed=2, groups=groups, effects=effects)
    train, test = slice(0, n // 2), slice(n // 2, n)
    scores = {}
    for name, moe, kwargs in [("plain", MixtureOfExperts(3), {}),
                              ("mixed", MixtureOfExperts(3, levels={"group": num_groups}),
                               {"groups": {"group": groups[train]}})]:
        post = SGHMC(moe, step_size=2e-3, num_chains=4, num_warmup=1000, num_samples=500,
                     init=start(moe, x[train], y[train], 4, **kwargs)).run(x[train], y[train], seed=0,
                                                                            progress=False, **kwargs)
        held_out = {"groups": {"group": groups[test]}} if kwargs else {}
        scores[name] = moe.log_predictive_density(post, x[test], y[test], **held_out)
    gain = scores["mixed"] - scores["plain"]
    print(f"held-out mean LPD: plain {scores['plain'].mean():.3f}, mixed {scores['mixed'].mean():.3f}, "
          f"gain {gain.mean():.3f} +- {gain.std() / math.sqrt(len(gain)):.3f}")
    assert gain.mean() > 3 * gain.std() / math.sqrt(len(gain))


def sparse_moe_top_five_precision(seed):
    """p = 200 covariates, n = 150 rows, 5 active (2 in the gate, 3 in the experts), Laplace prior: the share of
    the five strongest inclusion signals that are active (= recall: five picked, five active).

    Started from the best modes of the same model; the noise floor keeps the
    modes off the spikes where an expert interpolates its rows.
    """
    n, p = 150, 200
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=generator)
    first = torch.rand(n, generator=generator) < torch.sigmoid(2 * x[:, 0] - 2 * x[:, 1])
    y = torch.where(first, 3 + 2 * x[:, 2] + 1.5 * x[:, 3], -3 - 2 * x[:, 2] + 2 * x[:, 4])
    y = y + 0.5 * torch.randn(n, generator=generator)
    moe = MixtureOfExperts(2, prior="laplace", coef_scale=0.2, noise_floor=0.25)
    modes = find_modes(moe, x, y, num_restarts=32 if FULL else 16, num_steps=1000 if FULL else 600, seed=seed)
    post = SGHMC(moe, step_size=4e-3, num_chains=4, num_warmup=2000 if FULL else 1000, num_samples=1000,
                 init=modes.starts(4, seed=seed)).run(x, y, seed=seed, progress=False)
    top = set(torch.argsort(moe.inclusion_signal(post), descending=True)[:5].tolist())
    print(f"seed {seed}: top-5 precision {len(top & set(range(5))) / 5:.1f}: {sorted(top)}")
    return len(top & set(range(5))) / 5


@pytest.mark.slow
def test_sparse_moe_ranks_the_active_covariates_first():
    """Over several data sets (3 seeds in CI, 5 with BAYESKIT_FULL=1), not the one it was tuned on: the mean
    top-5 precision at least 0.9 and none below 0.8. Measured at CI size, seeds 0-3: 0.8, 1.0, 1.0, 1.0 (seed 0,
    the old single case, is the hardest: covariate 3 ranks 31st). The horseshoe in the same recipe ranks worse
    (benchmarks/moe_sparse_priors.py, seeds 0-4: mean 0.48 plain, 0.56 regularised, where NumPyro's NUTS gives
    0.80 and 1.00): SGHMC does not move the global scales from the modes' ~1 to the posterior's ~0.003."""
    precisions = [sparse_moe_top_five_precision(seed) for seed in range(5 if FULL else 3)]
    assert sum(precisions) / len(precisions) >= 0.9 and min(precisions) >= 0.8, precisions
