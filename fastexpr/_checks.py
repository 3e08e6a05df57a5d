"""What counts as an integer, a real number or a flag in an argument, decided in one place.

A bool is neither integer nor real (``True`` is no width), a float is no integer (a depth of 2.5
is refused, never truncated), an integer is whatever Python's own ``range`` takes
(``operator.index``: ints, NumPy integers, 0-d integer arrays and tensors), and a flag is True or
False, never a truthy string.
"""
from __future__ import annotations

import math
import numbers
import operator

import numpy as np


def is_integer(value) -> bool:
    """True for an int, a NumPy integer or anything else with ``__index__``; never for a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if _array_like(value) and (value.shape != () or "bool" in str(value.dtype)):
        return False  # arrays and tensors: one value (shape ()), not a bool
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def flag(value, name: str, none_ok: bool = False) -> bool | None:
    """``value`` as a bool: True or False (Python, NumPy or a 0-d array or tensor of them), 0 or 1,
    or None where ``none_ok``; anything else, a truthy string such as "no" included, is a
    TypeError naming ``name``."""
    if (value is None and none_ok) or isinstance(value, (bool, np.bool_)):  # first: torch.compile traces these
        return None if value is None else bool(value)
    if type(value) is int and value in (0, 1):
        return bool(value)
    if (_zero_dim(value) and str(value.dtype) in ("bool", "torch.bool")) or (is_integer(value) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False{' or None' if none_ok else ''}, got {value!r}")


def is_real(value) -> bool:
    """True for an int or a float of Python or NumPy (any ``numbers.Real``) and for a 0-d integer or
    floating-point array or tensor; never for a bool. ``float(value)`` then works."""
    if isinstance(value, (bool, np.bool_, np.timedelta64)):  # numpy registers timedelta64 as an integer type
        return False
    if isinstance(value, numbers.Real):
        return True
    return _zero_dim(value) and str(value.dtype).replace("torch.", "").startswith(("float", "bfloat", "int", "uint"))


def as_float(value) -> float:
    """``float(value)`` of a real ``value`` (is_real), inf where it is an integer beyond float64."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _array_like(value) -> bool:
    """A NumPy array or scalar, or a torch tensor."""
    return type(value).__module__.startswith(("numpy", "torch")) and hasattr(value, "shape")


def _zero_dim(value) -> bool:
    """A NumPy array or torch tensor of one value (shape ``()``)."""
    return _array_like(value) and value.shape == ()
