r"""Parameter learning in state-space models: maximum likelihood by Fisher's identity, and Markov score climbing.

Three stochastic-gradient methods, all on the shared :class:`~bayeskit.runner.Fit` loop (progress, trace,
seeding, non-finite stops) and any pure optimiser of :mod:`bayeskit.optim`:

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
            num_backward: int = 2, backward: str = "auto", num_chains: int = 1, optimizer="adam",
            lr: float = 0.02, average_from: int | None = None, seed: int | None = None, progress: bool = True,
            callback=None, checkpoint=None, checkpoint_every: int = 100, resume: bool = False) -> Posterior:
    """Fit the learnable parameters of ``model`` (those named in its ``learn=``) to ``y`` ``(T, obs_dim)``.

    Parameters
    ----------
    method : {"ppg", "paris", "score_climbing"}
        See the module docstring.
    num_particles, num_backward, backward
        Of each sweep, as in :class:`~bayeskit.inference.PaRIS`.
    num_chains : int
        Independent particle systems per step whose gradients are averaged.
    optimizer : str, pure optimiser or dict
        As for :class:`~bayeskit.runner.Fit`: a name built with ``lr``
        (default Adam), a :mod:`bayeskit.optim` object such as
        ``Adam(lr=lambda t: 0.02 / t ** 0.5)``, or one per parameter name.
    average_from : int, optional
        First step of the Polyak-Ruppert average; default ``num_steps // 2``.
    seed, progress, callback, checkpoint, checkpoint_every, resume
        As for every engine's ``run`` (:func:`bayeskit.runner.run_loop`); a
        checkpoint holds the parameters, the optimiser, the running average
        and the reference trajectory, so a resumed fit ends exactly as an
        uninterrupted one.

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
    running = _RunningAverage(parameters, average_from)
    chain = _Reference()

    def loss(step):
        running.add(step)
        conditional = chain.reference if method != "paris" else None
        with torch.no_grad():
            state = core.sweep(model, y, num_chains, num_particles, reference=conditional, record=True,
                               num_backward=num_backward, backward=backward)
            if method != "paris":
                chain.reference = core.backward_trajectory(state)
        if method == "score_climbing":
            objective = model.log_joint(chain.reference, y)
        else:
            objective = core.surrogate_log_likelihood(model, y, state)
        values = {name: value.detach() for name, value in model.parameter_values().items()}
        return -objective.mean() / y.shape[0], values

    fitted = Fit(loss, parameters, optimizer=optimizer, lr=lr, name=f"fit_ssm[{method}]",
                 carry={"average": running, "reference": chain}).run(
        num_steps=num_steps, seed=seed, progress=progress, callback=callback, checkpoint=checkpoint,
        checkpoint_every=checkpoint_every, resume=resume)
    running.assign()
    values = {name: value.unsqueeze(0).unsqueeze(0) for name, value in model.parameter_values().items()}
    settings = {"method": method, "num_particles": num_particles, "num_backward": num_backward,
                "num_chains": num_chains, "average_from": average_from, **fitted.meta["settings"]}
    return Posterior(values, trace=fitted.trace, meta={**fitted.meta, "settings": settings})


class _RunningAverage:
    """The Polyak-Ruppert average of the parameters from step ``start`` on, carried through checkpoints."""

    def __init__(self, parameters, start):
        self.parameters, self.start = parameters, start
        self.totals = {name: torch.zeros_like(p) for name, p in parameters.items()}
        self.count = 0

    def add(self, step):
        """Count the iterate that step ``step`` (0-based) starts from, once the average has begun."""
        if step >= self.start:
            for name, p in self.parameters.items():
                self.totals[name] += p.detach()
            self.count += 1

    @torch.no_grad()
    def assign(self):
        """Leave the parameters at the average (the last iterate if none was counted)."""
        if self.count:
            for name, p in self.parameters.items():
                p.copy_(self.totals[name] / self.count)

    def state_dict(self):
        return {"totals": self.totals, "count": self.count}

    def load_state_dict(self, saved):
        self.totals, self.count = dict(saved["totals"]), int(saved["count"])


class _Reference:
    """The reference trajectory carried from sweep to sweep (PPG and score climbing)."""

    def __init__(self):
        self.reference = None

    def state_dict(self):
        return {} if self.reference is None else {"reference": self.reference}

    def load_state_dict(self, saved):
        self.reference = saved.get("reference")
