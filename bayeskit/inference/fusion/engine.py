"""The Fusion engine: shard a Pyro model's data, sample the sub-posteriors, fuse them up a tree.

Fusion runs on the one loop (:func:`bayeskit.runner.run_loop`), so it has what every engine has:
seeds, a progress bar, callbacks, checkpoints that resume bit-exactly, stops on non-finite weights and
the health report. Its steps follow from the settings, not from a ``num_steps`` argument:

1. :meth:`Fusion.run` only: sample every shard's sub-posterior (the expensive part, so a checkpoint
   after it keeps the draws);
2. then one step per level of the tree, every node of a level fused at once (``parallel_map``), or
   one step for the baselines (Consensus Monte Carlo, the Weierstrass sampler).

Every task draws from its own seed, derived from the run's seed and the task's place (:func:`_task_seed`),
so the result does not depend on the backend, nor on where a run was interrupted and resumed.
"""

from __future__ import annotations

import time

import torch

from bayeskit._checks import fraction, positive_int
from bayeskit.inference.fusion import core
from bayeskit.inference.fusion.densities import product_density
from bayeskit.inference.fusion.shards import NUTSSampler, SubPosterior, sample_shard, shard_density
from bayeskit.parallel import TaskContext, derived_seed, parallel_map, resolve_seed
from bayeskit.posterior import Posterior
from bayeskit.runner import run_loop
from bayeskit.sharding import split_data

__all__ = ["Fusion", "METHODS"]

METHODS = ("gbf", "dc_mcf", "mcf", "consensus", "weierstrass")
_BASELINES = ("consensus", "weierstrass")
_PRECONDITIONERS = ("covariance", "identity")
_ESTIMATORS = ("auto", "exact", "negative_binomial", "discretised")
_WEIERSTRASS_BUDGET = 4_000_000  # proposals per bandwidth tried
_WEIERSTRASS_DOUBLINGS = 8
# What a Fusion state holds (see Fusion.init).
_STATE_KEYS = {"seed", "steps", "plan", "num_leaves", "leaves", "leaf_seconds", "results", "records", "bandwidth",
               "sampling_wall_time_s", "fusion_wall_time_s"}


def _task_seed(seed, *path):
    """A seed for one task from the run's seed and the task's place (shard, or tree node): no shared RNG.
    32 bits: Pyro's NUTS seeds NumPy's legacy RNG with it."""
    return derived_seed(seed, *path, bits=32)


def _node_name(path) -> str:
    """A tree node's name in ``meta["nodes"]`` and the state: the child indices from the root, "root" for it."""
    return "/".join(map(str, path)) or "root"


class FusionProblem:
    """What one Fusion run operates on (the loop's Problem): the shards (``run``) or ready sub-posteriors
    (``fuse``), the tree, the density of every node and the Target that names the sites.

    Nothing in it changes during the run (but a cache of the inner nodes' densities, which follow from the
    leaves'); what the steps compute lives in the state. A resumed run rebuilds it from the same
    arguments (the shards are split with the run's seed). Build one with
    :meth:`from_shards` or :meth:`from_subposteriors` to drive :class:`Fusion`'s ``init``/``step`` by hand.
    """

    def __init__(self, densities, tree, *, target, description, device, dtype, shards=None, subposteriors=None):
        self.shards, self.subposteriors, self.target = shards, subposteriors, target
        self.num_leaves, self.tree, self.leaf_densities = len(densities), tree, list(densities)
        self.levels = [] if isinstance(tree, int) else core.tree_levels(tree)
        self.description, self.device, self.dtype = description, device, dtype
        self._products = {}  # inner nodes' densities, built on first use (the baselines use none)
        # Every task computes in the caller's default dtype (a Ray worker does not share it): fixed once per run.
        self.task_dtype = torch.get_default_dtype()

    @classmethod
    def from_shards(cls, shards, tree_kind):
        """For :meth:`Fusion.run`: ``shards`` (:meth:`Fusion.shards`) and the kind of tree."""
        target = shards[0].target()  # names and constrains the flat draws; every shard has the same sites
        model = getattr(shards[0].model, "__name__", type(shards[0].model).__name__)
        return cls([shard_density(shard) for shard in shards], core.build_tree(tree_kind, len(shards)),
                   target=target, description=f"{model} in {len(shards)} shards", device=target.device,
                   dtype=target.dtype, shards=shards)

    @classmethod
    def from_subposteriors(cls, subposteriors, tree_kind, target=None):
        """For :meth:`Fusion.fuse`: ready sub-posteriors, the kind of tree and the Target naming the sites."""
        subposteriors = _check_subposteriors(subposteriors)
        first = subposteriors[0].samples
        description = f"{len(subposteriors)} sub-posteriors of dimension {first.shape[1]}"
        if target is not None:
            description += f" of {target.description}"
        return cls([sub.density for sub in subposteriors], core.build_tree(tree_kind, len(subposteriors)),
                   target=target, description=description, device=first.device, dtype=first.dtype,
                   subposteriors=subposteriors)

    def density(self, key):
        """The density of leaf ``key`` (an index) or inner node ``key`` (a path): the product of its children's."""
        if isinstance(key, int):
            return self.leaf_densities[key]
        if key not in self._products:
            node = self.tree
            for index in key:
                node = node[index]
            self._products[key] = product_density([self.density(child if isinstance(child, int) else key + (i,))
                                                   for i, child in enumerate(node)])
        return self._products[key]

    def nonfinite_sites(self, values=None, scores=None) -> list[str]:
        """The sites whose fused draws are not finite; else the weights, the only other thing a step makes."""
        if values is None or bool(torch.isfinite(values).all()):
            return ["log_weights"]
        if self.target is None:
            return ["theta"]
        return self.target.nonfinite_sites(values) or ["theta"]


class Fusion:
    r"""Divide-and-conquer Fusion: the full posterior from sub-posteriors of data shards.

    Chan, Pollock, Johansen and Roberts (2023), "Divide-and-Conquer Fusion",
    JMLR 24(193); Dai, Pollock and Roberts (2019), "Monte Carlo Fusion",
    J. Appl. Prob. 56(1). The data are split into C shards; shard c has the
    sub-posterior :math:`f_c \propto p(\theta)^{1/C} p(y_c\mid\theta)`, sampled
    by Pyro's NUTS or any bayeskit engine, in this process or as Ray tasks;
    the sub-posteriors are then fused up a tree into draws of
    :math:`\prod_c f_c = p(\theta \mid y)`. Fusion works on the unconstrained
    vector :math:`z`, where the prior's log-Jacobian is tempered with it,
    :math:`\log f_c(z) = \tfrac1C(\log p(T(z)) + \log|\det J_T(z)|) + \log p(y_c \mid T(z))`
    (:func:`bayeskit.sharding.subposterior_target`): the draws and the
    densities of every shard come from that one target. The math of each
    method is in :mod:`bayeskit.inference.fusion.core`.

    :meth:`run` and :meth:`fuse` run on the one loop
    (:func:`bayeskit.runner.run_loop`): one step samples the shards
    (:meth:`run` only), then one step fuses each level of the tree (one step
    for the baselines); ``seed``, ``progress``, ``callback``, ``checkpoint``
    and ``resume`` work as for every engine. The result's ``meta`` adds
    ``nodes`` (each node's summary: T, mesh steps, estimator, seconds, the
    share of distinct origins), ``estimator``, ``approximate`` and
    ``approximation``, and its ``trace`` has one row per mesh step of every node.

    Parameters
    ----------
    model : callable, optional
        A Pyro model whose tensor arguments of equal length are the data
        (split by rows). Not needed for :meth:`fuse` of ready sub-posteriors.
    num_shards : int
        C, for :meth:`run`.
    method : str
        ``"gbf"`` (Generalised Bayesian Fusion, SMC over a time mesh; with the
        ``balanced`` tree this is D&C-GBF), ``"dc_mcf"`` (importance-weighted
        Monte Carlo Fusion: the one-step mesh), ``"mcf"`` (Monte Carlo Fusion
        by rejection, exact draws; needs bounds of phi), or the baselines
        ``"consensus"`` (Consensus Monte Carlo, Scott et al. 2016) and
        ``"weierstrass"`` (Wang and Dunson 2013), which ignore ``tree``.
    tree : str
        ``"fork_and_join"`` (all shards in one node), ``"balanced"`` (pairs,
        level by level) or ``"progressive"`` (one shard at a time).
    num_particles : int
        N: particles at every node, and so the draws asked of each sub-posterior's sampler.
    sampler : callable, optional
        ``sampler(shard, num_samples, seed) -> Tensor (num_samples, dim)`` on
        the flat unconstrained vector: :class:`NUTSSampler` (the default, 500
        warm-up steps), :class:`EngineSampler` for a bayeskit engine, or your own;
        a sampler of your own should draw from ``shard.target()``, not from the
        Pyro model (whose samplers add the log-Jacobian in full).
    preconditioner : str
        ``"covariance"`` (each child's sample covariance, the authors' choice and
        what the guidance assumes) or ``"identity"``.
    time_horizon : float, optional
        T at every node; by default the guidance sets it per node.
    num_mesh_steps : int, optional
        Steps of a regular mesh per node (GBF); by default the guidance.
    estimator : str
        ``"auto"`` (exact where every density has bounds of phi, else
        discretised), ``"exact"`` (the Poisson estimator),
        ``"negative_binomial"`` (exact too: Chan et al.'s negative-binomial
        counts, robust where the bounds of phi are loose; see
        :func:`~bayeskit.inference.fusion.bridges.log_exact_estimate`) or
        ``"discretised"``. The discretised estimator is biased; the result's
        ``meta["approximate"]`` says so.
    adaptive_mesh : bool
        GBF: choose each mesh step from the particles, shorter where the
        trajectories lie far from their sub-posteriors' means
        (:func:`~bayeskit.inference.fusion.core.adaptive_mesh_step`, the
        authors' adaptive mesh) instead of the regular guidance mesh.
    cess0, cess_step : float
        The guidance's targets for the conditional ESS of the initial weights
        (0.2) and of each mesh step (0.05), the authors' values.
    ess_threshold : float
        Resample when the ESS falls below this fraction of N (0.5).
    shuffle : bool
        Shuffle the rows (with the run's seed) before splitting them into
        shards, so that shards are exchangeable; False keeps them in order.
    backend : str
        ``"inprocess"`` or ``"ray"``: where the shards are sampled and the nodes of
        one tree level fused. Every task gets its own seed from ``seed`` and
        runs on one thread, so both backends give the same result.
    ray_options : dict, optional
        For ``ray.remote(...).options``.
    """

    name = "fusion"

    def __init__(self, model=None, *, num_shards=None, method="gbf", tree="balanced", num_particles=1000,
                 sampler=None, preconditioner="covariance", time_horizon=None, num_mesh_steps=None,
                 estimator="auto", adaptive_mesh=False, cess0=0.2, cess_step=0.05, ess_threshold=0.5, shuffle=True,
                 backend="inprocess", ray_options=None):
        if model is not None and not callable(model):
            raise TypeError(f"model must be a Pyro model (a callable), got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if tree not in core.TREES:
            raise ValueError(f"unknown tree {tree!r}; choose one of {list(core.TREES)}")
        if preconditioner not in _PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {preconditioner!r}; choose one of {list(_PRECONDITIONERS)}")
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {list(_ESTIMATORS)}, got {estimator!r}")
        if method == "mcf" and estimator not in ("auto", "exact"):
            raise ValueError("method='mcf' is a rejection sampler and needs the exact (Poisson) estimator")
        if adaptive_mesh and (num_mesh_steps is not None or method != "gbf"):
            raise ValueError("adaptive_mesh=True chooses GBF's mesh: it needs method='gbf' and no num_mesh_steps")
        if time_horizon is not None and not time_horizon > 0:
            raise ValueError(f"time_horizon must be positive, got {time_horizon!r}")
        if sampler is not None and not callable(sampler):
            raise TypeError("sampler must be callable: sampler(shard, num_samples, seed) -> Tensor")
        self.model = model
        self.num_shards = None if num_shards is None else positive_int("num_shards", num_shards)
        self.method, self.tree, self.preconditioner, self.estimator = method, tree, preconditioner, estimator
        self.adaptive_mesh = bool(adaptive_mesh)
        self.num_particles = positive_int("num_particles", num_particles)
        self.sampler = sampler or NUTSSampler()
        self.time_horizon = time_horizon
        self.num_mesh_steps = None if num_mesh_steps is None else positive_int("num_mesh_steps",
                                                                                       num_mesh_steps)
        self.cess0, self.cess_step = fraction("cess0", cess0), fraction("cess_step", cess_step)
        self.ess_threshold = fraction("ess_threshold", ess_threshold)
        self.shuffle, self.backend, self.ray_options = shuffle, backend, ray_options

    def settings(self, problem=None) -> dict:
        return {"method": self.method, "tree": self.tree, "num_shards": self.num_shards,
                "num_particles": self.num_particles, "preconditioner": self.preconditioner,
                "time_horizon": self.time_horizon, "num_mesh_steps": self.num_mesh_steps,
                "estimator": self.estimator, "adaptive_mesh": self.adaptive_mesh, "cess0": self.cess0,
                "cess_step": self.cess_step, "ess_threshold": self.ess_threshold, "backend": self.backend,
                "sampler": repr(self.sampler)}

    # ------------------------------------------------------------ sub-posteriors
    def shards(self, *model_args, seed=None, **model_kwargs):
        """The data shards :meth:`run` samples, the rows shuffled with ``seed`` (None: a drawn one).

        To pair them with :meth:`sample_subposteriors`, give both the same seed: the split follows from it.
        """
        seed = resolve_seed(seed)
        if self.model is None or self.num_shards is None:
            raise ValueError("run() needs Fusion(model, num_shards=C, ...); fuse() takes ready sub-posteriors")
        generator = torch.Generator().manual_seed(_task_seed(seed, 0)) if self.shuffle else None
        return split_data(self.model, model_args, model_kwargs, self.num_shards, generator=generator)

    def sample_subposteriors(self, *model_args, seed=None, **model_kwargs) -> list[SubPosterior]:
        """Draw every shard's sub-posterior, in this process or as Ray tasks (the first step of :meth:`run`).

        ``seed`` splits the rows and seeds every shard's sampler; None draws one, recorded in each
        sub-posterior's ``info["seed"]`` (``shards(..., seed=info["seed"])`` gives the same split).
        """
        seed = resolve_seed(seed)
        subposteriors = self._sample(self.shards(*model_args, seed=seed, **model_kwargs), seed)
        for subposterior in subposteriors:
            subposterior.info["seed"] = seed
        return subposteriors

    def _sample(self, shards, seed):
        tasks = [(shard, self.sampler, self.num_particles, _task_seed(seed, 1, shard.index), torch.get_default_dtype())
                 for shard in shards]
        return parallel_map(sample_shard, tasks, backend=self.backend, ray_options=self.ray_options)

    # ----------------------------------------------------------------------- run
    def run(self, *model_args, seed=None, progress=True, callback=None, checkpoint=None, checkpoint_every=1,
            resume=False, **model_kwargs) -> Posterior:
        """Shard the data, sample the sub-posteriors and fuse them; one step for the sampling, one per tree level.

        Returns a weighted :class:`~bayeskit.Posterior` (one chain of
        ``num_particles`` draws) on the model's constrained sites.
        ``seed``, ``progress``, ``callback``, ``checkpoint`` and ``resume``
        are :func:`~bayeskit.runner.run_loop`'s; ``checkpoint_every`` is 1 by
        default, as every step of Fusion is costly (a checkpoint after the
        first keeps the sub-posterior draws). A run stopped before the root of
        the tree (a callback) returns the particle sets it has reached, one
        chain each (``meta["complete"]`` False, ``meta["frontier"]`` names them).
        """
        seed = resolve_seed(seed)  # drawn here rather than by run_loop: the rows are split into shards with it
        problem = FusionProblem.from_shards(self.shards(*model_args, seed=seed, **model_kwargs), self.tree)
        return run_loop(self, problem, num_steps=len(self._plan(problem)), seed=seed, progress=progress,
                        callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)

    def fuse(self, subposteriors, *, seed=None, progress=True, target=None, callback=None, checkpoint=None,
             checkpoint_every=1, resume=False) -> Posterior:
        """Fuse ready sub-posteriors (a list of :class:`SubPosterior`) into a weighted Posterior.

        ``target`` (a :class:`~bayeskit.Target`) names and constrains the sites;
        without it the draws are one site ``theta`` of shape ``(d,)``. One step
        per tree level (one for the baselines); the other arguments are :meth:`run`'s.
        A resumed run needs the same sub-posteriors (the checkpoint does not hold them).
        """
        problem = FusionProblem.from_subposteriors(subposteriors, self.tree, target)
        return run_loop(self, problem, num_steps=len(self._plan(problem)), seed=seed, progress=progress,
                        callback=callback, checkpoint=checkpoint, checkpoint_every=checkpoint_every, resume=resume)

    # ------------------------------------------------------------- the algorithm
    def _plan(self, problem) -> list[tuple]:
        """The run's steps: ``("sample",)``, ``("level", height index)`` or ``("baseline",)``."""
        steps = [("sample",)] if problem.shards is not None else []
        if self.method in _BASELINES:
            return steps + [("baseline",)]
        steps += [("level", index) for index in range(len(problem.levels))]
        # one sub-posterior given and nothing to fuse: the loop needs a step, and that step has nothing to do
        return steps or [("none",)]

    def init(self, problem, generator):
        """The state before any step: tensors and plain Python values only (checkpoints load with weights_only).

        ``seed`` (every task's seed derives from it), ``steps`` (done), ``plan`` and ``num_leaves`` (a
        resumed run checks it continues the same fusion), ``leaves`` (:meth:`run`'s shard draws, after
        its first step), ``results`` (node name -> ``particles``, ``log_weights``: the fused sets no
        parent has used yet; the root at the end), ``records`` (each fused node's name, height,
        summary and mesh trace, for ``meta["nodes"]`` and the Posterior's trace), and what ``meta``
        reports: ``bandwidth``, ``leaf_seconds`` and the wall times.
        """
        # run_loop seeds ``generator`` with the run's seed: its initial seed is the run's.
        return {"seed": generator.initial_seed(), "steps": 0, "plan": _plan_names(self._plan(problem)),
                "num_leaves": problem.num_leaves, "leaves": None, "leaf_seconds": [], "results": {}, "records": [],
                "bandwidth": None, "sampling_wall_time_s": 0.0, "fusion_wall_time_s": 0.0}

    def step(self, state, problem, generator):
        """The next step of the plan. Returns a new state (the input is left as it is) and the step's info.

        ``info``: ``finite``, ``num_sets`` (the particle sets the step made: shards sampled or nodes fused)
        and ``min_ess`` (their smallest ESS/N; 1 for equally weighted sets).
        """
        kind, *where = self._plan(problem)[state["steps"]]
        began = time.perf_counter()
        if kind == "sample":
            update, made = self._sample_step(state, problem)
        elif kind == "baseline":
            update, made = self._baseline_step(state, problem)
        elif kind == "level":
            update, made = self._level_step(state, problem, *where)
        else:
            update, made = {}, []
        clock = "sampling_wall_time_s" if kind == "sample" else "fusion_wall_time_s"
        update[clock] = state[clock] + time.perf_counter() - began
        return {**state, **update, "steps": state["steps"] + 1}, _step_info(made)

    def _sample_step(self, state, problem):
        subposteriors = self._sample(problem.shards, state["seed"])
        leaves = [sub.samples for sub in subposteriors]
        return {"leaves": leaves, "leaf_seconds": [sub.seconds for sub in subposteriors]}, \
            [(draws, None) for draws in leaves]

    def _baseline_step(self, state, problem):
        fused, bandwidth = self._baseline(self._leaves(state, problem), state["seed"])
        return {"results": {"root": {"particles": fused, "log_weights": None}}, "bandwidth": bandwidth}, \
            [(fused, None)]

    def _level_step(self, state, problem, index):
        """Fuse every node of one tree level, in this process or as Ray tasks."""
        level, leaves = problem.levels[index], self._leaves(state, problem)
        tasks = [(self._node_settings(), self._children(state, problem, leaves, path, node),
                  _task_seed(state["seed"], 2, *path, len(path)), problem.task_dtype, f"{_node_name(path)} "
                  f"(height {index + 1})") for path, node in level]
        outcomes = parallel_map(_fuse_node, tasks, backend=self.backend, ray_options=self.ray_options)
        consumed = {_node_name(path + (i,)) for path, node in level for i, child in enumerate(node)
                    if not isinstance(child, int)}
        results = {name: value for name, value in state["results"].items() if name not in consumed}
        records, made = list(state["records"]), []
        for (path, _), outcome in zip(level, outcomes):
            fused = outcome.particles
            # a copy: the fused particles are a view of all C children's trajectories, kept whole otherwise
            particles = fused.particles.clone()
            results[_node_name(path)] = {"particles": particles, "log_weights": fused.log_weights}
            records.append({"node": _node_name(path), "height": index + 1, "summary": outcome.summary,
                            "trace": outcome.trace})
            made.append((particles, fused.log_weights))
        return {"results": results, "records": records}, made

    def _leaves(self, state, problem) -> list[core.ParticleSet]:
        """The sub-posteriors' particle sets: given to :meth:`fuse`, or drawn by the first step of :meth:`run`."""
        if problem.subposteriors is not None:
            return [core.ParticleSet(sub.samples, problem.density(c), sub.log_weights)
                    for c, sub in enumerate(problem.subposteriors)]
        return [core.ParticleSet(draws, problem.density(c)) for c, draws in enumerate(state["leaves"] or [])]

    @staticmethod
    def _children(state, problem, leaves, path, node):
        children = []
        for i, child in enumerate(node):
            if isinstance(child, int):
                children.append(leaves[child])
            else:
                result = state["results"][_node_name(path + (i,))]
                children.append(core.ParticleSet(result["particles"], problem.density(path + (i,)),
                                                 result["log_weights"]))
        return children

    def state_dict(self, state) -> dict:
        return dict(state)

    def load_state(self, problem, saved):
        missing = _STATE_KEYS - set(saved)
        if missing:
            raise ValueError(f"the checkpoint is not of a Fusion run: its state lacks {sorted(missing)}")
        plan = _plan_names(self._plan(problem))
        if saved["plan"] != plan or saved["num_leaves"] != problem.num_leaves:
            raise ValueError(f"the checkpoint is of a Fusion run on other sub-posteriors or another tree or method: "
                             f"{saved['num_leaves']} sub-posteriors and steps {saved['plan']}, where this run has "
                             f"{problem.num_leaves} and {plan}")
        # checkpoints load on the CPU: the draws go back to the run's device (the node traces stay on the CPU)
        leaves = None if saved["leaves"] is None else [draws.to(problem.device) for draws in saved["leaves"]]
        results = {name: {key: None if value is None else value.to(problem.device) for key, value in result.items()}
                   for name, result in saved["results"].items()}
        return {**saved, "leaves": leaves, "results": results}

    def finite_values(self, state, problem):
        sets = self._outcome(state, problem)[1]
        return (torch.cat([particles for particles, _ in sets]) if sets else None), None

    def to_posterior(self, state, problem, trace, meta) -> Posterior:
        """The fused draws with ``meta``'s Fusion keys; before the root, the sets reached, one chain each.

        ``trace`` (the loop's per-step ``info``) is what callbacks saw; the Posterior's trace holds the
        finer record, one row per mesh step of every node (``time``, ``ess``, ``cess``, ``resampled``,
        ``node``, ``height``), which the health report reads.
        """
        names, sets = self._outcome(state, problem)
        if not sets:
            raise ValueError("the Fusion run stopped before any sub-posterior was drawn")
        if len({len(particles) for particles, _ in sets}) > 1:
            sets = self._equal_sizes(sets, state["seed"])
        draws = torch.stack([particles for particles, _ in sets])
        log_weights = None
        if any(weights is not None for _, weights in sets):
            log_weights = torch.stack([torch.zeros(len(p), dtype=p.dtype, device=p.device) if w is None else w
                                       for p, w in sets])
        if problem.target is not None:
            samples = dict(problem.target.draws(draws.reshape(-1, draws.shape[-1])))
            samples = {name: value.reshape(*draws.shape[:2], *value.shape[1:]) for name, value in samples.items()}
        else:
            samples = {"theta": draws}
        meta = {**meta, **self._fusion_meta(state, problem), "complete": names == ["root"]}
        if names != ["root"]:
            meta["frontier"] = names
        return Posterior(samples, log_weights=log_weights, trace=_stacked_trace(state["records"]), meta=meta)

    def _outcome(self, state, problem):
        """(names, [(particles, log_weights)]): the fused result once the plan is done, else the sets reached."""
        if state["steps"] == len(self._plan(problem)):
            if "root" in state["results"]:
                root = state["results"]["root"]
                return ["root"], [(root["particles"], root["log_weights"])]
            leaf = self._leaves(state, problem)[0]  # a tree of one leaf: the sub-posterior is the result
            return ["root"], [(leaf.particles, leaf.log_weights)]
        consumed = {child for path, node in self._levels_done(state, problem) for child in node
                    if isinstance(child, int)}
        leaves = [(f"shard {c}", (leaf.particles, leaf.log_weights))
                  for c, leaf in enumerate(self._leaves(state, problem)) if c not in consumed]
        nodes = [(name, (result["particles"], result["log_weights"])) for name, result in state["results"].items()]
        reached = leaves + nodes
        return [name for name, _ in reached], [pair for _, pair in reached]

    def _levels_done(self, state, problem):
        done = [where for kind, *where in self._plan(problem)[:state["steps"]] if kind == "level"]
        return [pair for (index,) in done for pair in problem.levels[index]]

    def _equal_sizes(self, sets, seed):
        """Sets of unequal sizes (sub-posteriors given so) as ``num_particles`` equally weighted draws each.

        Only for a run stopped before the root, whose chains must be of one length.
        """
        out = []
        for index, (particles, log_weights) in enumerate(sets):
            generator = torch.Generator(device=particles.device).manual_seed(_task_seed(seed, 5, index))
            out.append((core.equal_weight_draws(core.ParticleSet(particles, None, log_weights), self.num_particles,
                                                generator), None))
        return out

    def _fusion_meta(self, state, problem) -> dict:
        nodes = [{"node": record["node"], "height": record["height"], **record["summary"]}
                 for record in state["records"]]
        estimators = {node["estimator"] for node in nodes}
        meta = {"nodes": nodes, "estimator": "/".join(sorted(estimators)) or self.method,
                "approximate": "discretised" in estimators or self.method in _BASELINES,
                "approximation": _approximation_note(self.method, estimators),
                "fusion_wall_time_s": state["fusion_wall_time_s"],
                "fusion_seconds": sum(node["seconds"] for node in nodes),
                "num_subposteriors": problem.num_leaves}
        if state["bandwidth"] is not None:
            meta["bandwidth"] = state["bandwidth"]
        if problem.shards is not None:
            meta.update({"subposterior_wall_time_s": state["sampling_wall_time_s"],
                         "subposterior_seconds": list(state["leaf_seconds"])})
        return meta

    def _baseline(self, leaves, seed):
        """Consensus Monte Carlo or the Weierstrass sampler on equally weighted draws of every leaf:
        the fused draws and the bandwidth used (None for consensus)."""
        from bayeskit.inference.fusion import baselines

        samples = [core.equal_weight_draws(leaf, self.num_particles,
                                            torch.Generator(device=leaf.particles.device).manual_seed(
                                                _task_seed(seed, 3, c))) for c, leaf in enumerate(leaves)]
        if self.method == "consensus":
            return baselines.consensus_monte_carlo(samples), None
        generator = torch.Generator(device=samples[0].device).manual_seed(_task_seed(seed, 4))
        # The rate of acceptance falls like h^((C - 1) d): from the default bandwidth, double it until
        # the rejection sampler finishes within its budget, and report the bandwidth it used.
        bandwidth = baselines.default_bandwidth(self.num_particles, samples[0].shape[1])
        for _ in range(_WEIERSTRASS_DOUBLINGS):
            try:
                draws = baselines.weierstrass(samples, num_samples=self.num_particles, generator=generator,
                                              bandwidth=bandwidth, max_proposals=_WEIERSTRASS_BUDGET)
                return draws, bandwidth
            except RuntimeError:
                bandwidth *= 2
        raise RuntimeError(f"the Weierstrass sampler accepted too few proposals even at bandwidth {bandwidth / 2:.3g}")

    def _node_settings(self):
        return {"method": self.method, "num_particles": self.num_particles, "horizon": self.time_horizon,
                "num_mesh_steps": self.num_mesh_steps, "preconditioner": self.preconditioner,
                "estimator": self.estimator, "adaptive_mesh": self.adaptive_mesh, "cess0": self.cess0,
                "cess_step": self.cess_step, "ess_threshold": self.ess_threshold}


def _plan_names(plan) -> list[str]:
    """The plan as plain strings, to be kept in the state: ``["sample", "level 1", "level 2"]``."""
    return [kind if not where else f"{kind} {where[0] + 1}" for kind, *where in plan]


def _step_info(made) -> dict:
    """The loop's record of one step: whether the sets it made are finite, how many, their smallest ESS/N."""
    finite, smallest = True, 1.0
    for particles, log_weights in made:
        finite = finite and bool(torch.isfinite(particles).all())
        # a particle of weight zero (log -inf) is fine; NaN, or every weight zero, is not
        if log_weights is not None and not bool(torch.isnan(log_weights).any()) \
                and bool(torch.isfinite(torch.logsumexp(log_weights, 0))):
            smallest = min(smallest, float(core.ess_fraction(log_weights)))
        elif log_weights is not None:
            finite, smallest = False, float("nan")
    return {"finite": torch.tensor(finite), "num_sets": torch.tensor(len(made)),
            "min_ess": torch.tensor(smallest, dtype=torch.float64)}


def _approximation_note(method, estimators):
    if method == "consensus":
        return "Consensus Monte Carlo: exact only for Gaussian sub-posteriors"
    if method == "weierstrass":
        return "Weierstrass sampler: biased by its kernel bandwidth"
    if "discretised" in estimators:
        return ("discretised path integrals (trapezoid rule): biased, because the sub-posterior densities "
                "have no bounds of phi")
    return "none: exact path-space estimators (consistent as num_particles grows)"


def _fuse_node(task):
    """One node of the tree, as an in-process call or a Ray task."""
    settings, children, seed, dtype, name = task
    generator = torch.Generator(device=children[0].particles.device).manual_seed(seed)
    with TaskContext(dtype):
        try:
            return _fuse(settings, children, generator)
        except FloatingPointError as error:  # every weight zero: say which node of the tree it was
            raise FloatingPointError(f"tree node {name}: {error}") from error


def _fuse(settings, children, generator):
    """Fuse ``children`` by ``settings["method"]``: MCF's rejection sampler, or GBF on a mesh (D&C-MCF: one step)."""
    if settings["method"] == "mcf":
        return core.fuse_mcf(children, num_particles=settings["num_particles"], generator=generator,
                             horizon=settings["horizon"], preconditioner=settings["preconditioner"],
                             cess0=settings["cess0"])
    mesh = None
    if settings["method"] == "dc_mcf" or settings["num_mesh_steps"] is not None:
        horizon = settings["horizon"] or core.time_horizon_guidance(
            children, torch.stack([core.preconditioner_scale(c, settings["preconditioner"]) for c in children]),
            settings["cess0"])
        steps = 1 if settings["method"] == "dc_mcf" else settings["num_mesh_steps"]
        mesh = torch.linspace(0, horizon, steps + 1, dtype=torch.float64)
    exact = {"auto": None, "exact": True, "negative_binomial": True, "discretised": False}[settings["estimator"]]
    counts = "negative_binomial" if settings["estimator"] == "negative_binomial" else "poisson"
    return core.fuse_gbf(children, num_particles=settings["num_particles"], generator=generator,
                         horizon=settings["horizon"] if mesh is None else float(mesh[-1]), mesh=mesh,
                         preconditioner=settings["preconditioner"], exact=exact, cess0=settings["cess0"],
                         cess_step=settings["cess_step"], ess_threshold=settings["ess_threshold"], counts=counts,
                         adaptive_mesh=settings["adaptive_mesh"])


def _check_subposteriors(subposteriors):
    subposteriors = list(subposteriors)
    if len(subposteriors) < 1 or not all(isinstance(s, SubPosterior) for s in subposteriors):
        raise TypeError("subposteriors must be a non-empty list of bayeskit.inference.fusion.SubPosterior")
    dims = {s.samples.shape[1] for s in subposteriors}
    if len(dims) > 1:
        raise ValueError(f"every sub-posterior must have the same dimension, got {sorted(dims)}")
    return subposteriors


def _stacked_trace(records):
    """The nodes' per-step traces end to end, with the node's height and order as columns."""
    if not any(record["trace"] for record in records):
        return {}
    columns = {}
    for order, record in enumerate(records):
        trace = record["trace"]
        if not trace:
            continue
        steps = len(trace["time"])
        rows = {**trace, "node": torch.full((steps,), order), "height": torch.full((steps,), record["height"])}
        for key, value in rows.items():
            columns.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in columns.items()}
