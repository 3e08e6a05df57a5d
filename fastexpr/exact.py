"""Exact counting: walk a piecewise-linear network along a trajectory from crossing point to crossing point.

The trajectory is cut into *units*: sub-intervals of a line, of one polyline segment, or of
an arc or circle's angle, on which every pre-activation has a closed form (``k0 + k1 u`` or
``k0 + k1 cos u + k2 sin u``). A backend walks the units in parallel (the walker is
``csrc/common/exact_walk.h``); this module cuts and merges: counts add up, the piece hashes
are united, and where two units meet, the last piece of one and the first piece of the
next are compared, so a crossing point exactly on a unit boundary is counted once, like a
sampled chunk boundary. Semantics: README, "Exact counting".
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from . import backends
from ._checks import is_integer
from .network import Network
from .plan import ARC, CIRCLE, LINE, POLYLINE, DistinctHashes, OverflowInForwardPass
from .result import Result
from .trajectory import Trajectory

LINEAR_UNIT, TRIG_UNIT = 0, 1
#: Crossing points closer than this fraction of a unit's parameter range (a line's t, a polyline
#: segment's fraction, an arc's or circle's full angle) are one crossing point.
TOLERANCE = 2.0 ** -44
#: Units per thread for load balance (crossings are unevenly spread along a path).
UNITS_PER_THREAD = 16
#: Most per-neuron code entries (units x neurons) held at once; larger trajectories go in batches.
CODES_PER_BATCH = 1 << 24

CROSSING_DTYPE = np.dtype([("t", np.float64), ("layer", np.int64), ("neuron", np.int64),
                           ("from_code", np.int8), ("to_code", np.int8)])


@dataclass
class Units:
    """Sub-intervals of a trajectory in walking order, with everything a backend needs."""

    kind: int                 # LINEAR_UNIT or TRIG_UNIT
    k0: np.ndarray            # (U, n_1) layer-1 coefficients
    k1: np.ndarray
    k2: np.ndarray            # (U, n_1) for TRIG_UNIT, (0, 0) otherwise
    u0: np.ndarray            # (U,) unit start, native parameter
    u1: np.ndarray            # (U,) unit end
    g_in: np.ndarray          # (U, 3) input Gram sums, scaled by 1 / in_scale^2
    in_scale: np.ndarray      # (U,) the input length of a unit is in_scale * walker's lengths[0]
    t0: np.ndarray            # (U,) map from the native parameter to t: t = t0 + t_per_u * (u - u0)
    t_per_u: np.ndarray       # (U,)
    tol: float                # crossing-point tolerance in native units
    closed: bool


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _scaled(v: np.ndarray) -> tuple[np.ndarray, float]:
    """``v / s`` and ``s = max |v|`` (1 for a zero vector): norms of the result neither overflow nor underflow."""
    s = float(np.max(np.abs(v))) if v.size else 0.0
    return (v / s, s) if s > 0 else (v, 1.0)


def make_units(net: Network, trajectory: Trajectory, n_units: int | None = None) -> Units:
    """Cut ``trajectory`` into units for ``net``'s first layer (``n_units``: at least that many)."""
    want = n_units or UNITS_PER_THREAD * _threads()
    w1, b1 = net.weights[0], net.biases[0]
    basis = trajectory.basis
    if trajectory.kind in (LINE, POLYLINE):
        starts, ends = basis[:-1], basis[1:]
        segments = len(starts)
        parts = max(1, -(-want // segments))
        k0_seg = starts @ w1.T + b1
        diffs = ends - starts
        k1_seg = diffs @ w1.T
        norms = np.array([_norm(d) for d in diffs])
        f = np.arange(parts + 1) / parts
        seg = np.repeat(np.arange(segments), parts)
        u0 = np.tile(f[:-1], segments)
        u1 = np.tile(f[1:], segments)
        t_scale = 1.0 / segments
        return Units(LINEAR_UNIT, np.ascontiguousarray(k0_seg[seg]), np.ascontiguousarray(k1_seg[seg]),
                     np.zeros((0, 0)), u0, u1, np.tile([1.0, 0.0, 0.0], (seg.size, 1)), norms[seg],
                     (seg + u0) * t_scale, np.full(seg.size, t_scale), TOLERANCE,
                     trajectory.closed)
    span = 0.5 * np.pi if trajectory.kind == ARC else 2.0 * np.pi
    edges = np.arange(want + 1) * (span / want)
    (u, v), scale = _scaled(basis)
    gram = np.array([u @ u, v @ v, u @ v])
    k = np.stack([b1, w1 @ basis[0], w1 @ basis[1]])
    return Units(TRIG_UNIT, *(np.ascontiguousarray(np.broadcast_to(c, (want, c.size))) for c in k),
                 edges[:-1], edges[1:], np.tile(gram, (want, 1)), np.full(want, scale), edges[:-1] / span,
                 np.full(want, 1.0 / span), TOLERANCE * span, trajectory.kind == CIRCLE)


def _norm(v: np.ndarray) -> float:
    """||v||_2 without overflow or underflow."""
    w, s = _scaled(v)
    return float(np.sqrt(w @ w) * s)


def _backend(name: str):
    """The backend module that walks units (``auto``: the fastest one with an exact engine here)."""
    return backends.resolve(name, "cpu", op="exact")


@dataclass
class ExactTotals:
    """Merged exact counts of one trajectory (the fields of a Result, plus diagnostics)."""

    transitions: np.ndarray
    pattern_changes: np.ndarray
    network_changes: int
    distinct_patterns: int
    lengths: np.ndarray
    repairs: int
    crossings: np.ndarray | None
    backend: str
    hashes: np.ndarray | None = None      # the distinct piece hashes, sorted (for merging shards)
    first_code: np.ndarray | None = None  # codes of the first and last piece walked (shard joins)
    last_code: np.ndarray | None = None


def walk(net: Network, trajectory: Trajectory, backend: str = "auto", max_crossings: int = 0,
         progress: bool | None = None, n_units: int | None = None, unit_range=None) -> ExactTotals:
    """Exact counts of ``trajectory`` through ``net``; ``max_crossings`` > 0 also records crossings.
    ``unit_range=(a, b)`` walks units a..b-1 only (one shard, merged by fastexpr.sweep), without
    the wrap-around join of a closed trajectory."""
    from tqdm.auto import tqdm

    module = _backend(backend)
    units = make_units(net, trajectory, n_units or getattr(module, "EXACT_UNITS", None))
    depth, total = net.depth, sum(net.widths[1:])
    lo, hi = unit_range or (0, units.u0.size)
    n = hi - lo
    per_batch = max(1, min(n, CODES_PER_BATCH // max(1, total)))
    weights = [np.ascontiguousarray(w) for w in net.weights[1:]]
    biases = [np.ascontiguousarray(b) for b in net.biases[1:]]
    acts = [{"identity": 0, "relu": 1, "hardtanh": 2}[a] for a in net.activations]
    transitions = np.zeros(depth, np.int64)
    pattern_changes = np.zeros(depth, np.int64)
    network_changes = repairs = 0
    lengths = np.zeros(depth + 1)
    seen, crossings = DistinctHashes(), []  # the piece hashes, kept sorted and distinct
    first = prev_last = None
    disable = (n < 4 * per_batch) if progress is None else not progress
    with tqdm(total=n, unit="unit", disable=disable, desc=f"fastexpr exact[{module.NAME}]") as bar:
        for a in range(lo, hi, per_batch):
            b = min(hi, a + per_batch)
            sl = slice(a, b)
            out = module.exact_walk(units.kind, weights, biases, acts, units.k0[sl], units.k1[sl],
                                    units.k2[sl] if units.kind == TRIG_UNIT else units.k2, units.u0[sl], units.u1[sl],
                                    units.g_in[sl], units.tol, max_crossings)
            bad = np.flatnonzero(out["errors"])
            if bad.size:
                raise OverflowInForwardPass("a pre-activation or its slope overflowed float64 during the exact walk "
                                            f"(unit {a + bad[0]}): the network's values are too large")
            transitions += out["transitions"].sum(axis=0)
            pattern_changes += out["pattern_changes"].sum(axis=0)
            network_changes += int(out["network_changes"].sum())
            repairs += int(out["repairs"].sum())
            lens = out["lengths"].copy()
            lens[:, 0] *= units.in_scale[sl]
            lengths += lens.sum(axis=0)
            seen.add(out["hashes"])
            if max_crossings > 0:
                unit, u, layer, neuron, c_from, c_to = out["crossings"]
                rec = np.empty(unit.size, CROSSING_DTYPE)
                g = unit + a
                rec["t"] = units.t0[g] + units.t_per_u[g] * (u - units.u0[g])
                rec["layer"], rec["neuron"], rec["from_code"], rec["to_code"] = layer + 1, neuron, c_from, c_to
                crossings.append(rec)
            # Unit boundaries: the last piece of one unit against the first piece of the next.
            lasts, firsts = out["last_code"], out["first_code"]
            if first is None:
                first = firsts[0].copy()
            joins_from = np.concatenate([prev_last[None], lasts[:-1]]) if prev_last is not None else lasts[:-1]
            joins_to = firsts if prev_last is not None else firsts[1:]
            join_t = units.t0[a:b] if prev_last is not None else units.t0[a + 1:b]
            _count_joins(net, joins_from, joins_to, join_t, transitions, pattern_changes, crossings, max_crossings)
            network_changes += int((joins_from != joins_to).any(axis=1).sum())
            prev_last = lasts[-1].copy()
            bar.update(b - a)
    if units.closed and unit_range is None:  # t = 1 is t = 0: a crossing point if the patterns differ there
        _count_joins(net, prev_last[None], first[None], np.zeros(1), transitions, pattern_changes, crossings,
                     max_crossings)
        network_changes += int((prev_last != first).any())
    record = None
    if max_crossings > 0:
        record = np.concatenate(crossings) if crossings else np.empty(0, CROSSING_DTYPE)
        record = np.sort(record, order=("t", "layer", "neuron"))[:max_crossings]
    hashes = seen.sorted()
    return ExactTotals(transitions, pattern_changes, network_changes, int(hashes.size), lengths, repairs, record,
                       module.NAME, hashes, first, prev_last)


def _count_joins(net, codes_from, codes_to, t, transitions, pattern_changes, crossings, max_crossings):
    """Add the crossing points at unit joins (rows of codes that differ) to the totals, in place."""
    if codes_from.shape[0] == 0:
        return
    diff = np.abs(codes_to.astype(np.int64) - codes_from.astype(np.int64))
    offsets = np.cumsum((0,) + net.widths[1:])
    for d in range(net.depth):
        block = diff[:, offsets[d]:offsets[d + 1]]
        transitions[d] += int(block.sum())
        pattern_changes[d] += int((block > 0).any(axis=1).sum())
    if max_crossings > 0:
        rows, cols = np.nonzero(diff)
        rec = np.empty(rows.size, CROSSING_DTYPE)
        layer = np.searchsorted(offsets, cols, side="right")
        rec["t"], rec["layer"], rec["neuron"] = t[rows], layer, cols - offsets[layer - 1]
        rec["from_code"], rec["to_code"] = codes_from[rows, cols], codes_to[rows, cols]
        crossings.append(rec)


def measure_exact(net: Network, trajs: list[Trajectory], n_points, backend: str, dtype, progress) -> Result:
    """``measure(..., exact=True)`` for a list of trajectories: a batched Result."""
    if n_points is not None:
        raise ValueError(f"n_points={n_points!r} has no meaning with exact=True: the exact engine counts every "
                         "crossing point in the continuum; leave n_points out")
    name = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if name != "float64":
        raise ValueError(f"exact=True computes in float64; got dtype={dtype!r}")
    for traj in trajs:
        _check(net, traj)
    totals = [walk(net, traj, backend, progress=progress) for traj in trajs]
    return Result(
        transitions=np.stack([t.transitions for t in totals]),
        pattern_changes=np.stack([t.pattern_changes for t in totals]),
        network_changes=np.array([t.network_changes for t in totals], dtype=np.int64),
        distinct_patterns=np.array([t.distinct_patterns for t in totals], dtype=np.int64),
        lengths=np.stack([t.lengths for t in totals]),
        n_points=None, widths=net.widths, activations=net.activations, dtype="float64", backend=totals[0].backend,
        trajectories=tuple(t.name for t in trajs), exact=True)


def crossings(net: Network, trajectory, max_crossings: int = 1_000_000, backend: str = "auto") -> np.ndarray:
    """The first ``max_crossings`` neuron crossings along ``trajectory``, sorted by t.

    A structured array with fields ``t`` (in [0, 1]), ``layer`` (1-based), ``neuron``
    (0-based), ``from_code`` and ``to_code`` (region codes on either side). Memory is
    bounded by ``max_crossings`` per thread; ``measure(..., exact=True)`` gives the totals.
    """
    from .measure import as_trajectory

    if not is_integer(max_crossings) or not 1 <= max_crossings <= 2 ** 62:
        raise ValueError(f"max_crossings must be a positive integer of at most 2**62, got {max_crossings!r}")
    traj = as_trajectory(trajectory)
    _check(net, traj)
    return walk(net, traj, backend, int(max_crossings)).crossings


def _check(net: Network, traj: Trajectory) -> None:
    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network, got {type(net).__name__}")
    if traj.dim != net.input_dim:
        raise ValueError(f"the trajectory has dimension {traj.dim} but the network expects {net.input_dim}")


