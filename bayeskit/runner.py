"""The one loop every engine and every ``fit()`` runs through.

An engine supplies the math as an :class:`Algorithm` (``init`` and a pure
``step`` over a small state of tensors) and runs on a :class:`Problem`;
:func:`run_loop` adds the bookkeeping once for all of them: seeding, a progress bar, the per-step trace, callbacks,
non-finite detection that names the step and the site, and checkpoints that
resume to exactly the result of an uninterrupted run.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from bayeskit import health
from bayeskit._checks import positive_int
from bayeskit.compiling import clone_tensors
from bayeskit.optim import make_optimizer
from bayeskit.parallel import resolve_seed, seeded
from bayeskit.posterior import Posterior
from bayeskit.target import Target

CHECKPOINT_FORMAT = "bayeskit-checkpoint/1"

__all__ = ["Algorithm", "Engine", "Fit", "NonFiniteError", "Parameters", "Problem", "progress_enabled", "run_loop",
           "versions"]


class NonFiniteError(FloatingPointError):
    """A run produced NaN or inf.

    Attributes
    ----------
    step : int
        The first step (1-based) whose state was not finite.
    sites : list[str]
        The sites whose values, scores or log densities were not finite.
    posterior : Posterior or None
        The posterior built from the last finite state.
    """

    def __init__(self, message, *, step, sites, posterior):
        super().__init__(message)
        self.step, self.sites, self.posterior = step, sites, posterior


def progress_enabled(progress: bool) -> bool:
    """Progress bars are on unless turned off or running under CI."""
    return bool(progress) and not os.environ.get("CI")


def versions() -> dict[str, str]:
    import pyro

    from bayeskit import __version__

    return {"bayeskit": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version()}


def target_of(model_or_target, *model_args, **model_kwargs) -> Target:
    """``model_or_target`` itself if it is a Target, else the Pyro model's Target given its arguments."""
    if isinstance(model_or_target, Target):
        if model_args or model_kwargs:
            raise TypeError("model arguments were given, but the engine was built on a Target, "
                            "which is already conditioned on its data")
        return model_or_target
    return Target.from_pyro(model_or_target, *model_args, **model_kwargs)


def record_particle_spread(posterior: Posterior, target) -> None:
    """For interacting particles on a Target, ``meta["particle_spread"]``: what the collapse check reads.

    Measured in the unconstrained coordinates the score lives in (see
    :func:`bayeskit.health.particle_spread`); skipped for targets that cannot
    map draws back (the NumPyro bridge).
    """
    if posterior.meta.get("sample_kind") != "particles" or not isinstance(target, Target):
        return
    try:
        z = target.unconstrain({name: posterior.samples[name] for name in target.sites})
    except (ValueError, KeyError):
        return
    _, scores = target.log_prob_and_score(z.to(target.device))
    posterior.meta["particle_spread"] = health.particle_spread(z, scores)


#: Per-step trace entries a column keeps loose before joining them into one tensor.
TRACE_BLOCK = 32


class _Trace:
    """Per-step diagnostics kept on the device and stacked at the end (no host sync per step).

    Each column keeps its last entries loose (0-d or small tensors, one per
    step) and joins every :data:`TRACE_BLOCK` of them into one tensor.  Why:
    a tiny tensor that lives for the whole run, allocated between a step's
    large temporaries, pins their heap pages, and glibc's heap then grows
    instead of reusing them.  Measured on SVGD with 100 particles on 10,000
    rows (4 MB temporaries): 1,000 steps added 1,147 MiB of resident memory
    with one kept tensor per entry, 216 MiB with blocks of 32 (a bare loop
    of the same step that keeps nothing: 30 MiB over 600 steps).
    """

    def __init__(self, initial: dict[str, torch.Tensor] | None = None):
        self.blocks: dict[str, list[torch.Tensor]] = {name: [values] for name, values in (initial or {}).items()}
        self.loose: dict[str, list[torch.Tensor]] = {name: [] for name in self.blocks}
        self.lengths: dict[str, int] = {name: len(values) for name, values in (initial or {}).items()}

    def append(self, info: dict[str, torch.Tensor]) -> None:
        for name, value in info.items():
            loose = self.loose.setdefault(name, [])
            loose.append(torch.as_tensor(value).detach())
            self.lengths[name] = self.lengths.get(name, 0) + 1
            if len(loose) == TRACE_BLOCK:
                self.blocks.setdefault(name, []).append(torch.stack(loose))
                loose.clear()

    def column(self, name: str, start: int = 0, stop: int | None = None) -> torch.Tensor | None:
        """Entries ``start:stop`` of one column, stacked; None when the run has not recorded it."""
        if not self.lengths.get(name):
            return None
        stop = self.lengths[name] if stop is None else stop
        out, offset = [], 0
        for block in self.blocks.get(name, []):  # only what overlaps [start, stop): a check per step stays O(1)
            if offset + len(block) > start and offset < stop:
                out.append(block[max(start - offset, 0):stop - offset])
            offset += len(block)
        loose = self.loose[name][max(start - offset, 0):max(stop - offset, 0)]
        if loose:
            out.append(torch.stack(loose))
        return torch.cat(out) if len(out) > 1 else out[0]

    def stacked(self, stop: int | None = None) -> dict[str, torch.Tensor]:
        return {name: self.column(name, 0, stop) for name, length in self.lengths.items() if length}


class Problem(Protocol):
    """What a run operates on: a :class:`~bayeskit.Target`, observations, or parameters to optimise.

    ``device`` and ``dtype`` place the run, ``description`` names it in
    ``meta["target"]``, and ``nonfinite_sites(values, scores)`` names the
    sites whose values or scores are NaN or inf (either may be None).
    """

    device: torch.device
    dtype: torch.dtype
    description: str

    def nonfinite_sites(self, values=None, scores=None) -> list[str]: ...


class Algorithm(Protocol):
    """The math of an engine, as a functional core the one loop drives (after BlackJAX and optax).

    - ``init(problem, generator) -> State``: the starting state; ``generator``
      is a CPU generator seeded with the run's seed.
    - ``step(state, problem, generator) -> (State, info)``: one step. It
      returns a new state and leaves its input unchanged; ``info`` maps names
      to 0-d tensors recorded in ``Posterior.trace``, and ``info["finite"]``
      (bool) says whether the new state is finite. ``generator`` is the run's
      random stream on ``problem.device`` (torch's default generator there,
      seeded and forked from the caller's, saved in checkpoints), so draws made
      with or without it come from the same stream.
    - ``state_dict(state) -> dict`` and ``load_state(problem, dict) -> State``:
      tensors and plain Python values only (checkpoints load with
      ``torch.load(weights_only=True)``).
    - ``to_posterior(state, problem, trace, meta) -> Posterior``.
    - ``finite_values(state, problem) -> (values, scores)``: what
      ``problem.nonfinite_sites`` reads to name the culprit sites.
    - ``settings(problem) -> dict``: JSON-serialisable hyperparameters, with
      any that follow from the problem (the mirror map each site got).
    - ``name``: shown on the progress bar and in messages; ``engine_name``
      (optional): ``meta["engine"]`` when a private class runs for a public one.
    """

    name: str

    def init(self, problem, generator): ...

    def step(self, state, problem, generator): ...

    def state_dict(self, state) -> dict: ...

    def load_state(self, problem, saved: dict): ...

    def to_posterior(self, state, problem, trace, meta) -> Posterior: ...

    def finite_values(self, state, problem): ...

    def settings(self, problem) -> dict: ...


def run_loop(algorithm: Algorithm, problem: Problem, *, num_steps: int, seed: int | None = None,
             progress: bool = True, callback: Callable[[int, Any, dict], bool | None] | None = None,
             checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
             resume: bool = False) -> Posterior:
    """Run ``algorithm`` on ``problem`` for ``num_steps`` steps and return a :class:`~bayeskit.Posterior`.

    The only loop: every engine, ``Fit``, Fusion, ``find_modes`` and every
    model's ``fit()`` run through it, so all of them get the same seeding,
    progress bar, per-step trace, callbacks, checkpoints that resume
    bit-exactly, stops on non-finite values that name the step and the site,
    one ``meta`` schema and the health report.

    Parameters
    ----------
    num_steps : int
        Total number of steps (a resumed run continues up to this count).
    seed : int, optional
        Seeds every random draw of the run. The same seed gives bit-identical
        results on CPU. ``None`` draws a seed, recorded in ``meta["seed"]``.
        The caller's global RNG state is left untouched.
    progress : bool
        Show a tqdm progress bar (never under ``CI``).
    callback : callable, optional
        ``callback(step, state, info)``; return True to stop early.
    checkpoint : path, optional
        File to save the state to every ``checkpoint_every`` steps and at the
        end. With ``resume=True`` and an existing file, the run continues from
        it and ends exactly as an uninterrupted run would.
    """
    _check_run_arguments(num_steps, seed, checkpoint_every)
    seed = resolve_seed(seed)
    devices = [problem.device] if problem.device.type == "cuda" else []
    with seeded(seed, problem.device):
        saved = _load_checkpoint(checkpoint, algorithm.name) if resume else None
        if saved is None:
            state = algorithm.init(problem, torch.Generator().manual_seed(seed))
            start, trace, elapsed = 0, _Trace(), 0.0
        else:
            if saved["seed"] != seed:
                raise ValueError(f"checkpoint {checkpoint} was written with seed {saved['seed']}, "
                                 f"but this run has seed {seed}; pass seed={saved['seed']} to resume")
            state = algorithm.load_state(problem, saved["state"])
            start, trace, elapsed = saved["step"], _Trace(saved["trace"]), saved["wall_time_s"]
            _set_rng_states(saved["rng"], devices)
        run = _Run(algorithm, problem, seed=seed, num_steps=num_steps, devices=devices, elapsed=elapsed)
        return run.loop(state, start, trace, progress=progress, callback=callback, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every)


class _Run:
    """One call of :func:`run_loop`: the loop and the bookkeeping it needs for messages and ``meta``."""

    def __init__(self, algorithm, problem, *, seed, num_steps, devices, elapsed):
        self.algorithm, self.problem, self.seed, self.num_steps = algorithm, problem, seed, num_steps
        self.devices, self.elapsed, self.began = devices, elapsed, time.perf_counter()
        self.generator = (torch.cuda.default_generators[problem.device.index or 0] if devices
                          else torch.default_generator)

    def loop(self, state, start, trace, *, progress, callback, checkpoint, checkpoint_every):
        from tqdm.auto import tqdm

        algorithm, problem = self.algorithm, self.problem
        # On CPU a finiteness check costs nothing; on a GPU it is a host sync,
        # so check in windows and keep the last state known to be finite.
        window = 1 if problem.device.type == "cpu" else 50
        last_good, last_good_step = state, start  # steps are pure: the state itself is the fallback
        bar = tqdm(total=self.num_steps, initial=start, desc=algorithm.name,
                   disable=not progress_enabled(progress), dynamic_ncols=True, leave=False)
        step = start
        try:
            for step in range(start + 1, self.num_steps + 1):
                try:
                    state, info = algorithm.step(state, problem, self.generator)
                except (ValueError, RuntimeError) as error:
                    # Say where it broke: errors from inside the model or torch name no step.
                    error.args = (f"{algorithm.name} step {step}: {error.args[0] if error.args else error}",
                                  *error.args[1:])
                    raise
                trace.append(info)
                if step % window == 0 or step == self.num_steps:
                    self.check_finite(trace, state, last_good, last_good_step, step)
                    last_good, last_good_step = state, step
                if bar.disable is False and (step % 10 == 0 or step == self.num_steps):
                    bar.set_postfix(_postfix(info), refresh=False)
                bar.update(1)
                if checkpoint is not None and (step % checkpoint_every == 0 or step == self.num_steps):
                    _save_checkpoint(checkpoint, algorithm.name, self.seed, step, algorithm.state_dict(state),
                                     trace, self.wall_time(), self.devices)
                if callback is not None and callback(step, state, info):
                    break
        finally:
            bar.close()
        posterior = algorithm.to_posterior(state, problem, trace.stacked(), self.meta(step))
        record_particle_spread(posterior, problem)
        health.report(posterior)
        return posterior

    def check_finite(self, trace, state, last_good, last_good_step, step):
        window = trace.column("finite", last_good_step)  # entry i of the trace is step i + 1
        if window is None:
            return
        if bool(window.all()):
            return
        algorithm, problem = self.algorithm, self.problem
        first_bad = last_good_step + 1 + int((~window).nonzero()[0])
        sites = problem.nonfinite_sites(*algorithm.finite_values(state, problem))
        good_trace = trace.stacked(last_good_step) if last_good_step else {}
        posterior = algorithm.to_posterior(last_good, problem, good_trace,
                                           {**self.meta(step), "steps_completed": last_good_step,
                                            "stopped": "non-finite"})
        where = f"site(s) {', '.join(repr(s) for s in sites)}" if sites else "the log density"
        raise NonFiniteError(
            f"{algorithm.name}: non-finite values at step {first_bad} in {where}. Lower the step size, "
            "check the model's supports and priors, or start from other points. The posterior of the "
            f"last finite state (step {last_good_step}) is on this error's .posterior.",
            step=first_bad, sites=sites, posterior=posterior)

    def wall_time(self) -> float:
        return self.elapsed + time.perf_counter() - self.began

    def meta(self, step) -> dict:
        algorithm, problem = self.algorithm, self.problem
        return {
            "engine": getattr(algorithm, "engine_name", None) or type(algorithm).__name__,
            "settings": algorithm.settings(problem),
            "seed": self.seed,
            "num_steps": self.num_steps,
            "steps_completed": step,
            "wall_time_s": self.wall_time(),
            "device": str(problem.device),
            "dtype": str(problem.dtype).replace("torch.", ""),
            "target": problem.description,
            "versions": versions(),
        }


class Engine:
    """Base class of the public engines: binds a model (or Target) and hyperparameters; ``run`` runs the loop.

    A subclass implements the :class:`Algorithm` methods; ``run`` builds the
    Target from the model's arguments and hands both to :func:`run_loop`.
    Nothing in ``run`` changes the engine, so one engine serves many runs.
    """

    #: Shown on the progress bar and in messages.
    name = "engine"
    #: ``meta["engine"]``: the engine's class name unless a private class runs for a public one.
    engine_name: str | None = None

    def __init__(self, model_or_target):
        if not (isinstance(model_or_target, Target) or callable(model_or_target)):
            raise TypeError("the first argument must be a Pyro model (a callable) or a bayeskit.Target, "
                            f"got {type(model_or_target).__name__}")
        self.model_or_target = model_or_target

    def settings(self, problem) -> dict:
        return {}

    def target(self, *model_args, **model_kwargs) -> Target:
        """The Target this engine runs on, built from the model and its arguments."""
        return target_of(self.model_or_target, *model_args, **model_kwargs)

    def run(self, *model_args, num_steps: int = 1000, seed: int | None = None, progress: bool = True,
            callback: Callable[[int, Any, dict], bool | None] | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
            resume: bool = False, **model_kwargs) -> Posterior:
        """Run the engine and return a :class:`~bayeskit.Posterior`.

        ``*model_args`` and ``**model_kwargs`` go to the model (not when the
        engine was built on a Target); the rest are :func:`run_loop`'s.
        """
        return run_loop(self, self.target(*model_args, **model_kwargs), num_steps=num_steps, seed=seed,
                        progress=progress, callback=callback, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, resume=resume)


class Parameters:
    """The :class:`Problem` of a run that optimises named parameters instead of sampling a Target."""

    def __init__(self, parameters: dict[str, torch.Tensor], description: str):
        first = next(iter(parameters.values()))
        self.parameters, self.device, self.dtype, self.description = parameters, first.device, first.dtype, description

    def nonfinite_sites(self, values=None, scores=None) -> list[str]:
        """Names whose value (``values`` or else the parameters) or gradient (``scores``) is not finite."""
        values = self.parameters if values is None else values
        scores = scores or {}
        return [name for name, value in values.items()
                if not bool(torch.isfinite(value).all())
                or (name in scores and not bool(torch.isfinite(scores[name]).all()))]


class Fit:
    r"""Minimise a loss over parameters on the shared loop: the engine behind the models' ``fit()`` methods.

    Each step evaluates ``loss(step)`` (0-based step index) at the state's
    parameter values, back-propagates and takes one step of a pure optimiser
    (:mod:`bayeskit.optim`; Adam by default):
    :math:`(\theta_{k+1}, s_{k+1}) = \mathrm{update}(\nabla L_k(\theta_k), s_k, \theta_k)`.
    The loop brings what the sampling engines have: seeding, a progress bar,
    the per-step trace (``loss`` and whatever else ``loss`` returns),
    callbacks, a stop that names the parameter when the loss or a gradient
    turns non-finite, and checkpoints that resume exactly. ``run`` returns a
    :class:`~bayeskit.Posterior` holding the final parameter values as one
    draw (``meta["sample_kind"] == "point"``) with the trace.

    The state is tensors only (the step count, the parameter values, the
    optimiser's moments, the last gradient and the ``carry`` objects' state
    dicts), and a step returns a new one, as every engine's does. The loss
    keeps reading the user's tensors (a module's parameters, a dict of
    weights): before it runs, each of them is pointed at a copy of the
    state's value (``tensor.data``), so whatever the loss does to them in
    place (a re-initialisation) becomes part of the step and never reaches
    the state it was given. After each step they hold the new state's
    values, and after the run the returned ones.

    Parameters
    ----------
    loss : callable
        ``loss(step) -> Tensor`` (a scalar) or ``(Tensor, dict)``, the dict
        holding 0-d tensors to record in the trace.
    parameters : dict of str to Tensor
        Leaf tensors with ``requires_grad`` that ``loss`` reads; they hold
        the fitted values after the run.
    optimizer : str, pure optimiser or dict, optional
        A name (``"adam"``, the default, ``"sgd"``, ``"adagrad"``,
        ``"rmsprop"``, built with ``lr``), an object with ``init``/``update``
        (:class:`bayeskit.optim.Adam` with a schedule, your own), or a dict
        giving every parameter's name its own (torch.optim's parameter
        groups). ``torch.optim`` optimisers are refused: they update in place.
    lr : float
        The learning rate of a named optimiser.
    name : str
        Shown on the progress bar and stored as ``meta["settings"]["name"]`` (``meta["engine"]`` is "Fit").
    carry : dict of str to object, optional
        What else ``loss`` updates from step to step (a running average, an
        inner optimiser, a reference trajectory): objects with
        ``state_dict()`` and ``load_state_dict(dict)``, such as an
        ``nn.Module`` or a ``torch.optim.Optimizer``. Their state dicts are
        part of the state, so a checkpoint holds them, a resumed fit ends
        exactly as an uninterrupted one, and a step from an older state
        starts from that state's copies.
    """

    def __init__(self, loss, parameters: dict[str, torch.Tensor], *, optimizer="adam", lr: float = 1e-3,
                 name: str = "fit", carry: dict | None = None):
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        if not isinstance(parameters, dict) or not parameters:
            raise ValueError("parameters must be a non-empty dict of name -> tensor")
        for key, value in parameters.items():
            if not (torch.is_tensor(value) and value.is_leaf and value.requires_grad):
                raise ValueError(f"parameter {key!r} must be a leaf tensor with requires_grad=True")
        carry = dict(carry or {})
        for key, value in carry.items():
            if not (callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None))):
                raise TypeError(f"carry[{key!r}] needs state_dict() and load_state_dict(); got {type(value).__name__}")
        self.loss, self.parameters, self.name, self.carry = loss, parameters, name, carry
        self.optimizers = _optimizer_per_parameter(optimizer, lr, parameters)
        self.lr = lr if isinstance(optimizer, str) else None
        self._live = None  # the state whose carry the carried objects hold now (so a step need not reload it)

    def run(self, *, num_steps: int = 1000, seed: int | None = None, progress: bool = True,
            callback: Callable[[int, Any, dict], bool | None] | None = None,
            checkpoint: str | os.PathLike | None = None, checkpoint_every: int = 100,
            resume: bool = False) -> Posterior:
        """Take ``num_steps`` optimiser steps on the one loop (:func:`run_loop`'s arguments)."""
        return run_loop(self, Parameters(self.parameters, self.name), num_steps=num_steps, seed=seed,
                        progress=progress, callback=callback, checkpoint=checkpoint,
                        checkpoint_every=checkpoint_every, resume=resume)

    def settings(self, problem):
        kinds = sorted({type(optimizer).__name__ for optimizer in self.optimizers.values()})
        return {"name": self.name, "optimizer": kinds[0] if len(kinds) == 1 else kinds, "lr": self.lr}

    def init(self, problem, generator):
        values = {key: value.detach().clone() for key, value in self.parameters.items()}
        state = {"step": 0, "parameters": values,
                 "optimizer": {key: self.optimizers[key].init(value) for key, value in values.items()},
                 "gradient": {key: torch.zeros_like(value) for key, value in values.items()},
                 "carry": self._carried()}
        self._live = state
        return state

    def step(self, state, problem, generator):
        self._show(state)
        value = self.loss(state["step"])
        value, info = value if isinstance(value, tuple) else (value, {})
        value.backward()
        # the values the loss left (it may have re-initialised some in place) are the step's starting point
        current = {key: p.detach() for key, p in self.parameters.items()}
        # a parameter the loss did not use has no gradient and, as in torch.optim, is not stepped
        unused = {key for key, p in self.parameters.items() if p.grad is None}
        gradient = {key: torch.zeros_like(current[key]) if key in unused else p.grad
                    for key, p in self.parameters.items()}
        for p in self.parameters.values():
            p.grad = None
        finite = torch.isfinite(value)
        if bool(finite):  # a NaN gradient step would spoil the last good parameters
            values, moments = self._update(state["optimizer"], current, gradient, unused)
        else:
            values, moments = current, state["optimizer"]
        finite = finite & torch.stack([torch.isfinite(v).all() for v in values.values()]).all()
        new = {"step": state["step"] + 1, "parameters": values, "optimizer": moments, "gradient": gradient,
               "carry": self._carried()}
        for key, p in self.parameters.items():  # between steps (in a callback, say) the module shows the newest
            p.data = values[key]
        self._live = new
        recorded = {k: torch.as_tensor(v).detach() for k, v in info.items()}
        return new, {"loss": value.detach(), **recorded, "finite": finite}

    def _update(self, moments, current, gradient, unused):
        values, new_moments = dict(current), dict(moments)
        with torch.no_grad():
            for key in current.keys() - unused:
                values[key], new_moments[key] = self.optimizers[key].update(gradient[key], moments[key], current[key])
        return values, new_moments

    def state_dict(self, state):
        return state

    def load_state(self, problem, saved):
        # checkpoints load onto the CPU: values, gradients and moments go back to their parameter's device
        return {**saved, "step": int(saved["step"]),
                **{part: {key: self._placed(key, value) for key, value in saved[part].items()}
                   for part in ("parameters", "gradient", "optimizer")}}

    def _placed(self, key, tree):
        """``tree`` (a tensor or an optimiser's dict) on parameter ``key``'s device; integer tensors such as
        Adam's step count stay on the CPU, where the optimisers keep them."""
        device = self.parameters[key].device
        if torch.is_tensor(tree):
            return tree.to(device) if tree.is_floating_point() else tree
        return {name: self._placed(key, value) for name, value in tree.items()}

    def finite_values(self, state, problem):
        return state["parameters"], state["gradient"]

    def to_posterior(self, state, problem, trace, meta):
        self._show(state)  # the user's tensors end at the returned values (the last finite ones after a stop)
        values = {key: value.unsqueeze(0).unsqueeze(0) for key, value in state["parameters"].items()}
        return Posterior(values, trace=trace, meta={**meta, "sample_kind": "point"})

    def _show(self, state):
        """Point the user's tensors at copies of ``state``'s values, and the carried objects at its carry."""
        for key, p in self.parameters.items():
            p.data = state["parameters"][key].clone()
        if state is not self._live:
            for key, saved in state["carry"].items():
                self.carry[key].load_state_dict(clone_tensors(saved, detach=True))
            self._live = state

    def _carried(self):
        return {key: clone_tensors(value.state_dict(), detach=True) for key, value in self.carry.items()}


def _optimizer_per_parameter(optimizer, lr, parameters) -> dict:
    """``name -> pure optimiser`` from ``Fit``'s ``optimizer`` argument (one for all, or a dict naming each)."""
    if not isinstance(optimizer, dict):
        shared = make_optimizer(optimizer, lr)
        return {key: shared for key in parameters}
    missing, unknown = set(parameters) - set(optimizer), set(optimizer) - set(parameters)
    if missing or unknown:
        raise ValueError(f"an optimizer dict names every parameter once: missing {sorted(missing)}, "
                         f"unknown {sorted(unknown)}")
    return {key: make_optimizer(optimizer[key], lr) for key in parameters}


def _check_run_arguments(num_steps, seed, checkpoint_every):
    positive_int("num_steps", num_steps)
    positive_int("seed", seed, minimum=0, allow_none=True)
    positive_int("checkpoint_every", checkpoint_every)


def _postfix(info):
    return {k: f"{float(v):.3g}" for k, v in info.items() if k != "finite" and torch.as_tensor(v).numel() == 1}


def _rng_states(devices):
    states = {"cpu": torch.get_rng_state()}
    for device in devices:
        states[str(device)] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_states(states, devices):
    torch.set_rng_state(states["cpu"])
    for device in devices:
        if str(device) in states:
            torch.cuda.set_rng_state(states[str(device)], device)


def _save_checkpoint(path, engine, seed, step, state, trace, wall_time, devices):
    path = Path(path)
    payload = {"format": CHECKPOINT_FORMAT, "engine": engine, "seed": seed, "step": step,
               "state": state, "trace": trace.stacked(), "rng": _rng_states(devices),
               "wall_time_s": wall_time}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash mid-write leaves the previous checkpoint intact


def _load_checkpoint(path, engine):
    if path is None:
        raise ValueError("resume=True needs checkpoint=PATH")
    path = Path(path)
    if not path.exists():
        return None  # nothing to resume from: start fresh and write it
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path} is not a bayeskit checkpoint ({type(error).__name__})") from error
    if not isinstance(saved, dict) or saved.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a bayeskit checkpoint")
    if saved["engine"] != engine:
        raise ValueError(f"{path} is a checkpoint of {saved['engine']}, not {engine}")
    return saved
