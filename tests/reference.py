"""Independent float64 NumPy oracle: slow, plain and obviously right.

It samples every point explicitly in input space from the trajectory's definition (no
projected basis), runs the whole forward pass on all points at once, and counts distinct
patterns exactly (sets of code vectors, no hashing). Only for small N.
"""
from __future__ import annotations

import numpy as np

from fastexpr.plan import ARC, CIRCLE, LINE


def sample_points(trajectory, n_points: int, start: int = 0, stop: int | None = None) -> np.ndarray:
    """x(t_i) for t_i = i / (n_points - 1), i = start .. stop-1, straight from the definitions in the README.

    A polyline sample sits at s = i (M - 1) / (n_points - 1), in exact (Python integer) arithmetic.
    """
    indices = range(start, n_points if stop is None else stop)
    t = np.array([i / (n_points - 1) for i in indices])
    b = trajectory.basis
    if trajectory.kind == LINE:
        return (1 - t)[:, None] * b[0] + t[:, None] * b[1]
    if trajectory.kind == ARC:
        return np.cos(np.pi * t / 2)[:, None] * b[0] + np.sin(np.pi * t / 2)[:, None] * b[1]
    if trajectory.kind == CIRCLE:
        return np.cos(2 * np.pi * t)[:, None] * b[0] + np.sin(2 * np.pi * t)[:, None] * b[1]
    m = b.shape[0]
    out = np.empty((t.size, b.shape[1]))
    for row, i in enumerate(indices):
        j, r = divmod(i * (m - 1), n_points - 1)
        f = r / (n_points - 1)
        if j > m - 2:  # the last sample: the end of the last segment
            j, f = m - 2, 1.0
        out[row] = (1 - f) * b[j] + f * b[j + 1]
    return out


def region_codes(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return (z > 0).astype(np.int64)
    if activation == "hardtanh":
        return np.where(z < -1, -1, np.where(z > 1, 1, 0))
    return np.zeros(z.shape, dtype=np.int64)


def activate(z: np.ndarray, activation: str) -> np.ndarray:
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "hardtanh":
        return np.clip(z, -1, 1)
    return z


def path_length(h: np.ndarray) -> float:
    return float(np.sum(np.sqrt(np.sum((h[1:] - h[:-1]) ** 2, axis=1))))


def reference_measure(net, trajectory, n_points: int, start: int = 0, stop: int | None = None) -> dict:
    """All measures of ``trajectory`` through ``net`` over samples start .. stop-1 of ``n_points``, in float64."""
    h = sample_points(trajectory, n_points, start, stop)
    lengths = [path_length(h)]
    transitions, pattern_changes, all_codes = [], [], []
    for w, b, act in zip(net.weights, net.biases, net.activations):
        z = h @ w.T + b
        codes = region_codes(z, act)
        step = np.abs(np.diff(codes, axis=0))
        transitions.append(int(step.sum()))
        pattern_changes.append(int((step.sum(axis=1) > 0).sum()))
        all_codes.append(codes)
        h = activate(z, act)
        lengths.append(path_length(h))
    full = np.concatenate(all_codes, axis=1)
    return dict(
        transitions=np.array(transitions),
        pattern_changes=np.array(pattern_changes),
        network_changes=int((np.abs(np.diff(full, axis=0)).sum(axis=1) > 0).sum()),
        distinct_patterns=len({row.tobytes() for row in full}),
        lengths=np.array(lengths),
    )
