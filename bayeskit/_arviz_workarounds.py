"""Narrow workarounds for arviz-plots 0.8 bugs that :meth:`bayeskit.Posterior.plot` meets.

Each applies only where the installed versions have the bug, only for the
length of one plot call (under a lock), and is undone after it; see
:func:`arviz_plots_workarounds` and the docstring of ``Posterior.plot`` for
the three causes.  Delete a workaround when the minimum arviz-plots version
includes its fix (1.0 and 1.1, which need Python >= 3.12).
"""

import math
import threading
import types
from contextlib import contextmanager
from functools import cache
from itertools import takewhile

import numpy as np

__all__ = ["arviz_plots_workarounds"]


def _leading_version(text):
    """``(major, minor)`` of a version string such as ``1.1.0rc1``."""
    parts = [int("".join(takewhile(str.isdigit, part)) or 0) for part in text.split(".")[:2]]
    return tuple(parts + [0] * (2 - len(parts)))


@cache
def _arviz_plots_version():
    import arviz_plots

    return _leading_version(arviz_plots.__version__)


@cache
def _grid_refuses_its_root():
    """True where ``PlotCollection.grid`` fails on every layout by variable (``plot_trace_dist``, ``plot_rank_dist``).

    With rows or columns by ``__variable__``, arviz-plots < 1.1 ends ``grid`` with
    ``xr.Dataset(value, coords=coords)`` for every entry of its figure dict, the root included, which is
    already a ``Dataset`` (plot_collection.py:997 in 0.8.0); xarray >= 2026.4 refuses a Dataset as
    ``data_vars`` (``TypeError``). arviz-plots 1.1 keeps the root as it is.
    """
    import xarray as xr

    if _arviz_plots_version() >= (1, 1):
        return False
    try:
        xr.Dataset(xr.Dataset())
    except TypeError:
        return True
    return False


@cache
def _missing_labels_become_nan():
    """True where xarray stores a ``None`` among string labels as NaN (pandas >= 3 infers a string dtype).

    ``PlotMatrix`` (``plot_pair``) writes ``None`` as the coordinate of a variable that lacks a dimension,
    and drops only ``None`` when it selects that variable's row or column (``set_fixed_var_attributes``,
    plot_matrix.py:511-516 in 0.8.0): a NaN is kept, and selecting it can fail with "cannot set a
    PandasIndex from the scalar variable".
    """
    import xarray as xr

    return xr.Variable("label", np.array([None, "label"], dtype=object)).values[0] is not None


class _KeepsDatasets(type):
    """``xarray.Dataset`` for arviz-plots' ``plot_collection`` module, but a Dataset passed as data is kept.

    What arviz-plots 1.1 does at the one place where < 1.1 passes a Dataset (the root of ``grid``).
    """

    def __instancecheck__(cls, instance):
        import xarray as xr

        return isinstance(instance, xr.Dataset)

    def __call__(cls, data_vars=None, coords=None, attrs=None):
        import xarray as xr

        if isinstance(data_vars, xr.Dataset):
            return data_vars
        return xr.Dataset(data_vars, coords, attrs)


class _DatasetKeepingDatasets(metaclass=_KeepsDatasets):
    pass


def _xarray_keeping_datasets(xr):
    """A copy of the ``xarray`` module's namespace with :class:`_DatasetKeepingDatasets` as ``Dataset``."""
    module = types.ModuleType(xr.__name__, xr.__doc__)
    module.__dict__.update(vars(xr))
    module.Dataset = _DatasetKeepingDatasets
    return module


def _without_missing_labels(set_fixed_var_attributes):
    """``PlotMatrix.set_fixed_var_attributes`` that drops NaN labels as it drops ``None``."""
    def wrapper(self, index, orientation="row"):
        set_fixed_var_attributes(self, index, orientation)
        self._fixed_selection = {dim: label for dim, label in self._fixed_selection.items()
                                 if not (isinstance(label, float) and math.isnan(label))}
    return wrapper


def _selecting_only_shared_rows(subset_matrix_da):
    """``plot_matrix.subset_matrix_da`` that selects labels only where a variable has several rows.

    arviz-plots < 1.0 selects a label of a variable's dimension even where the variable has a single row
    or column (a vector site of one element, or ``coords=`` down to one), whose coordinate is then a
    scalar, and fails with "cannot set a PandasIndex from the scalar variable" (``set_xindex``,
    plot_matrix.py:54-59 in 0.8.0). Its variable name alone
    picks that row, so the label is left out, as arviz-plots 1.0 does.
    """
    def wrapper(da, var_name_x, selection_x, var_name_y=None, selection_y=None, return_dataarray=False):
        if var_name_y is None and selection_y is None:
            var_name_y, selection_y = var_name_x, selection_x

        def needed(selection, var_name, axis):
            if selection is None or int((da[f"var_name_{axis}"].values == var_name).sum()) != 1:
                return selection
            return {dim: label for dim, label in selection.items() if f"{dim}_{axis}" not in da.coords}

        return subset_matrix_da(da, var_name_x, needed(selection_x, var_name_x, "x"), var_name_y,
                                needed(selection_y, var_name_y, "y"), return_dataarray)
    return wrapper


_WORKAROUND_LOCK = threading.RLock()


@contextmanager
def arviz_plots_workarounds():
    """Work around the arviz-plots bugs that :meth:`Posterior.plot` meets, for one call, where they apply.

    Within the ``with`` block (under a lock, and undone after it): where :func:`_grid_refuses_its_root`,
    the ``xr`` of ``arviz_plots.plot_collection`` is xarray with :class:`_DatasetKeepingDatasets` as
    ``Dataset``; where :func:`_missing_labels_become_nan`, ``PlotMatrix.set_fixed_var_attributes`` also
    drops NaN labels; below arviz-plots 1.0, ``plot_matrix.subset_matrix_da`` skips the labels of a
    variable with a single row (:func:`_selecting_only_shared_rows`). Nothing else changes.
    """
    import arviz_plots.plot_collection as plot_collection
    import arviz_plots.plot_matrix as plot_matrix

    wrappers = []
    if _grid_refuses_its_root():
        wrappers.append((plot_collection, "xr", _xarray_keeping_datasets))
    if _missing_labels_become_nan():
        wrappers.append((plot_matrix.PlotMatrix, "set_fixed_var_attributes", _without_missing_labels))
    if _arviz_plots_version() < (1, 0):
        wrappers.append((plot_matrix, "subset_matrix_da", _selecting_only_shared_rows))
    with _WORKAROUND_LOCK:  # the originals are read and restored under the lock, never a wrapper
        originals = [(owner, name, owner.__dict__[name]) for owner, name, _ in wrappers]
        try:
            for (owner, name, original), (_, _, wrap) in zip(originals, wrappers):
                setattr(owner, name, wrap(original))
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
