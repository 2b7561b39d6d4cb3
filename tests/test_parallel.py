import importlib.util
import sys

import pytest
import torch

from bayeskit.parallel import parallel_map


def square_sum(x):
    return float((torch.as_tensor(x) ** 2).sum())


def test_inprocess_map_keeps_order():
    items = [torch.arange(3.0) + i for i in range(5)]
    assert parallel_map(square_sum, items) == [square_sum(x) for x in items]


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="unknown backend 'dask'"):
        parallel_map(square_sum, [1.0], backend="dask")


def test_ray_backend_without_ray_says_how_to_install(monkeypatch):
    # runs where Ray is installed too (CI installs it): a None entry in sys.modules makes `import ray` fail
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ImportError, match=r"bayeskit\[distributed\]"):
        parallel_map(square_sum, [1.0], backend="ray")


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_backend_matches_inprocess(ray_cluster):
    items = [torch.arange(3.0) + i for i in range(4)]
    assert parallel_map(square_sum, items, backend="ray") == parallel_map(square_sum, items)
