"""Map work over workers: in-process by default, Ray when asked.

Engines that split work into independent pieces (Fusion's sub-posteriors,
federated SG-MCMC's clients) call :func:`parallel_map`; users choose where
the pieces run with ``backend=``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

__all__ = ["parallel_map", "BACKENDS"]

BACKENDS = ("inprocess", "ray")


def parallel_map(fn: Callable, items: Iterable, *, backend: str = "inprocess", ray_options: dict | None = None):
    """``[fn(item) for item in items]``, run in this process or as Ray tasks.

    Parameters
    ----------
    fn : callable
        A function of one item. With Ray it must be picklable (a module-level
        function, not a lambda over local state holding open files).
    items : iterable
    backend : "inprocess" or "ray"
        Ray needs the ``distributed`` extra (``pip install bayeskit[distributed]``);
        it joins a running cluster if ``ray.init`` was called, else starts a local one.
    ray_options : dict, optional
        Passed to ``ray.remote(...).options`` (e.g. ``{"num_cpus": 1, "num_gpus": 0.25}``).

    Returns
    -------
    list
        Results in the order of ``items``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    items = list(items)
    if backend == "inprocess":
        return [fn(item) for item in items]
    return _ray_map(fn, items, ray_options or {})


def _ray_map(fn, items, options):
    try:
        import ray
    except ImportError as error:
        raise ImportError("backend='ray' needs Ray: pip install 'bayeskit[distributed]'") from error
    if not ray.is_initialized():
        ray.init(ignore_reinit_error=True, log_to_driver=False)
    task = ray.remote(fn).options(**options)
    return ray.get([task.remote(item) for item in items])
