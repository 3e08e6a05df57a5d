"""The normalised measurement plan every backend receives, and the partials it returns.

This module is the one written statement of fastexpr's semantics on the Python side
(``csrc/common/semantics.h`` is its C++/CUDA twin). Validation happens before a
:class:`Plan` is built; a backend may assume every field is well formed.

Semantics, in brief (README "Semantics" has the long form):

* samples ``t_i = i / (N - 1)``, ``i = 0 .. N-1``, computed in float64; a POLYLINE sample
  sits at ``s = i (K - 1) / (N - 1)``, its segment ``j = floor(s)`` and fraction ``f = s - j``
  computed with exact integer arithmetic (``f == 0`` exactly on a vertex);
* layer 1 is evaluated from the trajectory's projected basis, in float64, then cast to
  the compute dtype: ``z1 = sum_k c_k(t) proj[k] + bias1`` (a LINE as ``x0 + t (x1 - x0)``,
  so that a line from a point to itself is constant);
* layers 2..L are ``z = W h + b`` in the compute dtype, ``h = act(z)``; a pre-activation that
  is inf or NaN makes the backend raise :class:`OverflowInForwardPass`;
* region codes (ties stay in the lower/inner region):
  relu ``1 if z > 0 else 0``; hardtanh ``-1 if z < -1, +1 if z > 1, else 0``; identity ``0``;
* a point's pattern hash is the wrapping uint64 sum of ``pattern_key(d, j, code)`` over
  all layers d (1-based) and neurons j (0-based) whose code is non-zero (additive
  Zobrist hashing: collisions between two distinct patterns have probability 2^-64);
* lengths are summed over consecutive pairs in float64; a pair's length at layer d >= 1
  is ``||h_{i+1} - h_i||_2`` of the post-activations in the compute dtype, with no square
  under- or overflowing (a plain sum of squares where it is safe, else a scaled one); the
  input length (d = 0) comes from the trajectory's own description, in float64, in units of
  ``scale`` (a power of two near the largest input coordinate, so nothing under- or
  overflows): LINE ``|t_{i+1} - t_i| line_norm``; ARC/CIRCLE the chord
  ``2 |sin(D/2)| ||sin(a) u - cos(a) v||`` between the angles of the two samples (D their
  difference, a their midpoint), from ``coords``; POLYLINE ``|f' - f| seg_len[j]`` when
  both samples lie on segment j, else the direct norm ``||x(t_{i+1}) - x(t_i)||`` from the
  (scaled) vertices. No difference of nearby large numbers enters a length.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Activation codes, shared with csrc/common/semantics.h.
IDENTITY, RELU, HARDTANH = 0, 1, 2
ACTIVATION_CODES = {"identity": IDENTITY, "relu": RELU, "hardtanh": HARDTANH}
ACTIVATION_NAMES = {v: k for k, v in ACTIVATION_CODES.items()}

# Trajectory kinds, shared with csrc/common/semantics.h.
# LINE:     c = (1, t)                          over basis (x0, x1 - x0): constant when x0 == x1
# ARC:      c = (cos(pi t / 2), sin(pi t / 2))  over basis (x0, x1)
# CIRCLE:   c = (cos(2 pi t), sin(2 pi t))      over basis (u, v)
# POLYLINE: s = i (K - 1) / (N - 1) exactly, j = min(floor(s), K - 2), f = s - j,
#           x = (1 - f) p_j + f p_{j+1}          over basis = the K vertices
LINE, ARC, CIRCLE, POLYLINE = 0, 1, 2, 3
KIND_NAMES = {LINE: "line", ARC: "arc", CIRCLE: "great_circle", POLYLINE: "polyline"}

#: A float64 sum of squares q within these bounds lost nothing to under- or overflow (fx::SafeSum<double>);
#: outside them (or q = 0) a norm is recomputed with every row scaled by its largest entry.
SAFE_SUM_LO, SAFE_SUM_HI = 1.4916681462400413e-154, 1.7976931348623157e308
#: The norms sqrt(q) of such sums.
SAFE_NORM_LO, SAFE_NORM_HI = 1.2213386697554620e-77, 1.3407807929942596e154

MASK64 = (1 << 64) - 1


class OverflowInForwardPass(ValueError, ArithmeticError):
    """A pre-activation became inf or NaN in the compute dtype: every measure would be meaningless.

    A ``ValueError`` (the network or the inputs are too large for the dtype) and an ``ArithmeticError``.
    """


def check_forward_pass(plan: "Plan", layer: int) -> None:
    """Raise :class:`OverflowInForwardPass` when a backend saw a non-finite pre-activation in
    ``layer`` (1-based, the first such layer; 0: none)."""
    if layer:
        hint = ("measure with dtype='float64'" if np.dtype(plan.dtype) == np.float32
                else "the network or the inputs are too large for float64")
        raise OverflowInForwardPass(f"the pre-activations of layer {layer} overflow {np.dtype(plan.dtype).name} "
                                    f"(inf or NaN) along this trajectory; {hint}")


def splitmix64(x):
    """splitmix64 finaliser on uint64 NumPy arrays or Python ints (wrapping arithmetic)."""
    if isinstance(x, (int, np.integer)):
        z = (int(x) + 0x9E3779B97F4A7C15) & MASK64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def key_input(layer, neuron, code):
    """The 64-bit integer hashed into ``pattern_key``: ``(layer << 33) ^ (neuron << 1) ^ (code > 0)``."""
    return (np.uint64(layer) << np.uint64(33)) ^ (np.asarray(neuron, dtype=np.uint64) << np.uint64(1)) ^ np.uint64(
        1 if code > 0 else 0
    )


def pattern_keys(layer: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Keys (uint64, shape (width,)) for code +1 and code -1 of every neuron of a layer (1-based)."""
    j = np.arange(width, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return splitmix64(key_input(layer, j, +1)), splitmix64(key_input(layer, j, -1))


@dataclass(frozen=True)
class Plan:
    """Everything a backend needs for one trajectory through one network.

    All arrays are C-contiguous. ``proj``, ``bias1``, ``coords``, ``vertices`` and ``seg_len``
    are float64; ``weights``/``biases`` (layers 2..L) are in ``dtype``.
    """

    n_points: int                       # N >= 2 (may exceed 2**31)
    dtype: np.dtype                     # float32 or float64: the forward pass
    activations: tuple[int, ...]        # L activation codes
    widths: tuple[int, ...]             # (m, n_1, ..., n_L)
    kind: int                           # LINE, ARC, CIRCLE or POLYLINE
    proj: np.ndarray                    # (K, n_1) = basis @ W1.T, float64 (LINE: rows W1 x0, W1 (x1 - x0))
    bias1: np.ndarray                   # (n_1,), float64
    weights: tuple[np.ndarray, ...]     # layers 2..L: (n_d, n_{d-1}) in dtype
    biases: tuple[np.ndarray, ...]      # layers 2..L: (n_d,) in dtype
    scale: float                        # power of two: the unit of line_norm, coords, vertices and seg_len
    line_norm: float                    # LINE: ||x1 - x0|| / scale; else 0
    coords: np.ndarray                  # ARC, CIRCLE: (2, 2), column k = basis[k] / scale in an orthonormal
    #                                     basis of the span of the two basis vectors; else zeros
    vertices: np.ndarray                # POLYLINE: (K, m) vertices / scale; else shape (0, m)
    seg_len: np.ndarray                 # POLYLINE: (K-1,) ||p_{j+1} - p_j|| / scale; else shape (0,)
    device: str = "cpu"                 # where the caller's data lives ("cpu", "cuda:0", ...)

    @property
    def depth(self) -> int:
        return len(self.activations)

    def check_range(self, start: int, stop: int) -> None:
        """``ValueError`` unless samples ``start .. stop-1`` lie within the trajectory."""
        if not (0 <= start < stop <= self.n_points):
            raise ValueError(f"sample range [{start}, {stop}) is not within [0, {self.n_points})")


#: ``DistinctHashes`` merges its waiting hashes once they are this fraction of the kept ones ...
MERGE_FRACTION = 1 / 8
#: ... or at least this many (a merge costs a pass over the kept ones).
MERGE_AT_LEAST = 1 << 16
#: Kept hashes moved per step of a merge (bounds its temporary arrays).
MERGE_BLOCK = 1 << 18


def _uint64_hashes(hashes) -> np.ndarray:
    """``hashes`` as a 1-D uint64 array; TypeError/ValueError for anything else."""
    hashes = np.asarray(hashes)
    if hashes.dtype != np.uint64:
        raise TypeError(f"pattern hashes must be a uint64 array, got dtype {hashes.dtype}")
    if hashes.ndim != 1:
        raise ValueError(f"pattern hashes must be a 1-D array, got shape {hashes.shape}")
    return hashes


def _dedupe(ordered: np.ndarray) -> np.ndarray:
    """The distinct values of a sorted array (a new array)."""
    keep = np.empty(ordered.size, bool)
    keep[:1] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def distinct_sorted(hashes) -> np.ndarray:
    """The distinct values of a uint64 array, sorted: ``np.unique`` by sorting, without the hash
    table of NumPy 2.4's ``np.unique`` (12x slower on 4M uint64 values here, memory untraced)."""
    return _dedupe(np.sort(_uint64_hashes(hashes)))


def _ensure_distinct_sorted(hashes: np.ndarray) -> np.ndarray:
    """``hashes`` itself when already strictly increasing (as the backends return them), else ``distinct_sorted``."""
    return hashes if np.all(hashes[1:] > hashes[:-1]) else distinct_sorted(hashes)


def _absent(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of ``values`` do not occur in the sorted array ``ordered`` (bool mask; temporaries
    bounded by MERGE_BLOCK)."""
    out = np.ones(values.size, bool)
    if ordered.size == 0:
        return out
    for start in range(0, values.size, MERGE_BLOCK):
        part = values[start:start + MERGE_BLOCK]
        at = np.searchsorted(ordered, part)
        np.minimum(at, ordered.size - 1, out=at)
        np.not_equal(ordered[at], part, out=out[start:start + part.size])
    return out


class DistinctHashes:
    """A set of uint64 pattern hashes stored compactly: one sorted, de-duplicated array (8 bytes a hash).

    ``add`` drops at once the hashes the array holds already; the others wait, and are merged
    in once they reach ``MERGE_FRACTION`` of it (or ``MERGE_AT_LEAST``), from the back, into the
    array grown in place (a realloc, no copy, where nothing else refers to it). Each merge costs
    one pass over the kept hashes, and memory peaks near 12 bytes per distinct hash (README,
    Threads, processes and memory), against 65 for ``np.unique`` of everything gathered.
    """

    def __init__(self, hashes=None):
        self._kept = np.zeros(0, np.uint64)  # sorted, distinct
        self._waiting: list[np.ndarray] = []  # sorted, distinct each, none of them in _kept
        self._n_waiting = 0
        if hashes is not None:
            self.add(hashes)

    def add(self, hashes) -> "DistinctHashes":
        """Add a uint64 array of hashes (any order, repeats allowed)."""
        fresh = _ensure_distinct_sorted(_uint64_hashes(hashes))
        fresh = fresh[_absent(self._kept, fresh)]
        if fresh.size:
            self._waiting.append(fresh)
            self._n_waiting += fresh.size
        if self._n_waiting >= max(self._kept.size * MERGE_FRACTION, MERGE_AT_LEAST):
            self._merge()
        return self

    def _merge(self) -> None:
        """Merge the waiting hashes into the kept array."""
        if not self._waiting:
            return
        fresh = np.concatenate(self._waiting)
        self._waiting, self._n_waiting = [], 0
        fresh.sort()
        fresh = _dedupe(fresh)
        n = self._kept.size
        target = np.searchsorted(self._kept, fresh)  # where each fresh hash lands in the merged array
        target += np.arange(fresh.size)
        try:
            self._kept.resize(n + fresh.size, refcheck=True)
        except ValueError:  # another reference to the array exists (a caller kept ``sorted()``)
            self._kept = np.concatenate([self._kept, np.empty(fresh.size, np.uint64)])
        kept = self._kept
        for stop in range(n, 0, -MERGE_BLOCK):  # back to front: a kept hash only moves up
            start = max(0, stop - MERGE_BLOCK)
            block = kept[start:stop].copy()
            kept[np.arange(start, stop) + np.searchsorted(fresh, block)] = block
        kept[target] = fresh

    def sorted(self) -> np.ndarray:
        """The distinct hashes, sorted (uint64)."""
        self._merge()
        return self._kept

    def __len__(self) -> int:
        self._merge()
        return self._kept.size


@dataclass
class Partials:
    """What a backend's ``run(plan, start, stop)`` returns for samples ``start .. stop-1``.

    Pairs ``(i, i+1)`` with ``start <= i < stop - 1`` are counted; ``measure`` cuts long
    trajectories into chunks that share their boundary sample and adds the partials.
    """

    transitions: np.ndarray      # (L,) int64
    pattern_changes: np.ndarray  # (L,) int64
    network_changes: int
    lengths: np.ndarray          # (L+1,) float64, index 0 is the input trajectory
    run_hashes: np.ndarray       # uint64: hash of sample ``start`` and of every later sample whose
    #                              full pattern differs from its predecessor's (network_changes + 1
    #                              values; a backend may drop repeated values early, never lose
    #                              a distinct one or invent one)
    _seen: DistinctHashes | None = field(default=None, repr=False)  # hashes of every partial added in

    def __iadd__(self, other: "Partials") -> "Partials":
        self.transitions = self.transitions + other.transitions
        self.pattern_changes = self.pattern_changes + other.pattern_changes
        self.network_changes += other.network_changes
        self.lengths = self.lengths + other.lengths
        if self._seen is None:
            self._seen = DistinctHashes(self.run_hashes)
        # ``other`` may itself be a sum of partials (a shard of fastexpr.measure_sharded): all of its hashes
        self._seen.add(other._seen.sorted() if other._seen is not None else other.run_hashes)
        return self

    def distinct(self) -> np.ndarray:
        """The distinct run-start hashes of this partial and of every one added to it, sorted."""
        return self._seen.sorted() if self._seen is not None else distinct_sorted(self.run_hashes)
