"""Forward+backward of the fused trajectory length against the plain torch expression, in one run.

    python bench/bench_traj_length.py                    # CPU, and CUDA when present
    python bench/bench_traj_length.py --devices cpu --no-compile --repeat 5

For each (B, D) float32 activation tensor h: the fused ``fastexpr.trajectory_length(h)`` (the
C++ op on the CPU, the CUDA kernels on a GPU), the plain expression
``(h[1:] - h[:-1]).flatten(1).norm(dim=1).sum()`` eagerly and under ``torch.compile``, each
timed as value + ``torch.autograd.grad``; the median of ``--repeat`` timings. The floor is
the memory traffic of the ideal fused op, h read twice and the gradient written once
(3 B D 4 bytes), at the copy bandwidth measured with ``torch.Tensor.copy_`` on 512 MiB
(read + write). On the CPU, sizes that fit in the caches can beat that DRAM floor.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import fastexpr as fx
from fastexpr.autograd import choose_backend

SIZES = [(256, 1024), (1024, 4096), (4096, 4096), (1024, 65536)]


def plain(h):
    return (h[1:] - h[:-1]).flatten(1).norm(dim=1).sum()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def median_seconds(fns, device, repeat, inner):
    """Per function, the median over ``repeat`` timings of ``inner`` back-to-back calls.

    The functions take turns within each repeat (after two warm-up calls each), so a
    machine whose load changes during the run slows them alike.
    """
    for fn in fns:
        fn()
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for fn, spent in zip(fns, times):
            sync(device)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(device)
            spent.append((time.perf_counter() - start) / inner)
    return [statistics.median(spent) for spent in times]


def copy_bandwidth(device, repeat):
    """Bytes per second moved by copy_ (read + write) on 512 MiB buffers."""
    src = torch.ones(1 << 27, device=device)
    dst = torch.empty_like(src)
    (seconds,) = median_seconds([lambda: dst.copy_(src)], device, repeat, 1 if device == "cpu" else 10)
    return 2 * src.numel() * 4 / seconds


def fwd_bwd(f, h):
    return lambda: torch.autograd.grad(f(h), h)


def bench_device(device, sizes, repeat, compile_):
    bandwidth = copy_bandwidth(device, repeat)
    print(f"\n{device}: {describe(device)}; fused backend {choose_backend('auto', device)!r}; "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    compiled = None
    if compile_:
        try:
            compiled = torch.compile(plain, dynamic=False)
            probe = torch.randn(8, 8, device=device, requires_grad=True)
            torch.autograd.grad(compiled(probe), probe)
        except Exception as exc:  # noqa: BLE001 - report why and go on without it
            print(f"torch.compile unusable here: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            compiled = None
    head = (f"{'B':>6} {'D':>6} {'MiB':>6} {'fused ms':>9} {'eager ms':>9} {'compiled':>9} {'floor ms':>9} "
            f"{'x eager':>8} {'x compiled':>10} {'/ floor':>8}")
    print(head)
    print("-" * len(head))
    inner = 1 if device == "cpu" else 20
    for b, d in sizes:
        h = torch.randn(b, d, device=device, requires_grad=True)
        fns = [fwd_bwd(f, h) for f in (fx.trajectory_length, plain, compiled) if f is not None]
        fused, eager, comp = (median_seconds(fns, device, repeat, inner) + [float("nan")])[:3]
        floor = 3 * h.numel() * 4 / bandwidth
        print(f"{b:>6} {d:>6} {h.numel() * 4 / 2**20:>6.0f} {fused * 1e3:>9.3f} {eager * 1e3:>9.3f} "
              f"{comp * 1e3:>9.3f} {floor * 1e3:>9.3f} {eager / fused:>8.2f} {comp / fused:>10.2f} "
              f"{fused / floor:>8.2f}")
        del h


def describe(device):
    if device == "cuda":
        return torch.cuda.get_device_name()
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], choices=["cpu", "cuda"])
    parser.add_argument("--sizes", nargs="+", default=[f"{b}x{d}" for b, d in SIZES], help="BxD, e.g. 4096x4096")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes]
    print(f"torch {torch.__version__}, fastexpr {fx.__version__}")
    for device in args.devices:
        if device == "cuda" and not torch.cuda.is_available():
            print("\ncuda: no CUDA device, skipped")
            continue
        bench_device(device, sizes, args.repeat, not args.no_compile)


if __name__ == "__main__":
    main()
