"""Tests for planted bugs (tests/mutations.py) that no existing fast test caught.

Each compares with a ground truth written independently of the library: densities built from
``torch.distributions`` by hand, or ArviZ's own r_hat.
"""

import pyro.distributions as dist
import torch

from bayeskit.inference.fusion.shards import shard_density
from bayeskit.models import logistic_regression
from bayeskit.sharding import split_data


def test_the_logistic_shard_density_takes_one_cth_of_the_prior(float64):
    """Fusion's closed-form density of a logistic-regression shard is p(theta)^(1/C) p(y_c | theta).

    Written out with torch.distributions: the Normal prior on (alpha, beta) scaled by 1/C, plus the
    shard's Bernoulli log-likelihood. Equal up to a constant, so the scores are equal.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.bernoulli(torch.full((40,), 0.4, dtype=torch.float64), generator=generator)
    num_shards, prior_scale = 4, 1.5
    shard = split_data(logistic_regression, (x, y), {"prior_scale": prior_scale}, num_shards)[1]
    density = shard_density(shard)
    rows, responses = shard.args

    def expected(z):  # z = (alpha, beta_1..3), the flat vector's site order
        prior = dist.Normal(0.0, prior_scale).log_prob(z).sum(-1)
        likelihood = dist.Bernoulli(logits=z[:, :1] + z[:, 1:] @ rows.T).log_prob(responses).sum(-1)
        return prior / num_shards + likelihood

    z = torch.randn(6, 4, generator=generator, dtype=torch.float64).requires_grad_(True)
    truth = expected(z)
    (truth_score,) = torch.autograd.grad(truth.sum(), z)
    difference = density.log_prob(z.detach()) - truth.detach()
    torch.testing.assert_close(difference, difference[0].expand_as(difference), atol=1e-10, rtol=0)
    torch.testing.assert_close(density.score(z.detach()), truth_score, atol=1e-9, rtol=0)
