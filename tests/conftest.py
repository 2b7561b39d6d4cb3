import importlib.util
import os
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

# Statistical tests run with small sizes in CI; BAYESKIT_FULL=1 runs the full sizes by hand.
FULL = os.environ.get("BAYESKIT_FULL") == "1"
#: The repository's root (tests/ mirrors the package in folders, so no test counts its parents).
REPO = Path(__file__).resolve().parent.parent


def load_benchmark(filename, module_name=None):
    """A script of ``benchmarks/`` loaded as a module (they are scripts, not a package), to test its helpers."""
    spec = importlib.util.spec_from_file_location(module_name or Path(filename).stem, REPO / "benchmarks" / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture
def float64():
    """Run a test in float64 and restore the default dtype afterwards."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of many tiny tensor calls: on a shared 2-core machine torch's
    thread pool costs them tens of times more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (starting one costs seconds)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    # Workers unpickle models defined in test modules by importing them: put every test folder on their path.
    folders = sorted({str(test.parent) for test in Path(__file__).parent.rglob("test_*.py")})
    path = os.pathsep.join([*folders, *filter(None, [os.environ.get("PYTHONPATH")])])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield ray
    ray.shutdown()


def reachable_tensors(obj):
    """Every tensor a state holds, through dataclasses (the persistent logs too), dicts, lists and tuples,
    in a fixed order: what the pure-step tests compare before and after a step."""
    import dataclasses

    if torch.is_tensor(obj):
        return [obj]
    if dataclasses.is_dataclass(obj):
        items = [getattr(obj, field.name) for field in dataclasses.fields(obj)]
    elif isinstance(obj, dict):
        items = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        items = list(obj)
    else:
        return []
    return [tensor for item in items for tensor in reachable_tensors(item)]


def all_draws(post):
    """A posterior's samples, with its log-weights (if any) as one more entry: what bit-identity tests compare."""
    out = dict(post.samples)
    if post.log_weights is not None:
        out["__log_weights"] = post.log_weights
    return out


def assert_steps_are_pure(engine, problem, num_steps):
    """Each step leaves every tensor reachable from its input as it was, and a second step from the same
    input with the same random stream gives the same new state and the same step information (nothing
    the first one did, to the state or to anything the step reads, leaked into it)."""
    torch.manual_seed(0)
    state = engine.init(problem, torch.Generator().manual_seed(0))
    for step in range(num_steps):
        before = [tensor.clone() for tensor in reachable_tensors(state)]
        rng = torch.get_rng_state()
        new, info = engine.step(state, problem, torch.default_generator)
        after = reachable_tensors(state)
        assert len(after) == len(before) and all(map(torch.equal, before, after)), f"step {step + 1} changed its input"
        torch.set_rng_state(rng)
        again, info_again = engine.step(state, problem, torch.default_generator)
        replayed = reachable_tensors(again)
        assert len(replayed) == len(reachable_tensors(new)), f"step {step + 1} replayed"
        assert all(map(torch.equal, reachable_tensors(new), replayed)), f"step {step + 1} replayed"
        assert nested_equal(info, info_again), f"step {step + 1} replayed different information"
        state = new
    return state


def nested_equal(a, b) -> bool:
    """Whether two state dicts (tensors in dicts, lists and tuples, plain values) are equal, bit for bit."""
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(nested_equal, a, b))
    return a == b
