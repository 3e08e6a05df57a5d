"""numba backend: the fused tile algorithm of the C++ kernel, compiled with numba.

Samples are cut into tiles of ``TILE`` consecutive pairs; a tile evaluates its ``TILE + 1``
samples (the first one is the last sample of the previous tile), so every pair is counted
exactly once and tiles are independent. Inside a tile activations are held feature-major,
``(width, samples)``, so that every epilogue loop (region codes, transitions, hash,
lengths) runs along the samples and vectorises without reassociating floating-point sums.
Workers (``prange``, as many as ``measure``'s ``threads`` or numba's own count) take tiles
round-robin and write per-tile partials that are reduced after the parallel loop. ``run`` walks the range in
batches of at most ``BATCH`` samples, so the work memory does not grow with N; only the
run-start hashes do.

The kernels are compiled on first use for the plan's dtype (float32 or float64) and cached
on disk (``cache=True``); see bench/notes_numba_torch.md for the first-call time.
"""
from __future__ import annotations

import contextlib
import threading
import types

import numba
import numpy as np
from numba import njit, prange

from .. import _threads
from ..plan import (ARC, CIRCLE, HARDTANH, IDENTITY, LINE, POLYLINE, RELU, Partials, check_forward_pass,
                    distinct_sorted, pattern_keys)

from . import numba_exact

NAME = "numba"

TILE = 256             # pairs per tile (fewer for very wide layers: WORKSPACE_BYTES)
#: Bytes of tile buffers per worker the tile length aims at (two (width, tile) arrays).
WORKSPACE_BYTES = 64 << 20
#: Most samples per parallel region: every region waits for all threads, which is slow when the
#: cores are shared with other processes, so ``run`` makes as few as memory allows (the per-tile
#: outputs, about 10 bytes per sample, are held until the region ends).
BATCH = 1 << 20
#: numba's workqueue threading layer aborts the process when two threads launch parallel
#: regions at once: launches are serialised unless the layer is known to be thread-safe.
_LAUNCH_LOCK = threading.Lock()


def probe() -> None:
    """Raise ImportError if numba cannot be imported; compiles nothing."""
    import numba  # noqa: F401


# Only multiply-add contraction (as the C++ kernel gets from gcc): no reassociation, no
# assumptions about NaN/inf. Measured +19% at width 128 (bench/notes_numba_torch.md).
FASTMATH = {"contract"}
_jit = njit(cache=True, fastmath=FASTMATH)


@_jit
def _polyline_segment(i, n_points, n_vertices):
    """Segment and fraction of POLYLINE sample i, in exact integer arithmetic (semantics.h)."""
    m, a = n_points - 1, n_vertices - 1
    q = np.int64(np.float64(i) * np.float64(a) / np.float64(m))  # within 1 of floor(i a / m)
    r = np.int64(np.uint64(i) * np.uint64(a) - np.uint64(q) * np.uint64(m))  # exact: wraps back into range
    while r < 0:
        r += m
        q -= 1
    while r >= m:
        r -= m
        q += 1
    if q > n_vertices - 2:
        return n_vertices - 2, 1.0
    return q, np.float64(r) / np.float64(m)


@_jit
def _coefficients(kind, a, n, n_points, n_vertices, c0, c1, seg):
    """Trajectory coefficients of samples a .. a+n-1 in float64 (semantics.h)."""
    for p in range(n):
        t = (a + p) / (n_points - 1)
        if kind == POLYLINE:
            seg[p], c1[p] = _polyline_segment(a + p, n_points, n_vertices)
            c0[p] = 1.0 - c1[p]
        elif kind == LINE:  # over x0 and x1 - x0 (plan.py)
            c0[p] = 1.0
            c1[p] = t
        elif kind == ARC:
            c0[p] = np.cos(0.5 * np.pi * t)
            c1[p] = np.sin(0.5 * np.pi * t)
        else:  # CIRCLE
            c0[p] = np.cos(2.0 * np.pi * t)
            c1[p] = np.sin(2.0 * np.pi * t)


@_jit
def _scaled_norm(x, n):
    """sqrt(sum x[:n]^2) with a running scale, so that no square under- or overflows (semantics.h)."""
    scale, ssq = 0.0, 1.0
    for k in range(n):
        v = abs(x[k])
        if v == 0.0:
            continue
        if scale < v:
            ssq = 1.0 + ssq * (scale / v) * (scale / v)
            scale = v
        else:
            ssq += 1.0 if v == scale else (v / scale) * (v / scale)  # inf twice: inf, not NaN
    return scale * np.sqrt(ssq)


@_jit
def _two_vector_step(kind, t0, t1, line_norm, coords):
    """Input step from t0 to t1 in units of the plan's scale: no difference of nearby values (semantics.h)."""
    if kind == LINE:
        return abs(t1 - t0) * line_norm
    w = 0.5 * np.pi if kind == ARC else 2.0 * np.pi
    a0, a1 = w * t0, w * t1
    a = 0.5 * (a0 + a1)
    s, c = np.sin(a), np.cos(a)
    return 2.0 * abs(np.sin(0.5 * (a1 - a0))) * np.hypot(s * coords[0, 0] - c * coords[0, 1],
                                                          s * coords[1, 0] - c * coords[1, 1])


@_jit
def _input_length(kind, a, n, n_points, c0, c1, seg, scale, line_norm, coords, vertices, seg_len, step):
    """Sum of the input trajectory's segment lengths over the tile's pairs (float64); ``step`` is scratch."""
    total = 0.0
    for p in range(1, n):
        if kind != POLYLINE:
            total += _two_vector_step(kind, (a + p - 1) / (n_points - 1), (a + p) / (n_points - 1), line_norm, coords)
        elif seg[p - 1] == seg[p]:
            total += abs(c1[p] - c1[p - 1]) * seg_len[seg[p]]
        else:
            j0, j1 = seg[p - 1], seg[p]
            for k in range(vertices.shape[1]):
                step[k] = (c0[p] * vertices[j1, k] + c1[p] * vertices[j1 + 1, k]
                           - (c0[p - 1] * vertices[j0, k] + c1[p - 1] * vertices[j0 + 1, k]))
            total += _scaled_norm(step, vertices.shape[1])
    return total * scale


@_jit
def _first_layer(kind, n, c0, c1, seg, proj, bias1, z):
    """z[j, p] = c0[p] proj[s, j] + c1[p] proj[s + 1, j] + bias1[j] in float64, cast to z's dtype.

    s = 0 for the two-vector kinds, the sample's segment for POLYLINE.
    """
    for j in range(z.shape[0]):
        b = bias1[j]
        row = z[j]
        if kind == POLYLINE:
            for p in range(n):
                row[p] = c0[p] * proj[seg[p], j] + c1[p] * proj[seg[p] + 1, j] + b
        else:
            v0, v1 = proj[0, j], proj[1, j]
            for p in range(n):
                row[p] = c0[p] * v0 + c1[p] * v1 + b


@_jit
def _hidden_layer(w, b, h, z, n):
    """z[:, :n] = w @ h[:, :n] + b in the compute dtype, summed left to right: b + w[i, 0] h[0] + ...

    Explicit loops along the samples (vectorised), four output rows and four inputs at a time,
    so each loaded sample vector feeds sixteen multiply-adds. (Numba's ``np.dot`` calls a
    multithreaded BLAS that oversubscribes the cores inside ``prange``; see the notes.)
    """
    n_out, n_in = w.shape
    k4 = n_in - n_in % 4
    for i in range(0, n_out - n_out % 4, 4):
        z0, z1, z2, z3 = z[i], z[i + 1], z[i + 2], z[i + 3]
        z0[:n], z1[:n], z2[:n], z3[:n] = b[i], b[i + 1], b[i + 2], b[i + 3]
        for k in range(0, k4, 4):
            h0, h1, h2, h3 = h[k], h[k + 1], h[k + 2], h[k + 3]
            a00, a01, a02, a03 = w[i, k], w[i, k + 1], w[i, k + 2], w[i, k + 3]
            a10, a11, a12, a13 = w[i + 1, k], w[i + 1, k + 1], w[i + 1, k + 2], w[i + 1, k + 3]
            a20, a21, a22, a23 = w[i + 2, k], w[i + 2, k + 1], w[i + 2, k + 2], w[i + 2, k + 3]
            a30, a31, a32, a33 = w[i + 3, k], w[i + 3, k + 1], w[i + 3, k + 2], w[i + 3, k + 3]
            for p in range(n):
                x0, x1, x2, x3 = h0[p], h1[p], h2[p], h3[p]
                z0[p] = z0[p] + a00 * x0 + a01 * x1 + a02 * x2 + a03 * x3
                z1[p] = z1[p] + a10 * x0 + a11 * x1 + a12 * x2 + a13 * x3
                z2[p] = z2[p] + a20 * x0 + a21 * x1 + a22 * x2 + a23 * x3
                z3[p] = z3[p] + a30 * x0 + a31 * x1 + a32 * x2 + a33 * x3
        for k in range(k4, n_in):
            _axpy(w[i, k], h[k], z0, n)
            _axpy(w[i + 1, k], h[k], z1, n)
            _axpy(w[i + 2, k], h[k], z2, n)
            _axpy(w[i + 3, k], h[k], z3, n)
    for i in range(n_out - n_out % 4, n_out):
        z[i, :n] = b[i]
        for k in range(n_in):
            _axpy(w[i, k], h[k], z[i], n)


@_jit
def _axpy(a, x, y, n):
    """y[:n] += a x[:n]."""
    for p in range(n):
        y[p] += a * x[p]


@_jit
def _epilogue(act, z, n, kp, km, code, hsh, changed, sq):
    """Codes, transitions, hash, activation and squared steps (compute dtype) of one layer.

    Returns (transitions, pattern changes); ``changed[p]`` flags the pairs whose layer code differs.
    ``sq[p]`` also sums ``z * 0`` over the sample's pre-activations: NaN exactly when one is inf or NaN.
    """
    transitions = 0
    changed[:n] = 0
    sq[:n] = 0.0
    one = z.dtype.type(1.0)
    zero = z.dtype.type(0.0)
    for j in range(z.shape[0]):
        row = z[j]
        for p in range(n):
            sq[p] += row[p] * zero
        if act == RELU:
            for p in range(n):
                code[p] = 1 if row[p] > zero else 0
                row[p] = max(row[p], zero)
        elif act == HARDTANH:
            for p in range(n):
                code[p] = 1 if row[p] > one else (-1 if row[p] < -one else 0)
                row[p] = min(max(row[p], -one), one)
        if act != IDENTITY:
            kpj, kmj = kp[j], km[j]
            for p in range(n):
                hsh[p] += kpj if code[p] > 0 else (kmj if code[p] < 0 else np.uint64(0))
            for p in range(1, n):
                d = np.int64(code[p]) - np.int64(code[p - 1])
                transitions += abs(d)
                changed[p] |= d != 0
        for p in range(1, n):
            dd = row[p] - row[p - 1]
            sq[p] += dd * dd
    pattern_changes = 0
    for p in range(1, n):
        pattern_changes += changed[p]
    return transitions, pattern_changes


@_jit
def _layer_length(h, n, sq, safe_min, safe_max, step):
    """Sum of the layer's step norms over the tile's pairs, and whether every pre-activation was finite.

    A plain sum of squares ``sq[p]`` in the compute dtype is used between ``safe_min`` and
    ``safe_max``; outside, the step is redone from the activations ``h`` in float64, scaled.
    """
    finite = sq[0] == sq[0]
    total = 0.0
    for p in range(1, n):
        q = sq[p]
        if q >= safe_min and q <= safe_max:
            total += np.float64(np.sqrt(q))
        elif q == q:
            for j in range(h.shape[0]):
                step[j] = np.float64(h[j, p]) - np.float64(h[j, p - 1])
            total += _scaled_norm(step, h.shape[0])
        else:
            finite = False
    return total, finite


@_jit
def _tile(a, n, emit_first, kind, n_points, proj, bias1, scale, line_norm, coords, vertices, seg_len,
         w_flat, w_off, b_flat, b_off, widths, acts, kp, km, safe_min, safe_max,
         buf0, buf1, c0, c1, seg, code, hsh, changed, net_changed, sq, step,
         trans, pchg, lens, hash_out):
    """Process samples a .. a+n-1 (pairs a .. a+n-2).

    Returns (network changes, hashes emitted, first layer with a non-finite pre-activation or 0).
    """
    depth = acts.shape[0]
    _coefficients(kind, a, n, n_points, proj.shape[0], c0, c1, seg)
    lens[0] = _input_length(kind, a, n, n_points, c0, c1, seg, scale, line_norm, coords, vertices, seg_len, step)
    overflow_layer = 0
    hsh[:n] = 0
    net_changed[:n] = 0
    h = buf0[: widths[1] * n].reshape((widths[1], n))
    _first_layer(kind, n, c0, c1, seg, proj, bias1, h)
    for d in range(depth):
        if d > 0:
            n_in, n_out = widths[d], widths[d + 1]
            w = w_flat[w_off[d - 1]: w_off[d - 1] + n_out * n_in].reshape((n_out, n_in))
            b = b_flat[b_off[d - 1]: b_off[d - 1] + n_out]
            out = (buf1 if d % 2 == 1 else buf0)[: n_out * n].reshape((n_out, n))
            _hidden_layer(w, b, h, out, n)
            h = out
        trans[d], pchg[d] = _epilogue(acts[d], h, n, kp[d], km[d], code, hsh, changed, sq)
        for p in range(1, n):
            net_changed[p] |= changed[p]
        lens[d + 1], finite = _layer_length(h, n, sq, safe_min, safe_max, step)
        if not finite and overflow_layer == 0:
            overflow_layer = d + 1
    n_changes = 0
    n_emit = 0
    if emit_first:
        hash_out[0] = hsh[0]
        n_emit = 1
    for p in range(1, n):
        if net_changed[p]:
            n_changes += 1
            hash_out[n_emit] = hsh[p]
            n_emit += 1
    return n_changes, n_emit, overflow_layer


@njit(parallel=True, cache=True, fastmath=FASTMATH)
def _run_tiles(lo, hi, tile_pairs, n_workers, emit_lo, kind, n_points, proj, bias1, scale, line_norm, coords,
              vertices, seg_len, w_flat, w_off, b_flat, b_off, widths, acts, kp, km, safe_min, safe_max):
    """Pairs lo .. hi-1 (samples lo .. hi): reduced counts, lengths, run-start hashes and the
    first layer with a non-finite pre-activation (0: none)."""
    depth = acts.shape[0]
    n_tiles = max(1, (hi - lo + tile_pairs - 1) // tile_pairs)
    cap = tile_pairs + 1
    max_w = widths[1:].max()
    trans = np.zeros((n_tiles, depth), np.int64)
    pchg = np.zeros((n_tiles, depth), np.int64)
    nchg = np.zeros(n_tiles, np.int64)
    lens = np.zeros((n_tiles, depth + 1), np.float64)
    hashes = np.empty((n_tiles, cap), np.uint64)
    n_hashes = np.zeros(n_tiles, np.int64)
    overflow = np.zeros(n_tiles, np.int64)
    for wk in prange(n_workers):
        buf0 = np.empty(max_w * cap, w_flat.dtype)
        buf1 = np.empty(max_w * cap, w_flat.dtype)
        c0 = np.empty(cap, np.float64)
        c1 = np.empty(cap, np.float64)
        seg = np.empty(cap, np.int64)
        code = np.empty(cap, np.int8)
        hsh = np.empty(cap, np.uint64)
        changed = np.empty(cap, np.uint8)
        net_changed = np.empty(cap, np.uint8)
        sq = np.empty(cap, w_flat.dtype)
        step = np.empty(max(max_w, vertices.shape[1]), np.float64)
        for k in range(wk, n_tiles, n_workers):
            a = lo + k * tile_pairs
            n = min(a + tile_pairs, hi) - a + 1
            emit_first = emit_lo and k == 0
            nchg[k], n_hashes[k], overflow[k] = _tile(
                a, n, emit_first, kind, n_points, proj, bias1, scale, line_norm, coords, vertices, seg_len,
                w_flat, w_off, b_flat, b_off, widths, acts, kp, km, safe_min, safe_max,
                buf0, buf1, c0, c1, seg, code, hsh, changed, net_changed, sq, step,
                trans[k], pchg[k], lens[k], hashes[k])
    out = np.empty(n_hashes.sum(), np.uint64)
    pos = 0
    for k in range(n_tiles):
        out[pos: pos + n_hashes[k]] = hashes[k, : n_hashes[k]]
        pos += n_hashes[k]
    first = overflow[overflow > 0]
    return trans.sum(axis=0), pchg.sum(axis=0), nchg.sum(), lens.sum(axis=0), out, first.min() if first.size else 0


def _flatten(arrays, dtype):
    """Concatenate arrays into one flat ``dtype`` array plus the int64 offset of each."""
    offsets = np.cumsum([0] + [a.size for a in arrays], dtype=np.int64)[:-1]
    flat = np.concatenate([np.ravel(a) for a in arrays] + [np.zeros(0, dtype)]).astype(dtype, copy=False)
    return flat, offsets


def _check(plan, start: int, stop: int) -> None:
    """ValueError unless the range and the plan are consistent: the kernels do not bounds-check."""
    plan.check_range(start, stop)
    if np.dtype(plan.dtype) not in (np.float32, np.float64):
        raise ValueError(f"plan dtype must be float32 or float64, got {plan.dtype}")
    if plan.kind not in (LINE, ARC, CIRCLE, POLYLINE):
        raise ValueError(f"unknown trajectory kind {plan.kind}")
    if not set(plan.activations) <= {IDENTITY, RELU, HARDTANH}:
        raise ValueError(f"unknown activation code in {plan.activations}")
    widths, k = plan.widths, plan.proj.shape[0]
    if len(widths) != plan.depth + 1 or len(plan.weights) != plan.depth - 1 or len(plan.biases) != plan.depth - 1:
        raise ValueError(f"plan has {plan.depth} activations, {len(widths)} widths and {len(plan.weights)} hidden layers")
    if k < 2:
        raise ValueError(f"plan.proj needs at least 2 rows, got {k}")
    shapes = [("proj", plan.proj, (k, widths[1])), ("bias1", plan.bias1, (widths[1],)), ("coords", plan.coords, (2, 2))]
    if plan.kind == POLYLINE:
        shapes += [("vertices", plan.vertices, (k, widths[0])), ("seg_len", plan.seg_len, (k - 1,))]
    shapes += [(f"weights[{d}]", w, (widths[d + 2], widths[d + 1])) for d, w in enumerate(plan.weights)]
    shapes += [(f"biases[{d}]", b, (widths[d + 2],)) for d, b in enumerate(plan.biases)]
    for name, array, shape in shapes:
        if np.shape(array) != shape:
            raise ValueError(f"plan.{name} has shape {np.shape(array)}, expected {shape}")


# The same driver without threads, for processes forked from one whose GNU OpenMP pool is
# running: numba's OpenMP layer would kill them (SIGTERM), and their pool cannot restart.
# (Renamed: numba's on-disk cache is keyed by the function's name, not by parallel=True.)
def _renamed(func, name: str):
    """A copy of the Python function ``func`` called ``name``."""
    copy = types.FunctionType(func.__code__, func.__globals__, name, func.__defaults__, func.__closure__)
    copy.__qualname__ = name
    return copy


_run_tiles_serial = njit(cache=True, fastmath=FASTMATH)(_renamed(_run_tiles.py_func, "_run_tiles_serial"))


def _tile_pairs(plan) -> int:
    """Pairs per tile: TILE, or fewer (at least 15) where two ``(width, TILE + 1)`` buffers would
    exceed WORKSPACE_BYTES."""
    per_sample = 2 * max(plan.widths[1:]) * np.dtype(plan.dtype).itemsize + 64
    return int(min(TILE, max(16, WORKSPACE_BYTES // per_sample) - 1))


@contextlib.contextmanager
def launch(n_threads: int):
    """numba's thread count set to ``n_threads`` for this thread (restored after); the launch lock
    held unless the threading layer is thread-safe; numba's SystemError on Ctrl-C turned back
    into the KeyboardInterrupt it wraps."""
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel region has run yet: the first one picks the layer
        layer = None
    saved = numba.get_num_threads()
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))
    try:
        with contextlib.nullcontext() if layer in ("omp", "tbb") else _LAUNCH_LOCK:
            yield
    except SystemError as exc:  # "... returned a result with an exception set", caused by Ctrl-C?
        cause = exc
        while isinstance(cause, SystemError):
            cause = cause.__cause__ or cause.__context__
        if isinstance(cause, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise
    finally:
        numba.set_num_threads(saved)


def exact_walk(*args, **kwargs):
    """The exact engine in numba (fastexpr.backends.numba_exact), on ``measure``'s ``threads``."""
    if _threads.forked():
        raise RuntimeError("the numba exact engine cannot run in a process forked from one already running "
                           "OpenMP threads; use backend='cpu', or a 'spawn' or 'forkserver' multiprocessing context")
    with launch(_threads.requested() or numba.get_num_threads()):
        return numba_exact.exact_walk(*args, **kwargs)


def run(plan, start: int, stop: int) -> Partials:
    """Measure samples ``start .. stop-1`` of ``plan`` (see fastexpr.plan)."""
    _check(plan, start, stop)
    dtype = np.dtype(plan.dtype)
    depth = plan.depth
    w_flat, w_off = _flatten(plan.weights, dtype)
    b_flat, b_off = _flatten(plan.biases, dtype)
    proj, bias1, coords, vertices, seg_len = (np.ascontiguousarray(a, dtype=np.float64) for a in (
        plan.proj, plan.bias1, plan.coords, plan.vertices, plan.seg_len))
    info = np.finfo(dtype)
    safe_min, safe_max = float(np.sqrt(info.tiny)), float(info.max)
    widths = np.asarray(plan.widths, dtype=np.int64)
    acts = np.asarray(plan.activations, dtype=np.int64)
    kp = np.zeros((depth, int(widths[1:].max())), np.uint64)
    km = np.zeros_like(kp)
    for d in range(depth):
        kp[d, : widths[d + 1]], km[d, : widths[d + 1]] = pattern_keys(d + 1, int(widths[d + 1]))
    forked = _threads.forked()
    n_workers = 1 if forked else min(_threads.requested() or numba.get_num_threads(),
                                     numba.config.NUMBA_NUM_THREADS)
    kernel = _run_tiles_serial if forked else _run_tiles
    tile = _tile_pairs(plan)
    transitions = np.zeros(depth, np.int64)
    pattern_changes = np.zeros(depth, np.int64)
    network_changes = 0
    lengths = np.zeros(depth + 1, np.float64)
    hashes = []
    last = stop - 1
    for lo in range(start, max(last, start + 1), BATCH):
        hi = min(lo + BATCH, last)
        with contextlib.nullcontext() if forked else launch(n_workers):
            tr, pc, nc, ln, hs, overflow_layer = kernel(
                lo, hi, tile, n_workers, lo == start, plan.kind, plan.n_points, proj, bias1, float(plan.scale),
                float(plan.line_norm), coords, vertices, seg_len, w_flat, w_off, b_flat, b_off, widths, acts, kp,
                km, safe_min, safe_max)
        check_forward_pass(plan, int(overflow_layer))
        transitions += tr
        pattern_changes += pc
        network_changes += int(nc)
        lengths += ln
        hashes.append(hs)
    return Partials(transitions, pattern_changes, network_changes, lengths, distinct_sorted(np.concatenate(hashes)))
