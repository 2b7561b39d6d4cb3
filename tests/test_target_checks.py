"""Target.from_pyro checks its data once, when built; Pyro's deterministic and param sites are honoured."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

import bayeskit._pyro_target as pyro_target_module
from bayeskit import Target
from bayeskit._checks import check_finite, check_same_length, check_support
from bayeskit.models import logistic_regression


def logistic_data(n=200):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=generator)
    y = torch.bernoulli(torch.full((n,), 0.5), generator=generator)
    return x, y


# ------------------------------------------------------------------ the three data cases
def test_response_outside_the_bernoulli_support_is_refused_by_site_value_and_index():
    x, y = logistic_data()
    y[17] = 2.0
    with pytest.raises(ValueError, match=r"observed site 'y' .*outside the support of Bernoulli.*"
                                         r"the first is 2\.0 at index \(17,\)"):
        Target.from_pyro(logistic_regression, x, y)


def test_response_outside_the_support_is_found_beyond_the_minibatch():
    """A subsampling plate shows the prototype 10 rows; the whole argument is checked all the same."""
    x, y = logistic_data()
    y[190] = -1.0
    for _ in range(3):  # a fresh minibatch each time: the row must be found whichever it is
        with pytest.raises(ValueError, match=r"observed site 'y' \(argument 'y'\).*-1\.0 at index \(190,\)"):
            Target.from_pyro(logistic_regression, x, y, subsample_size=10)


def test_nan_covariate_is_named_by_argument_and_index_before_pyro_complains():
    x, y = logistic_data()
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"argument 'x' has 1 non-finite value\(s\).*nan at index \(3, 1\)"):
        Target.from_pyro(logistic_regression, x, y)


def test_rows_of_different_lengths_name_both_arguments_and_lengths():
    x, y = logistic_data()
    message = r"'x' and 'y' must have the same number of rows: 'x' has 200, 'y' has 150"
    with pytest.raises(ValueError, match=message):
        Target.from_pyro(logistic_regression, x, y[:150])
    # with subsampling the random minibatch may stay below row 150; the lengths are compared instead
    with pytest.raises(ValueError, match=message):
        Target.from_pyro(logistic_regression, x, y[:150], subsample_size=5)


def test_observed_argument_of_the_wrong_length_is_named():
    def model(x, y):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(b * x, 1.0), obs=y)

    with pytest.raises(ValueError, match=r"'x' and 'y' must have the same number of rows: 'x' has 200, 'y' has 150"):
        Target.from_pyro(model, torch.randn(200), torch.randn(150))


def test_tensors_inside_a_dict_and_keyword_arguments_are_scanned():
    def model(data, *, offset):
        rate = pyro.sample("rate", dist.HalfNormal(1.0))
        with pyro.plate("d", len(data["y"])):
            pyro.sample("y", dist.Exponential(rate), obs=data["y"] + offset)

    bad = {"y": torch.tensor([1.0, 2.0, float("inf")])}
    with pytest.raises(ValueError, match=r"argument \"data\['y'\]\" has 1 non-finite.*index \(2,\)"):
        Target.from_pyro(model, bad, offset=torch.tensor(0.0))
    with pytest.raises(ValueError, match=r"argument 'offset' has 1 non-finite"):
        Target.from_pyro(model, {"y": torch.ones(3)}, offset=torch.tensor(float("nan")))


def test_clean_model_passes():
    x, y = logistic_data()
    target = Target.from_pyro(logistic_regression, x, y)
    assert torch.isfinite(target.log_prob(target.init(3, torch.Generator().manual_seed(0)))).all()


def test_checks_run_at_build_time_only(monkeypatch):
    x, y = logistic_data()
    target = Target.from_pyro(logistic_regression, x, y, subsample_size=20)
    calls = []
    for name in ("check_finite", "check_support", "_check_observed", "_check_prototype", "named_tensors"):
        original = getattr(pyro_target_module, name)
        monkeypatch.setattr(pyro_target_module, name,
                            lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    z = target.init(4, torch.Generator().manual_seed(0))
    for _ in range(3):
        target.log_prob_and_score(z)
        target.draws(z)
    assert calls == []


# ------------------------------------------------------------------ shared validators
def test_shared_validators_name_argument_and_index():
    with pytest.raises(ValueError, match=r"argument 'v' has 2 non-finite.*inf at index \(1, 0\)"):
        check_finite("v", torch.tensor([[0.0, 1.0], [float("inf"), float("nan")]]))
    check_finite("k", torch.tensor([1, 2]))  # integers cannot hold NaN
    with pytest.raises(ValueError, match=r"'a' and 'b' must have the same number of rows: 'a' has 3, 'b' has 2"):
        check_same_length({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match=r"site 's'.*0\.5 at index \(1,\)"):
        check_support("s", torch.tensor([1.0, 0.5]), dist.constraints.boolean)
    check_support("s", torch.tensor([1.0, 0.5]), dist.constraints.boolean, mask=torch.tensor([True, False]))


# ------------------------------------------------------------------ pyro.param and other patterns
def test_pyro_param_is_refused_by_name():
    def model(y):
        loc = pyro.param("loc", torch.tensor(0.0))
        scale = pyro.sample("scale", dist.HalfNormal(1.0))
        with pyro.plate("data", len(y)):
            pyro.sample("y", dist.Normal(loc, scale), obs=y)

    with pytest.raises(ValueError, match=r"pyro\.param\('loc'\).*latent site with a prior.*fixed argument.*SVI"):
        Target.from_pyro(model, torch.randn(5))
    pyro.clear_param_store()


def test_other_model_patterns_still_build_and_evaluate():
    y = torch.randn(12)
    mask = torch.arange(12) % 3 != 0
    y_missing = torch.where(mask, y, torch.zeros(()))  # missing entries filled with a finite value

    def model(y, mask, groups):
        tau = pyro.sample("tau", dist.HalfNormal(1.0))
        pyro.factor("soft_constraint", -tau ** 2)
        corr = pyro.sample("corr", dist.LKJCholesky(2, 1.5))
        with pyro.plate("groups", 3):
            mu = pyro.sample("mu", dist.Normal(0.0, tau))
        with pyro.plate("rows", 12, subsample_size=6) as rows:
            with pyro.plate("cols", 2, dim=-2):
                pyro.sample("noise", dist.Normal(0.0, 1.0))
            with poutine.scale(scale=0.5):
                pyro.sample("y", dist.Normal(mu[..., groups[rows]] + corr[..., 1, 0], 1.0), obs=y[rows],
                            obs_mask=mask[rows])

    with pytest.warns(UserWarning, match="deterministic site 'y' lies inside the subsampling plate 'rows'"):
        target = Target.from_pyro(model, y_missing, mask, torch.arange(12) % 3)  # obs_mask's own deterministic
    assert target.vectorized
    assert "tau" in target.sites and "corr" in target.sites
    assert torch.isfinite(target.log_prob(target.init(3, torch.Generator().manual_seed(0)))).all()


# ------------------------------------------------------------------ deterministic sites
def deterministic_model(x):
    theta = pyro.sample("theta", dist.Normal(0.0, 1.0))
    pyro.deterministic("mu", 2 * theta)
    with pyro.plate("data", x.shape[0]):
        pyro.sample("x", dist.Normal(theta, 1.0), obs=x)


def test_deterministic_sites_are_not_latent_and_reach_draws():
    x = torch.randn(20)
    target = Target.from_pyro(deterministic_model, x)
    assert list(target.sites) == ["theta"] and target.dim == 1
    z = torch.randn(2, 5, 1)
    draws = target.draws(z)
    assert draws["mu"].shape == (2, 5)
    torch.testing.assert_close(draws["mu"], 2 * draws["theta"])


def test_deterministic_sites_that_do_not_vectorise_fall_back_to_one_run_per_point():
    def model(x):
        beta = pyro.sample("beta", dist.Normal(torch.zeros(3), 1.0).to_event(1))
        pyro.deterministic("total", beta.sum())  # sums over the points too when vectorised
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal((beta * x).sum(-1), 1.0), obs=x[:, 0])

    target = Target.from_pyro(model, torch.randn(10, 3))
    draws = target.draws(torch.randn(4, 3))
    torch.testing.assert_close(draws["total"], draws["beta"].sum(-1))


def _check_mu(post):
    torch.testing.assert_close(post.samples["mu"], 2 * post.samples["theta"])
    assert "mu" in post.to_arviz()["posterior"].data_vars


@pytest.mark.filterwarnings("ignore")  # health warnings of a deliberately short run
@pytest.mark.parametrize("engine", ["SVGD", "SGLD", "SGHMC"])
def test_deterministic_sites_reach_the_posterior(engine):
    from bayeskit import inference

    x = 0.5 + torch.randn(20, generator=torch.Generator().manual_seed(0))
    if engine == "SVGD":
        post = inference.SVGD(deterministic_model, num_particles=8).run(x, num_steps=5, seed=0, progress=False)
    else:
        post = getattr(inference, engine)(deterministic_model, step_size=1e-3, num_warmup=5, num_samples=10,
                                          num_chains=2).run(x, seed=0, progress=False)
    _check_mu(post)


def test_deterministic_sites_reach_the_fusion_posterior():
    from bayeskit.inference import SVGD, Fusion
    from bayeskit.inference.fusion.shards import EngineSampler

    x = 0.5 + torch.randn(20, generator=torch.Generator().manual_seed(0))
    post = Fusion(deterministic_model, num_shards=2, num_particles=50, method="consensus",
                  sampler=EngineSampler(SVGD, num_steps=20, options={"num_particles": 50})).run(
        x, seed=0, progress=False)
    _check_mu(post)


# ------------------------------------------------------------------ model families' fit()
def _with_nan(shape, index):
    value = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    value[index] = float("nan")
    return value


def test_gp_sic_refuses_nan_and_mismatched_lengths():
    from bayeskit.models import SparseInverseCholeskyGP

    with pytest.raises(ValueError, match=r"argument 'y' has 1 non-finite.*index \(4,\)"):
        SparseInverseCholeskyGP(torch.rand(10, 1), _with_nan(10, 4))
    with pytest.raises(ValueError, match=r"'x' and 'y' must have the same number of rows: 'x' has 10, 'y' has 8"):
        SparseInverseCholeskyGP(torch.rand(10, 1), torch.rand(8))
    with pytest.raises(ValueError, match=r"argument 'y' has 1 value\(s\) outside the support.*0\.5 at index \(2,\)"):
        SparseInverseCholeskyGP(torch.rand(4, 1), torch.tensor([0.0, 1.0, 0.5, 1.0]), likelihood="bernoulli")


def test_fractional_sdes_refuse_nan_by_argument():
    from bayeskit.models.fractional_sde.latent import LatentFractionalSDE
    from bayeskit.models.fractional_sde.markov import MarkovFBM
    from bayeskit.models.fractional_sde.model import FractionalSDE, OrnsteinUhlenbeckDrift

    model = FractionalSDE(OrnsteinUhlenbeckDrift(), 1.0, MarkovFBM(0.5), dt=0.01)
    with pytest.raises(ValueError, match=r"argument 'observations' has 1 non-finite.*index \(0, 1, 0\)"):
        model.fit(_with_nan((1, 2, 1), (0, 1, 0)), torch.tensor([0.5, 0.6]), num_steps=1, progress=False)
    latent = LatentFractionalSDE(2, 3, fbm=MarkovFBM(0.5, gamma_max=10.0), dt=0.025)
    times = torch.arange(4) * 0.025
    with pytest.raises(ValueError, match=r"argument 'y' has 1 non-finite.*index \(1, 2, 0\)"):
        latent.fit(_with_nan((2, 4, 2), (1, 2, 0)), times, num_steps=1, progress=False)


def test_autoencoders_refuse_nan_and_pixels_outside_the_unit_interval():
    from bayeskit.models import BayesianAutoencoder, VariationalAutoencoder

    with pytest.raises(ValueError, match=r"argument 'x' has 1 non-finite.*index \(3, 5\)"):
        BayesianAutoencoder(8, 2, hidden=(4,)).fit_prior(_with_nan((6, 8), (3, 5)), num_steps=1, progress=False)
    images = torch.rand(6, 8)
    images[2, 1] = 3.0
    with pytest.raises(ValueError, match=r"argument 'x' has 1 value\(s\) outside the support.*3\.0 at index \(2, 1\)"
                                         r".*Scale the images"):
        VariationalAutoencoder(8, 2, hidden=(4,), likelihood="continuous_bernoulli").fit(images, num_steps=1,
                                                                                          progress=False)


def test_dp_mixture_refuses_nan_by_argument():
    from bayeskit.models import DirichletProcessMixture

    with pytest.raises(ValueError, match=r"argument 'z' has 1 non-finite.*index \(7, 1\)"):
        DirichletProcessMixture(3).fit(_with_nan((20, 2), (7, 1)), num_steps=1, progress=False)


def test_state_space_fit_refuses_nan_by_argument():
    from bayeskit.inference.smc import fit_ssm
    from bayeskit.models import LinearGaussianSSM

    model = LinearGaussianSSM(0.9, 1.0, 0.5, 0.5, learn=("A",))
    with pytest.raises(ValueError, match=r"argument 'y' has 1 non-finite.*index \(5, 0\)"):
        fit_ssm(model, _with_nan((12, 1), (5, 0)), num_steps=1, progress=False)
