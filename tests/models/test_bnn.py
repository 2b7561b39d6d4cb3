"""``bayesian_mlp``'s log density against a by-hand numpy/scipy one (priors, forward pass, likelihood and the
log-Jacobian of the latent noise scale), for each likelihood and activation, at several unconstrained points."""

import numpy as np
import pytest
import torch
from scipy import special, stats

from bayeskit import Target
from bayeskit.models import bayesian_mlp

HIDDEN = (4, 3)


def data(likelihood, n=12, p=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p))
    y = {"bernoulli": rng.integers(0, 2, n), "categorical": rng.integers(0, 3, n),
         "gaussian": rng.normal(size=n)}[likelihood]
    return torch.as_tensor(x), torch.as_tensor(y, dtype=torch.float64 if likelihood != "categorical" else torch.long)


def by_hand_log_density(values, x, y, likelihood, activation, prior_scale, noise_scale):
    """log p(weights) + log p(y | x, weights) (+ the HalfNormal noise prior and its log-Jacobian), in numpy."""
    act = {"relu": lambda h: np.maximum(h, 0.0), "tanh": np.tanh}[activation]
    total, h = 0.0, x
    num_layers = len(HIDDEN) + 1
    for layer in range(num_layers):
        w, b = values[f"w{layer}"], values[f"b{layer}"]
        total += stats.norm.logpdf(w, 0.0, prior_scale).sum() + stats.norm.logpdf(b, 0.0, prior_scale).sum()
        h = h @ w + b
        if layer < num_layers - 1:
            h = act(h)
    if likelihood == "bernoulli":
        logits = h[:, 0]
        return total + (y * -np.logaddexp(0, -logits) + (1 - y) * -np.logaddexp(0, logits)).sum()
    if likelihood == "categorical":
        return total + (h - special.logsumexp(h, axis=1, keepdims=True))[np.arange(len(y)), y].sum()
    if noise_scale is None:  # a latent HalfNormal(1) scale, sampled on a log scale: + log noise
        noise = values["noise"]
        total += stats.halfnorm.logpdf(noise) + np.log(noise)
    else:
        noise = noise_scale
    return total + stats.norm.logpdf(y, h[:, 0], noise).sum()


@pytest.mark.parametrize("likelihood, activation, noise_scale", [
    ("bernoulli", "relu", None), ("categorical", "tanh", None), ("gaussian", "relu", None),
    ("gaussian", "tanh", 0.7)])
def test_bayesian_mlp_density_is_the_by_hand_network(float64, likelihood, activation, noise_scale):
    x, y = data(likelihood)
    options = dict(hidden=HIDDEN, likelihood=likelihood, activation=activation, prior_scale=0.8,
                   noise_scale=noise_scale)
    target = Target.from_pyro(bayesian_mlp, x, y, **options)
    z = target.init(3, torch.Generator().manual_seed(1)) * 3  # spread out: relu units on and off
    log_prob = target.log_prob(z)
    for point in range(3):
        values = {name: value.detach().numpy() for name, value in target.constrain(z[point]).items()}
        expected = by_hand_log_density(values, x.numpy(), y.numpy(), likelihood, activation, 0.8, noise_scale)
        assert float(log_prob[point]) == pytest.approx(expected, rel=1e-10, abs=1e-8)
