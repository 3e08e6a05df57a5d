"""The GPU benchmark of issue 3: the cuda backend against pure PyTorch, the fp32 GEMMs alone and the roofline.

    python bench/bench_gpu.py --out bench/gpu.json          # the issue's setting, a few minutes on an H100
    python bench/bench_gpu.py --widths 64 128 --points 1048576 --dtypes float32

Setting: hardtanh, sigma_w = 4, sigma_b = 0.5, depth 10, input dimension 784, arc, all
measures on; widths 64 .. 1024. In float32 at ``--points`` (2^24) per run, in one run on one
GPU (bench/compare.py does the timing): points/s of ``cuda`` and of the ``torch`` backend (first
layer projected, chunked, TF32 off), the hidden layers' fp32 GEMMs alone (torch.mm, TF32 off) and
the roofline (hidden-layer FLOPs per point over the measured fp32 GEMM peak). In float64 at
``--points-float64`` (2^22): ``cuda`` alone against the fp64 roofline (the measured float64
torch.mm peak). Prints a table, checks the issue's float32 targets and writes everything as
JSON to ``--out``. Exit status: 0 when every target was met, 1 when one was missed; 0 with a
message where no GPU or no cuda backend is available.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import compare  # noqa: E402  (bench/compare.py: the shared timing code)

#: Issue 3's targets for cuda in float32: a fraction of the roofline, or a rate in points/s.
TARGETS = {64: ("rate", 250e6), 128: ("rate", 100e6), 256: ("roofline", 0.6), 512: ("roofline", 0.6),
           1024: ("roofline", 0.6)}
#: The issue's careful pure-PyTorch implementation on an H100 80 GB HBM3, points/s.
ISSUE_TORCH_H100 = {64: 23.0e6, 128: 11.5e6, 256: 5.96e6, 512: 2.71e6, 1024: 1.17e6}
SETTING = ["--device", "cuda", "--depth", "10", "--input-dim", "784", "--sigma-w", "4", "--sigma-b", "0.5"]


def gpu_or_reason() -> str | None:
    """The GPU's name, or None after printing why this benchmark cannot run here."""
    import torch

    import fastexpr as fx
    from fastexpr import backends

    if not torch.cuda.is_available():
        print("bench_gpu: no CUDA GPU visible to PyTorch; nothing to measure here")
        return None
    if "cuda" not in fx.available_backends():
        print(f"bench_gpu: the cuda backend is unavailable: {backends.missing_backends()['cuda']}")
        return None
    return torch.cuda.get_device_name()


def target_met(width: int, rate: float, roofline: float) -> bool | None:
    """Whether cuda met the issue's float32 target at this width (None: no target)."""
    kind, value = TARGETS.get(width, (None, None))
    if kind == "rate":
        return rate >= value
    if kind == "roofline":
        return rate >= value * roofline
    return None


def describe_target(width: int, met: bool | None) -> str:
    if met is None:
        return "-"
    kind, value = TARGETS[width]
    goal = f">= {value / 1e6:.0f} M/s" if kind == "rate" else f">= {100 * value:.0f}% roofline"
    return f"{'met' if met else 'MISSED'} ({goal})"


def fp64_peak_flops(size: int = 4096, repeats: int = 5) -> float:
    """Measured float64 matrix-product rate (FLOP/s) of torch.mm on large square matrices."""
    import time

    import torch

    a = torch.randn(size, size, device="cuda", dtype=torch.float64)
    torch.mm(a, a)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        torch.mm(a, a)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * size**3 / best


def timed_rows(dtype: str, backends: list[str], points: int, args) -> list[dict]:
    """bench/compare.py's rows for this setting (each backend in a fresh process)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.json")
        compare.main([*SETTING, "--backends", *backends, "--dtype", dtype, "--points", str(points),
                      "--repeats", str(args.repeats), "--json", path, "--widths", *map(str, args.widths)])
        with open(path) as f:
            return json.load(f)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--points", type=int, default=1 << 24, help="samples per float32 run")
    p.add_argument("--points-float64", type=int, default=1 << 22, help="samples per float64 run")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None, help="write the rows, GPU name and targets as JSON to this file")
    args = p.parse_args(argv)

    name = gpu_or_reason()
    if name is None:
        return 0
    import torch

    torch.set_float32_matmul_precision("highest")  # no TF32 anywhere: fp32 GEMM peak and gemm-only too
    rows, missed = [], []
    if "float32" in args.dtypes:
        print(f"\nGPU: {name}; targets of issue 3 for cuda (float32):")
        for row in timed_rows("float32", ["cuda", "torch"], args.points, args):
            rows.append(row)
            if row["backend"] != "cuda":
                continue
            met = target_met(row["width"], row["points_per_s"], row["roofline_points_per_s"])
            row["target"] = describe_target(row["width"], met)
            if met is False:
                missed.append(row["width"])
            issue = ISSUE_TORCH_H100.get(row["width"])
            vs_issue = f", {row['points_per_s'] / issue:.1f}x the issue's H100 torch figure" if issue else ""
            print(f"  width {row['width']:>5}: {row['points_per_s'] / 1e6:9.2f} M points/s, "
                  f"{100 * row['fraction_of_roofline']:5.1f}% of roofline: {row['target']}{vs_issue}")
    if "float64" in args.dtypes:
        peak = fp64_peak_flops()
        print(f"\nGPU: {name}; cuda in float64 against the fp64 roofline "
              f"(torch.mm float64: {peak / 1e12:.1f} TFLOP/s):")
        for row in timed_rows("float64", ["cuda"], args.points_float64, args):
            widths = [784] + [row["width"]] * row["depth"]
            row.update(fp64_peak_flops=peak, fp64_roofline_points_per_s=peak / compare.hidden_flops_per_point(widths))
            row["fraction_of_fp64_roofline"] = row["points_per_s"] / row["fp64_roofline_points_per_s"]
            rows.append(row)
            print(f"  width {row['width']:>5}: {row['points_per_s'] / 1e6:9.2f} M points/s, "
                  f"{100 * row['fraction_of_fp64_roofline']:5.1f}% of the fp64 roofline")
    for row in rows:
        row["gpu"] = name
    if args.out:
        with open(args.out, "w") as f:
            json.dump(dict(gpu=name, points=args.points, points_float64=args.points_float64, rows=rows,
                           missed_widths=missed), f, indent=2)
        print(f"wrote {args.out}")
    if missed:
        print(f"bench_gpu: float32 targets MISSED at widths {missed}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
