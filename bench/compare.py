"""One run, same data: points/s of every available backend against the pure-PyTorch baseline and the fp32 limit.

    python bench/compare.py                      # issue 2's setting: width 128, depth 10, 2^18 points
    python bench/compare.py --widths 64 128 256 --points 262144 --json out.json

Each backend is timed in a fresh process on the same data (fixed seeds). The hardware
limit is the hidden layers' fp32 FLOPs per point over the measured GEMM peak (torch.mm on
large square matrices, same threads); "gemm only" times torch's products of the same hidden
layers alone on 65,536 rows, without activations or any of the measures.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import statistics
import time
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

import fastexpr as fx


def gemm_peak_flops(device: str, size: int = 4096, repeats: int = 5) -> float:
    """Measured fp32 matrix-product rate (FLOP/s) of torch on large square matrices."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    torch.mm(a, b)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * size**3 / min(times)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def hidden_flops_per_point(widths) -> int:
    return sum(2 * a * b for a, b in zip(widths[1:], widths[2:]))


def gemm_only_points_per_s(net: fx.Network, device: str, rows: int = 1 << 16, repeats: int = 3) -> float:
    """Points/s of the hidden layers' fp32 matrix products alone (no activation, no measures)."""
    ws = [torch.tensor(w, dtype=torch.float32, device=device) for w in net.weights[1:]]
    h0 = torch.randn(rows, net.widths[1], device=device)
    best = float("inf")
    for _ in range(repeats + 1):
        sync(device)
        t0 = time.perf_counter()
        h = h0
        for w in ws:
            h = h @ w.T
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return rows / best


def setting(width: int, args) -> tuple[fx.Network, fx.Trajectory]:
    """The benchmark's network and arc (fixed seeds: every process builds the same data)."""
    net = fx.random_mlp(args.depth, width, args.input_dim, "hardtanh", sigma_w=args.sigma_w, sigma_b=args.sigma_b,
                        seed=0)
    x0, x1 = np.random.default_rng(1).standard_normal((2, args.input_dim))
    if args.device.startswith("cuda"):
        x0, x1 = torch.tensor(x0, device=args.device), torch.tensor(x1, device=args.device)
        net = fx.from_arrays([torch.tensor(w, device=args.device) for w in net.weights], list(net.biases),
                             list(net.activations))
    return net, fx.arc(x0, x1)


def points_per_s(backend: str, width: int, args) -> float:
    """Median points/s of one backend (warm-up first: JIT, caches, kernel compilation)."""
    warnings.simplefilter("ignore", fx.PrecisionWarning)  # speed is measured here, not precision
    warnings.simplefilter("ignore", fx.SaturationWarning)  # nor convergence
    net, traj = setting(width, args)
    fx.measure(net, traj, min(args.points, 4096), backend=backend, dtype=args.dtype, progress=False)
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fx.measure(net, traj, args.points, backend=backend, dtype=args.dtype, progress=False)
        times.append(time.perf_counter() - t0)
    return args.points / statistics.median(times)


def points_per_s_isolated(backend: str, width: int, args) -> float:
    """``points_per_s`` in a fresh process, so that no backend's idle worker threads (numba's,
    OpenMP's, torch's spin for a while after a parallel region) slow the next one down."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(points_per_s, backend, width, args).result()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[128])
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--input-dim", type=int, default=784)
    p.add_argument("--points", type=int, default=1 << 18)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--sigma-w", type=float, default=4.0)
    p.add_argument("--sigma-b", type=float, default=0.5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", help="cpu or cuda (where the network and trajectory live)")
    p.add_argument("--backends", nargs="+", default=None, help="default: every available backend")
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)

    device = args.device
    names = args.backends or [b for b in fx.available_backends() if (b == "cuda") == device.startswith("cuda")
                              or b == "torch"]
    peak = gemm_peak_flops(device)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, torch threads "
          f"{torch.get_num_threads()}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""))
    print(f"measured fp32 GEMM peak: {peak / 1e9:.1f} GFLOP/s; {args.points:,} points, depth {args.depth}, "
          f"hardtanh, arc, {args.dtype}\n")
    rows = []
    header = f"{'width':>6} {'backend':>8} {'M pts/s':>9} {'vs torch':>9} {'gemm-only':>10} {'roofline':>9} {'% roof':>7}"
    print(header)
    for width in args.widths:
        net, _ = setting(width, args)
        roofline = peak / hidden_flops_per_point(net.widths)
        gemm_only = gemm_only_points_per_s(net, device)
        rates = {b: points_per_s_isolated(b, width, args) for b in names}
        for b, rate in rates.items():
            row = dict(width=width, backend=b, points_per_s=rate, vs_torch=rate / rates["torch"] if "torch" in rates
                       else float("nan"), gemm_only_points_per_s=gemm_only, roofline_points_per_s=roofline,
                       fraction_of_roofline=rate / roofline, peak_flops=peak, points=args.points, depth=args.depth,
                       dtype=args.dtype, device=device)
            rows.append(row)
            print(f"{width:>6} {b:>8} {rate / 1e6:>9.4f} {row['vs_torch']:>8.2f}x {gemm_only / 1e6:>10.4f} "
                  f"{roofline / 1e6:>9.4f} {100 * rate / roofline:>6.1f}%")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
