"""How the SG-MCMC engines call a Target: one minibatch per chain, and the full-data pointwise log-likelihood."""

from __future__ import annotations

import torch

__all__ = ["log_prob_and_score_per_chain", "pointwise_log_likelihood", "MAX_LOG_LIKELIHOOD_SIZE"]

#: Full-data pointwise log-likelihoods are exported up to this many numbers (chains x draws x rows).
MAX_LOG_LIKELIHOOD_SIZE = 50_000_000


def log_prob_and_score_per_chain(target, points, share_minibatches=False):
    """Log density and score of ``points`` ``(chains, ..., dim)``, each chain on its own minibatch.

    A subsampling target (``target.subsampled``: a Pyro model with
    ``pyro.plate(..., subsample_size=B)``, eager or ``jit_compile=True``)
    draws one minibatch per call and scores every point of that call on it.
    Scoring all chains in one call would give them the same minibatch at
    every step: the gradient noise (up to half of each step's noise under
    the adapted step-size rules) would then be common to all chains, which
    drift together, are not independent, and make ArviZ's multi-chain ESS
    overstate the precision many-fold.  So a subsampling target with more
    than one chain is called once per chain (each call a fresh, independent
    minibatch; the points of one chain, e.g. a curvature probe's pair, share
    it).  ``share_minibatches=True``, or a target that does not subsample,
    takes one call for all.  Returns shapes ``(chains, ...)`` and
    ``(chains, ..., dim)``.
    """
    if share_minibatches or points.shape[0] == 1 or not target.subsampled:
        return target.log_prob_and_score(points)
    pairs = [target.log_prob_and_score(points[chain:chain + 1]) for chain in range(points.shape[0])]
    return torch.cat([log_prob for log_prob, _ in pairs]), torch.cat([score for _, score in pairs])


def pointwise_log_likelihood(target, draws):
    """Full-data pointwise log-likelihood at the draws, unless the model subsamples or it is too large."""
    num_rows = sum(value.numel() for value in target.observed_data.values())
    if target.subsampled or draws.shape[0] * draws.shape[1] * num_rows > MAX_LOG_LIKELIHOOD_SIZE:
        return None
    return target.pointwise_log_likelihood(draws)
