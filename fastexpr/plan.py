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
    _pending: list = field(default_factory=list, repr=False)  # later chunks' run_hashes, not merged yet
    _pending_size: int = field(default=0, repr=False)

    def __iadd__(self, other: "Partials") -> "Partials":
        self.transitions = self.transitions + other.transitions
        self.pattern_changes = self.pattern_changes + other.pattern_changes
        self.network_changes += other.network_changes
        self.lengths = self.lengths + other.lengths
        self._pending.append(other.run_hashes)
        self._pending_size += other.run_hashes.size
        # Merge once the pending hashes are as many as the merged ones: O(H log H) over a whole
        # run, instead of copying everything gathered so far after every chunk.
        if self._pending_size >= max(self.run_hashes.size, 1 << 20):
            self.distinct()
        return self

    def distinct(self) -> np.ndarray:
        """The distinct run-start hashes, sorted: ``run_hashes`` with the pending ones merged in."""
        self.run_hashes = np.unique(np.concatenate([self.run_hashes, *self._pending]))
        self._pending, self._pending_size = [], 0
        return self.run_hashes
