"""What counts as an integer or a real number in an argument, decided in one place.

A bool is neither (``True`` is no width), a float is no integer (a depth of 2.5 is refused, never
truncated), and an integer is whatever Python's own ``range`` takes (``operator.index``): ints,
NumPy integers, 0-d integer tensors.
"""
from __future__ import annotations

import numbers
import operator

import numpy as np


def is_integer(value) -> bool:
    """True for an int, a NumPy integer or anything else with ``__index__``; never for a bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    try:
        operator.index(value)
    except TypeError:
        return False
    return True


def flag(value, name: str, none_ok: bool = False) -> bool | None:
    """``value`` as a bool: True or False (Python or NumPy), or None where ``none_ok``; anything
    else, a truthy string such as "no" included, is a TypeError naming ``name``."""
    if value is None and none_ok:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False{' or None' if none_ok else ''}, got {value!r}")
    return bool(value)


def is_real(value) -> bool:
    """True for an int or a float of Python or NumPy (any ``numbers.Real``); never for a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
