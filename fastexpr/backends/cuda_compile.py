"""Run-time compilation of ``csrc/cuda/*.cu`` through CuPy (NVRTC), cached per process and on disk.

CuPy caches compiled modules on disk itself (``CUPY_CACHE_DIR`` overrides where), keyed by
the source text and options, so the key covers everything that changes the code. A
``#line`` directive makes compiler errors name the real file and line.
"""
from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path


def source_dir():
    """The directory holding ``cuda/`` and ``common/``: the installed ``fastexpr._csrc``, or the
    checkout's ``csrc/`` when fastexpr runs from a source tree that was never installed."""
    try:
        return resources.files("fastexpr._csrc")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "csrc"


@functools.lru_cache(maxsize=None)
def load_module(filename: str, options: tuple[str, ...] = ()):
    """Compile ``csrc/cuda/<filename>`` into a ``cupy.RawModule`` (lazily imports CuPy)."""
    import cupy

    root = source_dir()
    path = root / "cuda" / filename
    code = f'#line 1 "{path}"\n' + path.read_text()
    opts = ("-std=c++17", f"-I{root / 'common'}", f"-I{root / 'cuda'}") + tuple(options)
    return cupy.RawModule(code=code, options=opts)


def get_function(filename: str, name: str, options: tuple[str, ...] = ()):
    """An ``extern "C"`` kernel of ``csrc/cuda/<filename>``."""
    return load_module(filename, tuple(options)).get_function(name)
