"""Backend registry: name -> module, loaded lazily; a failed probe is remembered with its reason.

Importing fastexpr never builds, compiles or touches CUDA: a backend module is imported and
probed the first time it is asked for.
"""
from __future__ import annotations

import functools
import importlib

MODULES = {
    "cpu": "fastexpr.backends.cpu",        # fused C++/OpenMP kernel (fastexpr._C)
    "cuda": "fastexpr.backends.cuda",      # fused CUDA kernel, NVRTC through CuPy
    "numba": "fastexpr.backends.numba_cpu",  # the same algorithm in numba
    "torch": "fastexpr.backends.torch_ref",  # pure PyTorch: baseline and fallback
}

# What "auto" tries, fastest first, by where the data lives.
AUTO_ORDER = {"cpu": ("cpu", "numba", "torch"), "cuda": ("cuda", "torch")}


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here; the message says why."""


@functools.lru_cache(maxsize=None)
def _load(name: str):
    """The backend module, or the reason it cannot be used (cached: a failure fails fast)."""
    try:
        module = importlib.import_module(MODULES[name])
        module.probe()
    except Exception as exc:  # noqa: BLE001 - any failure to load is a reason to report
        return None, f"{type(exc).__name__}: {exc}"
    return module, None


def get(name: str):
    """The module of a named backend; ``ValueError`` if unknown, ``BackendUnavailable`` if missing."""
    if name not in MODULES:
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of {sorted(MODULES)}")
    module, reason = _load(name)
    if module is None:
        raise BackendUnavailable(f"backend {name!r} is not available here: {reason}")
    return module


def resolve(name: str, device: str, plans=None):
    """The backend module for ``name`` ("auto" picks the fastest available for ``device`` that
    takes ``plans``: a backend's ``unavailable_reason(plans)`` may decline them, e.g. cuda a layer
    wider than its kernels or a GPU with too little shared memory)."""
    if name != "auto":
        return get(name)
    reasons = {}
    for candidate in AUTO_ORDER["cuda" if device.startswith("cuda") else "cpu"]:
        module, reason = _load(candidate)
        if module is not None and plans is not None and hasattr(module, "unavailable_reason"):
            reason = module.unavailable_reason(plans)
            module = module if reason is None else None
        if module is not None:
            return module
        reasons[candidate] = reason
    raise BackendUnavailable(f"no backend available for device {device!r}: {reasons}")


def available_backends() -> list[str]:
    """Names of the backends that work here, fastest first."""
    return [name for name in ("cuda", "cpu", "numba", "torch") if _load(name)[0] is not None]


def missing_backends() -> dict[str, str]:
    """For each backend that does not work here, the reason."""
    return {name: _load(name)[1] for name in MODULES if _load(name)[0] is None}
