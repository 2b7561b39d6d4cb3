"""Dirichlet-process mixture: held-out density against the true mixture (scipy), pruning of spare
components, recovered means and weights, sampler against an independent numpy sampler and the analytic
moments, log_prob against scipy, the Pyro model's sites, equivariance and bad input."""

import warnings

import numpy as np
import pyro
import pytest
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from bayeskit.diagnostics import energy_distance
from bayeskit.models.dp_mixture import DirichletProcessMixture, stick_breaking

WEIGHTS = np.array([0.5, 0.3, 0.2])
MEANS = np.array([[0.0, 0.0], [4.0, 1.0], [-1.0, 5.0]])
COVS = np.array([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 0.3]], [[0.4, -0.2], [-0.2, 0.6]]])
DIAG_COVS = np.array([np.diag([1.0, 0.4]), np.diag([0.3, 0.6]), np.diag([0.5, 0.5])])


pytestmark = pytest.mark.usefixtures("one_thread")


def draw(n, seed, covs=COVS):
    rng = np.random.default_rng(seed)
    labels = rng.choice(3, n, p=WEIGHTS)
    return np.stack([rng.multivariate_normal(MEANS[k], covs[k]) for k in labels])


def mixture_logpdf(x, weights, means, covs):
    """log sum_k w_k N(x | mu_k, C_k), with scipy, independently of the model."""
    return logsumexp([np.log(w) + stats.multivariate_normal(m, c).logpdf(x) for w, m, c in zip(weights, means, covs)
                      if w > 0], axis=0)


def fitted(model):
    return (model.weights.numpy(), model.means.numpy(), model.covariance_matrix.numpy())


@pytest.fixture(scope="module")
def data():
    return torch.tensor(draw(600, 0)), draw(4000, 1)


@pytest.fixture(scope="module")
def em_fit(data):
    model = DirichletProcessMixture(10)
    model.fit(data[0], seed=0, progress=False)
    return model


@pytest.mark.parametrize("method", ["em", "map"])
def test_held_out_density_matches_the_true_mixture(data, em_fit, method):
    z, held_out = data
    if method == "em":
        model = em_fit
    else:
        model = DirichletProcessMixture(10)
        model.fit(z, method="map", num_steps=200, seed=0, progress=False)
    truth = mixture_logpdf(held_out, WEIGHTS, MEANS, COVS).mean()
    fit = model.log_prob(torch.tensor(held_out)).mean().item()
    assert abs(truth - fit) < 0.05, (truth, fit)
    assert (model.weights > 0.02).sum() == 3, model.weights
    assert torch.allclose(model.weights.sum(), torch.tensor(1.0, dtype=z.dtype))
    assert model.fit_result.trace["loss"].ndim == 1 and set(model.fit_result.samples) == {"v", "mu", "precision"}


def test_spare_components_are_pruned_and_the_rest_recovered(em_fit):
    weights, means, covs = fitted(em_fit)
    assert np.sort(weights)[-4] < 0.005  # seven spare components share what is left
    big = np.argsort(weights)[::-1][:3]
    rows, cols = linear_sum_assignment(((MEANS[:, None] - means[big][None]) ** 2).sum(-1))
    n = 600 * WEIGHTS[rows]
    mean_se = np.sqrt(np.diagonal(COVS[rows], axis1=1, axis2=2) / n[:, None])
    assert np.all(np.abs(means[big][cols] - MEANS[rows]) < 4 * mean_se), (means[big][cols], MEANS)
    assert np.all(np.abs(weights[big][cols] - WEIGHTS[rows]) < 4 * np.sqrt(WEIGHTS * (1 - WEIGHTS) / 600))
    cov_se = np.sqrt((COVS[rows] ** 2 + np.einsum("kii,kjj->kij", COVS[rows], COVS[rows])) / n[:, None, None])
    assert np.all(np.abs(covs[big][cols] - COVS[rows]) < 4 * cov_se)


def test_map_improves_the_log_joint_of_the_variational_point(data, em_fit):
    z = data[0]
    model = DirichletProcessMixture(10)
    result = model.fit(z, method="map", num_steps=100, seed=0, progress=False)
    assert result is model.fit_result  # fit returns a Posterior, as every fit does

    def log_joint(m):
        return pyro.poutine.trace(pyro.poutine.condition(m.model, data=m.sites)).get_trace(z).log_prob_sum()

    assert log_joint(model) > log_joint(em_fit)
    meta = model.fit_result.meta
    assert meta["engine"] == "Fit" and meta["settings"]["name"] == "DP mixture"
    assert len(model.fit_result.trace["loss"]) == 100


def test_diagonal_covariances(data):
    z, held_out = torch.tensor(draw(600, 2, DIAG_COVS)), draw(4000, 3, DIAG_COVS)
    model = DirichletProcessMixture(10, covariance="diag")
    model.fit(z, seed=0, progress=False)
    truth = mixture_logpdf(held_out, WEIGHTS, MEANS, DIAG_COVS).mean()
    assert abs(truth - model.log_prob(torch.tensor(held_out)).mean().item()) < 0.05
    assert (model.weights > 0.02).sum() == 3
    assert torch.equal(model.scale_tril, torch.diag_embed(model.scale_tril.diagonal(dim1=-2, dim2=-1)))


def test_log_prob_and_responsibilities_match_scipy(data, em_fit):
    z = data[1][:500]
    weights, means, covs = fitted(em_fit)
    expected = logsumexp([np.log(w) + stats.multivariate_normal(m, c).logpdf(z) for w, m, c in
                          zip(weights, means, covs)], axis=0)
    np.testing.assert_allclose(em_fit.log_prob(torch.tensor(z)).numpy(), expected, rtol=0, atol=1e-8)
    joint = np.stack([np.log(w) + stats.multivariate_normal(m, c).logpdf(z) for w, m, c in
                      zip(weights, means, covs)], -1)
    np.testing.assert_allclose(em_fit.responsibilities(torch.tensor(z)).numpy(),
                               np.exp(joint - expected[:, None]), rtol=0, atol=1e-10)


def test_samples_follow_the_fitted_mixture(em_fit):
    weights, means, covs = fitted(em_fit)
    draws = em_fit.sample(1000, seed=1)
    assert draws.shape == (1000, 2) and draws.dtype == torch.float64
    assert torch.equal(draws, em_fit.sample(1000, seed=1)) and not torch.equal(draws, em_fit.sample(1000, seed=2))
    # Two-sample permutation test against draws of an independent numpy sampler of the same mixture.
    rng = np.random.default_rng(5)
    labels = rng.choice(len(weights), 1000, p=weights / weights.sum())
    reference = torch.tensor(np.stack([rng.multivariate_normal(means[k], covs[k]) for k in labels]))
    observed = energy_distance(draws, reference)
    pooled, generator = torch.cat([draws, reference]), torch.Generator().manual_seed(0)
    null = []
    for _ in range(40):
        perm = torch.randperm(2000, generator=generator)
        null.append(energy_distance(pooled[perm[:1000]], pooled[perm[1000:]]))
    assert (torch.stack(null) >= observed).float().mean() > 0.01
    # ... and close to fresh draws of the true mixture, unlike those of a slightly wrong one.
    truth = torch.tensor(draw(1000, 7))
    assert energy_distance(draws, truth) < 0.025
    assert energy_distance(torch.tensor(draw(1000, 8)) + torch.tensor([0.4, 0.0]), truth) > 0.025


def test_sample_moments_match_the_analytic_ones(em_fit):
    weights, means, covs = fitted(em_fit)
    mean = weights @ means
    cov = np.einsum("k,kij->ij", weights, covs + means[:, :, None] * means[:, None, :]) - np.outer(mean, mean)
    x = em_fit.sample(20000, seed=3).numpy()
    assert np.all(np.abs(x.mean(0) - mean) < 4 * np.sqrt(np.diag(cov) / len(x)))
    centred = x - mean
    products = centred[:, :, None] * centred[:, None, :]
    assert np.all(np.abs(products.mean(0) - cov) < 4 * products.std(0) / np.sqrt(len(x)))


@pytest.mark.parametrize("covariance,K", [("full", 10), ("diag", 4), ("full", 1)])
def test_the_model_is_an_ordinary_pyro_model(data, covariance, K):
    z = data[0]
    model = DirichletProcessMixture(K, covariance=covariance)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's Wishart sampler may warn of a near-singular draw
        with pyro.poutine.seed(rng_seed=0):
            prior_draw = pyro.poutine.trace(model.model).get_trace(z)
    assert torch.isfinite(prior_draw.log_prob_sum())
    latent = set(prior_draw.stochastic_nodes) - {"sticks", "components", "data"}  # less the plates
    assert latent == ({"v"} if K > 1 else set()) | {"mu", "precision"}
    model.fit(z, seed=0, progress=False)
    trace = pyro.poutine.trace(pyro.poutine.condition(model.model, data=model.sites)).get_trace(z)
    trace.compute_log_prob()
    assert abs(trace.nodes["z"]["log_prob_sum"].item() - model.log_prob(z).sum().item()) < 1e-8
    if K == 1:  # one component: the Gaussian fitted by maximum likelihood, up to the weak prior
        np.testing.assert_allclose(model.means[0].numpy(), z.mean(0).numpy(), atol=1e-3)
        np.testing.assert_allclose(model.covariance_matrix[0].numpy(), np.cov(z.numpy().T), rtol=0.02, atol=0.02)


def test_stick_breaking():
    v = torch.tensor([0.5, 0.25, 1.0])
    assert torch.equal(stick_breaking(v), torch.tensor([0.5, 0.125, 0.375, 0.0]))


def test_fit_is_deterministic_and_affine_equivariant(data, em_fit):
    z = data[0]
    again = DirichletProcessMixture(10)
    again.fit(z, seed=0, progress=False)
    assert torch.equal(again.weights, em_fit.weights) and torch.equal(again.means, em_fit.means)
    shift, scale = torch.tensor([100.0, -3.0]), torch.tensor([1000.0, 0.01])
    moved = DirichletProcessMixture(10)
    moved.fit(z * scale + shift, seed=0, progress=False)
    torch.testing.assert_close(moved.weights, em_fit.weights)
    torch.testing.assert_close((moved.means - shift) / scale, em_fit.means)
    torch.testing.assert_close(moved.log_prob(z * scale + shift) + scale.log().sum(), em_fit.log_prob(z))


def test_dtype_follows_the_data(data):
    model = DirichletProcessMixture(5)
    model.fit(data[0].float(), seed=0, progress=False)
    assert model.weights.dtype == model.means.dtype == model.sample(3, seed=0).dtype == torch.float32
    assert model.log_prob(data[0][:5]).dtype == torch.float32


@pytest.mark.gpu
def test_fits_on_cuda(data, em_fit):
    model = DirichletProcessMixture(10)
    model.fit(data[0].cuda(), seed=0, progress=False)
    assert model.means.is_cuda and model.sample(10, seed=0).is_cuda
    torch.testing.assert_close(model.log_prob(data[0].cuda()).mean().cpu(), em_fit.log_prob(data[0]).mean(),
                               rtol=0, atol=0.02)


@pytest.mark.parametrize("kwargs,argument", [
    ({"num_components": 0}, "num_components"), ({"num_components": 2.0}, "num_components"),
    ({"concentration": 0.0}, "concentration"), ({"concentration": float("nan")}, "concentration"),
    ({"covariance": "spherical"}, "covariance"), ({"prior_scale": -1.0}, "prior_scale"),
    ({"prior_scale": [[1.0]]}, "prior_scale")])
def test_bad_settings_are_refused(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        DirichletProcessMixture(**kwargs)


def test_bad_data_and_arguments_are_refused(data, em_fit):
    z = data[0]
    model = DirichletProcessMixture(3)
    with pytest.raises(RuntimeError, match="fit"):
        _ = model.weights
    for bad in (z[:, 0], z[:1], z.long(), torch.cat([z, torch.tensor([[float("nan"), 0.0]])])):
        with pytest.raises(ValueError, match="z"):
            model.fit(bad, progress=False)
    with pytest.raises(TypeError, match="z"):
        model.fit(z.numpy())
    with pytest.raises(ValueError, match="constant column"):
        model.fit(torch.stack([z[:, 0], torch.ones(len(z), dtype=z.dtype)], -1), progress=False)
    with pytest.raises(ValueError, match="prior_scale"):
        DirichletProcessMixture(3, prior_scale=[1.0, 2.0, 3.0]).fit(z, progress=False)
    for kwargs, argument in (({"method": "gibbs"}, "method"), ({"lr": 0.0}, "lr"), ({"seed": -1}, "seed"),
                             ({"num_steps": 0}, "num_steps")):
        with pytest.raises(ValueError, match=argument):
            model.fit(z, progress=False, **kwargs)
    with pytest.raises(ValueError, match=r"z must .* \(n, 2\)"):
        em_fit.log_prob(torch.zeros(3, 4, dtype=z.dtype))
    with pytest.raises(ValueError, match="n must"):
        em_fit.sample(-1)
    with pytest.raises(ValueError, match="seed"):
        em_fit.sample(3, seed=1.5)


@pytest.mark.parametrize("concentration", [0.3, 3.0])
def test_the_concentration_is_the_stick_prior_of_the_model(data, concentration):
    """v_k ~ Beta(1, concentration) in the Pyro model: its log density at fixed sticks against scipy's."""
    z = data[0]
    model = DirichletProcessMixture(5, concentration=concentration)
    v = torch.tensor([0.7, 0.2, 0.5, 0.05], dtype=z.dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's Wishart sampler may warn of a near-singular draw
        with pyro.poutine.seed(rng_seed=0):
            trace = pyro.poutine.trace(pyro.poutine.condition(model.model, data={"v": v})).get_trace(z)
    trace.compute_log_prob()
    expected = stats.beta.logpdf(v.numpy(), 1.0, concentration).sum()
    assert trace.nodes["v"]["log_prob_sum"].item() == pytest.approx(expected, rel=1e-10)
