"""One-dimensional trajectories x(t), t in [0, 1], each described by a small basis and its coefficients.

Every trajectory is ``x(t) = sum_k c_k(t) basis[k]``: two basis vectors for lines, arcs
and great circles, the vertices for polylines. The network's first layer is applied to
the basis once (``W1 @ basis.T``), so no backend ever forms the N x input_dim points.
"""
from __future__ import annotations

import numpy as np

from ._arrays import device_of, to_float64
from ._checks import flag, is_integer
from .plan import ARC, CIRCLE, KIND_NAMES, LINE, POLYLINE


class Trajectory:
    """A trajectory: ``kind`` (a code from :mod:`fastexpr.plan`) and a float64 ``basis`` (K, dim).

    ``shape`` is the shape of one point as given (``(dim,)``, or e.g. ``(C, H, W)`` for images):
    the basis holds the points flattened in C order, and the taps engine reshapes them back
    before calling a model. ``closed``: t = 1 is t = 0 (``great_circle``, ``polyline(closed=True)``),
    which the exact engine joins; an open path that merely ends where it began is not closed.
    """

    def __init__(self, kind: int, basis: np.ndarray, device: str = "cpu", n_points: int | None = None,
                 shape: tuple[int, ...] | None = None, closed: bool = False):
        self.kind = kind
        self.closed = closed
        self.basis = basis
        self.device = device
        self.n_points = n_points  # the natural sample count of explicit point sets, else None
        self.shape = tuple(shape) if shape is not None else (basis.shape[1],)

    @property
    def dim(self) -> int:
        return self.basis.shape[1]

    @property
    def name(self) -> str:
        """The kind's name; "points" for an explicit point set (``points``, a raw array)."""
        return "points" if self.n_points is not None else KIND_NAMES[self.kind]

    def coefficients(self, n_points: int) -> np.ndarray:
        """Coefficients (n_points, K) of the basis at samples ``t_i = i / (n_points - 1)`` (float64).

        A polyline sample sits at ``s = i (K - 1) / (n_points - 1)``, its segment and fraction
        computed with exact integer arithmetic (fraction 0 exactly on a vertex).
        """
        if not is_integer(n_points):
            raise TypeError(f"n_points must be an integer, got {type(n_points).__name__}")
        n_points = int(n_points)
        if n_points < 2:
            raise ValueError(f"n_points must be at least 2 (t_i = i / (n_points - 1)), got {n_points}")
        i = np.arange(n_points, dtype=np.int64)
        t = i / (n_points - 1)
        if self.kind == LINE:
            return np.stack([1.0 - t, t], axis=1)
        if self.kind == ARC:
            return np.stack([np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)], axis=1)
        if self.kind == CIRCLE:
            return np.stack([np.cos(2.0 * np.pi * t), np.sin(2.0 * np.pi * t)], axis=1)
        k = self.basis.shape[0]
        if (n_points - 1) * (k - 1) >= 2**63:
            raise ValueError(f"{n_points} samples of a polyline through {k} points are too many to materialise")
        seg, frac = self._segments(i, n_points)
        coeffs = np.zeros((n_points, k))
        coeffs[i, seg] = 1.0 - frac
        coeffs[i, seg + 1] += frac
        return coeffs

    def _segments(self, i: np.ndarray, n_points: int) -> tuple[np.ndarray, np.ndarray]:
        """POLYLINE: segment and fraction of samples ``i`` of ``n_points`` (exact integer arithmetic)."""
        k = self.basis.shape[0]
        seg, rem = np.divmod(i * (k - 1), n_points - 1)
        frac = rem / (n_points - 1)
        last = seg > k - 2  # the final sample: the end of the last segment
        seg[last], frac[last] = k - 2, 1.0
        return seg, frac

    @property
    def plan_basis(self) -> np.ndarray:
        """The basis the plan's coefficients refer to: ``basis``, except ``(x0, x1 - x0)`` for a LINE."""
        basis = self.basis
        return np.stack([basis[0], basis[1] - basis[0]]) if self.kind == LINE else basis

    def terms(self, n_points: int, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """Samples ``start .. stop-1`` of ``n_points`` as two-term combinations of ``plan_basis``:
        ``x(t_i) = weights[i, 0] plan_basis[rows[i, 0]] + weights[i, 1] plan_basis[rows[i, 1]]``
        (``rows`` int64 and ``weights`` float64, both ``(stop - start, 2)``), as the plan's semantics
        state them (a LINE as ``x0 + t (x1 - x0)``; a POLYLINE sample from its exact segment and fraction)."""
        i = np.arange(start, stop, dtype=np.int64)
        if self.kind == POLYLINE:
            k = self.basis.shape[0]
            if (n_points - 1) * (k - 1) >= 2**63:
                raise ValueError(f"{n_points} samples of a polyline through {k} points are too many to sample exactly")
            seg, frac = self._segments(i, n_points)
            return np.stack([seg, seg + 1], axis=1), np.stack([1.0 - frac, frac], axis=1)
        t = i / (n_points - 1)
        rows = np.broadcast_to(np.array([0, 1], dtype=np.int64), (len(i), 2))
        if self.kind == LINE:
            return rows, np.stack([np.ones_like(t), t], axis=1)
        w = 0.5 * np.pi if self.kind == ARC else 2.0 * np.pi
        return rows, np.stack([np.cos(w * t), np.sin(w * t)], axis=1)

    def sample_range(self, n_points: int, start: int, stop: int) -> np.ndarray:
        """The flattened points ``x(t_i)`` of samples ``start .. stop-1`` of ``n_points``, float64
        ``(stop - start, dim)``, from :meth:`terms`."""
        rows, weights = self.terms(n_points, start, stop)
        basis = self.plan_basis
        return weights[:, :1] * basis[rows[:, 0]] + weights[:, 1:] * basis[rows[:, 1]]

    def sample(self, n_points: int) -> np.ndarray:
        """The ``(n_points, dim)`` sampled points ``x(t_i)``, ``t_i = i / (n_points - 1)``.

        Materialises every point: meant for plots and small checks, not for measuring.
        """
        return self.coefficients(n_points) @ self.basis

    def __repr__(self) -> str:
        return f"{self.name}(dim={self.dim}, basis_vectors={self.basis.shape[0]})"


def _endpoint(x, name: str) -> np.ndarray:
    """A float64 point of any shape with at least one axis (a vector, or e.g. a (C, H, W) image)."""
    arr = to_float64(x, name)
    if arr.ndim == 0:
        raise ValueError(f"{name} must be a point with at least one axis, got a scalar")
    return arr


def _pair(a, b, names: tuple[str, str]) -> tuple[np.ndarray, str, tuple[int, ...]]:
    u = _endpoint(a, names[0])
    v = _endpoint(b, names[1])
    if u.shape != v.shape:
        if u.ndim == v.ndim == 1:
            raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {u.shape[0]} and {v.shape[0]}")
        raise ValueError(f"{names[0]} and {names[1]} must have the same shape, got {u.shape} and {v.shape}")
    devices = {device_of(a), device_of(b)} - {"cpu"}
    return np.stack([u.ravel(), v.ravel()]), (devices.pop() if devices else "cpu"), u.shape


def line(x0, x1) -> Trajectory:
    """The segment ``x(t) = (1 - t) x0 + t x1``."""
    basis, device, shape = _pair(x0, x1, ("x0", "x1"))
    return Trajectory(LINE, basis, device, shape=shape)


def arc(x0, x1) -> Trajectory:
    """The paper's circular arc ``x(t) = cos(pi t / 2) x0 + sin(pi t / 2) x1``."""
    basis, device, shape = _pair(x0, x1, ("x0", "x1"))
    return Trajectory(ARC, basis, device, shape=shape)


def great_circle(u, v) -> Trajectory:
    """The closed curve ``x(t) = cos(2 pi t) u + sin(2 pi t) v`` (a great circle when u, v are
    orthogonal and of equal norm). Its first and last samples coincide."""
    basis, device, shape = _pair(u, v, ("u", "v"))
    return Trajectory(CIRCLE, basis, device, shape=shape, closed=True)


def polyline(points, closed: bool = False) -> Trajectory:
    """Piecewise-linear path through the rows of ``points`` (M >= 2), uniform in segment index.

    ``points`` is ``(M, dim)``, or ``(M, *shape)`` for points of any shape (e.g. images).

    Sample i of N sits at ``s = i (M - 1) / (N - 1)`` (exactly: a sample that falls on a vertex
    is that vertex), segment ``j = min(floor(s), M - 2)``, ``x = (1 - (s - j)) p_j + (s - j) p_{j+1}``;
    ``closed=True`` adds the segment from the last point back to the first.
    """
    closed = flag(closed, "closed")
    basis = to_float64(points, "points")
    if basis.ndim < 2:
        raise ValueError(f"points must be 2-dimensional (M, dim) or (M, *shape), got shape {basis.shape}")
    if basis.shape[0] < 2:
        raise ValueError(f"a polyline needs at least 2 points, got {basis.shape[0]}")
    shape = basis.shape[1:]
    basis = basis.reshape(basis.shape[0], -1)
    if closed:
        basis = np.concatenate([basis, basis[:1]])
    return Trajectory(POLYLINE, basis, device_of(points), shape=shape, closed=closed)


def points(array) -> Trajectory:
    """An explicit ``(N, dim)`` (or ``(N, *shape)``) array of trajectory points, measured at exactly those N samples.

    It is the polyline through the points sampled once per vertex, so ``n_points`` must be N.
    """
    traj = polyline(array)
    traj.n_points = traj.basis.shape[0]
    return traj
