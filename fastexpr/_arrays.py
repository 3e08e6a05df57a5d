"""Input conversion shared by networks and trajectories: anything array-like to a checked float64 NumPy array."""
from __future__ import annotations

import numpy as np


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

    Accepts NumPy arrays, sequences, torch tensors (any device; detached) and CuPy arrays.
    float16/bfloat16/float32 are widened exactly; lists of Python numbers are converted;
    integer, boolean, complex and object arrays raise ``TypeError``; NaN or inf raise ``ValueError``. Non-contiguous and read-only inputs
    are copied, never modified.
    """
    if type(x).__module__.startswith("torch"):
        import torch

        if not torch.is_floating_point(x):
            raise TypeError(f"{name} must hold floating-point numbers, got torch dtype {x.dtype}")
        x = x.detach().to("cpu", torch.float64).numpy()
    elif type(x).__module__.startswith("cupy"):
        x = x.get()
    if isinstance(x, (list, tuple)):
        try:
            x = np.asarray(x, dtype=np.float64)  # plain Python numbers: any real number is fine
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be an array of real numbers ({exc})") from None
    arr = np.asarray(x)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"{name} must hold real floating-point numbers, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr
