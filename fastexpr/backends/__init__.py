"""The one registry of backends, for every op: which modules implement it, which of them "auto"
tries first for data on a device, and why a backend cannot run here (probed once, remembered).

Ops: ``measure`` (sampled MLP engine), ``exact`` (exact walker), ``dichotomies``, ``regions``
(region maps), ``taps`` (the per-tap reduction of any torch model) and ``trajectory_length``. A backend is a module with a
``NAME`` and a probe function that raises when it cannot run here (missing package, extension
built without the kernel, no GPU); probing imports and compiles nothing until a backend is first
asked for, so importing fastexpr never builds, compiles or touches CUDA. The cache is a plain
dict, so ``torch.compile`` can trace a lookup.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    """A backend of one op: its module, the module's probe function, and the device type that the
    op's tensors must be on (None: it takes host arrays whatever the device; "any": any device)."""

    module: str
    probe: str = "probe"
    tensors_on: str | None = None


REGISTRY: dict[str, dict[str, Entry]] = {
    "measure": {
        "cpu": Entry("fastexpr.backends.cpu"),            # fused C++/OpenMP kernel (fastexpr._C)
        "cuda": Entry("fastexpr.backends.cuda"),          # fused CUDA kernel, NVRTC through CuPy
        "numba": Entry("fastexpr.backends.numba_cpu"),    # the same algorithm in numba
        "torch": Entry("fastexpr.backends.torch_ref"),    # pure PyTorch: baseline and fallback
    },
    "exact": {
        "cpu": Entry("fastexpr.backends.cpu", "probe_exact"),
        "numba": Entry("fastexpr.backends.numba_cpu"),
        "cuda": Entry("fastexpr.backends.cuda"),
    },
    "dichotomies": {
        "cpu": Entry("fastexpr.backends.cpu", "probe_dichotomies"),
        "numba": Entry("fastexpr.backends.numba_dichotomies"),
    },
    "regions": {
        "cpu": Entry("fastexpr.backends.cpu", "probe_regions"),
        "numpy": Entry("fastexpr.backends.numpy_regions"),
    },
    "taps": {
        "cpu": Entry("fastexpr.backends.taps_cpu", tensors_on="cpu"),
        "numba": Entry("fastexpr.backends.taps_numba", tensors_on="cpu"),
        "cuda": Entry("fastexpr.backends.taps_cuda", tensors_on="cuda"),
        "torch": Entry("fastexpr.backends.taps_torch", tensors_on="any"),
    },
    "trajectory_length": {
        "cpu": Entry("fastexpr.backends.cpu", "probe_traj_length", tensors_on="cpu"),
        "numba": Entry("fastexpr.backends.numba_cpu", tensors_on="cpu"),
        "cuda": Entry("fastexpr.backends.cuda", "probe_runtime", tensors_on="cuda"),
        "torch": Entry("fastexpr.backends.torch_ref", tensors_on="any"),
    },
}

# What "auto" tries, fastest first, by the device type of the data; other device types (mps, ...)
# get the backends that run on "any" device. The exact walker and dichotomies stay on the CPU:
# the GPU walker is 8-10x slower than 16 CPU cores (bench/RESULTS.md section 5), and
# dichotomies and region maps have no GPU kernel.
AUTO_ORDER: dict[str, dict[str, tuple[str, ...]]] = {
    "measure": {"cpu": ("cpu", "numba", "torch"), "cuda": ("cuda", "torch")},
    "exact": {"cpu": ("cpu", "numba"), "cuda": ("cpu", "numba")},
    "dichotomies": {"cpu": ("cpu", "numba"), "cuda": ("cpu", "numba")},
    "regions": {"cpu": ("cpu", "numpy"), "cuda": ("cpu", "numpy")},
    "taps": {"cpu": ("cpu", "numba", "torch"), "cuda": ("cuda", "torch")},
    "trajectory_length": {"cpu": ("cpu", "numba", "torch"), "cuda": ("cuda", "torch")},
}

#: How messages name each op's backends.
KIND = {"measure": "backend", "exact": "exact-counting backend", "dichotomies": "dichotomies backend",
        "regions": "region-map backend",
        "taps": "taps backend", "trajectory_length": "trajectory-length backend"}


class BackendUnavailable(RuntimeError):
    """A backend that cannot run here; the message says why."""


class WrongDevice(BackendUnavailable, ValueError):
    """A backend named for data on a device it does not run on (also a ValueError: bad input)."""


_LOADED: dict[tuple[str, str], tuple[object, str | None]] = {}


def load(name: str, op: str = "measure"):
    """``(module, None)`` for a backend of ``op`` that runs here, else ``(None, reason)``; probed once."""
    entry = _entry(name, op)
    key = (entry.module, entry.probe)
    if key not in _LOADED:
        try:
            module = importlib.import_module(entry.module)
            getattr(module, entry.probe)()
            _LOADED[key] = (module, None)
        except Exception as exc:  # noqa: BLE001 - any failure to load is a reason to report
            _LOADED[key] = (None, f"{type(exc).__name__}: {exc}")
    return _LOADED[key]


def _check_op(op: str) -> str:
    if not isinstance(op, str) or op not in REGISTRY:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(REGISTRY)}")
    return op


def _entry(name: str, op: str) -> Entry:
    _check_op(op)
    if not isinstance(name, str):
        raise TypeError(f"a {KIND[op]} is named by a string ('auto' or one of {sorted(REGISTRY[op])}), "
                        f"got {name!r}")
    if name not in REGISTRY[op]:
        raise ValueError(f"unknown {KIND[op]} {name!r}; expected 'auto' or one of {sorted(REGISTRY[op])}")
    return REGISTRY[op][name]


def _device_type(device) -> str:
    """"cpu", "cuda", ... of a device given as a string ("cuda:1") or a torch.device."""
    return str(getattr(device, "type", device)).split(":")[0]


def unavailable_reason(name: str, device="cpu", op: str = "measure") -> str | None:
    """Why backend ``name`` of ``op`` cannot run on data on ``device`` here, or None if it can."""
    entry = _entry(name, op)
    where = _device_type(device)
    if entry.tensors_on not in (None, "any", where):
        return f"{name!r} runs on {entry.tensors_on} tensors only, not {where}"
    return load(name, op)[1]


def get(name: str, op: str = "measure", device=None):
    """The module of a named backend; ``ValueError`` if unknown, ``WrongDevice`` if it does not
    run on ``device``'s tensors, ``BackendUnavailable`` if it cannot run here."""
    entry = _entry(name, op)
    if device is not None and entry.tensors_on not in (None, "any", _device_type(device)):
        raise WrongDevice(f"{KIND[op]} {name!r} runs on {entry.tensors_on} tensors only, not "
                          f"{_device_type(device)}; use backend='auto'")
    module, reason = load(name, op)
    if module is None:
        raise BackendUnavailable(f"{KIND[op]} {name!r} is not available here: {reason}")
    return module


def auto_order(op: str, device) -> tuple[str, ...]:
    """The backends "auto" tries for ``op`` on data on ``device``, fastest first."""
    anywhere = tuple(n for n, e in REGISTRY[op].items() if e.tensors_on == "any")
    return AUTO_ORDER[op].get(_device_type(device), anywhere)


def resolve(name: str, device="cpu", plans=None, op: str = "measure"):
    """The backend module for ``name`` ("auto" picks the fastest that runs here on ``device``'s data
    and takes ``plans``: a backend's ``unavailable_reason(plans)`` may decline them, e.g. cuda a
    layer wider than its kernels or a GPU with too little shared memory)."""
    if name != "auto":
        return get(name, op, device)
    reasons = {}
    for candidate in auto_order(op, device):
        module, reason = load(candidate, op)
        if module is not None and plans is not None and hasattr(module, "unavailable_reason"):
            reason = module.unavailable_reason(plans)
            module = module if reason is None else None
        if module is not None:
            return module
        reasons[candidate] = reason
    raise BackendUnavailable(f"no {KIND[op]} available for device {device!r}: {reasons}")


def available_backends(op: str = "measure") -> list[str]:
    """Names of ``op``'s backends that work here (on some device), fastest first."""
    order = sorted(REGISTRY[_check_op(op)], key=("cuda", "cpu", "numba", "numpy", "torch").index)
    return [name for name in order if load(name, op)[0] is not None]


def missing_backends(op: str = "measure") -> dict[str, str]:
    """For each of ``op``'s backends that does not work here, the reason."""
    return {name: load(name, op)[1] for name in REGISTRY[_check_op(op)] if load(name, op)[0] is None}
