"""Exact walk in numba: the twin of the C++ walker of csrc/common/exact_walk.h (see there).

Same algorithm, constants, hash keys and order of floating-point operations, so counts match
the C++ engine exactly and lengths to rounding. The network is flat arrays as in the C++
``ExactNet`` (per-neuron arrays over all layers, layer d at offset[d]; W_d transposed). Units run
in parallel: ``prange`` over workers (numba's threads), which take units round-robin, each unit
with its own scratch; a unit's piece hashes (sorted, unique) and its first ``max_crossings``
crossings go into the unit's own slot of preallocated typed lists (no resizing inside the
parallel loop), merged after it.
"""
from __future__ import annotations

import math

import numpy as np
from numba import get_num_threads, njit, prange
from numba.typed import List

from ..plan import HARDTANH, IDENTITY, RELU, pattern_keys

NAME = "numba"

LINEAR_UNIT, TRIG_UNIT = 0, 1
NEVER = 1e308              # exit time of a neuron that never leaves its interval
REANCHOR_EVERY = 4096      # crossing points between recomputations from scratch
MAX_FLIPS_PER_POINT = 2    # a hardtanh neuron may pass -1 -> 0 -> +1 within tol
LAZY = 2                   # exit_dir of a TRIG neuron whose exit_u is only a lower bound
EXACT_OK, EXACT_NONFINITE = 0, 1
BIG = 1.79e308             # larger magnitudes count as non-finite
GRAM = 4                   # doubles per layer of Gram sums: p, q, r over scale^2, and the scale
PI = 3.14159265358979323846
TWO_PI = 6.283185307179586476925286766559
GAUSS_X = (-0.9061798459386640, -0.5384693101056831, 0.0, 0.5384693101056831, 0.9061798459386640)
GAUSS_W = (0.2369268850561891, 0.4786286704993665, 0.5688888888888889, 0.4786286704993665, 0.2369268850561891)

# Multiply-add contraction only, as gcc does for the C++ engine (as in numba_cpu); IEEE
# division (no ZeroDivisionError checks), as in C++.
FASTMATH = {"contract"}
_jit = njit(cache=True, fastmath=FASTMATH, error_model="numpy")

# numba corrects negative (signed) array indices, a test per access that also blocks
# vectorisation; the hot loops over a layer's slice of the flat arrays index with unsigned
# integers instead ("unsigned indices" below).


def probe() -> None:
    """Raise ImportError if numba cannot be imported; compiles nothing."""
    import numba  # noqa: F401


# ------------------------------------------------------------------------------ one neuron


@_jit
def _is_linear(act, code):
    """Whether a neuron with this code passes its pre-activation through."""
    return act == IDENTITY or (code == 1 if act == RELU else code == 0)


@_jit
def _post(act, code, c, z):
    """Post-activation coefficient c (0, 1, 2) of a neuron with code ``code`` and pre-activation coefficient z."""
    if _is_linear(act, code):
        return z
    return float(code) if c == 0 else 0.0  # relu off: 0; hardtanh saturated: the constant -1 or +1


@_jit
def _region_code(act, z):
    """Region code of a pre-activation (semantics.h): ties stay in the lower (relu) or inner (hardtanh) region."""
    if act == RELU:
        return 1 if z > 0.0 else 0
    if act == HARDTANH:
        return -1 if z < -1.0 else (1 if z > 1.0 else 0)
    return 0


@_jit
def _bounds(act, code):
    """(lo, hi, has_lo, has_hi): the code's interval is left downwards through lo, upwards through hi."""
    lo = hi = 0.0
    has_lo = has_hi = False
    if act == RELU:
        if code == 0:
            hi, has_hi = 0.0, True
        else:
            lo, has_lo = 0.0, True
    elif act == HARDTANH:
        if code <= 0:
            hi, has_hi = (-1.0 if code < 0 else 1.0), True
        if code >= 0:
            lo, has_lo = (1.0 if code > 0 else -1.0), True
    return lo, hi, has_lo, has_hi


@_jit
def _constant_beyond(z, thr, up, open_):
    """Whether a constant pre-activation z has left its code's interval through thr (see exact_walk.h)."""
    return (z > thr if up else z < thr) or (open_ and z == thr)


@_jit
def _trig_exit(k0, k1, k2, thr, up, open_, u, tol):
    """First angle >= u where k0 + R cos(u - phi) rises above (up) or falls below thr; u if already past, else NEVER."""
    r = math.hypot(k1, k2)
    if r == 0.0:
        return u if _constant_beyond(k0, thr, up, open_) else NEVER
    v = (thr - k0) / r
    if (v >= 1.0) if up else (v <= -1.0):  # never beyond the threshold
        return NEVER
    if (v <= -1.0) if up else (v >= 1.0):  # always beyond: the code is inconsistent
        return u
    a = math.acos(v)
    phi = math.atan2(k2, k1)
    start = phi - a if up else phi + a
    span = 2.0 * a if up else TWO_PI - 2.0 * a
    if span < tol:  # touches the threshold without crossing it
        return NEVER
    into = np.fmod(u - start, TWO_PI)
    into = into + TWO_PI if into < 0 else into
    if into < span - tol:  # already beyond (a rounding-level inconsistency)
        return u
    return u + (TWO_PI - into)


@_jit
def _exit_time(trig, act, code, k0, k1, k2, u, tol):
    """(earliest exit at or after u from the code's interval, direction: +1 up, -1 down, 0 never)."""
    lo, hi, has_lo, has_hi = _bounds(act, code)
    best = NEVER
    d = 0
    if not trig:
        if has_hi and k1 > 0:
            best, d = (hi - k0) / k1, 1
        elif has_lo and k1 < 0:
            best, d = (lo - k0) / k1, -1
        elif has_hi and k1 == 0 and _constant_beyond(k0, hi, True, code < 0):
            best, d = u, 1
        elif has_lo and k1 == 0 and _constant_beyond(k0, lo, False, code > 0):
            best, d = u, -1
        if d != 0 and not best >= u:  # behind (or NaN from rounding): now
            best = u
    else:
        if has_hi:
            e = _trig_exit(k0, k1, k2, hi, True, code < 0, u, tol)
            if e < best:
                best, d = e, 1
        if has_lo:
            e = _trig_exit(k0, k1, k2, lo, False, code > 0, u, tol)
            if e < best:
                best, d = e, -1
    return best, d


@_jit
def _trig_exit_bound(act, code, k0, k1, k2, cu, su, u):
    """TRIG: a lower bound on the exit time from |dz/du| <= |k1| + |k2|; -1 if too close to call."""
    lo, hi, has_lo, has_hi = _bounds(act, code)
    if not has_lo and not has_hi:
        return NEVER
    z = k0 + k1 * cu + k2 * su
    rate = abs(k1) + abs(k2)
    dist = NEVER
    if has_hi:
        dist = hi - z
    if has_lo and z - lo < dist:
        dist = z - lo
    margin = 1e-13 * (abs(k0) + rate + 1.0)  # well above the rounding of z
    if not dist > margin or rate == 0.0:
        return -1.0
    return u + (dist - margin) / rate


# ---------------------------------------------------------------------------------- lengths


@_jit
def _trig_speed(p, q, r, u):
    s = math.sin(u)
    c = math.cos(u)
    v = p * s * s + q * c * c - 2.0 * r * s * c
    return math.sqrt(v) if v > 0 else 0.0


@_jit
def _gauss5(p, q, r, a, b):
    m = 0.5 * (a + b)
    h = 0.5 * (b - a)
    s = GAUSS_W[2] * _trig_speed(p, q, r, m)
    for i in (3, 4):
        s += GAUSS_W[i] * (_trig_speed(p, q, r, m - h * GAUSS_X[i]) + _trig_speed(p, q, r, m + h * GAUSS_X[i]))
    return s * h


@_jit
def _adaptive_length(p, q, r, a, b, stack):
    """Integral of the speed over [a, b]: Gauss-Legendre, 5 points against two halves (stack: (3, 48) scratch)."""
    top = 0
    stack[0, 0], stack[1, 0], stack[2, 0] = a, b, _gauss5(p, q, r, a, b)
    total = 0.0
    scale = math.sqrt(p if p > q else q) * (b - a)
    while top >= 0:
        x0, x1, w = stack[0, top], stack[1, top], stack[2, top]
        m = 0.5 * (x0 + x1)
        left = _gauss5(p, q, r, x0, m)
        right = _gauss5(p, q, r, m, x1)
        top -= 1
        if abs(left + right - w) <= 1e-14 * scale + 1e-13 * abs(left + right) or top >= 44 or m <= x0 or m >= x1:
            total += left + right
        else:
            top += 1
            stack[0, top], stack[1, top], stack[2, top] = x0, m, left
            top += 1
            stack[0, top], stack[1, top], stack[2, top] = m, x1, right
    return total


@_jit
def _trig_length(p, q, r, a, b, stack):
    """Length of u -> G + A cos u + B sin u over [a, b] (p = |A|^2, q = |B|^2, r = A.B), split at the speed's minima."""
    if not b > a or (p <= 0 and q <= 0):
        return 0.0
    first = 0.5 * (math.atan2(-r, 0.5 * (q - p)) + PI)
    total = 0.0
    x0 = a
    m = first + np.ceil((a - first) / PI) * PI
    while m < b:
        if m > x0:
            total += _adaptive_length(p, q, r, x0, m, stack)
            x0 = m
        m += PI
    return total + _adaptive_length(p, q, r, x0, b, stack)


@_jit
def _add_piece_lengths(trig, gram, L, a, b, lengths, sn, cs, stack):
    """Add every layer's length over [a, b] (d = 0..L) from the Gram sums (sn, cs: (15,) scratch)."""
    if not trig:
        for d in range(L + 1):
            lengths[d] += (b - a) * math.sqrt(gram[GRAM * d]) * gram[GRAM * d + 3]
        return
    if not b > a:
        return
    if b - a > 1.0:  # long pieces (few crossings): the general rule
        for d in range(L + 1):
            lengths[d] += _trig_length(gram[GRAM * d], gram[GRAM * d + 1], gram[GRAM * d + 2], a, b, stack) * \
                gram[GRAM * d + 3]
        return
    m = 0.5 * (a + b)
    h = 0.5 * (b - a)
    # d(speed^2)/du = (p - q) sin 2u - 2 r cos 2u: a change of sign from - to + marks a minimum inside
    s2a, c2a, s2b, c2b = math.sin(2.0 * a), math.cos(2.0 * a), math.sin(2.0 * b), math.cos(2.0 * b)
    for i in range(5):
        x = GAUSS_X[i]
        n0, n1, n2 = m + h * x, 0.5 * (a + m) + 0.5 * h * x, 0.5 * (m + b) + 0.5 * h * x
        sn[i], sn[5 + i], sn[10 + i] = math.sin(n0), math.sin(n1), math.sin(n2)
        cs[i], cs[5 + i], cs[10 + i] = math.cos(n0), math.cos(n1), math.cos(n2)
    for d in range(L + 1):
        p, q, r, s = gram[GRAM * d], gram[GRAM * d + 1], gram[GRAM * d + 2], gram[GRAM * d + 3]
        if p <= 0 and q <= 0:
            continue
        if (p - q) * s2a - 2.0 * r * c2a < 0 and (p - q) * s2b - 2.0 * r * c2b > 0:  # a minimum inside
            lengths[d] += _trig_length(p, q, r, a, b, stack) * s
            continue
        whole = halves = 0.0
        for k in range(3):  # [a, b], then its halves
            part = 0.0
            for i in range(5):
                sk, ck = sn[5 * k + i], cs[5 * k + i]
                v = p * sk * sk + q * ck * ck - 2.0 * r * sk * ck
                part += GAUSS_W[i] * (math.sqrt(v) if v > 0 else 0.0)
            if k == 0:
                whole = part * h
            elif k == 1:
                halves = part
            else:
                halves = (halves + part) * 0.5 * h
        scale = math.sqrt(p if p > q else q) * (b - a)
        if abs(halves - whole) <= 1e-14 * scale + 1e-13 * abs(halves):
            lengths[d] += halves * s
        else:
            lengths[d] += _trig_length(p, q, r, a, b, stack) * s


@_jit
def _layer_gram(trig, act, Z, code, total, o, n, gram, g):
    """Gram sums of a layer's post-activation coefficients over their scale^2, and the scale, into
    gram[g:g+GRAM] (exact_walk.h's layer_gram); False if a coefficient is not finite. (Loops split
    by plane: each sum keeps its order.)"""
    z0, z1, z2 = np.uint64(o), np.uint64(total + o), np.uint64(2 * total + o)  # unsigned indices
    finite = True
    big = 0.0
    for j in range(np.uint64(n)):
        if not abs(Z[z0 + j]) <= BIG or not abs(Z[z1 + j]) <= BIG:
            finite = False
        if _is_linear(act, code[z0 + j]):
            big = max(big, abs(Z[z1 + j]))
    if trig:
        for j in range(np.uint64(n)):
            if not abs(Z[z2 + j]) <= BIG:
                finite = False
            if _is_linear(act, code[z0 + j]):
                big = max(big, abs(Z[z2 + j]))
    gram[g] = gram[g + 1] = gram[g + 2] = 0.0
    gram[g + 3] = 1.0
    if not finite:
        return False
    if big == 0.0:
        return True
    p = q = r = 0.0
    inv = 1.0 / big
    divide = not inv <= BIG  # big is subnormal: its inverse overflows
    for j in range(np.uint64(n)):
        if _is_linear(act, code[z0 + j]):
            a = Z[z1 + j] / big if divide else Z[z1 + j] * inv
            p += a * a
    if trig:
        for j in range(np.uint64(n)):
            if _is_linear(act, code[z0 + j]):
                a = Z[z1 + j] / big if divide else Z[z1 + j] * inv
                b = Z[z2 + j] / big if divide else Z[z2 + j] * inv
                q += b * b
                r += a * b
    gram[g], gram[g + 1], gram[g + 2], gram[g + 3] = p, q, r, big
    return True


# ------------------------------------------------------------------------------- one layer
# A layer is neurons o .. o+n-1 of the flat per-neuron arrays; Z and dZ hold three planes of
# ``total`` values (k0 | k1 | k2). Helpers called per neuron take scalars only: numba counts
# references to array arguments on every call.


@_jit
def _layer_exits(trig, act, Z, code, exit_u, exit_dir, total, o, n, u, tol):
    """Exit times of the layer's neurons at u (TRIG: lazy bounds where safe); returns their minimum."""
    z0, z1, z2 = np.uint64(o), np.uint64(total + o), np.uint64(2 * total + o)  # unsigned indices
    best = NEVER
    if trig:
        cu, su = math.cos(u), math.sin(u)
        for j in range(np.uint64(n)):
            e = _trig_exit_bound(act, code[z0 + j], Z[z0 + j], Z[z1 + j], Z[z2 + j], cu, su, u)
            exit_dir[z0 + j] = 0 if e == NEVER else LAZY
            if e < 0.0:
                e, exit_dir[z0 + j] = _exit_time(trig, act, code[z0 + j], Z[z0 + j], Z[z1 + j], Z[z2 + j], u, tol)
            exit_u[z0 + j] = e
            best = e if e < best else best
    else:
        for j in range(np.uint64(n)):
            e, exit_dir[z0 + j] = _exit_time(trig, act, code[z0 + j], Z[z0 + j], Z[z1 + j], 0.0, u, tol)
            exit_u[z0 + j] = e
            best = e if e < best else best
    return best


@_jit
def _resolve_lazy(trig, act, Z, code, exit_u, exit_dir, total, o, n, u, tol, limit):
    """TRIG: replace the lazy bounds at or below ``limit`` by exact exit times.

    Returns (whether there were any, the layer's new minimum exit time)."""
    found = False
    best = NEVER
    for i in range(o, o + n):
        if exit_dir[i] == LAZY and exit_u[i] <= limit:
            exit_u[i], exit_dir[i] = _exit_time(trig, act, code[i], Z[i], Z[total + i], Z[2 * total + i], u, tol)
            found = True
        best = exit_u[i] if exit_u[i] < best else best
    return found, best


@_jit
def _forward_layer(planes, Z, code, total, wt, wo, bias, bo, o, op, n, n_in, act_in):
    """Z of a layer from scratch, from the codes and coefficients of the layer below (neurons op ..)."""
    for c in range(planes):
        z = c * total + o
        for j in range(n):
            Z[z + j] = bias[bo + j] if c == 0 else 0.0
        for k in range(n_in):
            h = _post(act_in, code[op + k], c, Z[c * total + op + k])
            if h == 0.0:
                continue
            _axpy(h, wt, wo + k * n, Z, z, n)


@_jit
def _constant_layer(trig, act, Z, code, total, o, n):
    """True if the post-activation of neurons o .. o+n-1 is constant in u: each is off or saturated,
    or in a linear piece with slope exactly 0 (exact_walk.h's constant_layer)."""
    for i in range(o, o + n):
        if _is_linear(act, code[i]) and (Z[total + i] != 0.0 or (trig and Z[2 * total + i] != 0.0)):
            return False
    return True


@_jit
def _key_delta(key_pos, key_neg, frm, to):
    """Change of the pattern hash (mod 2^64) when a neuron with keys (key_pos, key_neg) goes from ``frm`` to ``to``."""
    h = np.uint64(0)
    if frm > 0:
        h -= key_pos
    elif frm < 0:
        h -= key_neg
    if to > 0:
        h += key_pos
    elif to < 0:
        h += key_neg
    return h


@_jit
def _flip_layer(trig, act, Z, code, before, flips, exit_u, exit_dir, changed, key_pos, key_neg, total, o, n, u,
                tol, layer_min):
    """Flip every neuron of the layer that leaves its interval within u + tol, at most MAX_FLIPS_PER_POINT
    times each: all neurons once, then the flipped ones again until none flips (a flip never moves
    its own layer). Lists the flipped neurons in ``changed``.

    Returns (number flipped, the layer's new minimum exit time, hash change, repairs).
    """
    hsh = np.uint64(0)
    repairs = 0
    if trig:
        found, layer_min = _resolve_lazy(trig, act, Z, code, exit_u, exit_dir, total, o, n, u, tol, u + tol)
        if found and not layer_min <= u + tol:
            return 0, layer_min, hsh, repairs
    n_flipped = 0
    best = NEVER
    first = True  # the pass over all neurons; then passes over the flipped ones
    while True:
        again = False
        for q in range(n if first else n_flipped):
            j = q if first else changed[q]
            i = o + j
            if exit_u[i] <= u + tol and exit_dir[i] != 0 and exit_dir[i] != LAZY and flips[i] < MAX_FLIPS_PER_POINT:
                if exit_u[i] < u - tol:
                    repairs += 1
                if flips[i] == 0:
                    before[i] = code[i]
                frm = np.int64(code[i])
                to = frm + exit_dir[i]
                code[i] = to
                flips[i] += 1
                hsh += _key_delta(key_pos[i], key_neg[i], frm, to)
                exit_u[i], exit_dir[i] = _exit_time(trig, act, code[i], Z[i], Z[total + i], Z[2 * total + i], u,
                                                    tol)
                again = True
                if first:
                    changed[n_flipped] = j
                    n_flipped += 1
            elif first:
                best = exit_u[i] if exit_u[i] < best else best
        if not first and not again:
            break
        first = False
    for q in range(n_flipped):
        i = o + changed[q]
        best = exit_u[i] if exit_u[i] < best else best
    return n_flipped, best, hsh, repairs


@_jit
def _axpy(h, w, wo, z, zo, n):
    """z[zo:zo+n] += h w[wo:wo+n], one multiply-add each, as gcc does (LLVM fuses a product with one
    use only: Z and dZ are updated by two calls)."""
    wo, zo = np.uint64(wo), np.uint64(zo)  # unsigned indices
    for k in range(np.uint64(n)):
        z[zo + k] += w[wo + k] * h


# -------------------------------------------------------------------------------- one unit


@_jit
def _walk_unit(trig, widths, acts, offset, wt, wt_off, bias, b_off, key_pos, key_neg, k0, k1, k2, g_in, u0, u1,
               tol, cap, transitions, pattern_changes, lengths, first_code, last_code):
    """Walk one unit over [u0, u1] (exact_walk of exact_walk.h), filling the unit's rows of the outputs.

    Returns (network changes, repairs, error, sorted unique piece hashes, crossing u, crossing
    (layer, neuron, from, to) rows), the first ``cap`` crossings only.
    """
    L = widths.shape[0]
    total = offset[L]
    planes = 3 if trig else 2
    Z = np.zeros(3 * total)  # coefficients k0 | k1 | k2 under the current pattern
    dZ = np.zeros(3 * total)  # change of Z within the current crossing point
    exit_u = np.empty(total)  # earliest exit time per neuron
    code = np.zeros(total, np.int8)
    before = np.zeros(total, np.int8)  # code before the current crossing point
    flips = np.zeros(total, np.int8)  # flips within the current crossing point
    exit_dir = np.zeros(total, np.int8)  # +1 up, -1 down, 0 never, LAZY
    changed = np.empty(widths.max(), np.int64)  # neurons (within a layer) whose post-activation changed
    layer_min = np.empty(L)  # minimum exit time per layer
    gram = np.zeros(GRAM * (L + 1))  # per layer (0: input) the post-activation's Gram sums and scale
    sn, cs, stack = np.empty(15), np.empty(15), np.empty((3, 48))
    dh = np.zeros(3)
    hashes = np.empty(64, np.uint64)
    n_hashes = 0
    cross_u = np.empty(64)
    cross_i = np.empty((64, 4), np.int64)
    n_cross = 0
    network_changes = repairs = 0
    error = EXACT_OK

    # Layer 1 from the unit, the rest from scratch, codes at u0 layer by layer.
    for j in range(widths[0]):
        Z[j] = k0[j]
        Z[total + j] = k1[j]
        Z[2 * total + j] = k2[j] if trig else 0.0
    for d in range(L):
        if d > 0:
            _forward_layer(planes, Z, code, total, wt, wt_off[d], bias, b_off[d], offset[d], offset[d - 1],
                           widths[d], widths[d - 1], acts[d - 1])
        for i in range(offset[d], offset[d + 1]):
            if trig:
                z = Z[i] + Z[total + i] * math.cos(u0) + Z[2 * total + i] * math.sin(u0)
            else:
                z = Z[i] + Z[total + i] * u0
            code[i] = _region_code(acts[d], z)
    hsh = np.uint64(0)  # pattern hash of the current piece
    for i in range(total):
        hsh += _key_delta(key_pos[i], key_neg[i], np.int64(0), np.int64(code[i]))
    for d in range(L):
        layer_min[d] = _layer_exits(trig, acts[d], Z, code, exit_u, exit_dir, total, offset[d], widths[d], u0, tol)

    u = u0
    counting = False  # the first crossing point (at u0) only settles the right-limit pattern
    since_anchor = 0
    while True:
        # ---- one crossing point at u: layers in order, each settled before the next ----
        any_change = False
        touched_below = False  # layer d-1's post-activation changed: layer d's Z moved
        constant_below = False  # layer d-1's post-activation is constant in u (as are all above it)
        for d in range(L):
            o, n, act = offset[d], widths[d], acts[d]
            if touched_below:
                layer_min[d] = _layer_exits(trig, act, Z, code, exit_u, exit_dir, total, o, n, u, tol)
            n_flipped = 0
            if layer_min[d] <= u + tol:
                n_flipped, layer_min[d], dhash, rp = _flip_layer(
                    trig, act, Z, code, before, flips, exit_u, exit_dir, changed, key_pos, key_neg, total, o, n,
                    u, tol, layer_min[d])
                hsh += dhash
                repairs += rp
            if not touched_below and n_flipped == 0:  # nothing of layer d moved; nor can a constant
                constant_below = False                 # layer's neuron flip later without a change below
                continue
            constant_below = constant_below or _constant_layer(trig, act, Z, code, total, o, n)
            # Net code changes of this layer at this point.
            jumps = 0
            for q in range(n_flipped):
                i = o + changed[q]
                dc = np.int64(code[i]) - np.int64(before[i])
                jumps += abs(dc)
                if counting and dc != 0 and n_cross < cap:
                    if n_cross == cross_u.shape[0]:  # full: double
                        cross_u = np.concatenate((cross_u, np.empty_like(cross_u)))
                        cross_i = np.concatenate((cross_i, np.empty_like(cross_i)))
                    cross_u[n_cross] = u
                    cross_i[n_cross, 0], cross_i[n_cross, 1] = d, changed[q]
                    cross_i[n_cross, 2], cross_i[n_cross, 3] = before[i], code[i]
                    n_cross += 1
            if jumps > 0:
                any_change = True
                if counting:
                    transitions[d] += jumps
                    pattern_changes[d] += 1
            # Post-activation changes of layer d: dH = post(new code, Z) - post(old code, Z - dZ).
            n_changed = n_flipped  # changed[:n_flipped] lists the flipped neurons
            if touched_below:
                n_changed = 0
                for j in range(n):
                    if flips[o + j] or _is_linear(act, code[o + j]):
                        changed[n_changed] = j
                        n_changed += 1
            changed_here = False
            if d + 1 < L and n_changed > 0 and constant_below:  # exactly constant above: from scratch
                oo, n_out = offset[d + 1], widths[d + 1]
                for c in range(planes):
                    dZ[c * total + oo:c * total + oo + n_out] -= Z[c * total + oo:c * total + oo + n_out]
                _forward_layer(planes, Z, code, total, wt, wt_off[d + 1], bias, b_off[d + 1], oo, o, n_out, n, act)
                for c in range(planes):
                    dZ[c * total + oo:c * total + oo + n_out] += Z[c * total + oo:c * total + oo + n_out]
                changed_here = True
            elif d + 1 < L and n_changed > 0:
                n_out, oo = widths[d + 1], offset[d + 1]
                for q in range(n_changed):
                    j = changed[q]
                    i = o + j
                    old = before[i] if flips[i] else code[i]
                    nz = False
                    for c in range(planes):
                        zn = Z[c * total + i]
                        dh[c] = _post(act, code[i], c, zn) - _post(act, old, c, zn - dZ[c * total + i])
                        nz = nz or dh[c] != 0.0
                    if not nz:
                        continue
                    changed_here = True
                    w = wt_off[d + 1] + j * n_out
                    for c in range(planes):
                        h = dh[c]
                        if h == 0.0:
                            continue
                        _axpy(h, wt, w, Z, c * total + oo, n_out)
                        _axpy(h, wt, w, dZ, c * total + oo, n_out)
            # Lengths need this layer's Gram sums whenever its post-activation may have changed.
            if touched_below or n_flipped > 0:
                if not _layer_gram(trig, act, Z, code, total, o, n, gram, GRAM * (d + 1)):
                    error = EXACT_NONFINITE
                    break
            # Reset this layer's per-point state (dZ is non-zero only where layer d-1 moved).
            if touched_below:
                for i in range(o, o + n):
                    flips[i] = 0
                    dZ[i] = dZ[total + i] = dZ[2 * total + i] = 0.0
            else:
                for q in range(n_changed):
                    flips[o + changed[q]] = 0
            touched_below = changed_here
        if error != EXACT_OK:
            break
        if not counting:
            counting = True
            first_code[:] = code
            hashes[n_hashes] = hsh
            n_hashes += 1
            gram[0], gram[1], gram[2], gram[3] = g_in[0], g_in[1], g_in[2], 1.0  # in units of in_scale
            for d in range(L):
                if not _layer_gram(trig, acts[d], Z, code, total, offset[d], widths[d], gram, GRAM * (d + 1)):
                    error = EXACT_NONFINITE
                    break
        elif any_change:
            network_changes += 1
            if n_hashes == hashes.shape[0]:  # full: double
                hashes = np.concatenate((hashes, np.empty_like(hashes)))
            hashes[n_hashes] = hsh
            n_hashes += 1
        if error != EXACT_OK:
            break
        since_anchor += 1
        if since_anchor >= REANCHOR_EVERY:  # drop the rounding of the rank-k updates
            since_anchor = 0
            for d in range(L):
                o, n = offset[d], widths[d]
                if d > 0:
                    _forward_layer(planes, Z, code, total, wt, wt_off[d], bias, b_off[d], o, offset[d - 1], n,
                                   widths[d - 1], acts[d - 1])
                layer_min[d] = _layer_exits(trig, acts[d], Z, code, exit_u, exit_dir, total, o, n, u, tol)
                if not _layer_gram(trig, acts[d], Z, code, total, o, n, gram, GRAM * (d + 1)):
                    error = EXACT_NONFINITE
                    break
            if error != EXACT_OK:
                break
        # ---- advance to the next crossing point ----
        nxt = NEVER
        lazy = True
        while lazy:  # until the earliest candidate is an exact exit time
            first = 0
            for d in range(1, L):
                first = d if layer_min[d] < layer_min[first] else first
            nxt = layer_min[first]
            lazy = False
            if trig and nxt < u1:
                lazy, layer_min[first] = _resolve_lazy(trig, acts[first], Z, code, exit_u, exit_dir, total,
                                                       offset[first], widths[first], u, tol, nxt + tol)
        if nxt < u + tol:  # a neuron held back by MAX_FLIPS_PER_POINT: still advance
            nxt = u + 2.0 * tol
        stop = nxt if nxt < u1 - tol else u1
        _add_piece_lengths(trig, gram, L, u, stop, lengths, sn, cs, stack)
        if stop >= u1:
            break
        u = nxt
    last_code[:] = code
    return network_changes, repairs, error, np.unique(hashes[:n_hashes]), cross_u[:n_cross], cross_i[:n_cross]


# ----------------------------------------------------------------------------- all units


@njit(parallel=True, cache=True, fastmath=FASTMATH, error_model="numpy")
def _walk_units(trig, widths, acts, offset, wt, wt_off, bias, b_off, key_pos, key_neg, k0, k1, k2, g_in, u0, u1,
                tol, max_crossings, n_workers):
    """All units in parallel, then their hashes and their first ``max_crossings`` crossings merged."""
    U, L, total = k0.shape[0], widths.shape[0], offset[-1]
    transitions = np.zeros((U, L), np.int64)
    pattern_changes = np.zeros((U, L), np.int64)
    network_changes = np.zeros(U, np.int64)
    repairs = np.zeros(U, np.int64)
    lengths = np.zeros((U, L + 1))
    first_code = np.zeros((U, total), np.int8)
    last_code = np.zeros((U, total), np.int8)
    errors = np.zeros(U, np.int32)
    hash_lists, u_lists, i_lists = List(), List(), List()
    for q in range(U):
        hash_lists.append(np.empty(0, np.uint64))
        u_lists.append(np.empty(0))
        i_lists.append(np.empty((0, 4), np.int64))
    for wk in prange(n_workers):  # workers take units round-robin: crossings are unevenly spread along a path
        for q in range(wk, U, n_workers):
            nc, rp, err, hs, cu, ci = _walk_unit(trig, widths, acts, offset, wt, wt_off, bias, b_off, key_pos,
                                                 key_neg, k0[q], k1[q], k2[q], g_in[q], u0[q], u1[q], tol,
                                                 max_crossings, transitions[q], pattern_changes[q], lengths[q],
                                                 first_code[q], last_code[q])
            network_changes[q], repairs[q], errors[q] = nc, rp, err
            hash_lists[q] = hs  # the unit's own slot: no resizing, nothing shared
            u_lists[q] = cu
            i_lists[q] = ci
    n_hash = 0
    n_cross = 0
    for q in range(U):
        n_hash += hash_lists[q].shape[0]
        n_cross += u_lists[q].shape[0]
    hashes = np.empty(n_hash, np.uint64)
    n_hash = 0
    for q in range(U):
        hashes[n_hash: n_hash + hash_lists[q].shape[0]] = hash_lists[q]
        n_hash += hash_lists[q].shape[0]
    n_cross = min(n_cross, max_crossings)
    c_unit = np.empty(n_cross, np.int64)
    c_u = np.empty(n_cross)
    c_layer = np.empty(n_cross, np.int64)
    c_neuron = np.empty(n_cross, np.int64)
    c_from = np.empty(n_cross, np.int8)
    c_to = np.empty(n_cross, np.int8)
    at = 0
    for q in range(U):  # units in walking order: the batch's first crossings
        for k in range(min(u_lists[q].shape[0], n_cross - at)):
            c_unit[at], c_u[at] = q, u_lists[q][k]
            c_layer[at], c_neuron[at] = i_lists[q][k, 0], i_lists[q][k, 1]
            c_from[at], c_to[at] = i_lists[q][k, 2], i_lists[q][k, 3]
            at += 1
    return (transitions, pattern_changes, network_changes, repairs, lengths, first_code, last_code,
            np.unique(hashes), errors, (c_unit, c_u, c_layer, c_neuron, c_from, c_to))


def _f64(a, name, shape):
    """``a`` as a float64 array of ``shape`` (-1: any), or ValueError."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != len(shape) or any(s >= 0 and a.shape[i] != s for i, s in enumerate(shape)):
        raise ValueError(f"{name} has the wrong shape")
    return a


def _unit_array(a, name, shape):
    """``_f64``, C-contiguous and writeable: numba compiles read-only arrays as a type of their own."""
    return np.require(_f64(a, name, shape), requirements=["C", "W"])


def exact_walk(unit_kind, weights, biases, activations, k0, k1, k2, u0, u1, g_in, tol, max_crossings=0):
    """Exact walk of units through a float64 network: the arguments and dict of ``fastexpr._C.exact_walk``.

    Crossings: the batch's first ``max_crossings`` in walking order (none if it is 0).
    """
    L = len(activations)
    if L < 1:
        raise ValueError("the network needs at least one layer")
    if unit_kind not in (LINEAR_UNIT, TRIG_UNIT):
        raise ValueError("unit_kind must be 0 (linear) or 1 (trig)")
    if len(weights) != L - 1 or len(biases) != L - 1:
        raise ValueError("expected L-1 hidden weights and biases")
    if np.ndim(k0) != 2:
        raise ValueError("k0 must be 2-D (units, n_1)")
    U, n1 = np.shape(k0)
    if U < 1 or n1 < 1:
        raise ValueError("need at least one unit and one first-layer neuron")
    if not tol > 0:
        raise ValueError("tol must be positive")
    for a in activations:
        if a not in (IDENTITY, RELU, HARDTANH):
            raise ValueError(f"unknown activation code {a}")
    widths = [n1]
    wts, bs = [np.zeros(0)], [np.zeros(0)]  # layer 1's are in the unit's coefficients
    for d, (w, b) in enumerate(zip(weights, biases)):
        if np.ndim(w) != 2:
            raise ValueError("weights must be 2-D")
        w = _f64(w, f"weights[{d}]", (-1, widths[-1]))
        wts.append(np.ascontiguousarray(w.T).ravel())  # (n_{d-1}, n_d): a neuron's outgoing weights are contiguous
        bs.append(_f64(b, f"biases[{d}]", (w.shape[0],)))
        widths.append(w.shape[0])
    trig = unit_kind == TRIG_UNIT
    k0, k1 = _unit_array(k0, "k0", (U, n1)), _unit_array(k1, "k1", (U, n1))
    k2 = _unit_array(k2, "k2", (U, n1)) if trig else k1  # unused for LINEAR units
    u0, u1 = _unit_array(u0, "u0", (U,)), _unit_array(u1, "u1", (U,))
    g_in = _unit_array(g_in, "g_in", (U, 3))
    keys = [pattern_keys(d + 1, n) for d, n in enumerate(widths)]
    net = (np.asarray(widths, np.int64), np.asarray(activations, np.int64),
           np.cumsum([0] + widths, dtype=np.int64),
           np.concatenate(wts), np.cumsum([0] + [w.size for w in wts[:-1]], dtype=np.int64),
           np.concatenate(bs), np.cumsum([0] + [b.size for b in bs[:-1]], dtype=np.int64),
           np.concatenate([k[0] for k in keys]), np.concatenate([k[1] for k in keys]))
    out = _walk_units(trig, *net, k0, k1, k2, g_in, u0, u1, float(tol), int(max(max_crossings, 0)),
                      min(U, get_num_threads()))
    names = ("transitions", "pattern_changes", "network_changes", "repairs", "lengths", "first_code", "last_code",
             "hashes", "errors", "crossings")
    return dict(zip(names, out))
