"""``jit_compile``: the one way bayeskit compiles a step, with ``torch.compile`` and a fallback.

``jit_compile`` means the same wherever an engine takes it: ``True`` compiles
the engine's step with ``torch.compile`` (inductor), keeping torch's own
random generator inside the compiled code (inductor's ``fallback_random``),
so that a seed gives the eager path's draws up to float rounding; a string is
a ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs on a GPU; its
random draws are inductor's and differ from the eager path's); ``False``
runs eagerly.  Where compiling fails (no C++ compiler, an operation the
compiler cannot handle), the step runs uncompiled, with a warning that gives
the reason.
"""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable

import torch

__all__ = ["COMPILE_MODES", "COMPILE_OPTIONS", "CUDA_GRAPH_MODES", "check_jit_compile", "clone_tensors", "compile_step",
           "error_summary"]

#: What ``jit_compile=True`` asks of ``torch.compile``: random draws inside a compiled step (SG-MCMC noise,
#: a particle filter's resampling and moves) stay torch's own generator's, so a seed gives the eager draws.
COMPILE_OPTIONS = {"fallback_random": True}
#: The ``torch.compile`` modes ``jit_compile`` also takes.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: The modes that replay CUDA graphs on a GPU (no effect on a CPU).
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")


def check_jit_compile(value):
    """``value`` if it is True, False or one of :data:`COMPILE_MODES`; a TypeError naming the argument otherwise."""
    if isinstance(value, bool) or value in COMPILE_MODES:
        return value
    raise TypeError(f"jit_compile must be True, False or a torch.compile mode ({', '.join(COMPILE_MODES)}), "
                    f"got {value!r}")


def compile_step(function: Callable, mode=True, *, dynamic: bool | None = False) -> Callable:
    """``function`` compiled whole (``fullgraph=True``), as ``jit_compile=mode`` asks.

    ``dynamic=False`` compiles one specialised version per input shape
    (engines call with a few fixed shapes); ``None`` lets torch mark what
    changes between calls as dynamic (a time index that grows each step).
    If a call fails to compile, the plain function answers it and every later
    call, with a warning: a genuine error in the function then raises from
    the plain call, as it would uncompiled.
    """
    settings = {"mode": mode} if isinstance(mode, str) else {"options": COMPILE_OPTIONS}
    compiled = torch.compile(_with_own_code(function), fullgraph=True, dynamic=dynamic, **settings)
    if mode in CUDA_GRAPH_MODES:
        compiled = _outputs_kept(compiled)
    current = {"function": compiled}

    def call(*args):
        if current["function"] is function:
            return function(*args)
        try:
            return compiled(*args)
        except Exception as error:  # noqa: BLE001 - a compiler's failure; the plain function decides
            result = function(*args)
            current["function"] = function
            warnings.warn(f"jit_compile: torch.compile failed ({error_summary(error)}); running the step "
                          "uncompiled, which is slower", stacklevel=3)
            return result
    return call


def _with_own_code(function: Callable) -> Callable:
    """``function`` with a code object of its own (a bound method: its function's), same closure and globals.

    Why: torch.compile keeps its compiled versions per code object, at most
    ``recompile_limit`` (8) of them, and every target's step is the same
    Python function with other closure values (another model's graph).
    Without a copy, the ninth ``jit_compile`` run in a process hit the limit
    and ran uncompiled.
    """
    if isinstance(function, types.MethodType):
        return types.MethodType(_with_own_code(function.__func__), function.__self__)
    if not isinstance(function, types.FunctionType):
        return function
    copy = types.FunctionType(function.__code__.replace(), function.__globals__, function.__name__,
                              function.__defaults__, function.__closure__)
    copy.__kwdefaults__, copy.__dict__ = function.__kwdefaults__, dict(function.__dict__)
    copy.__qualname__, copy.__doc__, copy.__module__ = function.__qualname__, function.__doc__, function.__module__
    return copy


def _outputs_kept(compiled: Callable) -> Callable:
    """A CUDA-graph function whose outputs survive the next call.

    A replayed CUDA graph writes its outputs into the same memory at every
    call, while engines keep earlier steps' tensors (kept draws, the last
    finite state): each call is marked as a new step and its tensors copied
    out (one copy of the state per step, on the device, no host sync).
    """
    def call(*args):
        torch.compiler.cudagraph_mark_step_begin()
        return clone_tensors(compiled(*args))
    return call


def clone_tensors(value, *, detach: bool = False):
    """``value`` with every tensor inside dicts, lists and tuples cloned (and detached from autograd if asked)."""
    if torch.is_tensor(value):
        return (value.detach() if detach else value).clone()
    if isinstance(value, dict):
        return {key: clone_tensors(item, detach=detach) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(clone_tensors(item, detach=detach) for item in value)
    return value


def error_summary(error: BaseException) -> str:
    """``"TypeName: first line of the message"``, for warnings that say why a fast path was not taken."""
    message = str(error)
    return f"{type(error).__name__}: {message.splitlines()[0] if message else ''}"
