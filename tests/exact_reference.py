"""Independent float64 NumPy *exact* oracle: slow, plain and obviously right.

For a piecewise-linear MLP (relu / hardtanh / identity layers) and a one-dimensional
trajectory x(t), t in [0, 1], it finds every point where the whole-network activation
pattern changes, walking the path piece by piece, and integrates the continuum length of
every layer's image. Nothing is incremental: at every event the pattern just right of it
is recomputed from scratch by a full forward pass straight from the definitions, and the
affine maps of the network under that pattern are rebuilt by explicit matrix products.

It shares no code with ``fastexpr``: it only reads ``net.weights``, ``net.biases``,
``net.activations``, ``trajectory.kind``, ``trajectory.basis`` and ``trajectory.closed``.

Semantics (the specification the fast exact walker is held to):

* region codes (ties in the lower / inner region): relu ``1 if z > 0 else 0``; hardtanh
  ``-1 if z < -1, +1 if z > 1, else 0``; identity ``0``;
* [0, 1] is cut into maximal open pieces on which the whole-network code vector is
  constant; a crossing point is a t in (0, 1) where the pattern just left of t differs from
  the pattern just right of t (a touch of a threshold is no crossing; polyline vertices are
  not special);
* ``transitions[d-1]`` = sum over crossing points and neurons of layer d of
  ``|code_right - code_left|``; ``pattern_changes[d-1]`` = crossing points where layer d's
  code vector changes; ``network_changes`` = number of crossing points;
* ``distinct_patterns`` = distinct whole-network code vectors among the pieces;
* closed paths (CIRCLE, and a POLYLINE made with ``closed=True``, ``trajectory.closed``): if the
  last piece's pattern differs from the first piece's, the wrap point t = 0 = 1 is one more
  crossing point; it is reported in ``crossings`` at ``t = 1.0`` with ``old_code`` the last
  piece's code and ``new_code`` the first piece's code;
* ``lengths[d]`` = arc length of t -> h_d(x(t)), d = 0..L (d = 0: the input path).

``crossings`` is a list of ``(t, layer (1-based), neuron (0-based), old_code, new_code)``,
one entry per neuron that changes at a crossing point, sorted by t, layer, neuron.

Cases the oracle cannot resolve reliably in float64 (two events closer than ``10 * eps``,
a near-tangent touch, an event within ``10 * eps`` of an end or a polyline vertex, a
forward pass at ``t +- eps`` that disagrees with the root finding) raise
:class:`IllConditioned` (an ``AssertionError``): pick another seed.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import integrate

LINE, ARC, CIRCLE, POLYLINE = 0, 1, 2, 3

# Roots closer than this (in t) are one and the same event (duplicated neurons, a neuron
# crossing where an upstream neuron crosses, the root just processed seen again).
MERGE_TOL = 1e-12


class IllConditioned(AssertionError):
    """The case is too close to a degenerate one for a float64 oracle: pick another seed."""

    def __init__(self, what: str):
        super().__init__(f"ill-conditioned case: {what}")


# --------------------------------------------------------------------------- definitions


def code_of(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.where(z > 0, 1, 0)
    if activation == "hardtanh":
        return np.where(z < -1, -1, np.where(z > 1, 1, 0))
    if activation == "identity":
        return np.zeros(z.shape, dtype=np.int64)
    raise ValueError(f"unknown activation {activation!r}")


def act_of(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0.0)
    if activation == "hardtanh":
        return np.clip(z, -1.0, 1.0)
    return z


def thresholds_of(activation: str) -> tuple[float, ...]:
    if activation == "relu":
        return (0.0,)
    if activation == "hardtanh":
        return (-1.0, 1.0)
    return ()


def point(trajectory, t: float) -> np.ndarray:
    """x(t), straight from the definitions."""
    b = np.asarray(trajectory.basis, dtype=np.float64)
    kind = trajectory.kind
    if kind == LINE:
        return (1.0 - t) * b[0] + t * b[1]
    if kind == ARC:
        return math.cos(math.pi * t / 2) * b[0] + math.sin(math.pi * t / 2) * b[1]
    if kind == CIRCLE:
        return math.cos(2 * math.pi * t) * b[0] + math.sin(2 * math.pi * t) * b[1]
    if kind == POLYLINE:
        k = b.shape[0]
        s = t * (k - 1)
        j = min(int(math.floor(s)), k - 2)
        f = s - j
        return (1.0 - f) * b[j] + f * b[j + 1]
    raise ValueError(f"unknown trajectory kind {kind!r}")


def pattern_at(net, x: np.ndarray) -> tuple[tuple[int, ...], ...]:
    """The whole-network code vector at input x: one tuple of codes per layer."""
    h = np.asarray(x, dtype=np.float64)
    codes = []
    for w, b, act in zip(net.weights, net.biases, net.activations):
        z = np.asarray(w, dtype=np.float64) @ h + np.asarray(b, dtype=np.float64)
        codes.append(tuple(int(c) for c in code_of(z, act)))
        h = act_of(z, act)
    return tuple(codes)


def flat(pattern) -> tuple[int, ...]:
    return tuple(c for layer in pattern for c in layer)


# ------------------------------------------------------------------ affine maps under a pattern


def affine_maps(net, pattern):
    """Under a fixed pattern, every layer is affine in x.

    Returns ``pre``: per layer d (0-based list index d-1), ``(Wz, cz)`` with
    ``z_d = Wz x + cz``; and ``post``: per d = 0..L, ``(M, c)`` with ``h_d = M x + c``.
    """
    dim = np.asarray(net.weights[0]).shape[1]
    m, c = np.eye(dim), np.zeros(dim)
    pre, post = [], [(m, c)]
    for w, b, act, codes in zip(net.weights, net.biases, net.activations, pattern):
        w = np.asarray(w, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        wz = w @ m
        cz = w @ c + b
        pre.append((wz, cz))
        m_next = np.zeros_like(wz)
        c_next = np.zeros_like(cz)
        for j, code in enumerate(codes):
            passes = act == "identity" or (act == "relu" and code == 1) or (act == "hardtanh" and code == 0)
            if passes:
                m_next[j] = wz[j]
                c_next[j] = cz[j]
            elif act == "relu":  # code 0: h = 0
                pass
            else:  # hardtanh saturated: h = +-1, constant
                c_next[j] = float(code)
        m, c = m_next, c_next
        post.append((m, c))
    return pre, post


# ------------------------------------------------------------------------- root finding


def linear_roots(a: float, slope: float, level: float, lo: float, hi: float) -> list[float]:
    """Roots of a + slope * t = level with lo < t <= hi."""
    if slope == 0.0:
        return []
    r = (level - a) / slope
    return [r] if lo < r <= hi else []


def trig_roots(gamma: float, alpha: float, beta: float, level: float, omega: float,
               lo: float, hi: float) -> list[float]:
    """Roots t in (lo, hi] of gamma + alpha cos(omega t) + beta sin(omega t) = level."""
    r = math.hypot(alpha, beta)
    if r == 0.0:
        return []
    u = (level - gamma) / r
    if abs(u) >= 1.0:  # never reaches the level, or touches it at one point without leaving
        return []
    phi = math.atan2(beta, alpha)
    acu = math.acos(u)
    out = []
    for k in range(-2, 3):
        for theta in (phi + acu + 2 * math.pi * k, phi - acu + 2 * math.pi * k):
            t = theta / omega
            if lo < t <= hi:
                out.append(t)
    # Near a tangent (0 < 1 - |u| small) acos loses accuracy like 1e-16 / sqrt(2 (1 - |u|))
    # and the two roots crowd together: refuse rather than guess.
    if out and 0.0 < 1.0 - abs(u) < 1e-9:
        raise IllConditioned(f"near-tangent threshold contact (1 - |u| = {1.0 - abs(u)!r})")
    return sorted(set(out))


# ----------------------------------------------------------------------------- lengths


def trig_piece_length(a: np.ndarray, b: np.ndarray, omega: float, t0: float, t1: float) -> float:
    """Arc length over [t0, t1] of G + A cos(omega t) + B sin(omega t)."""
    aa, bb, ab = float(a @ a), float(b @ b), float(a @ b)
    if aa == 0.0 and bb == 0.0:
        return 0.0
    # |d/dt|^2 = omega^2 |B cos - A sin|^2 = omega^2 (p + q cos 2theta + s sin 2theta)
    p = 0.5 * (aa + bb)
    q = 0.5 * (bb - aa)
    s = -ab

    def speed(t):
        th = omega * t
        return omega * math.sqrt(max(p + q * math.cos(2 * th) + s * math.sin(2 * th), 0.0))

    # The speed can vanish (A parallel to B) where p + R cos(2 theta - psi) is minimal; the
    # integrand has a kink there, so tell quad about those points.
    psi = math.atan2(s, q)
    points = []
    for k in range(-4, 6):
        th = (psi + math.pi + 2 * math.pi * k) / 2
        t = th / omega
        if t0 < t < t1:
            points.append(t)
    edges = [t0] + sorted(points) + [t1]
    total = 0.0
    for lo, hi in zip(edges, edges[1:]):
        if hi > lo:
            val, _ = integrate.quad(speed, lo, hi, epsabs=0.0, epsrel=1e-13, limit=200)
            total += val
    return total


# ------------------------------------------------------------------------------ the walk


def _is_closed(trajectory) -> bool:
    return trajectory.kind == CIRCLE or bool(trajectory.closed)


def _stretches(trajectory):
    """The path cut into stretches on which x(t) is one smooth formula.

    Yields ``(t_start, t_end, kind, data)``: for a linear stretch ``data = (x_at, dx_dt)``
    with x(t) = x_at(t0) + dx_dt (t - t0) parametrised by (t0, x0); for trig ``(b0, b1, omega)``.
    """
    b = np.asarray(trajectory.basis, dtype=np.float64)
    if trajectory.kind == LINE:
        yield 0.0, 1.0, "lin", (0.0, b[0], b[1] - b[0])
    elif trajectory.kind in (ARC, CIRCLE):
        omega = math.pi / 2 if trajectory.kind == ARC else 2 * math.pi
        yield 0.0, 1.0, "trig", (b[0], b[1], omega)
    else:
        k = b.shape[0]
        for j in range(k - 1):
            t0 = j / (k - 1)
            t1 = 1.0 if j == k - 2 else (j + 1) / (k - 1)
            # on segment j: x = p_j + (t (K-1) - j) (p_{j+1} - p_j)
            yield t0, t1, "lin", (t0, b[j], (k - 1) * (b[j + 1] - b[j]))


def exact_reference(net, trajectory, eps: float = 1e-10) -> dict:
    """Exact crossing counts, distinct patterns and continuum lengths of ``trajectory`` through ``net``."""
    depth = len(net.weights)
    gap = 10 * eps

    def right_pattern(t):
        return pattern_at(net, point(trajectory, t + eps))

    def left_pattern(t):
        return pattern_at(net, point(trajectory, t - eps))

    lengths = np.zeros(depth + 1)
    crossing_ts: list[float] = []
    crossing_pairs: list[tuple] = []  # (t, left pattern, right pattern)
    patterns = set()

    first_pattern = None
    pattern = None
    for s_start, s_end, skind, data in _stretches(trajectory):
        # the right-limit pattern at the start of the stretch, from scratch
        start_pattern = right_pattern(s_start)
        if pattern is None:
            first_pattern = start_pattern
        elif start_pattern != pattern:  # a polyline vertex that happens to be a crossing
            crossing_pairs.append((s_start, pattern, start_pattern))
        pattern = start_pattern
        patterns.add(flat(pattern))
        t_cur = s_start
        while True:
            pre, post = affine_maps(net, pattern)
            # every root of every neuron's pre-activation at its thresholds, under `pattern`
            events = []  # (t, layer index 0-based, neuron)
            for d, ((wz, cz), act) in enumerate(zip(pre, net.activations)):
                levels = thresholds_of(act)
                if not levels:
                    continue
                if skind == "lin":
                    t0, x0, dx = data
                    a = wz @ x0 + cz
                    sl = wz @ dx
                    for j in range(wz.shape[0]):
                        for lev in levels:
                            # z(t) = a + sl (t - t0)
                            for r in linear_roots(a[j] - sl[j] * t0, sl[j], lev, t_cur + MERGE_TOL, s_end + MERGE_TOL):
                                events.append((r, d, j))
                else:
                    b0, b1, omega = data
                    al, be = wz @ b0, wz @ b1
                    for j in range(wz.shape[0]):
                        for lev in levels:
                            for r in trig_roots(cz[j], al[j], be[j], lev, omega, t_cur + MERGE_TOL, s_end + MERGE_TOL):
                                events.append((r, d, j))
            events.sort()
            if events and events[0][0] < t_cur + gap:
                raise IllConditioned(f"event at t={events[0][0]!r} within {gap} of the previous one at {t_cur!r}")
            t_next = events[0][0] if events else s_end
            if t_next >= s_end - MERGE_TOL:
                t_next = s_end
            elif t_next > s_end - gap:
                raise IllConditioned(f"event at t={t_next!r} within {gap} of a stretch end {s_end!r}")
            group = [e for e in events if e[0] <= t_next + MERGE_TOL]
            rest = [e for e in events if e[0] > t_next + MERGE_TOL]
            if rest and rest[0][0] < t_next + gap:
                raise IllConditioned(f"events at t={t_next!r} and t={rest[0][0]!r} closer than {gap}")

            # lengths over the piece [t_cur, t_next] under `pattern`
            for d, (m, _c) in enumerate(post):
                if skind == "lin":
                    lengths[d] += float(np.linalg.norm(m @ data[2])) * (t_next - t_cur)
                else:
                    b0, b1, omega = data
                    lengths[d] += trig_piece_length(m @ b0, m @ b1, omega, t_cur, t_next)

            if t_next >= s_end:
                break
            # the pattern just left of t_next must be `pattern` (checks the root finding) ...
            if left_pattern(t_next) != pattern:
                raise IllConditioned(f"forward pass at t-eps disagrees with the walk at t={t_next!r}")
            # ... and the pattern just right of it, from scratch
            new_pattern = right_pattern(t_next)
            if new_pattern != pattern:
                expected = {(d, j) for _, d, j in group}
                for d in range(depth):
                    for j, (c0, c1) in enumerate(zip(pattern[d], new_pattern[d])):
                        if c0 != c1 and (d, j) not in expected:
                            raise IllConditioned(f"neuron ({d + 1}, {j}) changes at t={t_next!r} without a root there")
                crossing_pairs.append((t_next, pattern, new_pattern))
                pattern = new_pattern
                patterns.add(flat(pattern))
            t_cur = t_next

    if _is_closed(trajectory) and pattern != first_pattern:
        crossing_pairs.append((1.0, pattern, first_pattern))

    transitions = np.zeros(depth, dtype=np.int64)
    pattern_changes = np.zeros(depth, dtype=np.int64)
    crossings = []
    for t, left, right in crossing_pairs:
        for d in range(depth):
            diff = [(j, c0, c1) for j, (c0, c1) in enumerate(zip(left[d], right[d])) if c0 != c1]
            if diff:
                pattern_changes[d] += 1
            for j, c0, c1 in diff:
                transitions[d] += abs(c1 - c0)
                crossings.append((float(t), d + 1, j, int(c0), int(c1)))
    crossings.sort(key=lambda c: (c[0], c[1], c[2]))
    return dict(
        transitions=transitions,
        pattern_changes=pattern_changes,
        network_changes=len(crossing_pairs),
        distinct_patterns=len(patterns),
        lengths=lengths,
        crossings=crossings,
    )
