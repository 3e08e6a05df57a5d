"""Input conversion shared by networks and trajectories: anything array-like to a checked float64 NumPy array."""
from __future__ import annotations

import numpy as np

from ._checks import is_real


def device_of(x) -> str:
    """``"cuda:N"`` for torch CUDA tensors and CuPy arrays, else ``"cpu"``."""
    dev = getattr(x, "device", None)
    if dev is None:
        return "cpu"
    if type(x).__module__.startswith("cupy"):
        return f"cuda:{int(dev.id)}"
    kind = getattr(dev, "type", None)
    if kind == "cuda":
        return f"cuda:{dev.index or 0}"
    return "cpu"


def to_float64(x, name: str, ndim: int | None = None) -> np.ndarray:
    """A finite, C-contiguous float64 copy-or-view of ``x``.

    Accepts NumPy arrays, sequences, torch tensors (any device with data; detached) and CuPy
    arrays. float16/bfloat16/float32 are widened exactly; sequences of Python ints and floats
    are converted. Integer, boolean, complex, string, object and extended-precision (long
    double) arrays, and sequences holding bools, strings or None, raise ``TypeError``; NaN or
    inf raise ``ValueError``. Non-contiguous and read-only inputs are copied, never modified.
    """
    if type(x).__module__.startswith("torch"):
        import torch

        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must hold floating-point numbers, got torch dtype {x.dtype}")
        if x.device.type == "meta":
            raise ValueError(f"{name} is a tensor on the 'meta' device, which holds no values")
        x = x.detach().to("cpu", torch.float64).numpy()
    elif type(x).__module__.startswith("cupy"):
        x = x.get()
    if isinstance(x, (list, tuple)):
        x = _from_sequence(x, name)
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real floating-point numbers, got dtype {arr.dtype}")
    if arr.dtype.itemsize > 8:
        raise TypeError(f"{name} has dtype {arr.dtype}, which float64 cannot hold exactly; convert it with "
                        ".astype(numpy.float64) if the rounding is acceptable")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _from_sequence(x, name: str) -> np.ndarray:
    """A list or tuple of real numbers (Python or NumPy ints and floats, nested) as float64."""
    try:
        arr = np.asarray(x)
    except ValueError as exc:  # ragged
        raise ValueError(f"{name} must be a rectangular array of numbers ({exc})") from None
    if arr.dtype == object:
        flat = arr.ravel()
        if any(v is None for v in flat):
            raise TypeError(f"{name} contains None")
        bad = next((v for v in flat if not is_real(v)), None)
        if bad is not None:
            raise TypeError(f"{name} must hold real numbers, got an element of type {type(bad).__name__}")
        try:
            return arr.astype(np.float64)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"{name} must be an array of real numbers ({exc})") from None
    if arr.dtype.kind in "iuf" and any(isinstance(v, (bool, np.bool_)) for v in np.array(x, dtype=object).ravel()):
        raise TypeError(f"{name} must hold real numbers, got a bool among them")  # numpy made it a number
    if arr.dtype.kind in "iu":
        return arr.astype(np.float64)
    if arr.dtype.kind != "f":
        kind = {"b": "bools", "U": "strings", "S": "strings", "c": "complex numbers"}.get(arr.dtype.kind, arr.dtype)
        raise TypeError(f"{name} must hold real numbers, got {kind}")
    return arr
