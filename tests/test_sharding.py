"""bayeskit.sharding: shards' sub-posteriors temper the prior *and* its log-Jacobian by 1/C.

Ground truth: the full-data target of :meth:`Target.from_pyro` (the shards must sum to it
on the unconstrained space), conjugate closed forms, and torch's own Gamma distribution.
"""

import math
import pickle

import pyro
import pyro.distributions as dist
import pytest
import torch
from conftest import FULL

from bayeskit.inference.fusion import NUTSSampler, PyroDensity
from bayeskit.sharding import PriorScaledModel, Shard, has_log_jacobian, scale_prior, split_data, subposterior_target
from bayeskit.target import Target

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ models, one per support type
def gamma_poisson(y):
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0), torch.tensor(1.0)))  # positive
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(lam), obs=y)


def beta_binomial(k):
    p = pyro.sample("p", dist.Beta(torch.tensor(2.0), torch.tensor(3.0)))  # unit interval
    with pyro.plate("data", len(k)):
        pyro.sample("k", dist.Binomial(10, p), obs=k)


def dirichlet_categorical(y):
    pi = pyro.sample("pi", dist.Dirichlet(torch.tensor([1.5, 2.0, 2.5])))  # simplex
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Categorical(pi), obs=y)


def normal_scale(x):
    # a real site next to a positive vector site: only the latter has a log-Jacobian
    mu = pyro.sample("mu", dist.Normal(torch.zeros(2), 2.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfNormal(torch.ones(2)).to_event(1))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mu, sigma).to_event(1), obs=x)


def _data(name, generator):
    if name == "gamma_poisson":
        return gamma_poisson, torch.poisson(torch.full((40,), 3.0), generator=generator)
    if name == "beta_binomial":
        return beta_binomial, torch.binomial(torch.full((40,), 10.0), torch.full((40,), 0.3), generator=generator)
    if name == "dirichlet_categorical":
        return dirichlet_categorical, torch.multinomial(torch.tensor([0.2, 0.3, 0.5]), 60, replacement=True,
                                                        generator=generator)
    return normal_scale, 0.5 + torch.randn(30, 2, generator=generator) * torch.tensor([1.0, 2.0])


MODELS = ["gamma_poisson", "beta_binomial", "dirichlet_categorical", "normal_scale"]


# ------------------------------------------------------------------ the product of shards is the posterior
@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("num_shards", [2, 5])
def test_shard_log_densities_sum_to_the_full_data_density(float64, name, num_shards):
    generator = torch.Generator().manual_seed(0)
    model, data = _data(name, generator)
    full = Target.from_pyro(model, data)
    shards = split_data(model, (data,), {}, num_shards, generator=generator)
    z = torch.randn(12, full.dim, generator=generator)
    summed = torch.stack([shard.target().log_prob(z) for shard in shards]).sum(0)
    difference = summed - full.log_prob(z)
    # equal up to one constant (the prior's normaliser is counted C times over C shards, once in full)
    torch.testing.assert_close(difference, difference[:1].expand(12), rtol=0, atol=1e-9)
    scores = torch.stack([shard.target().log_prob_and_score(z)[1] for shard in shards]).sum(0)
    torch.testing.assert_close(scores, full.log_prob_and_score(z)[1], rtol=1e-9, atol=1e-9)


def test_gamma_poisson_shard_is_a_log_gamma_density(float64):
    """On z = log(lambda), f_c(z) = alpha_c z - beta_c e^z: lambda ~ Gamma(a/C + sum y_c, b/C + n_c)."""
    model, y = _data("gamma_poisson", torch.Generator().manual_seed(1))
    shard = split_data(model, (y,), {}, 4)[2]
    concentration, rate = 2.0 / 4 + float(shard.args[0].sum()), 1.0 / 4 + shard.num_data
    z = torch.linspace(-1, 2.5, 9)[:, None]
    # torch's Gamma on lambda = e^z, plus z (the log-Jacobian) gives the density of z
    exact = dist.Gamma(concentration, rate).log_prob(z.exp()).squeeze(-1) + z.squeeze(-1)
    difference = shard.target().log_prob(z) - exact
    torch.testing.assert_close(difference, difference[:1].expand(9), rtol=0, atol=1e-9)
    # Fusion's autograd density of the shard is that same target
    torch.testing.assert_close(PyroDensity(shard).log_prob(z), shard.target().log_prob(z))


def test_one_shard_is_the_full_target(float64):
    model, k = _data("beta_binomial", torch.Generator().manual_seed(2))
    z = torch.randn(5, 1, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(subposterior_target(model, 1, (k,)).log_prob(z), Target.from_pyro(model, k).log_prob(z))


def test_only_sites_with_a_transform_have_a_log_jacobian(float64):
    model, x = _data("normal_scale", torch.Generator().manual_seed(4))
    sites = Target.from_pyro(model, x).sites
    assert not has_log_jacobian(sites["mu"]) and has_log_jacobian(sites["sigma"])


# ------------------------------------------------------------------ shards and tempered models
def test_split_data_covers_every_row_once_and_records_the_shard_count():
    y = torch.arange(23.0)
    shards = split_data(gamma_poisson, (y,), {}, 4, generator=torch.Generator().manual_seed(0))
    assert sorted(torch.cat([s.args[0] for s in shards]).tolist()) == y.tolist()
    assert [s.num_data for s in shards] == [6, 6, 6, 5] and all(s.num_shards == 4 for s in shards)
    assert shards[1].prior_exponent == 0.25 and [s.index for s in shards] == [0, 1, 2, 3]


def test_tempered_model_and_shard_pickle():
    shard = Shard(gamma_poisson, (torch.ones(3),), {}, 2, 3)
    again = pickle.loads(pickle.dumps(shard))
    assert again.model is gamma_poisson and isinstance(pickle.loads(pickle.dumps(scale_prior(gamma_poisson, 0.5))),
                                                       PriorScaledModel)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="num_shards"):
        subposterior_target(gamma_poisson, 0, (torch.ones(3),))
    with pytest.raises(ValueError, match="scale"):
        scale_prior(gamma_poisson, -1.0)
    with pytest.raises(TypeError, match="callable"):
        scale_prior("model", 0.5)


# ------------------------------------------------------------------ NUTS draws the right sub-posterior
@pytest.mark.slow
def test_nuts_sampler_draws_the_closed_form_shard_posterior(float64):
    """Shard c of C: lambda ~ Gamma(a/C + sum y_c, b/C + n_c). One count per shard keeps that shape small, so
    that NUTS on the model with the full log-Jacobian (shape 1 - 1/C higher: +0.5 sd here) fails the check."""
    y = torch.poisson(torch.full((8,), 3.0), generator=torch.Generator().manual_seed(5))
    shard = split_data(gamma_poisson, (y,), {}, 8)[1]
    num_samples = 4000 if FULL else 1000
    lam = NUTSSampler(num_warmup=150)(shard, num_samples, seed=0)[:, 0].exp()
    exact = dist.Gamma(2.0 / 8 + float(shard.args[0].sum()), 1.0 / 8 + shard.num_data)
    sd = float(exact.stddev)
    # NUTS on this smooth 1-d target mixes well: ESS >= N / 4, 4 standard errors
    ess = num_samples / 4
    assert abs(float(lam.mean() - exact.mean)) < 4 * sd / math.sqrt(ess)
    assert float(lam.std()) == pytest.approx(sd, rel=4 / math.sqrt(2 * ess))


def rate_with_mean(y):
    lam = pyro.sample("lam", dist.Gamma(torch.tensor(2.0), torch.tensor(1.0)))
    pyro.deterministic("mean_count", lam * 1.0)
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Poisson(lam), obs=y)


def test_tempered_target_keeps_the_models_deterministic_sites(float64):
    target = subposterior_target(rate_with_mean, 4, (torch.ones(5),))
    z = torch.tensor([[0.0], [1.0]])
    values = target.draws(z)
    torch.testing.assert_close(values["mean_count"], z[:, 0].exp())
    torch.testing.assert_close(values["lam"], z[:, 0].exp())
