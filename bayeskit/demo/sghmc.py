"""Demo stop ``sghmc``.

SGHMC on a Bayesian neural network of the bundled breast-cancer data, 4 chains, minibatches of 64.
"""

from __future__ import annotations

import time
from pathlib import Path

from bayeskit.demo.common import pandas_display, plot_trace, print_header, report_health

__all__ = ["run"]

# What the stop says when the weights' r_hat is flagged, as it is at every length: the summaries compare raw
# weights, and the predictions printed next are what this posterior is judged on.
UNIDENTIFIED_WEIGHTS = ("(expected of a network's raw weights, and shown as measured: hidden units can swap or "
                        "change sign between chains, so the chains of one weight need not agree; the predictions "
                        "below are identified, and their r_hat is the one to judge)")


def run(out: Path, *, quick: bool, seed: int, progress: bool):
    """SGHMC on a Bayesian neural network of the bundled breast-cancer data, 4 chains, minibatches of 64."""
    import torch

    from bayeskit.datasets import load_breast_cancer
    from bayeskit.diagnostics import rhat
    from bayeskit.inference import SGHMC
    from bayeskit.models import bayesian_mlp
    from bayeskit.models.bnn import predict

    data = load_breast_cancer().standardized()
    train, test = data.split(test_fraction=0.2, seed=seed)
    hidden, batch = (50,), 64
    engine = SGHMC(bayesian_mlp, step_size=0.02, num_chains=4, num_warmup=100 if quick else 1000,
                   num_samples=100 if quick else 500, thin=2 if quick else 10)
    print_header(f"SGHMC: Bayesian neural network {train.x.shape[1]}-{hidden[0]}-1, breast cancer "
                 f"({len(train.y)} train / {len(test.y)} test, minibatches of {batch}, {engine.num_chains} chains)")
    start = time.perf_counter()
    # jit_compile: capture the network's density once and compile each step (minibatches still change every step)
    post = engine.run(train.x, train.y, hidden=hidden, subsample_size=batch, seed=seed, progress=progress,
                      jit_compile=True)
    seconds = time.perf_counter() - start
    print(f"{engine.plan.num_steps} steps x {engine.num_chains} chains in {seconds:.1f} s "
          f"({engine.num_samples} draws per chain kept)")
    with pandas_display():
        print(post.summary(var_names=["b1"], health=False))
    report_health("the SGHMC chains", post, if_unhealthy=UNIDENTIFIED_WEIGHTS)
    # Raw weights are not identified (hidden units can swap between chains); predictions are.
    logits = predict(post, test.x).squeeze(-1)  # (chain, draw, test row)
    probability = torch.sigmoid(logits)
    log_lik = torch.distributions.Bernoulli(logits=logits).log_prob(test.y).flatten(0, 1)
    lpd = (torch.logsumexp(log_lik, 0) - torch.log(torch.tensor(float(log_lik.shape[0])))).mean()
    accuracy = ((probability.mean((0, 1)) > 0.5).to(test.y) == test.y).float().mean()
    # r_hat on logits: saturated probabilities (exactly 1.0 in float32) have no spread to compare
    prediction_rhat = rhat(logits)
    print(f"held-out accuracy {float(accuracy):.3f}, mean log predictive density {float(lpd):.3f}; "
          f"r_hat of the {len(test.y)} predicted logits: median {float(prediction_rhat.median()):.3f}, "
          f"max {float(prediction_rhat.max()):.3f}")
    path = out / "sghmc_posterior.nc"
    post.save(path)
    post.plot("trace", var_names=["b1"], path=out / "sghmc_trace_b1.png")
    plot_trace(post, out / "sghmc_engine_trace.png")
    print(f"wrote {path}, {out / 'sghmc_trace_b1.png'}, {out / 'sghmc_engine_trace.png'}")
    return post
