"""taps numba backend: the per-tap reduction of csrc/cpu/taps.cpp, compiled with numba.

Rows (samples) run in parallel (``prange``); each row recomputes its predecessor's codes, so rows
are independent. Pattern keys are precomputed per tap (``fastexpr.plan.pattern_keys``) and cached.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, prange

from .. import _threads
from ..plan import SAFE_SUM_HI, SAFE_SUM_LO, pattern_keys

NAME = "numba"
STEP, CLAMP, ARGMAX = 0, 1, 2  # fastexpr.taps


def probe() -> None:
    """Raise ImportError if numba cannot be imported; compiles nothing."""
    import numba  # noqa: F401


@functools.lru_cache(maxsize=64)
def _keys(layer: int, width: int):
    return pattern_keys(layer, width)


@njit(inline="always")
def _code(kind, v, lo, hi):
    """A pre-activation's region code (fastexpr.taps: STEP, CLAMP, ARGMAX)."""
    if kind == STEP:
        return 1 if v > lo else 0
    if kind == CLAMP:
        return -1 if v < lo else (1 if v > hi else 0)
    return int(v)


@njit(parallel=True, cache=True)
def _reduce(z, h, kind, lo, hi, kp, km, changed, hashes):
    b, f = z.shape
    transitions = 0
    pattern_changes = 0
    length = 0.0
    bad = 0
    for i in prange(b):
        hsh = np.uint64(0)
        t = 0
        q = 0.0
        nonfinite = 0
        for j in range(f):
            v = z[i, j]
            c = _code(kind, v, lo, hi)
            if c > 0:  # code c > 1 (ARGMAX) adds c times the key
                hsh += kp[j] * np.uint64(c)
            elif c < 0:
                hsh += km[j]
            if not np.isfinite(v):
                nonfinite = 1
            if i > 0:
                cq = _code(kind, z[i - 1, j], lo, hi)
                t += abs(c - cq) if kind != ARGMAX else (1 if c != cq else 0)
                d = np.float64(h[i, j]) - np.float64(h[i - 1, j])
                q += d * d
        hashes[i] = hsh
        bad += nonfinite
        if i > 0:
            changed[i - 1] = t > 0
            transitions += t
            pattern_changes += 1 if t > 0 else 0
            if SAFE_SUM_LO <= q <= SAFE_SUM_HI:
                length += np.sqrt(q)
            else:  # scaled sum: no square under- or overflows (fx::ScaledNorm)
                top = 0.0
                for j in range(f):
                    top = max(top, abs(np.float64(h[i, j]) - np.float64(h[i - 1, j])))
                if top > 0.0 and np.isfinite(top):
                    s = 0.0
                    for j in range(f):
                        e = (np.float64(h[i, j]) - np.float64(h[i - 1, j])) / top
                        s += e * e
                    length += top * np.sqrt(s)
                elif top > 0.0:
                    length += top
    return transitions, pattern_changes, length, bad > 0


def reduce(z, h, kind: int, lo: float, hi: float, layer: int):
    """``(transitions, pattern_changes, changed, hashes, length, nonfinite)`` of one tap (see fastexpr.taps)."""
    import numba

    z, h = z.numpy(), h.numpy()
    kp, km = _keys(layer, z.shape[1])
    changed = np.zeros(max(z.shape[0] - 1, 0), dtype=np.uint8)
    hashes = np.empty(z.shape[0], dtype=np.uint64)
    previous = numba.get_num_threads()
    numba.set_num_threads(min(_threads.current(), numba.config.NUMBA_NUM_THREADS))
    try:
        t, p, length, bad = _reduce(z, h, kind, z.dtype.type(lo), z.dtype.type(hi), kp, km, changed, hashes)
    finally:
        numba.set_num_threads(previous)
    return int(t), int(p), changed, hashes, float(length), bool(bad)
