"""What every engine returns: named draws with their weights, diagnostics and provenance.

A :class:`Posterior` holds draws of shape ``(chain, draw, *site_shape)`` in
constrained space. Particle methods use ``chain`` for independent particle
sets and ``draw`` for particles; weighted methods (SMC, importance sampling,
Fusion) add ``log_weights`` of shape ``(chain, draw)``, which every summary
honours. It exports to an ArviZ ``xarray.DataTree`` (the format of ArviZ
>= 1, built with ``arviz_base.from_dict``) and saves to netCDF or zarr
without pickle; :func:`load` reads it back exactly.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

from bayeskit._arviz_workarounds import arviz_plots_workarounds
from bayeskit.parallel import resolve_seed
from bayeskit.resampling import systematic

__all__ = ["Posterior", "load", "weighted_quantile", "predictive_mixture"]

FORMAT = "posterior/1"
SAMPLE_DIMS = ("chain", "draw")
PLOT_KINDS = ("dist", "trace", "forest", "rank", "pair", "ppc", "energy")
#: The arviz-plots function that draws each plot kind.
_PLOT_FUNCTIONS = {"dist": "plot_dist", "trace": "plot_trace_dist", "forest": "plot_forest", "rank": "plot_rank_dist",
                   "pair": "plot_pair", "ppc": "plot_ppc_dist", "energy": "plot_energy"}
#: Groups of the DataTree that hold per-variable tensors, and the Posterior attribute of each.
GROUPS = {"posterior": "samples", "sample_stats": "sample_stats", "log_likelihood": "log_likelihood",
          "observed_data": "observed_data", "trace": "trace"}
#: The sample_stats name under which log-weights are exported (ArviZ has no weighted type).
LOG_WEIGHT = "log_weight"


# --------------------------------------------------------------------- input checks
def _as_cpu_tensor(value, argument):
    """A detached CPU tensor of ``value`` (tensor or array-like), dtype kept."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        # ascontiguousarray: torch.from_numpy refuses negative strides
        return torch.from_numpy(np.ascontiguousarray(value))
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"{argument} must be a torch.Tensor or a numeric array, "
                        f"got {type(value).__name__}") from error


def _check_name(name, argument):
    if not isinstance(name, str) or not name:
        raise TypeError(f"{argument} keys must be non-empty strings, got {name!r}")
    if "/" in name:  # netCDF and zarr read "/" as a group separator
        raise ValueError(f"{argument}[{name!r}]: variable names may not contain '/'")
    return name


def _tensor_mapping(mapping, argument):
    """``{name: CPU tensor}`` from a mapping (or None -> empty)."""
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{argument} must be a mapping of name -> tensor, got {type(mapping).__name__}")
    return {_check_name(name, argument): _as_cpu_tensor(value, f"{argument}[{name!r}]")
            for name, value in mapping.items()}


def _check_leading_shape(tensors, leading, argument):
    """Every tensor starts with the ``(chain, draw)`` shape ``leading``."""
    for name, value in tensors.items():
        if tuple(value.shape[:2]) != leading or value.dim() < 2:
            raise ValueError(f"{argument}[{name!r}] must have shape (chain, draw, ...) starting with "
                             f"{leading}, got {tuple(value.shape)}")
    return tensors


def _sample_shape(samples):
    """The ``(chain, draw)`` shared by all sampled variables."""
    if not samples:
        raise ValueError("samples must hold at least one variable")
    first_name = next(iter(samples))
    for name, value in samples.items():
        if value.dim() < 2:
            raise ValueError(f"samples[{name!r}] must have shape (chain, draw, ...), got {tuple(value.shape)}")
    leading = tuple(samples[first_name].shape[:2])
    for name, value in samples.items():
        if tuple(value.shape[:2]) != leading:
            raise ValueError(f"samples[{name!r}] has (chain, draw) = {tuple(value.shape[:2])}, "
                             f"but samples[{first_name!r}] has {leading}")
    if 0 in leading:
        raise ValueError(f"samples need at least one chain and one draw, got (chain, draw) = {leading}")
    return leading


def _check_log_weights(log_weights, leading):
    lw = _as_cpu_tensor(log_weights, "log_weights")
    if tuple(lw.shape) != leading:
        raise ValueError(f"log_weights must have shape (chain, draw) = {leading}, got {tuple(lw.shape)}")
    if lw.is_complex() or lw.dtype == torch.bool:
        raise TypeError(f"log_weights must be real numbers, got dtype {lw.dtype}")
    if torch.isnan(lw).any():
        raise ValueError("log_weights contain NaN")
    if torch.isposinf(lw).any():  # normalising an infinite weight is undefined
        raise ValueError("log_weights contain +inf")
    if torch.isneginf(lw).all():
        raise ValueError("log_weights are all -inf: no draw has positive weight")
    return lw


def _check_trace(trace):
    lengths = {name: (value.shape[0] if value.dim() else None) for name, value in trace.items()}
    if None in lengths.values():
        scalars = [name for name, n in lengths.items() if n is None]
        raise ValueError(f"trace{scalars} must have a leading step dimension, got 0-d tensors")
    if len(set(lengths.values())) > 1:
        raise ValueError(f"every trace entry must have the same number of steps, got {lengths}")
    return trace


def _check_meta(meta):
    """Meta in its JSON form, so that a saved and reloaded Posterior compares equal."""
    if meta is None:
        return {}
    if not isinstance(meta, Mapping):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        return json.loads(json.dumps(dict(meta)))
    except (TypeError, ValueError) as error:
        raise TypeError(f"meta must be JSON-serialisable: {error}") from error


def _check_dims(dims):
    if dims is None:
        return {}
    if not isinstance(dims, Mapping):
        raise TypeError(f"dims must be a mapping of variable name -> list of dim names, got {type(dims).__name__}")
    checked = {}
    for name, names in dims.items():
        if isinstance(names, str) or not isinstance(names, Sequence):
            raise TypeError(f"dims[{name!r}] must be a list of dimension names, got {names!r}")
        for dim in names:
            if not isinstance(dim, str):
                raise TypeError(f"dims[{name!r}] must hold strings, got {dim!r}")
            if dim in SAMPLE_DIMS:
                raise ValueError(f"dims[{name!r}]: {dim!r} is a sample dimension; name only the site's own axes")
        checked[str(name)] = list(names)
    return checked


def _check_coords(coords):
    if coords is None:
        return {}
    if not isinstance(coords, Mapping):
        raise TypeError(f"coords must be a mapping of dim name -> labels, got {type(coords).__name__}")
    checked = {}
    for dim, labels in coords.items():
        # tolist turns numpy scalars into Python ones, which JSON (our storage) accepts
        labels = np.asarray(labels).tolist()
        if not isinstance(labels, list) or any(isinstance(label, list) for label in labels):
            raise ValueError(f"coords[{dim!r}] must be a flat list of labels")
        try:
            json.dumps(labels)
        except (TypeError, ValueError) as error:
            raise TypeError(f"coords[{dim!r}] labels must be strings or numbers: {error}") from error
        checked[str(dim)] = labels
    return checked


# ------------------------------------------------------------------------ Posterior
class Posterior:
    """Draws from a posterior, with optional importance weights.

    Parameters
    ----------
    samples : mapping of str to Tensor or array
        ``(chain, draw, *site_shape)`` draws in constrained space; all variables
        share ``(chain, draw)``. Stored detached on the CPU, dtype kept.
    log_weights : Tensor, optional
        ``(chain, draw)`` unnormalised log importance weights; None for equal
        weights. ``-inf`` (zero weight) is allowed; NaN, ``+inf`` or all
        ``-inf`` are not.
    sample_stats : mapping, optional
        Per-draw statistics ``(chain, draw, ...)`` (log density, acceptance, ...).
        The name ``log_weight`` is reserved for ``log_weights``.
    trace : mapping, optional
        Per-engine-step records ``(num_steps, ...)`` (loss, step size, ESS, ...).
    meta : dict, optional
        JSON-serialisable provenance: engine, settings, seed, versions, device,
        wall time. Kept in its JSON form (tuples become lists).
    observed_data : mapping, optional
        The data the posterior conditions on (no sample dims).
    log_likelihood : mapping, optional
        Pointwise log-likelihood ``(chain, draw, *obs_batch_shape)`` per observed site.
    dims : dict, optional
        Variable name -> names of its non-sample axes; applies to the variable
        of that name in ``samples``, ``observed_data`` and ``log_likelihood``.
    coords : dict, optional
        Dimension name -> labels.

    Attributes
    ----------
    samples, log_weights, sample_stats, trace, meta, observed_data, log_likelihood, dims, coords
        As given, after validation.
    """

    def __init__(self, samples, *, log_weights=None, sample_stats=None, trace=None, meta=None,
                 observed_data=None, log_likelihood=None, dims=None, coords=None):
        self.samples = _tensor_mapping(samples, "samples")
        leading = _sample_shape(self.samples)
        self.log_weights = None if log_weights is None else _check_log_weights(log_weights, leading)
        self.sample_stats = _check_leading_shape(_tensor_mapping(sample_stats, "sample_stats"), leading,
                                                 "sample_stats")
        if LOG_WEIGHT in self.sample_stats:
            raise ValueError(f"sample_stats[{LOG_WEIGHT!r}] is reserved for the exported log_weights; "
                             "pass weights as log_weights=")
        self.log_likelihood = _check_leading_shape(_tensor_mapping(log_likelihood, "log_likelihood"), leading,
                                                   "log_likelihood")
        self.observed_data = _tensor_mapping(observed_data, "observed_data")
        self.trace = _check_trace(_tensor_mapping(trace, "trace"))
        self.meta = _check_meta(meta)
        self.dims = _check_dims(dims)
        self.coords = _check_coords(coords)
        self._check_dims_fit_the_variables()

    def _labelled_variables(self):
        """``(argument, name, site shape)`` of every variable that ``dims`` may label."""
        for argument, tensors, leading in (("samples", self.samples, 2), ("log_likelihood", self.log_likelihood, 2),
                                           ("observed_data", self.observed_data, 0)):
            for name, value in tensors.items():
                yield argument, name, tuple(value.shape[leading:])

    def _check_dims_fit_the_variables(self):
        """Each dims entry has one name per axis, and each dim keeps one length (= its labels)."""
        sizes = {}
        for argument, name, shape in self._labelled_variables():
            names = self.dims.get(name)
            if names is None:
                continue
            if len(names) != len(shape):
                raise ValueError(f"dims[{name!r}] names {len(names)} axes, but {argument}[{name!r}] has "
                                 f"site shape {shape}")
            for dim, size in zip(names, shape):
                if sizes.setdefault(dim, (size, f"{argument}[{name!r}]"))[0] != size:
                    raise ValueError(f"dimension {dim!r} has length {size} in {argument}[{name!r}] but "
                                     f"{sizes[dim][0]} in {sizes[dim][1]}")
        for dim, labels in self.coords.items():
            if dim in sizes and len(labels) != sizes[dim][0]:
                raise ValueError(f"coords[{dim!r}] has {len(labels)} labels, but dimension {dim!r} has "
                                 f"length {sizes[dim][0]}")

    # ----------------------------------------------------------------- weights
    @property
    def num_chains(self) -> int:
        return next(iter(self.samples.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.samples.values())).shape[1]

    @property
    def is_weighted(self) -> bool:
        return self.log_weights is not None

    @property
    def weights(self) -> torch.Tensor:
        r"""Normalised weights ``(chain, draw)``, float64, summing to one over all draws.

        :math:`w_i = \exp(\ell_i - \operatorname{logsumexp}_j \ell_j)`, computed
        in log space so that large log-weights do not overflow.
        """
        if self.log_weights is None:
            total = self.num_chains * self.num_draws
            return torch.full((self.num_chains, self.num_draws), 1.0 / total, dtype=torch.float64)
        lw = self.log_weights.double()
        return torch.exp(lw - torch.logsumexp(lw.reshape(-1), 0))

    def flat_draws(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The draws with chains pooled, ``{name: (S, *shape)}``, and their normalised log-weights ``(S,)``.

        What every model family's ``predictive(posterior, x)`` mixes over (S = chains x draws).
        """
        draws = {name: value.reshape(-1, *value.shape[2:]) for name, value in self.samples.items()}
        return draws, self.weights.reshape(-1).log()

    @property
    def ess(self) -> float:
        r"""Kish's effective sample size :math:`1 / \sum_i w_i^2` (chain x draw when unweighted).

        Kish (1965), *Survey Sampling*; the usual importance-sampling ESS.
        """
        if self.log_weights is None:
            return float(self.num_chains * self.num_draws)
        return float(1.0 / (self.weights ** 2).sum())

    def __repr__(self):
        variables = ", ".join(f"{name}{tuple(value.shape[2:])}" for name, value in self.samples.items())
        weighted = f", weighted (ESS {self.ess:.1f})" if self.is_weighted else ""
        engine = self.meta.get("engine", "unknown engine")
        return (f"Posterior({engine}: {self.num_chains} chain(s) x {self.num_draws} draw(s){weighted}; "
                f"{variables})")

    # ------------------------------------------------------------------- ArviZ
    def _dims_of(self, tensors):
        return {name: self.dims[name] for name in tensors if name in self.dims}

    def _coords_of(self, dims):
        used = {dim for names in dims.values() for dim in names}
        return {dim: labels for dim, labels in self.coords.items() if dim in used}

    def to_arviz(self):
        """The posterior as an ``xarray.DataTree`` in ArviZ's layout.

        Groups: ``posterior``; ``sample_stats`` (with ``log_weight`` when
        weighted); ``log_likelihood`` and ``observed_data`` when present; and
        ``trace`` (dims ``step`` and ``<name>_dim_<i>``) when the engine
        recorded one. ``arviz_base.from_dict`` gives every group but the
        ``*data*`` ones sample dims, so ``trace`` is attached as its own
        Dataset. Root attributes: ``inference_library``, ``bayeskit_format``,
        ``bayeskit_version``, ``meta`` (JSON), and the JSON that :func:`load`
        needs to rebuild the Posterior exactly.
        """
        import xarray as xr
        from arviz_base import from_dict

        labelled = {"posterior": self.samples, "log_likelihood": self.log_likelihood,
                    "observed_data": self.observed_data}
        groups = {group: _numpy(tensors) for group, tensors in labelled.items() if tensors}
        dims = {name: names for tensors in labelled.values() for name, names in self._dims_of(tensors).items()}
        tree = from_dict(groups, dims=dims, coords=self._coords_of(dims), attrs={"/": self._root_attrs()})
        stats = _numpy(self.sample_stats)
        if self.log_weights is not None:
            stats[LOG_WEIGHT] = self.log_weights.numpy()
        if stats:
            # a separate call: `dims` name variables, and must not reach a sample stat of the same name
            tree["sample_stats"] = from_dict({"sample_stats": stats})["sample_stats"]
        if self.trace:
            tree["trace"] = xr.DataTree(_trace_dataset(self.trace))
        return tree

    def _root_attrs(self):
        order = {group: list(getattr(self, attribute)) for group, attribute in GROUPS.items()}
        order["sample_stats"] += [LOG_WEIGHT] if self.is_weighted else []
        return {"inference_library": "bayeskit", "bayeskit_format": FORMAT, "bayeskit_version": _version(),
                "meta": json.dumps(self.meta), "bayeskit_dims": json.dumps(self.dims),
                "bayeskit_coords": json.dumps(self.coords),
                # zarr lists variables alphabetically; this keeps the user's order on load
                "bayeskit_variables": json.dumps(order)}

    def _posterior_tree(self, var_names):
        """A DataTree with only the ``posterior`` group, bool draws as int8 (ArviZ's quantiles fail on bool)."""
        from arviz_base import from_dict

        samples = {name: self.samples[name] for name in var_names}
        dims = self._dims_of(samples)
        return from_dict({"posterior": _numpy(_plottable(samples))}, dims=dims, coords=self._coords_of(dims))

    # ----------------------------------------------------------------- summary
    def summary(self, var_names=None, ci_prob: float = 0.89, *, health: bool = True):
        r"""A table with one row per scalar element: mean, sd, equal-tailed interval, ESS, ...

        Unweighted draws go through ``arviz_stats.summary`` (89% ETI as in
        ArviZ, full precision: no rounding). With a single chain its ``r_hat``
        column, which ArviZ fills with NaN without warning, is dropped rather
        than shown. Particle posteriors (``meta["sample_kind"] ==
        "particles"``, as the Stein engines write) get the statistics only
        (``mean``, ``sd``, interval): their draws are a deterministic,
        interacting set, not a Markov chain, so ESS, MCSE and R-hat computed
        along them would mean nothing.

        Weighted draws are never summarised as if unweighted. With weights
        :math:`w_i` normalised over all chains and draws,

        .. math::

            \bar x = \sum_i w_i x_i, \qquad
            \mathrm{sd} = \Big(\sum_i w_i (x_i - \bar x)^2\Big)^{1/2}, \qquad
            \mathrm{mcse} = \Big(\sum_i w_i^2 (x_i - \bar x)^2\Big)^{1/2},

        the interval ends are weighted quantiles at :math:`(1 \mp p)/2`
        (:func:`weighted_quantile`), and ``ess`` is Kish's
        :math:`1 / \sum_i w_i^2` (the same for every row). ``mcse_mean`` is the
        delta-method standard error of the self-normalised estimator (Owen,
        2013, *Monte Carlo theory, methods and examples*, ch. 9).

        Parameters
        ----------
        var_names : str or list of str, optional
            Variables to include; all by default.
        ci_prob : float
            Probability mass of the interval, in (0, 1). Columns are named as
            ArviZ names them, ``eti{int(100 * ci_prob)}_lb``/``_ub``.
        health : bool
            Print the health findings (:meth:`health`) as the table is made, one
            line each starting ``health:``; nothing is printed for a healthy run.

        Returns
        -------
        pandas.DataFrame
            Rows labelled as ArviZ labels them: ``beta[0]``, or ``beta[age]``
            with coordinates.
        """
        var_names = self._check_var_names(var_names)
        if isinstance(ci_prob, bool) or not isinstance(ci_prob, (int, float)) or not 0 < ci_prob < 1:
            raise ValueError(f"ci_prob must be a number in (0, 1), got {ci_prob!r}")
        if health:
            self._print_health()
        if self.is_weighted:
            return self._weighted_summary(var_names, float(ci_prob))
        import pandas
        from arviz_stats import summary

        kind = "stats" if self.meta.get("sample_kind") == "particles" else "all"
        # One variable at a time: arviz-stats 0.8 labels the rows of a variable wrongly when its dims come
        # in another order than an earlier variable's (e.g. (gate, covariate) then (expert, covariate)).
        table = pandas.concat([summary(self._posterior_tree([name]), kind=kind, ci_prob=ci_prob, ci_kind="eti",
                                       round_to=None) for name in var_names])
        if self.num_chains == 1:
            table = table.drop(columns="r_hat", errors="ignore")
        return table

    def _print_health(self):
        """The run's health findings, which a table of means alone would hide."""
        for finding in self.health():
            print(f"health: {finding.message}")

    def health(self, **thresholds):
        """What not to trust in this result: a list of :class:`bayeskit.health.Finding`, empty when healthy.

        Without arguments, the findings recorded at the end of the run
        (``meta["health"]``); with thresholds (``r_hat``, ``min_ess``,
        ``min_ess_fraction``, ``min_cess_fraction``, ``min_origin_fraction``,
        ``collapse_ratio``; see
        :mod:`bayeskit.health`), the checks run again on the draws with those.
        A posterior built by hand, with no record, is checked afresh.
        """
        from bayeskit import health

        if not thresholds and "health" in self.meta:
            return [health.Finding(**finding) for finding in self.meta["health"]]
        return health.check(self, **thresholds)

    def _check_var_names(self, var_names):
        if var_names is None:
            return list(self.samples)
        if isinstance(var_names, str):
            var_names = [var_names]
        unknown = [name for name in var_names if name not in self.samples]
        if unknown:
            raise ValueError(f"var_names: unknown variable(s) {unknown}; the posterior has {list(self.samples)}")
        if not var_names:
            raise ValueError("var_names is empty")
        return list(var_names)

    def _weighted_summary(self, var_names, ci_prob):
        import pandas as pd

        w = self.weights.reshape(-1).numpy()
        ess = 1.0 / float(np.sum(w ** 2))
        probs = [(1 - ci_prob) / 2, (1 + ci_prob) / 2]
        rows, labels = [], []
        for name in var_names:
            # one column per scalar element, (chain * draw) draws each
            draws = self.samples[name].double().reshape(self.num_chains * self.num_draws, -1).numpy()
            for column, label in zip(draws.T, self._element_labels(name)):
                mean = float(w @ column)
                centred = column - mean
                low, high = weighted_quantile(column, w, probs)
                rows.append([mean, math.sqrt(w @ centred ** 2), low, high, ess,
                             math.sqrt((w ** 2) @ centred ** 2)])
                labels.append(label)
        percent = int(ci_prob * 100)  # ArviZ's own rule, so weighted and unweighted columns agree
        columns = ["mean", "sd", f"eti{percent}_lb", f"eti{percent}_ub", "ess", "mcse_mean"]
        return pd.DataFrame(rows, index=labels, columns=columns)

    def _element_labels(self, name):
        """ArviZ-style labels in C order: ``x``, ``x[0, 1]``, or ``x[age]`` from coordinates."""
        shape = tuple(self.samples[name].shape[2:])
        if not shape:
            return [name]
        dims = self.dims.get(name)
        labels = []
        for index in np.ndindex(*shape):
            parts = [str(self.coords[dim][i]) if dims and dim in self.coords else str(i)
                     for dim, i in zip(dims or [None] * len(shape), index)]
            labels.append(f"{name}[{', '.join(parts)}]")
        return labels

    # ------------------------------------------------------------ resampling
    def resample(self, num_draws: int | None = None, seed: int | None = None) -> Posterior:
        r"""An unweighted one-chain posterior by systematic resampling.

        Draw index :math:`i` is taken for each
        :math:`u_k = (U + k) / K`, :math:`k = 0..K-1`, :math:`U \sim U(0, 1)`,
        with :math:`C_{i-1} < u_k \le C_i` for the cumulative normalised
        weights :math:`C` (Kitagawa, 1996; Douc, Cappé and Moulines, 2005).
        Every draw appears :math:`\lfloor K w_i \rfloor` or
        :math:`\lceil K w_i \rceil` times, which keeps weighted means with less
        noise than multinomial resampling. ``sample_stats`` and
        ``log_likelihood`` follow their draws; ``trace``, ``observed_data``,
        ``dims`` and ``coords`` are kept.

        Parameters
        ----------
        num_draws : int, optional
            ``K``; all ``chain * draw`` by default.
        seed : int, optional
            Seeds the single uniform ``U`` (a ``torch.Generator``), so the result is reproducible;
            None draws a seed, recorded in ``meta["resampled"]["seed"]``.
        """
        seed = resolve_seed(seed)
        total = self.num_chains * self.num_draws
        num_draws = total if num_draws is None else num_draws
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"num_draws must be a positive integer, got {num_draws!r}")
        index = systematic_resample(self.weights.reshape(-1), num_draws, seed)

        def pick(tensors):
            return {name: value.reshape(total, *value.shape[2:])[index].unsqueeze(0)
                    for name, value in tensors.items()}

        meta = {**self.meta, "resampled": {"method": "systematic", "seed": seed, "num_draws": num_draws,
                                           "ess_before": self.ess}}
        return Posterior(pick(self.samples), sample_stats=pick(self.sample_stats), trace=self.trace, meta=meta,
                         observed_data=self.observed_data, log_likelihood=pick(self.log_likelihood),
                         dims=self.dims, coords=self.coords)

    # ------------------------------------------------------------------ plots
    def plot(self, kind: str = "dist", var_names=None, path=None, *, posterior_predictive=None, **kwargs):
        """Plot the draws with arviz-plots (matplotlib), as ArviZ ships its plots.

        ==========  =====================  ==================================================
        ``kind``    arviz-plots function   panels
        ==========  =====================  ==================================================
        ``dist``    ``plot_dist``          a marginal density per scalar element
        ``trace``   ``plot_trace_dist``    per variable, densities per chain (left) and
                                           draws against draw index (right)
        ``forest``  ``plot_forest``        credible intervals per element and chain
        ``rank``    ``plot_rank_dist``     per variable, densities per chain (left) and
                                           fractional-rank ECDF differences per chain (right)
        ``pair``    ``plot_pair``          scatter of every pair of scalar elements, with
                                           the marginals on the diagonal
        ``ppc``     ``plot_ppc_dist``      densities of posterior-predictive draws over the
                                           observed data's density
        ``energy``  ``plot_energy``        BFMI per chain; marginal and transition energy
        ==========  =====================  ==================================================

        ArviZ plots take no weights, so a weighted posterior (SMC, importance
        sampling, Fusion) is first resampled to one unweighted chain with
        :meth:`resample` (systematic, seed 0, ``chain * draw`` draws);
        ``posterior_predictive`` draws follow the same resample. Particle
        posteriors (SVGD) show their particle index as the draw index.

        ``ppc`` needs the posterior's ``observed_data`` (engines record the
        observed sites of a Pyro model) and draws of the posterior
        predictive, which no engine stores: pass them as
        ``posterior_predictive``, for instance from Pyro::

            from pyro.infer import Predictive
            y = Predictive(model, posterior_samples=post.flat_draws()[0], return_sites=["y"])(x)["y"]
            y = y.reshape(post.num_chains, post.num_draws, *y.shape[1:])
            post.plot("ppc", posterior_predictive={"y": y})

        ``energy`` needs ``sample_stats["energy"]``, the Hamiltonian at each
        draw that HMC and NUTS record. No bayeskit engine records one
        (SG-MCMC and the Stein engines record ``log_prob``, SMC and Fusion
        weights), so it plots a posterior built from an HMC or NUTS run.

        Earlier versions fell back to ``plot_trace``, ``plot_rank`` and, for
        ``pair``, a tree of one scalar variable per element, because of
        arviz-plots 0.8 bugs that our export layout meets. Each is now worked
        around for the length of the call, only where the installed versions
        have it (see ``bayeskit._arviz_workarounds``):

        * ``plot_trace_dist`` and ``plot_rank_dist`` lay out one row per
          variable with ``PlotCollection.grid``, which in arviz-plots < 1.1
          then passes its root ``Dataset`` to ``xr.Dataset`` again; xarray
          >= 2026.4 refuses that with a ``TypeError``, whatever the data.
          Fixed in arviz-plots 1.1, which needs Python >= 3.12.
        * ``plot_pair`` fails with "cannot set a PandasIndex from the scalar
          variable" where a variable has a single row (a scalar next to a
          vector, or a vector of one element): arviz-plots < 1.0 selects its
          labels on a coordinate that is already scalar. Fixed in 1.0.
        * ``plot_pair`` marks a variable without a dimension with ``None``;
          with pandas >= 3 xarray stores a ``None`` among string labels (such
          as ``coords={"feature": ["age", "sex"]}``) as NaN, which
          ``PlotMatrix.set_fixed_var_attributes`` keeps as a label to select,
          with the same error, or not, depending on the order of a set of
          dimension names (arviz-plots 1.3 still tests for ``None`` only).

        Parameters
        ----------
        kind : str
            One of ``dist``, ``trace``, ``forest``, ``rank``, ``pair``,
            ``ppc``, ``energy``.
        var_names : str or list of str, optional
            Variables to plot; all by default. For ``ppc``, observed variables
            (those of ``posterior_predictive`` by default); ``energy`` takes
            none.
        path : str or Path, optional
            Save the figure there (format from the suffix, e.g. ``.png``) and
            close it in pyplot; the returned collection can still save again.
        posterior_predictive : mapping of str to Tensor or array, optional
            For ``ppc`` only: draws of the observed variables of the same
            names, shape ``(chain, draw, *observed shape)``, one per posterior
            draw.
        **kwargs
            Passed to the arviz-plots function (``coords=``, ``combined=``,
            ``compact=``, ``kind=``, ``visuals=``, ...).

        Returns
        -------
        arviz_plots.PlotCollection
            A ``PlotMatrix`` for ``pair``.

        Raises
        ------
        ValueError
            For an unknown ``kind`` or variable; for ``ppc`` without
            ``observed_data`` or ``posterior_predictive`` (or with draws of
            the wrong shape); for ``energy`` without ``sample_stats["energy"]``.

        Notes
        -----
        The matplotlib backend is left alone (``matplotlib.use`` is never
        called): on a machine without a display matplotlib resolves to Agg by
        itself, and saving a PNG renders through Agg whatever the backend.
        """
        import arviz_plots

        if kind not in PLOT_KINDS:
            raise ValueError(f"unknown plot kind {kind!r}; choose one of {list(PLOT_KINDS)}")
        if posterior_predictive is not None and kind != "ppc":
            raise ValueError(f"posterior_predictive is for plot kind 'ppc', not {kind!r}")
        if kind == "ppc":
            var_names, tree = self._predictive_tree(var_names, posterior_predictive)
        elif kind == "energy":
            tree = self._energy_tree(var_names)
        else:
            var_names = self._check_var_names(var_names)
            source = self.resample(seed=0) if self.is_weighted else self
            tree = source._posterior_tree(var_names)
        if kind != "energy":  # plot_energy has no var_names
            kwargs["var_names"] = var_names
        with arviz_plots_workarounds():
            collection = getattr(arviz_plots, _PLOT_FUNCTIONS[kind])(tree, backend="matplotlib", **kwargs)
        if path is not None:
            collection.savefig(str(path))
            _close_figure(collection)
        return collection

    def _predictive_tree(self, var_names, posterior_predictive):
        """``(var_names, DataTree)`` with ``posterior_predictive`` and ``observed_data`` groups, for ``ppc``."""
        from arviz_base import from_dict

        if not self.observed_data:
            raise ValueError("plot kind 'ppc' compares posterior-predictive draws with the observed data, but this "
                             "posterior has no observed_data: engines record the observed sites of a Pyro model "
                             "(obs=...); give a posterior built by hand Posterior(..., observed_data={'y': y})")
        if posterior_predictive is None:
            raise ValueError(f"plot kind 'ppc' needs posterior_predictive={{name: draws}}, draws of the observed "
                             f"variable(s) {list(self.observed_data)} of shape (chain, draw, *observed shape), e.g. "
                             f"from pyro.infer.Predictive(model, posterior_samples=posterior.flat_draws()[0]) "
                             f"reshaped to ({self.num_chains}, {self.num_draws}, ...)")
        predictive = _tensor_mapping(posterior_predictive, "posterior_predictive")
        if not predictive:
            raise ValueError("posterior_predictive is empty")
        for name, value in predictive.items():
            if name not in self.observed_data:
                raise ValueError(f"posterior_predictive[{name!r}]: no observed variable of that name; "
                                 f"observed_data has {list(self.observed_data)}")
            expected = (self.num_chains, self.num_draws, *self.observed_data[name].shape)
            if tuple(value.shape) != expected:
                raise ValueError(f"posterior_predictive[{name!r}] must have shape (chain, draw, *observed shape) = "
                                 f"{expected}, got {tuple(value.shape)}")
        var_names = [var_names] if isinstance(var_names, str) else list(var_names or predictive)
        unknown = [name for name in var_names if name not in predictive]
        if unknown:
            raise ValueError(f"var_names: {unknown} have no posterior_predictive draws; given {list(predictive)}")
        predictive = {name: predictive[name] for name in var_names}
        if self.is_weighted:  # the same weights and seed pick the same draws as self.resample(seed=0)
            predictive = Posterior(predictive, log_weights=self.log_weights).resample(seed=0).samples
        observed = {name: self.observed_data[name] for name in var_names}
        dims = self._dims_of(predictive)
        tree = from_dict({"posterior_predictive": _numpy(_plottable(predictive)),
                          "observed_data": _numpy(_plottable(observed))},
                         dims=dims, coords=self._coords_of(dims))
        return var_names, tree

    def _energy_tree(self, var_names):
        """A DataTree with the ``sample_stats`` group of ``energy``, for ``energy``."""
        from arviz_base import from_dict

        if var_names is not None:
            raise ValueError("plot kind 'energy' plots sample_stats['energy'], not variables: leave var_names out")
        if "energy" not in self.sample_stats:
            raise ValueError("plot kind 'energy' needs sample_stats['energy'], the Hamiltonian at each draw that "
                             "HMC and NUTS record, and this posterior has none: no bayeskit engine records one "
                             "(SG-MCMC and the Stein engines record log_prob, SMC and Fusion weights). Plot an HMC "
                             "or NUTS run, e.g. NumPyro's MCMC.run(..., extra_fields=('energy',)), as "
                             "Posterior(samples, sample_stats={'energy': energy}) with energy (chain, draw)")
        source = self.resample(seed=0) if self.is_weighted else self
        energy = source.sample_stats["energy"]
        if energy.dim() != 2:
            raise ValueError(f"sample_stats['energy'] must have shape (chain, draw), got {tuple(energy.shape)}")
        return from_dict({"sample_stats": {"energy": energy.double().numpy()}})

    # ------------------------------------------------------------------ files
    def save(self, path) -> Path:
        """Write to ``.nc`` (netCDF4 through h5netcdf) or ``.zarr``, atomically, without pickle.

        The tree of :meth:`to_arviz` is written under a temporary name in the
        same directory and then moved into place with ``os.replace``, so a
        reader never sees a half-written file and a crash leaves any previous
        file intact. An existing ``.zarr`` directory is first moved aside and
        removed only after the new one is in place.

        Returns
        -------
        Path
            ``path``.
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".nc", ".zarr"):
            raise ValueError(f"path: unknown file type {path.suffix!r}; use .nc (netCDF) or .zarr")
        if suffix == ".nc" and path.is_dir():
            raise ValueError(f"path: {path} is a directory; a .nc posterior is a single file")
        if suffix == ".zarr" and path.exists() and not path.is_dir():
            raise ValueError(f"path: {path} exists and is not a directory; a .zarr posterior is a directory")
        tree = self.to_arviz()
        if suffix == ".nc":
            _write_netcdf_atomically(tree, path)
        else:
            _write_zarr_atomically(tree, path)
        return path


# ------------------------------------------------------------------- weighted helpers
def weighted_quantile(values, weights, probs):
    r"""Quantiles of a weighted sample by linear interpolation of the mid-point weighted CDF.

    With values sorted, :math:`x_{(1)} \le \dots \le x_{(n)}`, and weights
    :math:`w_{(k)}` normalised to sum to one, the point :math:`x_{(k)}` sits at
    probability :math:`P_k = \sum_{j<k} w_{(j)} + w_{(k)}/2`; the quantile at
    ``p`` interpolates linearly between these points and is clamped to the
    sample's range outside :math:`[P_1, P_n]`. With equal weights this is
    Hazen's rule (Hyndman and Fan, 1996, definition 5), numpy's
    ``method="hazen"``. Zero weights contribute nothing; a NaN value of
    positive weight makes every quantile NaN, as in ``np.quantile``.

    Parameters
    ----------
    values, weights : array_like
        ``(n,)`` values and non-negative weights (not necessarily normalised).
    probs : sequence of float
        Probabilities in [0, 1].

    Returns
    -------
    list of float
    """
    values, weights = np.asarray(values, dtype=float), np.asarray(weights, dtype=float)
    keep = weights > 0  # a zero-weight draw is not part of the distribution
    values, weights = values[keep], weights[keep]
    if np.isnan(values).any():  # as np.quantile: no ordering, no quantile
        return [math.nan for _ in probs]
    order = np.argsort(values, kind="stable")
    values, weights = values[order], weights[order] / weights.sum()
    midpoints = np.cumsum(weights) - 0.5 * weights
    return [float(np.interp(p, midpoints, values)) for p in probs]


def systematic_resample(weights, num_draws, seed):
    """Indices of a systematic resample (see :meth:`Posterior.resample`) of normalised ``weights``."""
    generator = torch.Generator().manual_seed(int(seed))
    return systematic(weights.double(), num_draws, generator=generator)


# ------------------------------------------------------------------- export helpers
def _version():
    try:
        return version("bayeskit")
    except PackageNotFoundError:  # a source tree that is not installed
        return "unknown"


def _numpy(tensors):
    """NumPy views of CPU tensors; bfloat16 (no NumPy dtype) is widened to float32."""
    return {name: (value.float() if value.dtype == torch.bfloat16 else value).numpy()
            for name, value in tensors.items()}


def _trace_dataset(trace):
    import xarray as xr

    variables = {}
    for name, array in _numpy(trace).items():
        axes = ("step", *[f"{name}_dim_{i}" for i in range(array.ndim - 1)])
        variables[name] = (axes, array)
    num_steps = next(iter(trace.values())).shape[0]
    return xr.Dataset(variables, coords={"step": np.arange(num_steps)})


def _close_figure(collection):
    """Release the saved figure from pyplot's registry, so that scripts saving many plots do not leak."""
    import matplotlib.pyplot as plt

    figure = collection.viz["figure"].item() if "figure" in collection.viz.dataset else None
    if figure is not None:
        plt.close(figure)


# ------------------------------------------------------------------- plot helpers
def _plottable(tensors):
    """Bool tensors as int8: ArviZ's densities and quantiles fail on bool."""
    return {name: (value.to(torch.int8) if value.dtype == torch.bool else value) for name, value in tensors.items()}


def _temporary_sibling(path, directory):
    """A fresh name next to ``path``, so that the final ``os.replace`` stays on one filesystem."""
    if directory:
        return Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    return Path(name)


def _write_netcdf_atomically(tree, path):
    temporary = _temporary_sibling(path, directory=False)
    try:
        tree.to_netcdf(temporary, engine="h5netcdf", mode="w")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _write_zarr_atomically(tree, path):
    temporary = _temporary_sibling(path, directory=True)
    try:
        with warnings.catch_warnings():
            # zarr 3 warns that consolidated metadata is not in its spec yet; xarray writes it anyway
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            _with_variable_length_strings(tree).to_zarr(temporary, mode="w")
        _replace_directory(temporary, path)
    finally:
        if temporary.exists():
            shutil.rmtree(temporary)


def _with_variable_length_strings(tree):
    """String coordinates as object arrays: zarr 3 has a specified variable-length string type but
    warns that its fixed-width ``<U`` type has no specification (unreadable by other zarr libraries)."""

    def convert(dataset):
        return dataset.assign_coords({name: dataset[name].astype(object) for name in dataset.coords
                                      if dataset[name].dtype.kind == "U"})

    return tree.map_over_datasets(convert)


def _replace_directory(new, path):
    """Move directory ``new`` to ``path``; an old ``path`` is moved aside first and restored on failure."""
    if not path.exists():
        os.replace(new, path)
        return
    old = _temporary_sibling(path, directory=True)
    old.rmdir()  # only the unique name is wanted: os.replace will not move onto a directory
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old)


# ------------------------------------------------------------------------- loading
def load(path) -> Posterior:
    """Read a :class:`Posterior` written by :meth:`Posterior.save` (``.nc`` file or ``.zarr`` directory).

    The data are read fully into memory and the file is closed before
    returning. Values, dtypes, variable order, weights, trace, meta, dims and
    coords come back exactly as saved.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        When ``path`` is not a bayeskit posterior file: not netCDF/zarr at
        all, or lacking the ``bayeskit_format`` attribute that ``save`` writes.
    """
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or directory: {path}")
    engine = "zarr" if path.is_dir() else "h5netcdf"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            with xr.open_datatree(path, engine=engine, decode_times=False, decode_timedelta=False) as tree:
                tree = tree.load()
    except Exception as error:  # whatever the reader raises, the answer to the user is the same
        kind = "a zarr store" if engine == "zarr" else "a netCDF4/HDF5 file"
        raise ValueError(f"{path} is not a bayeskit posterior file: it cannot be read as {kind} "
                         f"({type(error).__name__}: {error})") from error
    found = tree.attrs.get("bayeskit_format")
    if found is None:
        raise ValueError(f"{path} is not a bayeskit posterior file: it has no 'bayeskit_format' attribute "
                         "(it was not written by Posterior.save)")
    if found != FORMAT:
        raise ValueError(f"{path} is a bayeskit file of format {found!r}; this version reads {FORMAT!r}")
    return _from_tree(tree, path)


def _from_tree(tree, path):
    try:
        order = json.loads(tree.attrs["bayeskit_variables"])
        groups = {group: _group_tensors(tree, group, order.get(group, [])) for group in GROUPS}
        stats = groups["sample_stats"]
        return Posterior(groups["posterior"], log_weights=stats.pop(LOG_WEIGHT, None), sample_stats=stats,
                         trace=groups["trace"], meta=json.loads(tree.attrs["meta"]),
                         observed_data=groups["observed_data"], log_likelihood=groups["log_likelihood"],
                         dims=json.loads(tree.attrs["bayeskit_dims"]),
                         coords=json.loads(tree.attrs["bayeskit_coords"]))
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} claims to be a bayeskit posterior file but is incomplete: {error!r}") from error


def _group_tensors(tree, group, order):
    if group not in tree.children:
        return {}
    dataset = tree[group].to_dataset()
    names = [name for name in order if name in dataset.data_vars]
    names += [name for name in dataset.data_vars if name not in names]
    # np.array copies: the tensors own their memory once the file is closed
    return {name: torch.from_numpy(np.array(dataset[name].values)) for name in names}


def predictive_mixture(log_weights: torch.Tensor, components: torch.distributions.Distribution):
    r"""The posterior predictive as a mixture over weighted draws.

    :math:`p(y \mid x, D) \approx \sum_s w_s\, p(y \mid x, \theta_s)`.
    ``components`` has batch shape ``(..., S)``, one distribution per draw in
    the last batch dimension, and ``log_weights`` ``(S,)`` are the draws'
    normalised log-weights (:meth:`Posterior.flat_draws`, in the components'
    dtype and device). Returns a
    :class:`torch.distributions.MixtureSameFamily` of batch shape ``(...)``,
    whose ``log_prob``, ``mean``, ``variance`` and ``sample`` all apply.
    """
    logits = log_weights.expand(components.batch_shape)
    return torch.distributions.MixtureSameFamily(torch.distributions.Categorical(logits=logits), components)
