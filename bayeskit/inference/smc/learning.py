r"""Parameter learning in state-space models: maximum likelihood by Fisher's identity, and Markov score climbing.

Three stochastic-gradient methods, all on the shared :class:`~bayeskit.runner.Fit` loop (progress, trace,
seeding, non-finite stops) and any ``torch.optim`` optimiser:

- ``"paris"``: each step runs a PaRIS sweep and ascends its estimate of the score
  :math:`\nabla_\theta \log p_\theta(y_{0:T-1}) = E_\theta[\sum_t \nabla_\theta \log q_t g_t \mid y]`
  (Fisher's identity; the score is an additive functional, estimated through
  :func:`~bayeskit.inference.smc.core.surrogate_log_likelihood`). Biased at fixed N.
- ``"ppg"``: the same score from conditional PaRIS, the reference trajectory
  carried from step to step as in PaRIS particle Gibbs, so that the Markov
  chain's bias vanishes as the iterations go on (Cardoso et al. 2023).
- ``"score_climbing"``: Markov score climbing (Naesseth, Lindsten and Blei 2020): the
  conditional SMC chain moves with the current parameters, then
  :math:`\theta \leftarrow \theta + \gamma \nabla_\theta \log p_\theta(x^*_{0:T-1}, y_{0:T-1})` at its new
  state :math:`x^*`.

Stochastic approximation with a constant learning rate wanders around the
maximiser; the returned parameters are the Polyak-Ruppert average of the
iterates from step ``average_from`` on (the model is left holding them).
"""

from __future__ import annotations

import torch

from bayeskit._checks import positive_int
from bayeskit.inference.smc import core
from bayeskit.inference.smc.engines import check_model, observations_for
from bayeskit.posterior import Posterior
from bayeskit.runner import Fit

__all__ = ["fit_ssm", "LEARNING_METHODS"]

LEARNING_METHODS = ("ppg", "paris", "score_climbing")


def fit_ssm(model, y, *, method: str = "ppg", num_steps: int = 500, num_particles: int = 100,
            num_backward: int = 2, backward: str = "auto", num_chains: int = 1, optimizer=None,
            lr: float = 0.02, average_from: int | None = None, seed: int | None = None, progress: bool = True,
            callback=None) -> Posterior:
    """Fit the learnable parameters of ``model`` (those named in its ``learn=``) to ``y`` ``(T, obs_dim)``.

    Parameters
    ----------
    method : {"ppg", "paris", "score_climbing"}
        See the module docstring.
    num_particles, num_backward, backward
        Of each sweep, as in :class:`~bayeskit.inference.PaRIS`.
    num_chains : int
        Independent particle systems per step whose gradients are averaged.
    optimizer : callable, optional
        ``optimizer(parameters) -> torch.optim.Optimizer``; default Adam with ``lr``.
    average_from : int, optional
        First step of the Polyak-Ruppert average; default ``num_steps // 2``.

    Returns
    -------
    Posterior
        The averaged parameters (natural scale, one draw, ``meta["sample_kind"] == "point"``)
        and ``trace`` with every step's parameters and ``loss`` (minus the
        surrogate log-likelihood per observation).
    """
    check_model(model)
    if method not in LEARNING_METHODS:
        raise ValueError(f"method must be one of {LEARNING_METHODS}, got {method!r}")
    core.check_settings(num_particles, num_backward, "multinomial", 0.5, backward, None)
    positive_int("num_chains", num_chains)
    parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not parameters:
        raise ValueError(f"{type(model).__name__} has no learnable parameters: name them in learn=(...)")
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive int, got {num_steps!r}")
    average_from = num_steps // 2 if average_from is None else average_from
    if not isinstance(average_from, int) or not 0 <= average_from < num_steps:
        raise ValueError(f"average_from must be an int in [0, num_steps), got {average_from!r}")
    y = observations_for(model, y)
    chain = {"reference": None}
    totals = {name: torch.zeros_like(p) for name, p in parameters.items()}
    counted = [0]

    def loss(step):
        if step >= average_from:
            for name, p in parameters.items():
                totals[name] += p.detach()
            counted[0] += 1
        conditional = chain["reference"] if method != "paris" else None
        with torch.no_grad():
            state = core.sweep(model, y, num_chains, num_particles, reference=conditional, record=True,
                               num_backward=num_backward, backward=backward)
            if method != "paris":
                chain["reference"] = core.backward_trajectory(state)
        if method == "score_climbing":
            objective = model.log_joint(chain["reference"], y)
        else:
            objective = core.surrogate_log_likelihood(model, y, state)
        # clone: some values are views of the parameters, which the optimiser then updates in place
        values = {name: value.clone() for name, value in model.parameter_values().items()}
        return -objective.mean() / y.shape[0], values

    fitted = Fit(loss, parameters, optimizer=optimizer, lr=lr, name=f"fit_ssm[{method}]").run(
        num_steps=num_steps, seed=seed, progress=progress, callback=callback)
    with torch.no_grad():
        for name, p in parameters.items():
            p.copy_(totals[name] / max(counted[0], 1))
    values = {name: value.unsqueeze(0).unsqueeze(0) for name, value in model.parameter_values().items()}
    settings = {"method": method, "num_particles": num_particles, "num_backward": num_backward,
                "num_chains": num_chains, "average_from": average_from, **fitted.meta["settings"]}
    return Posterior(values, trace=fitted.trace, meta={**fitted.meta, "settings": settings})
