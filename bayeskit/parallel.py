"""Map work over workers: in-process by default, Ray when asked.

Engines that split work into independent pieces (Fusion's sub-posteriors,
federated SG-MCMC's clients) call :func:`parallel_map`; users choose where
the pieces run with ``backend=``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from contextlib import contextmanager

import numpy as np
import torch

from bayeskit._checks import positive_int

__all__ = ["parallel_map", "BACKENDS", "TaskContext", "derived_seed", "resolve_seed", "seeded", "step_generator"]

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
    _ship_module_by_value(fn)
    task = ray.remote(fn).options(**options)
    return ray.get([task.remote(item) for item in items])


def _ship_module_by_value(fn):
    """Let Ray workers unpickle ``fn`` even when they cannot import its module.

    Ray pickles functions by reference to their module.  Workers import
    installed packages (bayeskit included) but not a user's script folder or
    a test file, so such a module travels by value: its functions and the
    globals they use are pickled along with the task.
    """
    import ray.cloudpickle

    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if module is None or module.__name__ == "__main__":  # __main__ already travels by value
        return
    path = getattr(module, "__file__", None) or ""
    if module.__name__.partition(".")[0] == "bayeskit" or "site-packages" in path or "dist-packages" in path:
        return
    ray.cloudpickle.register_pickle_by_value(module)


class TaskContext:
    """Inside a task: torch on one thread and, if given, ``dtype`` as the default dtype.

    So that in-process and Ray runs give the same floating point: a Ray
    worker neither shares the caller's thread count nor its default dtype.
    Also the demo's stops with many small tensor operations per step, on
    which a thread pool costs more than it saves.
    """

    def __init__(self, dtype: torch.dtype | None = None):
        self.dtype = dtype

    def __enter__(self):
        self.threads, self.previous_dtype = torch.get_num_threads(), torch.get_default_dtype()
        torch.set_num_threads(1)
        if self.dtype is not None:
            torch.set_default_dtype(self.dtype)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.threads)
        torch.set_default_dtype(self.previous_dtype)


def resolve_seed(seed: int | None) -> int:
    """``seed`` checked, or, for None, a seed drawn from torch's global RNG (so ``torch.manual_seed`` fixes it).

    What every public ``seed=None`` means: the call draws a seed and records it
    (``meta["seed"]`` of what it returns), so any result can be reproduced.
    """
    positive_int("seed", seed, minimum=0, allow_none=True)
    return int(torch.randint(0, 2**31 - 1, ())) if seed is None else int(seed)


def derived_seed(base_seed: int, *key: int, bits: int = 63) -> int:
    """A seed for the stream ``key`` of a run (a task, a shard, a tree node), independent of the others.

    NumPy's ``SeedSequence(base_seed, spawn_key=key)`` hashes the run's seed
    and the key, so no two tasks share a stream and no task reads a shared
    RNG: in-process and Ray runs give the same draws. ``bits`` bounds the
    result (32 for samplers that seed NumPy's legacy RNG, which takes < 2**32).
    """
    if not 1 <= bits <= 63:
        raise ValueError(f"bits must lie in 1..63, got {bits!r}")
    words = np.random.SeedSequence(base_seed, spawn_key=key).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31 ^ int(words[1])) & ((1 << bits) - 1)


def step_generator(seed: int, step: int) -> torch.Generator:
    """A CPU generator for one step of a run, a function of ``(seed, step)`` only.

    A loss that draws its minibatch or Monte Carlo noise from it makes a fit
    reproducible and lets a checkpointed run resume exactly (a generator
    created once and advanced step by step would restart from the seed).
    """
    return torch.Generator().manual_seed(derived_seed(seed, step))


@contextmanager
def seeded(seed: int, device=None):
    """Inside: torch's global RNG on the CPU, and on ``device`` if it is a GPU, seeded with ``seed``; outside,
    the caller's RNG as it was.

    What ``fork_rng`` plus ``torch.manual_seed`` do, without the cost: ``torch.manual_seed`` also queues a
    lazy seed, with a stack trace, for every backend not yet initialised (CUDA, XPU, MTIA), about 2 ms per
    call under a deep stack, which was half the time of a federated run's client rounds.
    """
    device = torch.device("cpu" if device is None else device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        for gpu in devices:
            torch.cuda.default_generators[torch.cuda.current_device() if gpu.index is None else gpu.index].manual_seed(
                seed)
        yield
