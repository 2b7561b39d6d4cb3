"""Target.from_numpyro against NumPyro's own potential, and against the Pyro twin of the model."""

import numpy as np
import pytest
import torch

jax = pytest.importorskip("jax")
numpyro = pytest.importorskip("numpyro")
import jax.numpy as jnp  # noqa: E402
import numpyro.distributions as ndist  # noqa: E402
import pyro  # noqa: E402
import pyro.distributions as pdist  # noqa: E402
from numpyro.infer.util import initialize_model  # noqa: E402

from bayeskit import Target  # noqa: E402


@pytest.fixture
def x64():
    """JAX in float64 for this test only (comparisons at 1e-5 need it)."""
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(25, 3))
    y = x @ np.array([1.0, -2.0, 0.5]) + 0.3 * rng.normal(size=25)
    return x, y


def numpyro_model(x, y):
    w = numpyro.sample("w", ndist.Normal(jnp.zeros(3), 1.0).to_event(1))
    sigma = numpyro.sample("sigma", ndist.LogNormal(0.0, 1.0))
    rate = numpyro.sample("rate", ndist.Beta(2.0, 3.0))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("y", ndist.Normal(x @ w + rate, sigma), obs=y)


def pyro_model(x, y):
    w = pyro.sample("w", pdist.Normal(torch.zeros(3), 1.0).to_event(1))
    sigma = pyro.sample("sigma", pdist.LogNormal(torch.tensor(0.0), 1.0))
    rate = pyro.sample("rate", pdist.Beta(torch.tensor(2.0), 3.0))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("y", pdist.Normal((x * w).sum(-1) + rate, sigma), obs=y)


def test_matches_numpyro_potential_and_gradient(x64):
    x, y = data()
    target = Target.from_numpyro(numpyro_model, x, y)
    assert target.dtype == torch.float64 and target.dim == 5
    info = initialize_model(jax.random.PRNGKey(1), numpyro_model, model_args=(x, y))
    z = torch.randn(6, target.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    log_prob, score = target.log_prob_and_score(z)
    for i in range(6):
        params = {name: jnp.asarray(z[i, site.slice].numpy().reshape(site.unconstrained_shape))
                  for name, site in target.sites.items()}
        energy, grads = jax.value_and_grad(info.potential_fn)(params)
        expected_grad = np.concatenate([np.ravel(grads[name]) for name in target.sites])
        np.testing.assert_allclose(log_prob[i].item(), -float(energy), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(score[i].numpy(), -expected_grad, rtol=1e-5, atol=1e-5)


def test_agrees_with_the_pyro_twin(x64, float64):
    x, y = data()
    from_numpyro = Target.from_numpyro(numpyro_model, x, y)
    from_pyro = Target.from_pyro(pyro_model, torch.from_numpy(x), torch.from_numpy(y))
    assert list(from_numpyro.sites) == list(from_pyro.sites)
    z = torch.randn(4, from_pyro.dim, generator=torch.Generator().manual_seed(2))
    for a, b in zip(from_numpyro.log_prob_and_score(z), from_pyro.log_prob_and_score(z)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for name, value in from_numpyro.constrain(z).items():
        torch.testing.assert_close(value, from_pyro.constrain(z)[name])
    torch.testing.assert_close(from_numpyro.pointwise_log_likelihood(z)["y"],
                               from_pyro.pointwise_log_likelihood(z)["y"])


def test_log_prob_is_differentiable_in_torch(x64):
    x, y = data()
    target = Target.from_numpyro(numpyro_model, x, y)
    z = torch.randn(3, target.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()
    (grad,) = torch.autograd.grad(target.log_prob(z).sum(), z)
    torch.testing.assert_close(grad, target.log_prob_and_score(z)[1])


def test_init_is_reproducible_and_float32_without_x64():
    x, y = data()
    target = Target.from_numpyro(numpyro_model, x, y)
    assert target.dtype == torch.float32
    a = target.init(5, torch.Generator().manual_seed(0))
    b = target.init(5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == (5, target.dim)
    assert (target.constrain(a)["sigma"] > 0).all()


def test_discrete_site_and_nan_data_are_refused_by_name():
    def discrete():
        numpyro.sample("k", ndist.Categorical(jnp.ones(3) / 3))

    with pytest.raises(ValueError, match="latent site 'k' is discrete"):
        Target.from_numpyro(discrete)
    x, y = data()
    y[2] = np.nan
    with pytest.raises(ValueError, match="observed site 'y' has 1 non-finite"):
        Target.from_numpyro(numpyro_model, x, y)
