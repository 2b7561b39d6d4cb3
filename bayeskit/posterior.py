"""What every engine returns: named draws with their weights, diagnostics and provenance.

A :class:`Posterior` holds draws of shape ``(chain, draw, *site_shape)`` in
constrained space.  Particle methods use ``chain`` for independent particle
sets and ``draw`` for particles; weighted methods (SMC, importance sampling,
Fusion) add ``log_weights`` of shape ``(chain, draw)``, which every summary
honours.  It exports to an ArviZ ``xarray.DataTree`` and saves to netCDF or
zarr without pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

__all__ = ["Posterior", "load"]

FORMAT = "posterior/1"
SAMPLE_DIMS = ("chain", "draw")
PLOT_KINDS = ("dist", "trace", "forest", "rank", "ess", "ridge")


def _as_tensor(value, what):
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.from_numpy(np.array(value))
    except (TypeError, ValueError) as error:
        raise TypeError(f"{what} must be a tensor or array, got {type(value).__name__}") from error


def _tensors(mapping, what):
    if mapping is None:
        return {}
    if not isinstance(mapping, Mapping):
        raise TypeError(f"{what} must be a mapping of name -> tensor, got {type(mapping).__name__}")
    return {str(name): _as_tensor(value, f"{what}[{name!r}]") for name, value in mapping.items()}


class Posterior:
    """Draws from a posterior, with optional importance weights.

    Parameters
    ----------
    samples : mapping of str to Tensor
        ``(chain, draw, *site_shape)`` in constrained space.
    log_weights : Tensor, optional
        ``(chain, draw)`` unnormalised log importance weights; None for equal weights.
    sample_stats : mapping, optional
        Per-draw statistics ``(chain, draw)`` (log density, acceptance, ...).
    trace : mapping, optional
        Per-engine-step records ``(num_steps, ...)`` (loss, step size, ESS, ...).
    meta : dict, optional
        JSON-serialisable provenance: engine, settings, seed, versions, device, wall time.
    observed_data : mapping, optional
        The data the posterior conditions on.
    log_likelihood : mapping, optional
        Pointwise log-likelihood ``(chain, draw, *obs_batch_shape)`` per observed site.
    dims, coords : dict, optional
        ArviZ dimension names for each variable's non-sample axes and labels per dimension.
    """

    def __init__(self, samples, *, log_weights=None, sample_stats=None, trace=None, meta=None,
                 observed_data=None, log_likelihood=None, dims=None, coords=None):
        self.samples = _tensors(samples, "samples")
        if not self.samples:
            raise ValueError("a Posterior needs at least one sampled variable")
        self.num_chains, self.num_draws = self._sample_shape()
        self.log_weights = None if log_weights is None else self._check_log_weights(log_weights)
        self.sample_stats = self._check_per_draw(_tensors(sample_stats, "sample_stats"), "sample_stats")
        self.log_likelihood = self._check_per_draw(_tensors(log_likelihood, "log_likelihood"), "log_likelihood")
        self.observed_data = _tensors(observed_data, "observed_data")
        self.trace = self._check_trace(_tensors(trace, "trace"))
        self.meta = self._check_meta(meta or {})
        self.dims = {str(k): [str(d) for d in v] for k, v in (dims or {}).items()}
        self.coords = {str(k): list(v) for k, v in (coords or {}).items()}
        json.dumps(self.coords)  # labels are saved as JSON: refuse what cannot be

    # --------------------------------------------------------------- checks
    def _sample_shape(self):
        shapes = {name: tuple(v.shape[:2]) for name, v in self.samples.items()}
        for name, v in self.samples.items():
            if v.dim() < 2:
                raise ValueError(f"samples[{name!r}] must have shape (chain, draw, ...), got {tuple(v.shape)}")
        first = next(iter(shapes.values()))
        for name, shape in shapes.items():
            if shape != first:
                raise ValueError(f"samples[{name!r}] has (chain, draw) = {shape}, but other variables have {first}")
        return first

    def _check_log_weights(self, log_weights):
        lw = _as_tensor(log_weights, "log_weights")
        if tuple(lw.shape) != (self.num_chains, self.num_draws):
            raise ValueError(f"log_weights must have shape (chain, draw) = {(self.num_chains, self.num_draws)}, "
                             f"got {tuple(lw.shape)}")
        if torch.isnan(lw).any() or (lw == float("inf")).any():
            raise ValueError("log_weights contain NaN or +inf")
        if (lw == float("-inf")).all():
            raise ValueError("all log_weights are -inf: no draw has positive weight")
        return lw

    def _check_per_draw(self, values, what):
        for name, v in values.items():
            if tuple(v.shape[:2]) != (self.num_chains, self.num_draws):
                raise ValueError(f"{what}[{name!r}] must start with (chain, draw) = "
                                 f"{(self.num_chains, self.num_draws)}, got {tuple(v.shape)}")
        return values

    @staticmethod
    def _check_trace(trace):
        lengths = {name: (v.shape[0] if v.dim() else None) for name, v in trace.items()}
        if None in lengths.values() or len(set(lengths.values())) > 1:
            raise ValueError(f"every trace entry must have the same leading (step) length, got {lengths}")
        return trace

    @staticmethod
    def _check_meta(meta):
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as error:
            raise TypeError(f"meta must be JSON-serialisable: {error}") from error
        return dict(meta)

    # ------------------------------------------------------------ weights
    @property
    def is_weighted(self) -> bool:
        return self.log_weights is not None

    @property
    def weights(self) -> torch.Tensor:
        """Normalised weights ``(chain, draw)`` summing to one over all draws."""
        if self.log_weights is None:
            n = self.num_chains * self.num_draws
            return torch.full((self.num_chains, self.num_draws), 1.0 / n, dtype=torch.float64)
        lw = self.log_weights.double()
        return torch.exp(lw - torch.logsumexp(lw.reshape(-1), 0))

    @property
    def ess(self) -> float:
        """Kish's effective sample size ``1 / sum w^2`` (all draws when unweighted)."""
        return float(1.0 / (self.weights**2).sum())

    def __repr__(self):
        variables = ", ".join(f"{k}{tuple(v.shape[2:])}" for k, v in self.samples.items())
        weighted = f", weighted (ESS {self.ess:.1f})" if self.is_weighted else ""
        engine = self.meta.get("engine", "unknown engine")
        return (f"Posterior({engine}: {self.num_chains} chain(s) x {self.num_draws} draw(s){weighted}; "
                f"{variables})")

    # -------------------------------------------------------------- ArviZ
    def _var_dims(self, name, value, leading):
        extra = value.dim() - leading
        names = self.dims.get(name)
        if names is None or len(names) != extra:
            return None
        return names

    def to_arviz(self):
        """An ``xarray.DataTree`` in ArviZ's layout (``posterior``, ``sample_stats``, ...) plus ``trace``."""
        import xarray as xr
        from arviz_base import from_dict

        groups = {"posterior": _numpy(self.samples)}
        stats = _numpy(self.sample_stats)
        if self.log_weights is not None:
            stats["log_weight"] = self.log_weights.numpy()
        if stats:
            groups["sample_stats"] = stats
        if self.log_likelihood:
            groups["log_likelihood"] = _numpy(self.log_likelihood)
        if self.observed_data:
            groups["observed_data"] = _numpy(self.observed_data)
        dims = {}
        for group in ("posterior", "log_likelihood"):
            for name, v in groups.get(group, {}).items():
                names = self._var_dims(name, torch.as_tensor(v), 2)
                if names:
                    dims[name] = names
        for name, v in groups.get("observed_data", {}).items():
            names = self._var_dims(name, torch.as_tensor(v), 0)
            if names:
                dims[name] = names
        coords = {k: v for k, v in self.coords.items() if any(k in d for d in dims.values())}
        tree = from_dict(groups, dims=dims, coords=coords, attrs={"/": self._root_attrs()})
        if self.trace:
            trace = xr.Dataset({name: (("step", *[f"{name}_dim_{i}" for i in range(v.dim() - 1)]), v.numpy())
                                for name, v in self.trace.items()},
                               coords={"step": np.arange(1, len(next(iter(self.trace.values()))) + 1)})
            tree["trace"] = xr.DataTree(trace)
        return tree

    def _root_attrs(self):
        from bayeskit import __version__

        return {"inference_library": "bayeskit", "bayeskit_format": FORMAT, "bayeskit_version": __version__,
                "meta": json.dumps(self.meta), "bayeskit_dims": json.dumps(self.dims),
                "bayeskit_coords": json.dumps(self.coords)}

    # ------------------------------------------------------------ summary
    def summary(self, var_names=None, ci_prob: float = 0.89):
        """A table with one row per scalar: mean, sd, equal-tailed interval, ESS (and r_hat).

        Unweighted draws go through ``arviz_stats.summary``; with one chain
        its r_hat column (always NaN there) is dropped. Weighted draws get
        self-normalised weighted statistics: mean ``sum w x``, sd
        ``sqrt(sum w (x - mean)^2)``, weighted quantiles for the interval and
        Kish's ESS ``1 / sum w^2``; the weights are never dropped.
        """
        var_names = self._check_var_names(var_names)
        if not 0 < ci_prob < 1:
            raise ValueError(f"ci_prob must lie in (0, 1), got {ci_prob}")
        if self.is_weighted:
            return self._weighted_summary(var_names, ci_prob)
        from arviz_stats import summary

        table = summary(self.to_arviz(), var_names=var_names, ci_prob=ci_prob, ci_kind="eti")
        if self.num_chains == 1 and "r_hat" in table:
            table = table.drop(columns="r_hat")
        return table

    def _check_var_names(self, var_names):
        if var_names is None:
            return list(self.samples)
        if isinstance(var_names, str):
            var_names = [var_names]
        unknown = [v for v in var_names if v not in self.samples]
        if unknown:
            raise ValueError(f"unknown variable(s) {unknown}; the posterior has {list(self.samples)}")
        return list(var_names)

    def _weighted_summary(self, var_names, ci_prob):
        import pandas as pd

        w = self.weights.reshape(-1).numpy()
        percent = round(100 * ci_prob)
        rows, labels = [], []
        for name in var_names:
            values = self.samples[name].double().reshape(self.num_chains * self.num_draws, -1).numpy()
            for column, label in zip(values.T, self._element_labels(name)):
                mean = float(w @ column)
                sd = float(np.sqrt(w @ (column - mean) ** 2))
                low, high = weighted_quantile(column, w, [(1 - ci_prob) / 2, (1 + ci_prob) / 2])
                rows.append([mean, sd, low, high, self.ess])
                labels.append(label)
        columns = ["mean", "sd", f"eti{percent}_lb", f"eti{percent}_ub", "ess"]
        return pd.DataFrame(rows, index=labels, columns=columns)

    def _element_labels(self, name):
        shape = tuple(self.samples[name].shape[2:])
        if not shape:
            return [name]
        dims = self._var_dims(name, self.samples[name], 2) or []
        labels = []
        for index in np.ndindex(*shape):
            parts = [str(self.coords[d][i]) if d in self.coords else str(i)
                     for d, i in zip(dims, index)] if dims else [str(i) for i in index]
            labels.append(f"{name}[{', '.join(parts)}]")
        return labels

    # ------------------------------------------------------------- plots
    def resample(self, num_draws: int | None = None, seed: int = 0) -> Posterior:
        """An unweighted one-chain posterior by systematic resampling of the weighted draws."""
        n = num_draws or self.num_chains * self.num_draws
        w = self.weights.reshape(-1)
        u = (torch.rand((), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
             + torch.arange(n, dtype=torch.float64)) / n
        index = torch.searchsorted(torch.cumsum(w, 0), u).clamp(max=len(w) - 1)
        samples = {k: v.reshape(-1, *v.shape[2:])[index][None] for k, v in self.samples.items()}
        return Posterior(samples, meta={**self.meta, "resampled_from": "weighted draws"},
                         dims=self.dims, coords=self.coords)

    def plot(self, kind: str = "dist", var_names=None, path=None, **kwargs):
        """Plot with arviz-plots: ``dist``, ``trace``, ``forest``, ``rank``, ``ess`` or ``ridge``.

        Weighted posteriors are first resampled (systematic, seed 0) since
        ArviZ plots take no weights. Returns the PlotCollection; ``path``
        saves it (PNG by suffix).
        """
        import arviz_plots as azp

        # plot_trace_dist and plot_pair of arviz-plots 0.8 break on current xarray; these work.
        functions = {"dist": azp.plot_dist, "trace": azp.plot_trace, "forest": azp.plot_forest,
                     "rank": azp.plot_rank, "ess": azp.plot_ess, "ridge": azp.plot_ridge}
        if kind not in functions:
            raise ValueError(f"unknown plot kind {kind!r}; choose one of {list(PLOT_KINDS)}")
        var_names = self._check_var_names(var_names)
        source = self.resample() if self.is_weighted else self
        tree = source.to_arviz()
        collection = functions[kind](tree, var_names=var_names, backend="matplotlib", **kwargs)
        if path is not None:
            collection.savefig(str(path))
            import matplotlib.pyplot as plt

            plt.close("all")
        return collection

    # --------------------------------------------------------------- files
    def save(self, path) -> Path:
        """Write to ``.nc`` (netCDF4 via h5netcdf) or ``.zarr``, atomically; no pickle."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".nc", ".zarr"):
            raise ValueError(f"unknown file type {path.suffix!r}: use .nc (netCDF) or .zarr")
        tree = self.to_arviz()
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        _remove(tmp)
        try:
            if suffix == ".nc":
                tree.to_netcdf(tmp, engine="h5netcdf")
                os.replace(tmp, path)
            else:
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # zarr 3's consolidated-metadata notice
                    tree.to_zarr(tmp, mode="w")
                _replace_directory(tmp, path)
        finally:
            _remove(tmp)
        return path


def weighted_quantile(values, weights, probs):
    """Quantiles of a weighted sample: the inverse of the weighted empirical CDF at mid-points."""
    order = np.argsort(values)
    v, w = np.asarray(values)[order], np.asarray(weights)[order]
    cdf = np.cumsum(w) - 0.5 * w
    cdf /= w.sum()
    return [float(np.interp(p, cdf, v)) for p in probs]


def _numpy(mapping):
    return {name: value.numpy() for name, value in mapping.items()}


def _remove(path):
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _replace_directory(new, path):
    """Swap a finished zarr directory into place; the old one is removed only after the swap."""
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(new, path)
        _remove(old)
    else:
        os.replace(new, path)


def load(path) -> Posterior:
    """Read a Posterior written by :meth:`Posterior.save` (``.nc`` or ``.zarr``)."""
    import xarray as xr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file: {path}")
    engine = "zarr" if path.suffix.lower() == ".zarr" or path.is_dir() else "h5netcdf"
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with xr.open_datatree(path, engine=engine) as tree:
                tree = tree.load()
    except Exception as error:
        raise ValueError(f"{path} is not a bayeskit posterior file: it cannot be read as "
                         f"{'zarr' if engine == 'zarr' else 'netCDF'} ({type(error).__name__})") from error
    attrs = tree.attrs
    if attrs.get("bayeskit_format") != FORMAT:
        found = attrs.get("bayeskit_format", "no bayeskit_format attribute")
        raise ValueError(f"{path} is not a bayeskit posterior file ({found}); "
                         "it was not written by Posterior.save")
    return _from_tree(tree)


def _group(tree, name):
    if name not in tree.children:
        return {}
    dataset = tree[name].to_dataset()
    return {var: torch.from_numpy(np.array(dataset[var].values)) for var in dataset.data_vars}


def _from_tree(tree):
    stats = _group(tree, "sample_stats")
    log_weights = stats.pop("log_weight", None)
    return Posterior(
        _group(tree, "posterior"), log_weights=log_weights, sample_stats=stats,
        trace=_group(tree, "trace"), meta=json.loads(tree.attrs["meta"]),
        observed_data=_group(tree, "observed_data"), log_likelihood=_group(tree, "log_likelihood"),
        dims=json.loads(tree.attrs["bayeskit_dims"]), coords=json.loads(tree.attrs["bayeskit_coords"]))
