"""The Fusion engine: shard a Pyro model's data, sample the sub-posteriors, fuse them up a tree."""

from __future__ import annotations

import time

import torch

from bayeskit import health
from bayeskit._checks import fraction, positive_int
from bayeskit.inference.fusion import core
from bayeskit.inference.fusion.shards import NUTSSampler, SubPosterior, sample_shard
from bayeskit.parallel import TaskContext, derived_seed, parallel_map
from bayeskit.posterior import Posterior
from bayeskit.runner import progress_enabled, versions
from bayeskit.sharding import split_data

__all__ = ["Fusion", "METHODS"]

METHODS = ("gbf", "dc_mcf", "mcf", "consensus", "weierstrass")
_PRECONDITIONERS = ("covariance", "identity")
_WEIERSTRASS_BUDGET = 4_000_000  # proposals per bandwidth tried
_WEIERSTRASS_DOUBLINGS = 8



def _task_seed(seed, *path):
    """A seed for one task from the run's seed and the task's place (shard, or tree node): no shared RNG.
    32 bits: Pyro's NUTS seeds NumPy's legacy RNG with it."""
    return derived_seed(seed, *path, bits=32)


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
        discretised), ``"exact"`` or ``"discretised"``. The discretised
        estimator is biased; the result's ``meta["approximate"]`` says so.
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
                 estimator="auto", cess0=0.2, cess_step=0.05, ess_threshold=0.5, shuffle=True,
                 backend="inprocess", ray_options=None):
        if model is not None and not callable(model):
            raise TypeError(f"model must be a Pyro model (a callable), got {type(model).__name__}")
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {list(METHODS)}")
        if tree not in core.TREES:
            raise ValueError(f"unknown tree {tree!r}; choose one of {list(core.TREES)}")
        if preconditioner not in _PRECONDITIONERS:
            raise ValueError(f"unknown preconditioner {preconditioner!r}; choose one of {list(_PRECONDITIONERS)}")
        if estimator not in ("auto", "exact", "discretised"):
            raise ValueError(f"estimator must be 'auto', 'exact' or 'discretised', got {estimator!r}")
        if method == "mcf" and estimator == "discretised":
            raise ValueError("method='mcf' is a rejection sampler and needs the exact estimator")
        if time_horizon is not None and not time_horizon > 0:
            raise ValueError(f"time_horizon must be positive, got {time_horizon!r}")
        if sampler is not None and not callable(sampler):
            raise TypeError("sampler must be callable: sampler(shard, num_samples, seed) -> Tensor")
        self.model = model
        self.num_shards = None if num_shards is None else positive_int("num_shards", num_shards)
        self.method, self.tree, self.preconditioner, self.estimator = method, tree, preconditioner, estimator
        self.num_particles = positive_int("num_particles", num_particles)
        self.sampler = sampler or NUTSSampler()
        self.time_horizon = time_horizon
        self.num_mesh_steps = None if num_mesh_steps is None else positive_int("num_mesh_steps",
                                                                                       num_mesh_steps)
        self.cess0, self.cess_step = fraction("cess0", cess0), fraction("cess_step", cess_step)
        self.ess_threshold = fraction("ess_threshold", ess_threshold)
        self.shuffle, self.backend, self.ray_options = shuffle, backend, ray_options

    def settings(self) -> dict:
        return {"method": self.method, "tree": self.tree, "num_shards": self.num_shards,
                "num_particles": self.num_particles, "preconditioner": self.preconditioner,
                "time_horizon": self.time_horizon, "num_mesh_steps": self.num_mesh_steps,
                "estimator": self.estimator, "cess0": self.cess0, "cess_step": self.cess_step,
                "ess_threshold": self.ess_threshold, "backend": self.backend, "sampler": repr(self.sampler)}

    # ------------------------------------------------------------ sub-posteriors
    def shards(self, *model_args, seed=0, **model_kwargs):
        """The data shards :meth:`run` samples, the rows shuffled with ``seed``."""
        seed = positive_int("seed", seed, minimum=0)
        if self.model is None or self.num_shards is None:
            raise ValueError("run() needs Fusion(model, num_shards=C, ...); fuse() takes ready sub-posteriors")
        generator = torch.Generator().manual_seed(_task_seed(seed, 0)) if self.shuffle else None
        return split_data(self.model, model_args, model_kwargs, self.num_shards, generator=generator)

    def sample_subposteriors(self, *model_args, seed=0, **model_kwargs) -> list[SubPosterior]:
        """Draw every shard's sub-posterior, in this process or as Ray tasks."""
        return self._sample(self.shards(*model_args, seed=seed, **model_kwargs), seed)

    def _sample(self, shards, seed):
        tasks = [(shard, self.sampler, self.num_particles, _task_seed(seed, 1, shard.index), torch.get_default_dtype())
                 for shard in shards]
        return parallel_map(sample_shard, tasks, backend=self.backend, ray_options=self.ray_options)

    # ----------------------------------------------------------------------- run
    def run(self, *model_args, seed=None, progress=True, **model_kwargs) -> Posterior:
        """Shard the data, sample the sub-posteriors and fuse them.

        Returns a weighted :class:`~bayeskit.Posterior` (one chain of
        ``num_particles`` draws) on the model's constrained sites.
        """
        seed = positive_int("seed", seed, minimum=0, allow_none=True)
        seed = int(torch.randint(2 ** 31, ()).item()) if seed is None else seed
        began = time.perf_counter()
        shards = self.shards(*model_args, seed=seed, **model_kwargs)  # split once: sampling and the target share it
        subposteriors = self._sample(shards, seed)
        sampling_seconds = time.perf_counter() - began
        target = shards[0].target()
        posterior = self.fuse(subposteriors, seed=seed, progress=progress, target=target)
        posterior.meta.update({"subposterior_wall_time_s": sampling_seconds,
                               "subposterior_seconds": [sub.seconds for sub in subposteriors],
                               "wall_time_s": time.perf_counter() - began})
        return posterior

    def fuse(self, subposteriors, *, seed=None, progress=True, target=None) -> Posterior:
        """Fuse ready sub-posteriors (a list of :class:`SubPosterior`) into a weighted Posterior.

        ``target`` (a :class:`~bayeskit.Target`) names and constrains the sites;
        without it the draws are one site ``theta`` of shape ``(d,)``.
        """
        subposteriors = _check_subposteriors(subposteriors)
        seed = positive_int("seed", seed, minimum=0, allow_none=True)
        seed = int(torch.randint(2 ** 31, ()).item()) if seed is None else seed
        began = time.perf_counter()
        leaves = [core.ParticleSet(sub.samples, sub.density, sub.log_weights) for sub in subposteriors]
        if self.method in ("consensus", "weierstrass"):
            (fused, extra), records = self._baseline(leaves, seed), []
        else:
            (fused, records), extra = self._fuse_tree(leaves, seed, progress), {}
        meta = {**self._meta(records, subposteriors, seed, time.perf_counter() - began), **extra}
        posterior = _posterior(fused, _stacked_trace(records), meta, target)
        health.report(posterior, stacklevel=3)
        return posterior

    def _baseline(self, leaves, seed):
        from bayeskit.inference.fusion import baselines

        samples = [core.equal_weight_draws(leaf, self.num_particles,
                                            torch.Generator(device=leaf.particles.device).manual_seed(
                                                _task_seed(seed, 3, c))) for c, leaf in enumerate(leaves)]
        if self.method == "consensus":
            return core.ParticleSet(baselines.consensus_monte_carlo(samples), None), {}
        generator = torch.Generator(device=samples[0].device).manual_seed(_task_seed(seed, 4))
        # The rate of acceptance falls like h^((C - 1) d): from the default bandwidth, double it until
        # the rejection sampler finishes within its budget, and report the bandwidth it used.
        bandwidth = baselines.default_bandwidth(self.num_particles, samples[0].shape[1])
        for _ in range(_WEIERSTRASS_DOUBLINGS):
            try:
                draws = baselines.weierstrass(samples, num_samples=self.num_particles, generator=generator,
                                              bandwidth=bandwidth, max_proposals=_WEIERSTRASS_BUDGET)
                return core.ParticleSet(draws, None), {"bandwidth": bandwidth}
            except RuntimeError:
                bandwidth *= 2
        raise RuntimeError(f"the Weierstrass sampler accepted too few proposals even at bandwidth {bandwidth / 2:.3g}")

    def _fuse_tree(self, leaves, seed, progress):
        from tqdm.auto import tqdm

        tree = core.build_tree(self.tree, len(leaves))
        if isinstance(tree, int):
            return leaves[0], []
        results, records = {}, []
        levels = core.tree_levels(tree)
        bar = tqdm(total=sum(len(level) for level in levels), desc=f"fusion ({self.method})", leave=False,
                   disable=not progress_enabled(progress))
        for height, level in enumerate(levels, start=1):
            tasks = []
            for path, node in level:
                children = [leaves[child] if isinstance(child, int) else results[path + (i,)]
                            for i, child in enumerate(node)]
                tasks.append((self._node_settings(), children, _task_seed(seed, 2, *path, len(path)),
                              torch.get_default_dtype()))
            outcomes = parallel_map(_fuse_node, tasks, backend=self.backend, ray_options=self.ray_options)
            for (path, _), outcome in zip(level, outcomes):
                results[path] = outcome.particles
                records.append((path, height, outcome))
                bar.update(1)
        bar.close()
        return results[()], records

    def _node_settings(self):
        return {"method": self.method, "num_particles": self.num_particles, "horizon": self.time_horizon,
                "num_mesh_steps": self.num_mesh_steps, "preconditioner": self.preconditioner,
                "estimator": self.estimator, "cess0": self.cess0, "cess_step": self.cess_step,
                "ess_threshold": self.ess_threshold}

    def _meta(self, records, subposteriors, seed, seconds):
        nodes = [{"node": "/".join(map(str, path)) or "root", "height": height, **outcome.summary}
                 for path, height, outcome in records]
        estimators = {node["estimator"] for node in nodes}
        approximate = "discretised" in estimators or self.method in ("consensus", "weierstrass")
        return {"engine": type(self).__name__, "settings": self.settings(), "seed": seed, "nodes": nodes,
                "estimator": "/".join(sorted(estimators)) or self.method,
                "approximate": approximate,
                "approximation": _approximation_note(self.method, estimators),
                "fusion_wall_time_s": seconds, "fusion_seconds": sum(node["seconds"] for node in nodes),
                "num_subposteriors": len(subposteriors), "versions": versions()}


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
    settings, children, seed, dtype = task
    generator = torch.Generator(device=children[0].particles.device).manual_seed(seed)
    with TaskContext(dtype):
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
        exact = {"auto": None, "exact": True, "discretised": False}[settings["estimator"]]
        return core.fuse_gbf(children, num_particles=settings["num_particles"], generator=generator,
                             horizon=settings["horizon"] if mesh is None else float(mesh[-1]), mesh=mesh,
                             preconditioner=settings["preconditioner"], exact=exact, cess0=settings["cess0"],
                             cess_step=settings["cess_step"], ess_threshold=settings["ess_threshold"])


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
    if not any(outcome.trace for _, _, outcome in records):
        return {}
    columns = {}
    for order, (_, height, outcome) in enumerate(records):
        if not outcome.trace:
            continue
        steps = len(outcome.trace["time"])
        rows = {**outcome.trace, "node": torch.full((steps,), order), "height": torch.full((steps,), height)}
        for key, value in rows.items():
            columns.setdefault(key, []).append(value)
    return {key: torch.cat(values) for key, values in columns.items()}


def _posterior(fused, trace, meta, target):
    draws, log_weights = fused.particles, fused.log_weights
    if target is not None:
        samples = {name: value[None] for name, value in target.draws(draws).items()}
    else:
        samples = {"theta": draws[None]}
    return Posterior(samples, log_weights=None if log_weights is None else log_weights[None], trace=trace, meta=meta)
