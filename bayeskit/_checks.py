"""The project's only validators: of arguments (counts, step sizes, fractions) and of data.

Every validator takes the argument's name first and raises a ``ValueError``
that names it. The argument validators return the value normalised
(``int`` or ``float``). The data validators (used by
:meth:`bayeskit.Target.from_pyro` and every model family's ``fit()``) name
the first offending index, so that a user with 10^5 rows can find the bad
one without bisecting; they run once, when data enter the library, never per
step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping

import torch

__all__ = ["positive_int", "positive", "fraction", "check_finite", "check_series", "check_same_length", "check_support",
           "first_bad"]


# ----------------------------------------------------------------------------- arguments
def positive_int(name: str, value, *, minimum: int = 1, allow_none: bool = False):
    """``value`` as an ``int`` >= ``minimum`` (None passes through when ``allow_none``); bools are refused."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def positive(name: str, value) -> float:
    """``value`` as a positive finite ``float``; bools are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def fraction(name: str, value, *, include_one: bool = False) -> float:
    """``value`` as a ``float`` in (0, 1), or in (0, 1] with ``include_one``; bools are refused."""
    inside = isinstance(value, numbers.Real) and 0 < value and (value <= 1 if include_one else value < 1)
    if isinstance(value, bool) or not inside:
        raise ValueError(f"{name} must lie in (0, 1{']' if include_one else ')'}, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------- data


def _format_index(index: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, index)) + ("," if len(index) == 1 else "") + ")"


def _format_value(value: torch.Tensor) -> str:
    value = value.detach().cpu()
    if value.numel() == 1:
        return repr(value.item())
    return str(value.tolist())


def first_bad(ok: torch.Tensor) -> tuple[int, ...] | None:
    """Index of the first ``False`` in the boolean tensor ``ok`` (row-major order), or None if all hold."""
    ok = torch.as_tensor(ok)
    if bool(ok.all()):
        return None
    flat = int(torch.nonzero(~ok.reshape(-1))[0])
    # unravel by hand: a 0-dim tensor has the index ()
    index = []
    for size in reversed(ok.shape):
        index.append(flat % size)
        flat //= size
    return tuple(reversed(index))


def check_finite(name: str, value, *, what: str = "argument") -> None:
    """Refuse NaN or infinite entries of a floating-point tensor.

    Parameters
    ----------
    name : str
        The argument's name, used in the message (e.g. ``"x"`` or ``"groups['id']"``).
    value : object
        Anything; only floating-point and complex tensors are checked (integer
        and boolean tensors cannot hold NaN).
    what : str
        What ``name`` is, for the message ("argument", "observed site").

    Raises
    ------
    ValueError
        Naming ``name``, how many entries are bad, and the first one's index and value.
    """
    if not torch.is_tensor(value) or not (value.is_floating_point() or value.is_complex()):
        return
    finite = torch.isfinite(value)
    index = first_bad(finite)
    if index is None:
        return
    count = int((~finite).sum())
    raise ValueError(
        f"{what} {name!r} has {count} non-finite value(s) (NaN or inf); the first is "
        f"{_format_value(value[index])} at index {_format_index(index)}. Drop or impute them; to leave "
        "observations out of the likelihood, fill them with any finite value and pass obs_mask")


def check_series(name: str, y, obs_dim: int) -> torch.Tensor:
    """A time series ``(T, obs_dim)`` with T >= 1 and finite entries; ``(T,)`` is ``(T, 1)`` if obs_dim is 1."""
    if not torch.is_tensor(y):
        raise TypeError(f"{name} must be a torch.Tensor of shape (T, {obs_dim}), got {type(y).__name__}")
    if y.dim() == 1 and obs_dim == 1:
        y = y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[-1] != obs_dim or y.shape[0] < 1:
        raise ValueError(f"{name} must have shape (T, {obs_dim}) with T >= 1, got {tuple(y.shape)}")
    check_finite(name, y)  # the first index is (time, coordinate)
    return y


def check_same_length(tensors: Mapping[str, torch.Tensor], *, dim: int = 0, what: str = "rows") -> None:
    """Refuse tensors that should share a length along ``dim`` but do not.

    Parameters
    ----------
    tensors : mapping of str to Tensor
        Argument name to tensor, the first entry being the reference.
    dim : int
        The shared dimension (0: data rows).
    what : str
        What the dimension counts, for the message.

    Raises
    ------
    ValueError
        Naming the reference argument and the first that disagrees, with both lengths.
    """
    items = [(name, t) for name, t in tensors.items() if t is not None]
    if not items:
        return
    ref_name, ref = items[0]
    for name, tensor in items:
        if tensor.dim() <= dim or ref.dim() <= dim:
            raise ValueError(f"{name!r} and {ref_name!r} need a dimension {dim} ({what}); got shapes "
                             f"{tuple(tensor.shape)} and {tuple(ref.shape)}")
        if tensor.shape[dim] != ref.shape[dim]:
            raise ValueError(f"{ref_name!r} and {name!r} must have the same number of {what}: {ref_name!r} has "
                             f"{ref.shape[dim]}, {name!r} has {tensor.shape[dim]}")


def check_support(name: str, value: torch.Tensor, support, *, mask=None, what: str = "observed site",
                  distribution: str = "", argument: str | None = None) -> None:
    """Refuse values outside a distribution's support (a 2 for a Bernoulli).

    Parameters
    ----------
    name : str
        The site's or argument's name.
    value : Tensor
        The values.
    support : torch.distributions.constraints.Constraint
        The support; ``support.check(value)`` gives one bool per batch element.
    mask : Tensor, optional
        Entries where the mask is False are not checked (Pyro's ``obs_mask`` / ``poutine.mask``).
    what, distribution : str
        For the message.
    argument : str, optional
        The model argument the values come from, for the message.

    Raises
    ------
    ValueError
        Naming ``name``, the support, and the first bad value and its index.
    """
    if mask is False:
        return
    inside = torch.as_tensor(support.check(value))
    if torch.is_tensor(mask):
        inside = inside | ~mask.to(torch.bool)
    index = first_bad(inside)
    if index is None:
        return
    count = int((~inside).sum())
    try:
        shown = _format_value(value[index])
    except IndexError:  # a mask broadcast the check beyond the value's own shape
        shown = "a value"
    of = f" of {distribution}" if distribution else ""
    example = f" ({distribution} observations must be 0 or 1)" if distribution == "Bernoulli" else ""
    raise ValueError(
        f"{what} {name!r}{'' if argument is None else f' (argument {argument!r})'} has {count} value(s) "
        f"outside the support{of} ({support}); the first is "
        f"{shown} at index {_format_index(index)}. Recode the data{example} "
        "or choose a likelihood whose support holds them")
