"""``predictive(posterior, x)`` of the model families: mixtures over the posterior's weighted draws.

Each check computes the mixture by hand from the draws and their weights, so a predictive that drops
the weights, mixes over the wrong
axis or uses the wrong link fails.
"""

import pytest
import torch

from bayeskit import Posterior
from bayeskit.models import bnn, glm


def weighted_posterior(samples, seed=0):
    """Samples ``(2, 5, ...)`` with random log-weights that put most mass on a few draws."""
    log_weights = 3.0 * torch.randn(2, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return Posterior(samples, log_weights=log_weights)


def draws_and_weights(post):
    draws = {name: value.reshape(-1, *value.shape[2:]) for name, value in post.samples.items()}
    weights = post.weights.reshape(-1)
    return draws, weights


@pytest.mark.parametrize("weighted", [False, True])
def test_logistic_regression_predictive_mixes_the_weighted_draws(float64, weighted):
    g = torch.Generator().manual_seed(1)
    samples = {"alpha": torch.randn(2, 5, generator=g), "beta": torch.randn(2, 5, 3, generator=g)}
    post = weighted_posterior(samples) if weighted else Posterior(samples)
    x = torch.randn(7, 3, generator=g)
    y = torch.tensor([0.0, 1, 1, 0, 1, 0, 0])
    predictive = glm.predictive(post, x)
    draws, w = draws_and_weights(post)
    probs = torch.sigmoid(draws["alpha"][:, None] + draws["beta"] @ x.T)  # (S, B)
    assert predictive.batch_shape == (7,)
    torch.testing.assert_close(predictive.mean, w @ probs)
    by_hand = torch.log(w @ torch.where(y.bool(), probs, 1 - probs))
    torch.testing.assert_close(predictive.log_prob(y), by_hand)


def test_a_weight_on_one_draw_gives_that_draws_prediction(float64):
    g = torch.Generator().manual_seed(2)
    samples = {"alpha": torch.randn(1, 4, generator=g), "beta": torch.randn(1, 4, 2, generator=g)}
    log_weights = torch.tensor([[-1e9, 0.0, -1e9, -1e9]], dtype=torch.float64)
    x = torch.randn(3, 2, generator=g)
    predictive = glm.predictive(Posterior(samples, log_weights=log_weights), x)
    torch.testing.assert_close(predictive.mean, torch.sigmoid(samples["alpha"][0, 1] + x @ samples["beta"][0, 1]))


@pytest.mark.parametrize("likelihood", ["bernoulli", "categorical", "gaussian"])
def test_bnn_predictive_mixes_the_weighted_draws(float64, likelihood):
    g = torch.Generator().manual_seed(3)
    outputs = 3 if likelihood == "categorical" else 1
    samples = {"w0": torch.randn(2, 5, 4, 6, generator=g), "b0": torch.randn(2, 5, 6, generator=g),
               "w1": torch.randn(2, 5, 6, outputs, generator=g), "b1": torch.randn(2, 5, outputs, generator=g)}
    if likelihood == "gaussian":
        samples["noise"] = torch.rand(2, 5, generator=g) + 0.1
    post = weighted_posterior(samples, seed=4)
    x = torch.randn(8, 4, generator=g)
    predictive = bnn.predictive(post, x, likelihood=likelihood)
    draws, w = draws_and_weights(post)
    out = torch.relu(x @ draws["w0"] + draws["b0"][:, None]) @ draws["w1"] + draws["b1"][:, None]  # (S, B, O)
    assert predictive.batch_shape == (8,)
    if likelihood == "bernoulli":
        torch.testing.assert_close(predictive.mean, w @ torch.sigmoid(out[..., 0]))
    elif likelihood == "categorical":
        probs = torch.einsum("s,sbk->bk", w, torch.softmax(out, -1))
        labels = torch.arange(8) % 3
        torch.testing.assert_close(predictive.log_prob(labels), probs[torch.arange(8), labels].log())
    else:
        mean = w @ out[..., 0]
        second = w @ (out[..., 0] ** 2 + draws["noise"][:, None] ** 2)
        torch.testing.assert_close(predictive.mean, mean)
        torch.testing.assert_close(predictive.variance, second - mean ** 2)


def test_bad_predictive_inputs_are_refused(float64):
    post = Posterior({"alpha": torch.zeros(1, 2), "beta": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="covariates"):
        glm.predictive(post, torch.zeros(4, 2))
    with pytest.raises(ValueError, match="alpha"):
        glm.predictive(Posterior({"beta": torch.zeros(1, 2, 3)}), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="likelihood"):
        bnn.predictive(post, torch.zeros(4, 3), likelihood="normal")
