"""``bayeskit.compiling``: what ``jit_compile`` means in every engine."""

import warnings

import pytest
import torch
from torch.fx.experimental.proxy_tensor import make_fx

from bayeskit.compiling import check_jit_compile, compile_step


def step_on_a_graph(scale):
    """What an engine compiles: a step around a captured graph (a new ``make_fx`` graph module per target)."""
    graph = make_fx(lambda x: (x * scale).sum())(torch.ones(3))

    def step(x):
        return graph(x)
    return step


def test_many_compiled_steps_in_one_process_stay_compiled():
    """Every target's step is the same Python function with another closure (another model's graph).

    torch.compile keeps at most 8 compiled versions per code object; before each step got a code
    object of its own, the ninth run of a process fell back to the uncompiled step with a warning.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="jit_compile: torch.compile failed")
        for k in range(12):
            assert float(compile_step(step_on_a_graph(float(k)))(torch.ones(3))) == pytest.approx(3.0 * k)


def test_a_step_that_cannot_compile_runs_uncompiled_with_a_warning():
    def branches_on_a_value(x):
        return 2 * x if float(x.sum()) > 0 else 3 * x  # a Python branch on a value: no single graph

    step = compile_step(branches_on_a_value)
    with pytest.warns(UserWarning, match="jit_compile: torch.compile failed"):
        assert step(torch.tensor([1.0, 2.0])).tolist() == [2.0, 4.0]
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="jit_compile")  # once fallen back, it stays quiet
        assert step(torch.tensor([-1.0, -2.0])).tolist() == [-3.0, -6.0]


def test_jit_compile_takes_booleans_and_torch_compile_modes_only():
    for value in (True, False, "default", "reduce-overhead"):
        assert check_jit_compile(value) == value
    for value in ("fast", 1, None):
        with pytest.raises(TypeError, match="jit_compile must be True, False or a torch.compile mode"):
            check_jit_compile(value)
