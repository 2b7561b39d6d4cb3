"""How the SG-MCMC engines call a Target: one minibatch per chain, and the full-data pointwise log-likelihood."""

from __future__ import annotations

import torch

from bayeskit.inference.sgmcmc.kernels import SGMCMCState

__all__ = ["log_prob_and_score_per_chain", "compiled_kernel_step", "pointwise_log_likelihood",
           "MAX_LOG_LIKELIHOOD_SIZE"]

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
    takes one call for all.  A captured target (``jit_compile=True``) scores
    every chain on its own minibatch in one vmapped, compiled call.  Returns
    shapes ``(chains, ...)`` and ``(chains, ..., dim)``.
    """
    if share_minibatches or points.shape[0] == 1 or not target.subsampled:
        return target.log_prob_and_score(points)
    if target.captured is not None:  # jit_compile: every chain on its own minibatch, in one compiled call
        return target.captured.log_prob_and_score_per_chain(points)
    pairs = [target.log_prob_and_score(points[chain:chain + 1]) for chain in range(points.shape[0])]
    return torch.cat([log_prob for log_prob, _ in pairs]), torch.cat([score for _, score in pairs])


def compiled_kernel_step(target, kernel, num_chains, share_minibatches=False):
    """One SG-MCMC step (score every chain, then ``kernel.step``) compiled as one call, for a captured target.

    Returns ``step(state, step_size, noise, options) -> (new state, log density)``,
    where ``options`` are the kernel update's extra keyword arguments.
    The minibatches are drawn here, before the compiled call, in the order
    the eager path draws them (one set per chain unless shared); the
    kernel's noise is drawn inside it by torch's own generator (see
    :data:`bayeskit.compiling.COMPILE_OPTIONS`), so a seed gives the eager
    path's draws, up to float rounding.  The compiled function is kept on
    the target per kernel (a frozen, hashable dataclass) and minibatch layout.
    """
    captured = target.captured
    per_chain = target.subsampled and not share_minibatches and num_chains > 1

    def build():
        score = captured.score_function(per_chain)

        def update(tensors, minibatch, step_size, noise, options):
            position = tensors["position"]
            points = position.unsqueeze(1) if per_chain else position  # (chains, 1, dim): one point per chain
            log_prob, grad = score(points, *minibatch)
            new = kernel.step(SGMCMCState(**tensors), grad.reshape(position.shape), step_size, noise=noise,
                              **options)
            return new.tensors(), log_prob.reshape(position.shape[0])
        return update

    compiled = captured.compiled(("sgmcmc step", kernel, per_chain), build)

    def step(state, step_size, noise, options):
        minibatch = captured.minibatch(num_chains if per_chain else None)
        # A tensor, not a Python number: torch.compile would specialise on the first value and recompile on
        # the next with other rounding, so a resumed run would not repeat the uninterrupted one bit for bit.
        step_size = torch.as_tensor(step_size, dtype=state.position.dtype, device=state.position.device)
        tensors, log_prob = compiled(state.tensors(), minibatch, step_size, noise, options)
        return SGMCMCState(**tensors), log_prob
    return step


def pointwise_log_likelihood(target, draws):
    """Full-data pointwise log-likelihood at the draws, unless the model subsamples or it is too large."""
    num_rows = sum(value.numel() for value in target.observed_data.values())
    if target.subsampled or draws.shape[0] * draws.shape[1] * num_rows > MAX_LOG_LIKELIHOOD_SIZE:
        return None
    return target.pointwise_log_likelihood(draws)
