"""Sweeps and shards, local vs Ray (issue 12): bench/RESULTS.md section 12.

    python bench/bench_sweep.py [--points 4096] [--shard-log2 26] [--workers 1 2 4]

1. A grid of 240 cells (widths 32-256, depths 2-20, sigma_w 1-16, 5 seeds, hard-tanh, an arc
   of --points samples): one process, a local spawn pool of 2, and Ray with 2 CPUs.
2. Overhead per task: 200 trivial cells (one neuron, 2 samples), the same three ways.
3. One trajectory of 2^--shard-log2 samples sharded over 1, 2, 4 Ray workers (one thread each)
   against one measure call; the counts are checked equal.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import fastexpr as fx
from fastexpr.cli import _trajectory
from fastexpr.sweep import cells


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def sweep_rows(grid, label: str, ray) -> list[tuple[str, int, float]]:
    rows = []
    for name, kwargs in (("local, 1 process", dict(workers=1, threads=1)),
                         ("local, spawn pool of 2", dict(workers=2, threads=1)),
                         ("ray, 2 CPUs", dict(executor="ray", threads=1))):
        if kwargs.get("executor") == "ray" and ray is None:
            continue
        out = tempfile.mkdtemp(prefix="bench_sweep_")
        try:
            seconds = timed(lambda: fx.sweep(grid, out, progress=False, **kwargs))
            n = len(fx.load_sweep(out))
        finally:
            shutil.rmtree(out)
        rows.append((name, n, seconds))
        print(f"{label:>10} | {name:<24} | {n:>5} cells | {seconds:8.2f} s | {n / seconds:8.1f} cells/s "
              f"| {1e3 * seconds / n:8.2f} ms/cell", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=4096, help="samples per grid cell")
    parser.add_argument("--shard-log2", type=int, default=26, help="log2 of the sharded trajectory's samples")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    try:
        import ray
    except ImportError:
        ray = None
    print(f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
          f"Python {platform.python_version()}, fastexpr {fx.__version__}, ray {getattr(ray, '__version__', '-')}")
    if ray is not None:
        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 2**20)
        print(f"ray.init(num_cpus=2): {time.perf_counter() - start:.1f} s")

    grid = dict(depth=[2, 5, 10, 20], width=[32, 64, 128, 256], input_dim=16, activation="hardtanh",
                sigma_w=[1.0, 4.0, 16.0], sigma_b=0.5, seed=list(range(5)), trajectory="arc", n_points=args.points)
    print(f"\n1. grid of {len(cells(grid))} cells, {args.points} samples each")
    sweep_rows(grid, "grid", ray)

    trivial = dict(depth=1, width=1, input_dim=2, sigma_w=1.0, seed=list(range(200)), trajectory="line", n_points=2)
    print("\n2. overhead: 200 trivial cells (1 neuron, 2 samples)")
    sweep_rows(trivial, "trivial", ray)

    n = 1 << args.shard_log2
    net = fx.random_mlp(3, 16, 8, "hardtanh", sigma_w=4.0, sigma_b=0.5, seed=1)
    traj = _trajectory("arc", 8, 2)
    print(f"\n3. one arc of 2^{args.shard_log2} samples through 3 hard-tanh layers of 16 (sigma_w 4)")
    single = {}
    for threads in (1, 2):
        seconds = timed(lambda: single.__setitem__(threads, fx.measure(net, traj, n, threads=threads,
                                                                       progress=False)))
        print(f"measure, 1 process, {threads} thread(s): {seconds:8.2f} s", flush=True)
    ref = single[1]
    if ray is not None:
        for k in args.workers:
            result = {}
            seconds = timed(lambda: result.__setitem__(0, fx.measure_sharded(net, traj, n, shards=k, executor="ray",
                                                                              threads=1)))
            r = result[0]
            same = (r.transitions.tolist() == ref.transitions.tolist() and r.distinct_patterns == ref.distinct_patterns
                    and r.network_changes == ref.network_changes)
            print(f"ray, {k} shard(s) of 1 thread: {seconds:8.2f} s   counts equal to measure: {same}", flush=True)
            assert same
        ray.shutdown()
    print(f"\ncounts: transitions {ref.transitions.tolist()}, distinct patterns {ref.distinct_patterns:,}")


if __name__ == "__main__":
    main()
