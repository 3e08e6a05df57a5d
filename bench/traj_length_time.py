"""Where the time of the CUDA ``trajectory_length`` goes: host side against device side.

    python bench/traj_length_time.py                   # needs a CUDA GPU
    python bench/traj_length_time.py --sizes 4096x4096 --iters 200

bench/bench_traj_length.py times value + gradient back to back; when the host takes longer to
issue one call than the GPU takes to run it, that time is the host's. This script separates the
two for the fused op, the eager expression and ``torch.compile``: the GPU time of the kernels of
one forward + backward (the sum of their device durations in ``torch.profiler``), the host's
time to issue it, and the floor (h read twice, the gradient written once, at the measured copy
bandwidth). Then the ten most expensive host functions of the fused call (cProfile).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch
from torch.profiler import ProfilerActivity, profile

import fastexpr as fx


def plain(h):
    return (h[1:] - h[:-1]).flatten(1).norm(dim=1).sum()


def device_ms(fn, iters: int) -> float:
    """Milliseconds of GPU time per call, summed over the kernels (and memsets, copies) one call launches."""
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return sum(e.time_range.elapsed_us() for e in kernels) / 1e3 / iters


def host_ms(fn, iters: int) -> float:
    """Milliseconds per call to issue ``fn`` (the GPU synchronised only at the end), best of 3."""
    best = float("inf")
    for _ in range(3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            fn()
        issued = time.perf_counter() - start
        torch.cuda.synchronize()
        best = min(best, issued / iters)
    return best * 1e3


def copy_bandwidth() -> float:
    src = torch.ones(1 << 27, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / (device_ms(lambda: dst.copy_(src), 10) / 1e3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["256x1024", "4096x4096", "1024x65536"])
    parser.add_argument("--iters", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("traj_length_time: no CUDA GPU; nothing to measure")
        return
    bandwidth = copy_bandwidth()
    compiled = torch.compile(plain, dynamic=False)
    print(f"{torch.cuda.get_device_name()}, copy bandwidth {bandwidth / 1e9:.0f} GB/s (device time of copy_)")
    print(f"{'B x D':>12} {'impl':>9} {'device ms':>10} {'host ms':>8} {'floor ms':>9} {'device/floor':>13}")
    for size in args.sizes:
        b, d = (int(v) for v in size.lower().split("x"))
        h = torch.randn(b, d, device="cuda", requires_grad=True)
        floor = 3 * h.numel() * 4 / bandwidth * 1e3
        for name, f in (("fused", fx.trajectory_length), ("eager", plain), ("compiled", compiled)):
            fn = lambda f=f: torch.autograd.grad(f(h), h)  # noqa: E731
            dev = device_ms(fn, args.iters)
            print(f"{size:>12} {name:>9} {dev:>10.4f} {host_ms(fn, args.iters):>8.4f} {floor:>9.4f} {dev / floor:>13.2f}")
    h = torch.randn(4096, 4096, device="cuda", requires_grad=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(200):
        torch.autograd.grad(fx.trajectory_length(h), h)
    profiler.disable()
    torch.cuda.synchronize()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(12)
    print("\nfused forward + backward, 200 calls, host functions by own time:")
    print(text.getvalue())


if __name__ == "__main__":
    main()
