"""measure(): validate, plan, dispatch to a backend chunk by chunk, reduce into a Result."""
from __future__ import annotations

import warnings

import numpy as np

from . import backends
from .network import Network
from .plan import ACTIVATION_CODES, POLYLINE, Partials, Plan
from .result import Result
from .trajectory import Trajectory, points

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

#: Samples per backend call when the backend does not say (chunks share one boundary sample).
DEFAULT_CHUNK = 1 << 20
#: Show a progress bar by default from this many samples on (when stderr is a terminal).
PROGRESS_FROM = 1 << 22
#: Warn about float32 rounding from this many samples on (bench/RESULTS.md, section 2).
FLOAT32_WARN_FROM = 1 << 20


class PrecisionWarning(UserWarning):
    """float32 at a resolution where rounding noise may inflate lengths and transitions."""


def _dtype(dtype) -> np.dtype:
    name = getattr(dtype, "name", None) or str(dtype).replace("torch.", "")
    if name not in DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return DTYPES[name]


def _n_points(n_points, trajectory: Trajectory) -> int:
    if n_points is None:
        if trajectory.n_points is None:
            raise ValueError(f"n_points is required for a {trajectory.name} trajectory")
        return trajectory.n_points
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)):
        raise TypeError(f"n_points must be an integer, got {type(n_points).__name__}")
    n_points = int(n_points)
    if n_points < 2:
        raise ValueError(f"n_points must be at least 2, got {n_points}")
    if trajectory.n_points is not None and n_points != trajectory.n_points:
        raise ValueError(f"an explicit point set is measured at its own {trajectory.n_points} points, "
                         f"got n_points={n_points}")
    return n_points


def as_trajectory(trajectory) -> Trajectory:
    """A Trajectory, or an explicit ``(N, dim)`` array of points turned into one."""
    if isinstance(trajectory, Trajectory):
        return trajectory
    if isinstance(trajectory, (str, bytes, dict)) or trajectory is None:
        raise TypeError(f"trajectory must be a fastexpr trajectory or an (N, dim) array, got {type(trajectory).__name__}")
    return points(trajectory)


def make_plan(net: Network, trajectory: Trajectory, n_points: int, dtype="float32") -> Plan:
    """The normalised plan for one trajectory: first layer projected onto the trajectory's basis."""
    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network (see random_mlp, from_torch, from_arrays), got {type(net).__name__}")
    if trajectory.dim != net.input_dim:
        raise ValueError(f"the trajectory has dimension {trajectory.dim} but the network expects inputs of "
                         f"dimension {net.input_dim}")
    dtype = _dtype(dtype)
    basis = trajectory.basis
    polyline = trajectory.kind == POLYLINE
    empty = np.zeros((0, basis.shape[1]))
    return Plan(
        n_points=int(n_points),
        dtype=dtype,
        activations=tuple(ACTIVATION_CODES[a] for a in net.activations),
        widths=net.widths,
        kind=trajectory.kind,
        proj=np.ascontiguousarray(basis @ net.weights[0].T),
        bias1=net.biases[0],
        weights=tuple(np.ascontiguousarray(w, dtype=dtype) for w in net.weights[1:]),
        biases=tuple(np.ascontiguousarray(b, dtype=dtype) for b in net.biases[1:]),
        gram=np.zeros((2, 2)) if polyline else basis @ basis.T,
        vertices=basis if polyline else empty,
        seg_len=np.linalg.norm(np.diff(basis, axis=0), axis=1) if polyline else np.zeros(0),
        device=net.device if net.device != "cpu" else trajectory.device,
    )


def _chunks(n_points: int, chunk: int):
    """Sample ranges [start, stop) covering 0..n_points-1, neighbours sharing one sample."""
    start = 0
    while start < n_points - 1:
        stop = min(start + chunk, n_points)
        yield start, stop
        start = stop - 1


def _run(module, plans: list[Plan], n_points: int, progress) -> list[Partials]:
    """Every plan through ``module`` chunk by chunk, with an optional progress bar."""
    from tqdm.auto import tqdm

    chunk = max(2, getattr(module, "CHUNK", DEFAULT_CHUNK))  # a chunk of 1 sample would never advance
    total = (n_points - 1) * len(plans)
    if progress is None:  # tqdm's disable=None: shown on a terminal only
        disable = None if total >= PROGRESS_FROM else True
    else:
        disable = not progress
    totals: list[Partials | None] = [None] * len(plans)
    with tqdm(total=total, unit="pair", unit_scale=True, disable=disable, desc=f"fastexpr[{module.NAME}]") as bar:
        for start, stop in _chunks(n_points, chunk):
            if hasattr(module, "run_batch") and len(plans) > 1:
                parts = module.run_batch(plans, start, stop)
            else:
                parts = [module.run(plan, start, stop) for plan in plans]
            for i, part in enumerate(parts):
                if totals[i] is None:
                    totals[i] = part
                else:
                    totals[i] += part
            bar.update((stop - start - 1) * len(plans))
    return totals


def measure(net: Network, trajectory, n_points: int | None = None, backend: str = "auto", dtype="float32",
            progress: bool | None = None) -> Result:
    """Transitions, pattern changes, distinct patterns and lengths of ``trajectory`` through ``net``.

    ``trajectory`` is one trajectory (``line``, ``arc``, ``great_circle``, ``polyline``, ``points``
    or an explicit ``(N, dim)`` array) or a list of them, which gives a batched Result with a
    leading trajectory axis. ``n_points`` samples ``t_i = i / (n_points - 1)``; it may be omitted
    for explicit point sets. ``backend`` is "auto" (fastest available where the data lives),
    "cpu", "numba", "torch" or "cuda"; ``dtype`` the forward pass's precision. ``progress``:
    True/False forces the progress bar on/off; None shows it for long runs on a terminal.
    """
    batched = isinstance(trajectory, (list, tuple)) and len(trajectory) > 0 and all(
        isinstance(t, Trajectory) for t in trajectory)
    if isinstance(trajectory, (list, tuple)) and len(trajectory) == 0:
        raise ValueError("no trajectory given (empty list)")
    trajs = [as_trajectory(t) for t in trajectory] if batched else [as_trajectory(trajectory)]
    counts = {_n_points(n_points, t) for t in trajs}
    if len(counts) != 1:
        raise ValueError(f"a batch of explicit point sets must share one length, got {sorted(counts)}")
    n = counts.pop()
    plans = [make_plan(net, t, n, dtype) for t in trajs]
    if plans[0].dtype == np.float32 and n >= FLOAT32_WARN_FROM:
        warnings.warn(f"float32 at {n:,} samples: neighbouring samples differ by little more than float32 rounding, "
                      "which can inflate lengths and transitions (by 0.1% to several-fold at 2^20-2^24 samples, most "
                      "where layers contract); check with dtype='float64' (README, Precision)",
                      PrecisionWarning, stacklevel=2)
    module = backends.resolve(backend, plans[0].device)
    parts = _run(module, plans, n, progress)
    fields = dict(
        transitions=np.stack([p.transitions for p in parts]).astype(np.int64),
        pattern_changes=np.stack([p.pattern_changes for p in parts]).astype(np.int64),
        network_changes=np.array([p.network_changes for p in parts], dtype=np.int64),
        distinct_patterns=np.array([np.unique(p.run_hashes).size for p in parts], dtype=np.int64),
        lengths=np.stack([p.lengths for p in parts]).astype(np.float64),
    )
    result = Result(**fields, n_points=n, widths=net.widths, activations=net.activations,
                    dtype=plans[0].dtype.name, backend=module.NAME, trajectories=tuple(t.name for t in trajs))
    return result if batched else result[0]
