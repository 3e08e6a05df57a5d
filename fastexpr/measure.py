"""measure(): validate, plan, dispatch to a backend chunk by chunk, reduce into a Result."""
from __future__ import annotations

import time
import warnings

import numpy as np

from . import _threads, backends
from ._checks import flag, is_integer
from .network import Network, NotAPlainMLP, from_torch
from .plan import ACTIVATION_CODES, LINE, POLYLINE, OverflowInForwardPass, Partials, Plan
from .result import Result
from .taps import is_torch_module
from .trajectory import Trajectory, points

DTYPES = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}

#: Seconds one backend call should take (chunks share one boundary sample): short enough for
#: Ctrl-C and a moving progress bar, long enough to hide the per-call overhead.
CHUNK_SECONDS = 0.3
#: Samples per backend call at most, all trajectories together (bounds the hashes one call returns).
MAX_CHUNK = 1 << 22
#: The speed assumed for the first chunk, in FLOP-equivalents (``work_per_point``) per second per
#: thread: low, so that the first call is short; later chunks follow the measured speed.
GUESSED_RATE = 1e10
#: Most work one ``measure`` call may ask for, in FLOP-equivalents (``work_per_point`` x samples x
#: trajectories): about a day on a large GPU, months on a CPU. Raise it at your own risk.
MAX_WORK = 2**60
#: Show a progress bar by default from this many samples on (when stderr is a terminal).
PROGRESS_FROM = 1 << 22
#: Warn about float32 rounding from this many samples on (README, Precision).
FLOAT32_WARN_FROM = 1 << 16
#: Warn when more than this fraction of consecutive sample pairs change whole-network pattern.
SATURATION_WARN_ABOVE = 0.05
#: Most samples a trajectory may have (the polyline sample positions are exact up to here).
MAX_POINTS = 1 << 62


class PrecisionWarning(UserWarning):
    """float32 at a resolution where rounding noise may inflate counts and lengths."""


class SaturationWarning(UserWarning):
    """So many sample pairs change pattern that the sampled counts are far from converged."""


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
    if not is_integer(n_points):
        raise TypeError(f"n_points must be an integer, got {type(n_points).__name__}")
    n_points = int(n_points)
    if not 2 <= n_points <= MAX_POINTS:
        raise ValueError(f"n_points must be at least 2 and at most 2**62, got {n_points}")
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


def _scale_of(a: np.ndarray) -> float:
    """A power of two within a factor 2 of ``max|a|`` (1 for zeros): dividing by it is exact."""
    top = float(np.max(np.abs(a)))
    return float(np.ldexp(1.0, int(np.frexp(top)[1]) - 1)) if top > 0 else 1.0


def _norms(rows: np.ndarray) -> np.ndarray:
    """Euclidean norms of the rows of a 2-D array, each scaled by its largest entry first."""
    top = np.max(np.abs(rows), axis=1, keepdims=True)
    safe = np.where(top > 0, top, 1.0)
    return np.linalg.norm(rows / safe, axis=1) * safe[:, 0]


def _input_geometry(trajectory: Trajectory) -> dict:
    """The plan's input-length fields (``scale``, ``line_norm``, ``coords``, ``vertices``, ``seg_len``)."""
    scale = _scale_of(trajectory.basis)
    basis = trajectory.basis / scale
    fields = dict(scale=scale, line_norm=0.0, coords=np.zeros((2, 2)), vertices=np.zeros((0, basis.shape[1])),
                  seg_len=np.zeros(0))
    if trajectory.kind == LINE:
        fields["line_norm"] = float(_norms(basis[1:] - basis[:1])[0])
    elif trajectory.kind == POLYLINE:
        fields.update(vertices=basis, seg_len=_norms(np.diff(basis, axis=0)))
    else:  # coordinates of u and v in an orthonormal basis of their span: R of the QR of [u v]
        r = np.linalg.qr(basis.T, mode="r")
        fields["coords"][: r.shape[0]] = r
    return fields


def _cast_weights(net: Network, dtype: np.dtype) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """Weights and biases of layers 2..L in ``dtype``; OverflowInForwardPass if one does not fit."""
    top = np.finfo(dtype).max
    for d, (w, b) in enumerate(zip(net.weights[1:], net.biases[1:]), start=2):
        largest = max(np.max(np.abs(w)), np.max(np.abs(b)))
        if largest > top:
            raise OverflowInForwardPass(f"layer {d} has a weight or bias of magnitude {largest:.3g}, beyond "
                                        f"{dtype.name}'s largest number; use dtype='float64'")
    return (tuple(np.ascontiguousarray(w, dtype=dtype) for w in net.weights[1:]),
            tuple(np.ascontiguousarray(b, dtype=dtype) for b in net.biases[1:]))


def make_plan(net: Network, trajectory, n_points: int | None = None, dtype="float64") -> Plan:
    """The normalised plan for one trajectory (or an ``(N, dim)`` array of points): first layer
    projected onto the trajectory's basis."""
    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network (see random_mlp, from_torch, from_arrays), got {type(net).__name__}")
    trajectory = as_trajectory(trajectory)
    n_points = _n_points(n_points, trajectory)
    if trajectory.dim != net.input_dim:
        raise ValueError(f"the trajectory has dimension {trajectory.dim} but the network expects inputs of "
                         f"dimension {net.input_dim}")
    dtype = _dtype(dtype)
    weights, biases = _cast_weights(net, dtype)
    return Plan(
        n_points=int(n_points),
        dtype=dtype,
        activations=tuple(ACTIVATION_CODES[a] for a in net.activations),
        widths=net.widths,
        kind=trajectory.kind,
        proj=np.ascontiguousarray(trajectory.plan_basis @ net.weights[0].T),
        bias1=net.biases[0],
        weights=weights,
        biases=biases,
        **_input_geometry(trajectory),
        device=net.device if net.device != "cpu" else trajectory.device,
    )


def work_per_point(widths) -> int:
    """A sample's cost in FLOP-equivalents: the multiply-adds of layers 2..L, an epilogue per
    neuron, and the trajectory's own coefficients and length."""
    widths = [int(w) for w in widths]
    return sum(2 * a * b for a, b in zip(widths[1:], widths[2:])) + 24 * sum(widths[1:]) + 100


def _check_limits(widths, n_points: int, n_trajectories: int) -> None:
    """ValueError when the counts could overflow int64 or the work exceeds MAX_WORK."""
    if (n_points - 1) * 2 * max(widths[1:]) >= 2**63:
        raise ValueError(f"n_points={n_points:,} is too many for a layer of {max(widths[1:]):,} neurons: its "
                         "transitions could exceed the int64 counters (2 per neuron and sample pair)")
    work = work_per_point(widths) * n_points * n_trajectories
    if work > MAX_WORK:
        what = f"{n_points:,} points" + (f" on each of {n_trajectories} trajectories" if n_trajectories > 1 else "")
        raise ValueError(f"measuring {what} through layers of widths {tuple(widths[1:])} is about "
                         f"{work:.2g} FLOP-equivalents, more than "
                         f"fastexpr.measure.MAX_WORK = {MAX_WORK:.2g} (days on a GPU, months on a CPU); "
                         "use fewer points, or exact=True")


def _chunks(n_points: int, chunk, start: int = 0):
    """Sample ranges [start, stop) covering start..n_points-1, neighbours sharing one sample; ``chunk``
    is a number of samples or a callable giving the next one."""
    while start < n_points - 1:
        stop = min(start + max(2, chunk() if callable(chunk) else chunk), n_points)
        yield start, stop
        start = stop - 1


class _ChunkSizer:
    """Samples per backend call for about CHUNK_SECONDS: guessed from the work per sample, then
    from the speed of the calls so far (growing at most 4x per call)."""

    def __init__(self, module, plans: list[Plan], threads: int):
        self.batch = len(plans)
        self.least = max(2, 4 * getattr(module, "TILE", 1) * threads)  # a few tiles per thread
        rate = GUESSED_RATE * threads / work_per_point(plans[0].widths)  # samples per second
        self.size = self._clamp(rate * CHUNK_SECONDS / self.batch)
        self.started = None

    def _clamp(self, size: float) -> int:
        return int(min(max(size, self.least), MAX_CHUNK // self.batch))

    def __call__(self) -> int:
        return self.size

    def start(self) -> None:
        self.started = time.perf_counter()

    def done(self, samples: int) -> None:
        elapsed = time.perf_counter() - self.started
        target = samples * CHUNK_SECONDS / elapsed if elapsed > 0 else 4 * samples
        self.size = self._clamp(min(target, 4 * samples))


def _run(module, plans: list[Plan], n_points: int, progress, start: int = 0) -> list[Partials]:
    """Samples ``start .. n_points-1`` of every plan through ``module`` chunk by chunk, with an
    optional progress bar (``start`` > 0: one shard of a trajectory, fastexpr.sweep)."""
    from tqdm.auto import tqdm

    sizer = None
    if hasattr(module, "CHUNK"):  # a backend (or a test) may fix the samples per call
        chunk = module.CHUNK
    elif hasattr(module, "chunk_points"):  # or know its speed
        chunk = max(2, int(module.chunk_points(plans)))
    else:
        sizer = chunk = _ChunkSizer(module, plans, _threads.current())
    total = (n_points - 1 - start) * len(plans)
    if progress is None:  # tqdm's disable=None: shown on a terminal only
        disable = None if total >= PROGRESS_FROM else True
    else:
        disable = not progress
    totals: list[Partials | None] = [None] * len(plans)
    with tqdm(total=total, unit="pair", unit_scale=True, disable=disable, desc=f"fastexpr[{module.NAME}]") as bar:
        for a, b in _chunks(n_points, chunk, start):
            if sizer is not None:
                sizer.start()
            if hasattr(module, "run_batch") and len(plans) > 1:
                parts = module.run_batch(plans, a, b)
            else:
                parts = [module.run(plan, a, b) for plan in plans]
            if sizer is not None:
                sizer.done(b - a)
            for i, part in enumerate(parts):
                if totals[i] is None:
                    totals[i] = part
                else:
                    totals[i] += part
            bar.update((b - a - 1) * len(plans))
    return totals


def measure(net: Network, trajectory, n_points: int | None = None, backend: str = "auto", dtype="float64",
            progress: bool | None = None, exact: bool = False, threads: int | None = None,
            smooth_sign: bool = False, maxpool_argmax: bool = False) -> Result:
    """Transitions, pattern changes, distinct patterns and lengths of ``trajectory`` through ``net``.

    ``net`` is a fastexpr Network or any ``torch.nn.Module``: a plain MLP (what ``from_torch``
    accepts) runs on the fused MLP engine, any other model on the taps engine, one layer per call
    of a piecewise-linear activation (``fastexpr.taps``; README, Any PyTorch model).

    ``trajectory`` is one trajectory (``line``, ``arc``, ``great_circle``, ``polyline``, ``points``
    or an explicit ``(N, dim)`` array) or a list of them, which gives a batched Result with a
    leading trajectory axis. ``n_points`` samples ``t_i = i / (n_points - 1)``; it may be omitted
    for explicit point sets. ``backend`` is "auto" (fastest available where the data lives),
    "cpu", "numba", "torch" or "cuda". ``dtype`` is the forward pass's precision: "float64"
    (default) or "float32", about twice as fast but able to overcount transitions and patterns
    and inflate lengths from about 2^18 samples on (``PrecisionWarning`` from 2^16; README,
    Precision). ``progress``: True/False forces the progress bar on/off; None shows it for long
    runs on a terminal. ``threads``: CPU threads for this call (cpu, numba and torch backends);
    None: for cpu ``OMP_NUM_THREADS`` or the usable cores, for numba and torch their own setting
    (README, Threads, processes and memory).

    ``exact=True`` counts in the continuum instead of on samples (relu, hardtanh and identity
    layers; no ``n_points``; float64; backends "auto", "cpu", "numba"): every crossing point,
    the continuum lengths (README, Exact counting).

    ``smooth_sign``, ``maxpool_argmax`` (taps engine only): also count the sign of the input of
    each smooth activation (GELU, SiLU, tanh, sigmoid; without it they contribute lengths only),
    and max-pooling's argmax, as codes (``fastexpr.taps.TapOptions``).

    Raises ``ValueError`` when the counts could overflow int64 or the work exceeds ``MAX_WORK``
    (before any backend runs), ``OverflowInForwardPass`` (a ``ValueError``) when a pre-activation
    overflows the dtype, and warns with ``SaturationWarning`` when more than 5% of consecutive
    sample pairs change whole-network pattern (``Result.saturation``).
    """
    batched = isinstance(trajectory, (list, tuple)) and len(trajectory) > 0 and all(
        isinstance(t, Trajectory) for t in trajectory)
    if isinstance(trajectory, (list, tuple)) and len(trajectory) == 0:
        raise ValueError("no trajectory given (empty list)")
    trajs = [as_trajectory(t) for t in trajectory] if batched else [as_trajectory(trajectory)]
    threads = _threads.check(threads)
    exact, progress = flag(exact, "exact"), flag(progress, "progress", none_ok=True)
    if is_torch_module(net):
        try:  # a plain MLP goes to the fused MLP engine; any other model to the taps engine
            net = from_torch(net)
        except NotAPlainMLP:
            if exact:
                raise ValueError("exact=True needs a plain MLP (fastexpr.from_torch); this model goes to the taps "
                                 "engine, which samples") from None
            from .taps import measure_model

            result = measure_model(net, trajs, n_points, backend, dtype, progress, threads,
                                   smooth_sign=smooth_sign, maxpool_argmax=maxpool_argmax)
            return result if batched else result[0]
    elif smooth_sign or maxpool_argmax:
        raise ValueError("smooth_sign and maxpool_argmax apply to torch models (the taps engine), not to a "
                         "fastexpr Network")
    if exact:
        from .exact import measure_exact

        with _threads.using(threads):
            result = measure_exact(net, trajs, n_points, backend, dtype, progress)
        return result if batched else result[0]
    counts = {_n_points(n_points, t) for t in trajs}
    if len(counts) != 1:
        raise ValueError(f"a batch of explicit point sets must share one length, got {sorted(counts)}")
    n = counts.pop()
    plans = [make_plan(net, t, n, dtype) for t in trajs]
    _check_limits(net.widths, n, len(plans))
    if plans[0].dtype == np.float32 and n >= FLOAT32_WARN_FROM:
        warnings.warn(f"float32 at {n:,} samples: neighbouring samples come within float32 rounding of each other, "
                      "which can overcount transitions and patterns (measured on 4 of 24 random relu networks at "
                      "2^18 samples, 9 of 24 at 2^20) and inflate lengths; use dtype='float64', the default "
                      "(README, Precision)", PrecisionWarning, stacklevel=2)
    module = backends.resolve(backend, plans[0].device, plans)
    with _threads.using(threads):
        parts = _run(module, plans, n, progress)
    result = result_of(parts, n, net.widths, net.activations, plans[0].dtype, module.NAME, trajs)
    return result if batched else result[0]


def result_of(parts: list[Partials], n: int, widths, activations, dtype: np.dtype, backend_name: str, trajs,
            cls=Result, stacklevel: int = 3, **extra) -> Result:
    """The batched Result of every trajectory's merged Partials; warns with SaturationWarning
    (``stacklevel``: the user's call, as seen from here)."""
    fields = dict(
        transitions=np.stack([p.transitions for p in parts]).astype(np.int64),
        pattern_changes=np.stack([p.pattern_changes for p in parts]).astype(np.int64),
        network_changes=np.array([p.network_changes for p in parts], dtype=np.int64),
        distinct_patterns=np.array([p.distinct().size for p in parts], dtype=np.int64),
        lengths=np.stack([p.lengths for p in parts]).astype(np.float64),
    )
    result = cls(**fields, n_points=n, widths=tuple(widths), activations=tuple(activations),
                 dtype=np.dtype(dtype).name, backend=backend_name, trajectories=tuple(t.name for t in trajs), **extra)
    saturation = float(np.max(result.saturation))
    if saturation > SATURATION_WARN_ABOVE:
        warnings.warn(f"{saturation:.1%} of consecutive sample pairs change pattern (more than "
                      f"{SATURATION_WARN_ABOVE:.0%}): the counts are far from converged; raise n_points or use "
                      "exact=True", SaturationWarning, stacklevel=stacklevel)
    return result
