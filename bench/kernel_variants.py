"""Variants of the measure kernels' launch configurations on a GPU, one run (issue 9): each variant
replaces FX_KERNEL lines of csrc/cuda/measure.cu (here, not in the file) and is timed in a fresh
process in bench_gpu.py's setting (hard-tanh, sigma_w 4, sigma_b 0.5, depth 10, 784 inputs, arc).
Every variant must give the same counts as the file's own kernels (same code, other registers and
occupancy: the arithmetic is the same), which the table checks.

    python bench/kernel_variants.py --widths 64 128 --points 16777216 \\
        --variant minb2 "FX_KERNEL(measure_f32_w64, float, 256, 128, 4, 8, 32, 2)"
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np


def patch(lines: list[str]) -> None:
    """Make fastexpr compile measure.cu with these FX_KERNEL lines instead of the file's lines of the same names."""
    from fastexpr.backends import cuda, cuda_compile

    by_name = {line.split("(", 1)[1].split(",", 1)[0]: line for line in lines}
    full = cuda_compile.source

    def source(filename, root=None):
        text = full(filename, root)
        if filename != cuda.SOURCE:
            return text
        out = []
        for line in text.splitlines():
            name = line.split("(", 1)[1].split(",", 1)[0] if line.startswith("FX_KERNEL(") else None
            out.append(by_name.get(name, line))
        return "\n".join(out)

    cuda_compile.source = source
    unknown = set(by_name) - {c.name for c in cuda.configs()}
    if unknown:
        raise SystemExit(f"no such kernel in measure.cu: {sorted(unknown)}")


def time_widths(widths: list[int], dtype: str, points: int, repeats: int) -> list[dict]:
    """Median seconds of fx.measure per width and its counts (run in this process)."""
    import fastexpr as fx
    from fastexpr.backends import cuda

    warnings.simplefilter("ignore")
    rows = []
    for width in widths:
        net = fx.random_mlp(10, width, 784, "hardtanh", sigma_w=4.0, sigma_b=0.5, seed=0)
        traj = fx.arc(*np.random.default_rng(1).standard_normal((2, 784)))
        fx.measure(net, traj, 1 << 16, backend="cuda", dtype=dtype, progress=False)  # compile, calibrate
        times, result = [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = fx.measure(net, traj, points, backend="cuda", dtype=dtype, progress=False)
            times.append(time.perf_counter() - t0)
        config = cuda.config_for(fx.make_plan(net, traj, points, dtype))
        rows.append({"width": width, "seconds": statistics.median(times), "config": config.name,
                     "transitions": int(result.transitions.sum()), "patterns": int(result.distinct_patterns)})
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--points", type=int, default=1 << 24)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "LINE"),
                   help="a name and the FX_KERNEL lines that replace the file's; repeat for more variants")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:  # one variant, in this fresh process: print its rows as JSON
        patch(json.loads(args.child))
        print(json.dumps(time_widths(args.widths, args.dtype, args.points, args.repeats)))
        return 0
    if any(len(v) < 2 for v in args.variant):
        p.error("each --variant takes a name and at least one FX_KERNEL line")
    variants = [("file", [])] + [(v[0], v[1:]) for v in args.variant]
    results = {}
    for name, lines in variants:
        cmd = [sys.executable, __file__, "--child", json.dumps(lines), "--dtype", args.dtype, "--points",
               str(args.points), "--repeats", str(args.repeats), "--widths", *map(str, args.widths)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"variant {name} failed:\n{done.stderr[-3000:]}")
            continue
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n{args.dtype}, {args.points:,} points, median of {args.repeats}")
    print("| variant | width | kernel | M points/s | vs file | same counts |")
    print("|---|---:|---|---:|---:|---|")
    ok = True
    for name, rows in results.items():
        for row, base in zip(rows, results.get("file", rows)):
            same = (row["transitions"], row["patterns"]) == (base["transitions"], base["patterns"])
            ok &= same
            print(f"| {name} | {row['width']} | {row['config']} | {args.points / row['seconds'] / 1e6:.2f} | "
                  f"{base['seconds'] / row['seconds']:.2f}x | {same} |")
    return 0 if ok and len(results) == len(variants) else 1


if __name__ == "__main__":
    sys.exit(main())
