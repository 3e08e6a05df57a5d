"""Sweeps over grids of random networks, and one trajectory sharded over workers; locally or on Ray.

A *cell* of a grid is one measurement: a random network (``random_mlp``, seeded by the cell's
``seed``) along a random trajectory (endpoints from ``seed + 1``, exactly as ``fastexpr measure
--seed``). Each finished cell is written at once as its own small Parquet file in the output
folder (written to a temporary name, then renamed: a file is there whole or not at all), named
by a stable hash of the cell's parameters. Resuming is listing the folder: a cell whose file
exists is done. A crash loses the cells in flight and nothing else; a cell is never written twice.

A *shard* is a range of one trajectory's samples (neighbours sharing one boundary sample) or of
its exact walk's units; the shards' additive partials merge with the engines' own merge
(``Partials.__iadd__``, ``exact._count_joins``), so counts and distinct patterns equal one
``measure`` call bit for bit (lengths are float64 sums in another order: equal to rounding).
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import socket
import time
import uuid
import warnings
from datetime import datetime, timezone

import numpy as np

from . import _threads
from ._checks import as_float, flag, is_integer, is_real
from .backends import REGISTRY
from .measure import MAX_POINTS

#: Grid keys and their defaults (those of ``fastexpr measure``); ``n_points`` is None for exact cells.
DEFAULTS = dict(depth=10, width=128, input_dim=784, activation="hardtanh", sigma_w=4.0, sigma_b=0.5, seed=0,
                trajectory="arc", n_points=1 << 18, dtype="float64", backend="auto", exact=False)
TRAJECTORIES = ("arc", "line", "great_circle", "polyline")
ACTIVATIONS = ("hardtanh", "relu", "identity")
RAY_HINT = "pip install 'fastexpr[ray]' (or: pip install ray pyarrow)"
#: Ray tasks retried after their worker process dies (Ray's ``max_retries``).
MAX_RETRIES = 3


def _need_pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ImportError(f"sweeps write Parquet through pyarrow, which is not installed: {RAY_HINT}") from None
    return pyarrow


def _need_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"executor='ray' needs Ray, which is not installed: {RAY_HINT}") from None
    return ray


# ---------------------------------------------------------------- grid cells

def _check_value(key: str, value):
    """``value`` of grid key ``key`` in its canonical type (TypeError/ValueError naming the problem)."""
    if key in ("depth", "width", "input_dim", "seed", "n_points"):
        if key == "n_points" and value is None:
            return None
        if not is_integer(value):
            raise TypeError(f"grid[{key!r}] must hold integers, got {value!r} ({type(value).__name__})")
        least = {"seed": 0, "n_points": 2}.get(key, 1)
        most = MAX_POINTS if key == "n_points" else 2 ** 63 - 1  # the results' int64 columns
        if value < least:
            raise ValueError(f"grid[{key!r}] must hold integers of at least {least}, got {value}")
        if value > most:
            raise ValueError(f"grid[{key!r}] must hold integers of at most {most}, got {value}")
        return int(value)
    if key in ("sigma_w", "sigma_b"):
        if not is_real(value):
            raise TypeError(f"grid[{key!r}] must hold numbers, got {value!r} ({type(value).__name__})")
        if not (math.isfinite(as_float(value)) and value >= 0):
            raise ValueError(f"grid[{key!r}] must hold finite non-negative numbers, got {value!r}")
        return as_float(value)
    if key == "exact":
        return flag(value, "grid['exact']")
    choices = dict(activation=ACTIVATIONS, trajectory=TRAJECTORIES, dtype=("float32", "float64"),
                   backend=("auto", *sorted(set(REGISTRY["measure"]) | set(REGISTRY["exact"]))))
    if not isinstance(value, str):
        raise TypeError(f"grid[{key!r}] must hold strings, got {value!r} ({type(value).__name__})")
    if key in choices and value not in choices[key]:
        raise ValueError(f"grid[{key!r}]: unknown value {value!r}; expected one of {', '.join(choices[key])}")
    return value


def cells(grid) -> list[dict]:
    """The cells of ``grid`` (a mapping of grid keys to lists or single values), in product order,
    each a dict of every key; duplicates (exact cells differing only in ``n_points``) dropped."""
    if not isinstance(grid, dict):
        raise TypeError(f"grid must be a dict of parameter names to lists, got {type(grid).__name__}")
    unknown = sorted(set(grid) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown grid key(s) {', '.join(map(repr, unknown))}; expected some of "
                         f"{', '.join(DEFAULTS)}")
    axes = {}
    for key in DEFAULTS:
        values = grid.get(key, DEFAULTS[key])
        values = list(values) if isinstance(values, (list, tuple, range, np.ndarray)) else [values]
        if not values:
            raise ValueError(f"grid[{key!r}] is an empty list: the grid would have no cells")
        axes[key] = [_check_value(key, v) for v in values]
    out, seen = [], set()
    for combo in itertools.product(*axes.values()):
        cell = dict(zip(axes, combo))
        if cell["exact"]:
            if cell["backend"] not in ("auto", *REGISTRY["exact"]):
                raise ValueError(f"grid: backend {cell['backend']!r} has no exact engine (exact=True cells take "
                                 f"'auto' or one of {', '.join(sorted(REGISTRY['exact']))})")
            cell.update(n_points=None, dtype="float64")  # the exact engine has no samples and computes in float64
        elif cell["n_points"] is None:
            raise ValueError("grid['n_points'] is None for a sampled cell (exact=False): give a number of samples")
        key = cell_key(cell)
        if key not in seen:
            seen.add(key)
            out.append(cell)
    return out


def cell_key(cell: dict) -> str:
    """A stable 16-hex-digit hash of a cell's parameters (the same on every machine and Python)."""
    text = json.dumps({k: cell[k] for k in DEFAULTS}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_cell(cell: dict, threads: int | None = None) -> dict:
    """Measure one cell: its output row (a ``ValueError`` of the measurement, such as an overflow,
    is recorded in the row's ``error`` and the measures left empty)."""
    from .cli import _trajectory  # the trajectory of `fastexpr measure --seed`
    from .measure import measure
    from .network import random_mlp

    started = time.perf_counter()
    row = dict(cell=cell_key(cell), **cell)
    measures = dict.fromkeys(("transitions", "pattern_changes", "network_changes", "distinct_patterns", "lengths",
                              "saturation", "backend_used"))
    error, caught = None, []
    try:
        net = random_mlp(cell["depth"], cell["width"], cell["input_dim"], cell["activation"],
                         sigma_w=cell["sigma_w"], sigma_b=cell["sigma_b"], seed=cell["seed"])
        traj = _trajectory(cell["trajectory"], cell["input_dim"], cell["seed"] + 1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = measure(net, traj, cell["n_points"], backend=cell["backend"], dtype=cell["dtype"],
                             progress=False, exact=cell["exact"], threads=threads)
        measures.update(transitions=result.transitions.tolist(), pattern_changes=result.pattern_changes.tolist(),
                        network_changes=int(result.network_changes),
                        distinct_patterns=int(result.distinct_patterns), lengths=result.lengths.tolist(),
                        saturation=float(result.saturation), backend_used=result.backend)
    except ValueError as exc:
        error = f"{type(exc).__name__}: {exc}"
    row.update(measures, warnings=sorted({f"{w.category.__name__}: {w.message}" for w in caught}), error=error,
               machine=socket.gethostname(), seconds=time.perf_counter() - started,
               finished=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return row


# ---------------------------------------------------------------- the Parquet folder

def _schema():
    pa = _need_pyarrow()
    i64, f64, s = pa.int64(), pa.float64(), pa.string()
    return pa.schema([
        ("cell", s), ("depth", i64), ("width", i64), ("input_dim", i64), ("activation", s), ("sigma_w", f64),
        ("sigma_b", f64), ("seed", i64), ("trajectory", s), ("n_points", i64), ("dtype", s), ("backend", s),
        ("exact", pa.bool_()), ("transitions", pa.list_(i64)), ("pattern_changes", pa.list_(i64)),
        ("network_changes", i64), ("distinct_patterns", i64), ("lengths", pa.list_(f64)), ("saturation", f64),
        ("backend_used", s), ("warnings", pa.list_(s)), ("error", s), ("machine", s), ("seconds", f64),
        ("finished", s),
    ])


def _parts(out: str) -> dict[str, str]:
    """Finished cells in folder ``out``: cell key -> file."""
    if not os.path.isdir(out):
        return {}
    return {name[: -len(".parquet")]: os.path.join(out, name) for name in os.listdir(out)
            if name.endswith(".parquet") and not name.startswith(".")}


def _write_row(out: str, row: dict) -> None:
    """``row`` as ``out/<cell>.parquet``, atomically (a temporary file renamed into place)."""
    pa = _need_pyarrow()
    table = pa.Table.from_pylist([row], schema=_schema())
    tmp = os.path.join(out, f".{row['cell']}.{uuid.uuid4().hex}.tmp")
    pa.parquet.write_table(table, tmp)
    os.replace(tmp, os.path.join(out, f"{row['cell']}.parquet"))


def load_sweep(path: str):
    """The rows of a sweep's output folder as a pandas DataFrame (one row per finished cell)."""
    try:
        import pandas  # noqa: F401  (pyarrow's to_pandas needs it)
    except ImportError:
        raise ImportError("load_sweep returns a pandas DataFrame; pandas is not installed: "
                          "pip install 'fastexpr[ray]' (or: pip install pandas)") from None
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_sweep takes the path of a sweep's output folder, got {type(path).__name__}")
    pa = _need_pyarrow()
    files = sorted(_parts(os.fspath(path)).values())
    if not files:
        raise ValueError(f"{path!r} holds no sweep results (no .parquet files)")
    tables = []
    for f in files:
        try:
            tables.append(pa.parquet.read_table(f, schema=_schema()))
        except (pa.ArrowException, OSError) as exc:  # written atomically by sweep: damaged since
            raise ValueError(f"{f} is not a readable sweep row ({type(exc).__name__}: {exc}); delete it to have "
                             "sweep measure that cell again") from None
    table = pa.concat_tables(tables)
    return table.to_pandas().sort_values(list(DEFAULTS)).reset_index(drop=True)


# ---------------------------------------------------------------- executors

def _check_threads_workers(threads, workers) -> tuple[int | None, int]:
    threads = _threads.check(threads)
    if workers is None:
        return threads, max(1, _threads.default_threads() // (threads or 1))
    if not is_integer(workers) or workers < 1:
        raise ValueError(f"workers must be a positive integer or None, got {workers!r}")
    return threads, int(workers)


def _progress(total: int, done: int, progress):
    """A bar of cells done, cells per second and time left (``progress`` None: on a terminal only)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="cell", desc="fastexpr sweep",
                disable=None if progress is None else not progress)


def sweep(grid, out: str, executor: str = "local", threads: int | None = None, workers: int | None = None,
          address: str | None = None, progress: bool | None = None) -> int:
    """Measure every cell of ``grid`` and stream one row per cell to the Parquet folder ``out``.

    ``grid`` maps keys of :data:`DEFAULTS` (depth, width, input_dim, activation, sigma_w, sigma_b,
    seed, trajectory, n_points, dtype, backend, exact) to lists or single values; the cells are
    their product. Cells already in ``out`` are skipped, so re-running resumes. ``executor``:
    "local" (``workers`` processes from a spawn pool, default the cores // ``threads``; 1: in this
    process) or "ray" (``address``: None starts a local Ray unless one is running, "auto" or
    "ray://host:port" joins a cluster; every task asks for ``threads`` CPUs, and a GPU when its
    backend is "cuda"). ``threads``: CPU threads per cell (None: 1 in a pool or on Ray, the
    default of ``measure`` when one process). Returns the number of cells measured by this call.
    """
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a folder path, got {type(out).__name__}")
    out = os.fspath(out)
    every = cells(grid)
    threads, workers = _check_threads_workers(threads, workers)
    _need_pyarrow()
    if executor == "ray":
        ray = _need_ray()
    os.makedirs(out, exist_ok=True)
    finished = _parts(out)
    todo = [c for c in every if cell_key(c) not in finished]
    with _progress(len(every), len(every) - len(todo), flag(progress, "progress", none_ok=True)) as bar:
        if executor == "ray":
            return _sweep_ray(ray, todo, out, threads, address, bar)
        return _sweep_local(todo, out, threads, workers, bar)


def _sweep_local(todo: list[dict], out: str, threads, workers: int, bar) -> int:
    if workers == 1:
        for cell in todo:
            _write_row(out, run_cell(cell, threads))
            bar.update()
        return len(todo)
    done = 0
    context = multiprocessing.get_context("spawn")  # not fork: workers may run OpenMP threads
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        queue = iter(todo)
        pending = set()
        try:
            while True:
                while len(pending) < 2 * workers:  # a few queued per worker: a crash loses only these
                    cell = next(queue, None)
                    if cell is None:
                        break
                    pending.add(pool.submit(run_cell, cell, threads or 1))
                if not pending:
                    return done
                finished, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
                failed = [f for f in finished if f.exception() is not None]
                for future in finished - set(failed):  # the others' rows are kept before a failure is raised
                    _write_row(out, future.result())
                    done += 1
                    bar.update()
                if failed:
                    failed[0].result()
        except BaseException:
            for future in pending:
                future.cancel()
            raise


def _ray_init(ray, address):
    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=False)


def _sweep_ray(ray, todo: list[dict], out: str, threads, address, bar) -> int:
    _ray_init(ray, address)
    task = ray.remote(run_cell)
    in_flight = max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    queue = iter(todo)
    pending, done = {}, 0
    try:
        while True:
            while len(pending) < in_flight:
                cell = next(queue, None)
                if cell is None:
                    break
                ref = task.options(num_cpus=threads or 1, num_gpus=1 if cell["backend"] == "cuda" else 0,
                                   max_retries=MAX_RETRIES).remote(cell, threads or 1)
                pending[ref] = cell
            if not pending:
                return done
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:  # each task's result arrives once, whatever Ray retried
                pending.pop(ref)
                _write_row(out, ray.get(ref))
                done += 1
                bar.update()
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise


# ---------------------------------------------------------------- one trajectory in shards

def _map(executor: str, fn, jobs: list[tuple], threads, workers: int, address, gpus: int) -> list:
    """``[fn(*job) for job in jobs]``, in order: in this process, a spawn pool, or Ray tasks (the
    jobs' first two arguments, the same in every job, are put in Ray's object store once)."""
    if executor == "ray":
        ray = _need_ray()
        _ray_init(ray, address)
        task = ray.remote(fn).options(num_cpus=threads or 1, num_gpus=gpus, max_retries=MAX_RETRIES)
        shared = [ray.put(a) for a in jobs[0][:2]]  # the network and the trajectory, sent once
        return ray.get([task.remote(*shared, *job[2:]) for job in jobs])
    if workers == 1 or len(jobs) == 1:
        return [fn(*job) for job in jobs]
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
        return list(pool.map(fn, *zip(*jobs)))


def _sampled_shard(net, traj, n_points: int, start: int, stop: int, backend: str, dtype, threads):
    """The additive partials of samples ``start .. stop-1`` and the backend's name."""
    from . import backends
    from .measure import _run, make_plan

    plan = make_plan(net, traj, n_points, dtype)
    module = backends.resolve(backend, plan.device, [plan])
    with _threads.using(threads):
        part = _run(module, [plan], stop, False, start)[0]
    part.distinct()  # merge the pending hashes before sending
    return part, module.NAME


def _exact_shard(net, traj, backend: str, n_units: int, start: int, stop: int, threads):
    """The exact walk's totals over units ``start .. stop-1``, with their first and last codes."""
    from .exact import walk

    with _threads.using(threads):
        return walk(net, traj, backend, progress=False, n_units=n_units, unit_range=(start, stop))


def _ranges(count: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` near-equal ranges [a, b) of ``count`` items, neighbours sharing one: (count - 1) steps cut."""
    cuts = [round(k * (count - 1) / shards) for k in range(shards + 1)]
    return [(a, b + 1) for a, b in zip(cuts, cuts[1:]) if b > a]


def measure_sharded(net, trajectory, n_points: int | None = None, shards: int = 2, executor: str = "local",
                    backend: str = "auto", dtype="float64", exact: bool = False, threads: int | None = None,
                    workers: int | None = None, address: str | None = None):
    """``measure(net, trajectory, n_points, ...)`` of one trajectory cut into ``shards`` tasks.

    Sampled: sample ranges sharing one boundary sample, each a task returning additive partials.
    ``exact=True``: ranges of the exact walk's units (as many units as ``measure`` walks here, or
    ``shards`` if more), joined where they meet. The counts and distinct patterns equal one
    ``measure`` call bit for bit; lengths agree to float64 rounding (summed in another order).
    ``executor``, ``threads``, ``workers`` and ``address`` as for :func:`sweep`.
    """
    from .measure import _check_limits, _n_points, as_trajectory, make_plan
    from .network import Network

    if isinstance(trajectory, (list, tuple)):
        raise TypeError("measure_sharded takes one trajectory (shard a batch by calling it per trajectory)")
    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network, got {type(net).__name__}")
    if not is_integer(shards) or shards < 1:
        raise ValueError(f"shards must be a positive integer, got {shards!r}")
    exact = flag(exact, "exact")
    if executor not in ("local", "ray"):
        raise ValueError(f"executor must be 'local' or 'ray', got {executor!r}")
    threads, workers = _check_threads_workers(threads, workers)
    traj = as_trajectory(trajectory)
    gpus = 1 if backend == "cuda" else 0
    if exact:
        return _measure_sharded_exact(net, traj, n_points, int(shards), executor, backend, dtype, threads, workers,
                                      address, gpus)
    n = _n_points(n_points, traj)
    plan = make_plan(net, traj, n, dtype)  # validates before any task starts
    _check_limits(net.widths, n, 1)
    jobs = [(net, traj, n, a, b, backend, dtype, threads) for a, b in _ranges(n, int(shards))]
    results = _map(executor, _sampled_shard, jobs, threads, workers, address, gpus)
    total = results[0][0]
    for part, _ in results[1:]:
        total += part  # Partials.__iadd__: measure's own merge of chunks sharing a sample
    from .measure import result_of

    return result_of([total], n, net.widths, net.activations, plan.dtype, results[0][1], [traj])[0]


def _measure_sharded_exact(net, traj, n_points, shards, executor, backend, dtype, threads, workers, address, gpus):
    from . import exact
    from .result import Result

    if n_points is not None:
        raise ValueError(f"n_points={n_points!r} has no meaning with exact=True; leave n_points out")
    if (getattr(dtype, "name", None) or str(dtype).replace("torch.", "")) != "float64":
        raise ValueError(f"exact=True computes in float64; got dtype={dtype!r}")
    exact._check(net, traj)
    module = exact._backend(backend)
    n_units = max(shards, getattr(module, "EXACT_UNITS", None) or exact.UNITS_PER_THREAD * exact._threads())
    units = exact.make_units(net, traj, n_units)
    cuts = [round(k * units.u0.size / shards) for k in range(shards + 1)]
    jobs = [(net, traj, backend, n_units, a, b, threads) for a, b in zip(cuts, cuts[1:]) if b > a]
    parts = _map(executor, _exact_shard, jobs, threads, workers, address, gpus)
    transitions = sum(p.transitions for p in parts)
    pattern_changes = sum(p.pattern_changes for p in parts)
    network_changes = sum(p.network_changes for p in parts)
    # Where shard k's last unit meets shard k+1's first (and t = 1 meets t = 0 on a closed path).
    ends = parts + parts[:1] if units.closed else parts
    codes_from = np.array([p.last_code for p in ends[:-1]])
    codes_to = np.array([p.first_code for p in ends[1:]])
    if len(codes_from):
        exact._count_joins(net, codes_from, codes_to, np.zeros(len(codes_from)), transitions, pattern_changes, [], 0)
        network_changes += int((codes_from != codes_to).any(axis=1).sum())
    distinct = np.unique(np.concatenate([p.hashes for p in parts])).size
    return Result(transitions, pattern_changes, int(network_changes), int(distinct), sum(p.lengths for p in parts),
                  None, net.widths, net.activations, "float64", parts[0].backend, (traj.name,), exact=True)
