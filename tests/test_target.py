import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.mcmc.util import initialize_model
from scipy import stats

from bayeskit import Target


def make_data(n=30, p=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


def mixed_support_model(x, y):
    """Real vector, positive scalar, simplex and a plated unit-interval site."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0), 1.0))
    mix = pyro.sample("mix", dist.Dirichlet(torch.ones(4)))
    with pyro.plate("groups", 2):
        rate = pyro.sample("rate", dist.Beta(torch.tensor(2.0), 3.0))
    offset = mix[..., 0] + rate.sum(-1, keepdim=True)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal((x * w).sum(-1) + offset, sigma), obs=y)


def matmul_model(x, y):
    """Uses x @ w, which does not broadcast over an extra particle dimension."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.tensor(1.0)))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", dist.Normal(x @ w, sigma), obs=y)


def pyro_potential(model, args, target, z):
    """Pyro's own potential energy and gradient at each row of z (our layout)."""
    _, potential_fn, _, _ = initialize_model(model, model_args=args)
    values, grads = [], []
    for row in z:
        params = {name: row[site.slice].reshape(site.unconstrained_shape).clone().requires_grad_(True)
                  for name, site in target.sites.items()}
        energy = potential_fn(params)
        g = torch.autograd.grad(energy, list(params.values()))
        values.append(energy.detach())
        grads.append(torch.cat([gi.reshape(-1) for gi in g]))
    return torch.stack(values), torch.stack(grads)


@pytest.mark.parametrize("vectorize", ["auto", False])
@pytest.mark.parametrize("model", [mixed_support_model, matmul_model])
def test_from_pyro_matches_pyro_potential(float64, model, vectorize):
    x, y = make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = Target.from_pyro(model, x, y, vectorize=vectorize)
    g = torch.Generator().manual_seed(1)
    z = target.init(6, g) + 0.3 * torch.randn(6, target.dim, generator=g)
    log_prob, score = target.log_prob_and_score(z)
    energy, grad = pyro_potential(model, (x, y), target, z)
    torch.testing.assert_close(log_prob, -energy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(score, -grad, rtol=1e-5, atol=1e-5)


def test_vectorized_path_is_chosen_when_the_model_broadcasts(float64):
    x, y = make_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Target.from_pyro(mixed_support_model, x, y).vectorized


def test_fallback_warns_and_names_the_reason(float64):
    x, y = make_data()
    with pytest.warns(UserWarning, match="one model call per point"):
        target = Target.from_pyro(matmul_model, x, y)
    assert not target.vectorized


def test_batched_shapes_and_autograd(float64):
    x, y = make_data()
    target = Target.from_pyro(mixed_support_model, x, y)
    z = target.init(6, torch.Generator().manual_seed(0)).reshape(2, 3, target.dim).requires_grad_(True)
    log_prob = target.log_prob(z)
    assert log_prob.shape == (2, 3)
    (grad,) = torch.autograd.grad(log_prob.sum(), z)
    _, score = target.log_prob_and_score(z)
    torch.testing.assert_close(grad, score)


def subsampled_model(x, y, subsample_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as index:
        pyro.sample("y", dist.Normal((x[index] * w).sum(-1), 1.0), obs=y[index])


def subsampled_matmul_model(x, y, subsample_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as index:
        pyro.sample("y", dist.Normal(x[index] @ w, 1.0), obs=y[index])


@pytest.mark.parametrize("model", [subsampled_model, subsampled_matmul_model])
def test_subsampling_is_unbiased_and_shared_by_all_points(float64, model):
    x, y = make_data(n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        target = Target.from_pyro(model, x, y, 20)
    full = Target.from_pyro(subsampled_model, x, y, None)
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(3))
    repeated = torch.cat([z, z[:1]])  # the first point twice
    torch.manual_seed(0)
    draws = torch.stack([target.log_prob(repeated) for _ in range(1500)])
    # one minibatch per call: the repeated point gets exactly the same value
    torch.testing.assert_close(draws[:, 0], draws[:, -1])
    exact = full.log_prob(z)
    standard_error = draws[:, :3].std(0) / math.sqrt(len(draws))
    assert ((draws[:, :3].mean(0) - exact).abs() < 4 * standard_error).all()
    assert target.subsampled and target.pointwise_log_likelihood(z) is None


def test_pointwise_log_likelihood_and_observed_data(float64):
    x, y = make_data()
    target = Target.from_pyro(mixed_support_model, x, y)
    z = target.init(4, torch.Generator().manual_seed(2))
    values = target.constrain(z)
    offset = values["mix"][:, :1] + values["rate"].sum(-1, keepdim=True)
    loc = values["w"] @ x.T + offset
    expected = stats.norm.logpdf(y.numpy(), loc.numpy(), values["sigma"].numpy()[:, None])
    torch.testing.assert_close(target.pointwise_log_likelihood(z)["y"], torch.from_numpy(expected))
    torch.testing.assert_close(target.observed_data["y"], y)


def test_constrain_respects_supports_and_unconstrain_inverts(float64):
    x, y = make_data()
    target = Target.from_pyro(mixed_support_model, x, y)
    assert target.sites["mix"].shape == (4,) and target.sites["mix"].unconstrained_shape == (3,)
    z = torch.randn(5, target.dim, generator=torch.Generator().manual_seed(4))
    values = target.constrain(z)
    torch.testing.assert_close(values["mix"].sum(-1), torch.ones(5))
    assert (values["sigma"] > 0).all() and ((values["rate"] > 0) & (values["rate"] < 1)).all()
    torch.testing.assert_close(target.unconstrain(values), z)


def test_init_draws_from_the_prior_reproducibly(float64):
    def model():
        pyro.sample("mu", dist.Normal(torch.tensor(3.0), 2.0))
        pyro.sample("scale", dist.Gamma(torch.tensor(4.0), 2.0))

    target = Target.from_pyro(model)
    draws = target.init(4000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws, target.init(4000, torch.Generator().manual_seed(0)))
    values = target.constrain(draws)
    # Kolmogorov-Smirnov against the exact priors (scipy's distributions, not ours)
    assert stats.kstest(values["mu"].numpy(), stats.norm(3, 2).cdf).pvalue > 1e-3
    assert stats.kstest(values["scale"].numpy(), stats.gamma(4, scale=0.5).cdf).pvalue > 1e-3


def test_building_a_target_leaves_the_global_rng_alone(float64):
    x, y = make_data()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    Target.from_pyro(mixed_support_model, x, y)
    torch.testing.assert_close(torch.rand(3), expected)


def test_discrete_latent_site_is_refused_by_name():
    def model():
        pyro.sample("cluster", dist.Categorical(torch.ones(3)))

    with pytest.raises(ValueError, match="latent site 'cluster' is discrete"):
        Target.from_pyro(model)


def test_nan_in_observed_data_is_refused_by_name(float64):
    x, y = make_data()
    y[4] = float("nan")
    # the argument is named before the model runs (tests/test_target_checks.py has the observed-site case)
    with pytest.raises(ValueError, match=r"argument 'y' has 1 non-finite value\(s\).*index \(4,\)"):
        Target.from_pyro(mixed_support_model, x, y)


def test_model_without_latent_sites_is_refused():
    def model():
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=torch.tensor(0.3))

    with pytest.raises(ValueError, match="no latent sample sites"):
        Target.from_pyro(model)


def test_bad_inputs_give_clear_errors(float64):
    x, y = make_data()
    target = Target.from_pyro(mixed_support_model, x, y)
    with pytest.raises(ValueError, match=rf"shape \(\.\.\., {target.dim}\)"):
        target.log_prob(torch.zeros(3, target.dim + 1))
    with pytest.raises(TypeError, match="model must be a callable"):
        Target.from_pyro("not a model")
    with pytest.raises(ValueError, match="vectorize"):
        Target.from_pyro(mixed_support_model, x, y, vectorize="sometimes")


def test_from_log_prob_adds_the_log_jacobian(float64):
    rate = torch.tensor([1.0, 2.0, 3.0])

    def exponential_log_prob(theta):  # independent Exponential(rate) on the positive orthant
        return (rate.log() - rate * theta).sum(-1)

    target = Target.from_log_prob(exponential_log_prob, 3, support=dist.constraints.positive)
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(5))
    log_prob, score = target.log_prob_and_score(z)
    # density of log(theta) for theta ~ Exponential: rate * exp(z - rate * exp(z))
    expected = torch.from_numpy(stats.expon(scale=1 / rate.numpy()).logpdf(z.exp().numpy())).sum(-1) + z.sum(-1)
    torch.testing.assert_close(log_prob, expected)
    torch.testing.assert_close(score, 1 - rate * z.exp())
    torch.testing.assert_close(target.constrain(z)["theta"], z.exp())


def test_from_log_prob_requires_a_batched_function():
    target = Target.from_log_prob(lambda theta: theta.sum(), 2)
    with pytest.raises(ValueError, match="batched"):
        target.log_prob(torch.zeros(4, 2))


def test_nonfinite_sites_names_the_culprit(float64):
    x, y = make_data()
    target = Target.from_pyro(mixed_support_model, x, y)
    z = torch.zeros(2, target.dim)
    assert target.nonfinite_sites(z) == []
    z[1, target.sites["sigma"].slice] = float("nan")
    assert target.nonfinite_sites(z) == ["sigma"]
    z = torch.zeros(2, target.dim)
    z[0, target.sites["sigma"].slice] = -1e5  # sigma underflows to 0: log density not finite
    assert "sigma" in target.nonfinite_sites(z)


def subsampled_scale_model(x, y, batch_size):
    w = pyro.sample("w", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    sigma = pyro.sample("sigma", dist.LogNormal(torch.tensor(0.0), 1.0))
    with pyro.plate("data", x.shape[0], subsample_size=batch_size) as rows:
        pyro.sample("y", dist.Normal((x[rows] * w).sum(-1), sigma), obs=y[rows])


@pytest.mark.parametrize("model, extra", [(mixed_support_model, ()), (subsampled_scale_model, (7,))])
def test_jit_compiled_target_matches_pyro_and_draws_fresh_minibatches(float64, model, extra):
    x, y = make_data()
    compiled = Target.from_pyro(model, x, y, *extra, jit_compile=True)
    assert compiled.compiled
    z = compiled.init(6, torch.Generator().manual_seed(1))
    if not extra:  # full data: Pyro's own potential is the ground truth
        log_prob, score = compiled.log_prob_and_score(z)
        energy, grad = pyro_potential(model, (x, y), compiled, z)
        torch.testing.assert_close(log_prob, -energy, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(score, -grad, rtol=1e-5, atol=1e-5)
        return
    eager = Target.from_pyro(model, x, y, *extra)
    values = []
    for seed in range(3):  # the same seed draws the same minibatch as Pyro's plate would
        torch.manual_seed(seed)
        expected = eager.log_prob_and_score(z)
        torch.manual_seed(seed)
        got = compiled.log_prob_and_score(z)
        torch.testing.assert_close(got, expected)
        values.append(got[0])
    assert not torch.equal(values[0], values[1])  # each call sees a new minibatch


def test_jit_compile_falls_back_for_models_it_cannot_trace(float64):
    def branches_on_a_value(y):
        mu = pyro.sample("mu", dist.Normal(torch.tensor(0.0), 1.0))
        scale = 1.0 if float(mu.detach().reshape(-1)[0]) > 0 else 2.0  # frozen by a trace
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(mu, scale), obs=y)

    with pytest.warns(UserWarning, match="jit_compile=True: the model could not be captured"):
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="the model could not be evaluated")
            target = Target.from_pyro(branches_on_a_value, torch.randn(10), jit_compile=True)
    assert not target.compiled
    with pytest.raises(TypeError, match="jit_compile must be True, False or a torch.compile mode"):
        Target.from_pyro(subsampled_scale_model, *make_data(), 7, jit_compile="yes")


def test_a_single_point_with_a_scalar_site_constrains_to_a_zero_dimensional_value():
    """Found by the bnn density test: reshape(*(), *()) was reshape() with no shape, a TypeError."""
    def model():
        pyro.sample("noise", dist.HalfNormal(1.0))
        pyro.sample("w", dist.Normal(torch.zeros(2), 1.0).to_event(1))

    target = Target.from_pyro(model)
    z = torch.tensor([0.3, -1.0, 2.0])
    values = target.constrain(z)
    assert values["noise"].shape == () and float(values["noise"]) == pytest.approx(math.exp(0.3))
    assert torch.equal(values["w"], z[1:])
    torch.testing.assert_close(target.unconstrain(values), z)
