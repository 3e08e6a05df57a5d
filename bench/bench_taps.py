"""The taps engine on real architectures, one run: fused taps backends against the pure-PyTorch hook
baseline at the same forward pass (fastexpr.examples: a small CNN at 1x28x28 and a torchvision-style
ResNet-18 at 3x32x32, each along a line between two random images), float32, on the CPU or
(``--device cuda``, backends cuda and torch) on a GPU.

    python bench/bench_taps.py          # the issue's settings: ~25 min on an idle 2-core machine
    python bench/bench_taps.py --cnn-points 65536 --resnet-points 0 --score-nets 0 --repeat 3

Defaults: the small CNN at 2^20 samples, ResNet-18 at 2^17 (2^20 works, ~10 min per contender on
2 cores), the cpu taps backend against the torch hook baseline (``--backends`` adds numba), the
scores on 1,000 random small CNNs; ``--*-points 0`` or ``--score-nets 0`` skips a table.

Per model and backend: points per second of ``fx.measure``; the forward pass alone (the same chunks
through the same model, no taps); the share of the measurement's time spent outside that forward
pass; and that share's ratio to one read of all tapped activations at the measured memory
bandwidth (a NumPy sum over a 512 MiB array); the time inside the taps backend's per-tap
reductions, timed within the measurement, and its ratio to that read. Then ``scores.naswot`` and
``scores.linear_regions`` against plain re-implementations of the published algorithms (forward
hooks on nn.ReLU, codes ``output > 0``; NASWOT's kernel sum, TENAS's unique rows) on random small
CNNs. Times are the best
of ``--repeat`` rounds, each round timing every column once (interleaved; the scores net by net).
"""
from __future__ import annotations

import argparse
import importlib
import os
import platform
import time
import warnings

import numpy as np
import torch

import fastexpr as fx
from fastexpr import backends, taps
from fastexpr.examples import resnet18, small_cnn


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def bandwidth(device: str, nbytes: int = 512 << 20, repeats: int = 5) -> float:
    """Bytes per second of one streaming read (the sum of a float32 array: NumPy's on the CPU)."""
    a = np.ones(nbytes // 4, dtype=np.float32) if device == "cpu" else torch.ones(nbytes // 4, device=device)
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        a.sum()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def forward_only(model, traj, n: int, chunk: int, shape, device: str) -> float:
    """Seconds for the same chunks through the model with no taps (points made the same way)."""
    from fastexpr._fp32 import full_fp32

    synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad(), full_fp32(device):  # as fx.measure runs the model: no TF32 on CUDA
        start = 0
        while start < n - 1:
            stop = min(start + chunk, n)
            x = torch.from_numpy(traj.sample_range(n, start, stop)).reshape(stop - start, *shape)
            model(x.to(device=device, dtype=torch.float32))
            start = stop - 1
    synchronize(device)
    return time.perf_counter() - t0


class ReduceTimer:
    """Seconds spent in a taps backend's per-tap reductions (its ``reduce`` wrapped while active):
    the taps' own cost, timed inside the measurement, so that a change of load between the forward
    pass alone and the measurement does not enter it."""

    def __init__(self, backend: str):
        self.module = importlib.import_module(backends.REGISTRY["taps"][backend].module)
        self.seconds = 0.0

    def __enter__(self):
        inner = self.inner = self.module.reduce

        def timed(*args):
            t0 = time.perf_counter()
            out = inner(*args)
            self.seconds += time.perf_counter() - t0
            return out

        self.module.reduce = timed
        return self

    def __exit__(self, *exc):
        self.module.reduce = self.inner


def best_of(repeat: int, fn):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def random_cnn(rng) -> torch.nn.Sequential:
    """A small CNN for 1x28x28 inputs with random widths (a stand-in for a search space's cells)."""
    c1, c2, hidden = (int(v) for v in (rng.choice([4, 8, 16]), rng.choice([8, 16, 32]), rng.choice([32, 64, 128])))
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, c1, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(c1, c2, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(c2 * 49, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 10)).eval()


def _relu_codes(model, x):
    """The published implementations' way: forward hooks on every nn.ReLU keep the codes ``output > 0``."""
    codes = []
    hooks = [m.register_forward_hook(lambda m, i, o: codes.append((o > 0).flatten(1)))
             for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return codes


def naswot_plain(model, x) -> float:
    """Mellor et al.'s algorithm, re-implemented plainly: K += c c^T + (1 - c)(1 - c)^T per ReLU (codes
    and products in float32, as published; exact integers here), K summed in float64, slogdet."""
    k = torch.zeros(len(x), len(x), dtype=torch.float64)
    for c in _relu_codes(model, x):
        c = c.float()
        k += (c @ c.T + (1 - c) @ (1 - c).T).double()
    return float(torch.slogdet(k)[1])


def linear_regions_plain(model, x) -> int:
    """TENAS's algorithm, re-implemented plainly: all codes of all points held, unique rows counted."""
    return int(torch.unique(torch.cat(_relu_codes(model, x), 1), dim=0).shape[0])


def scores_table(n_nets: int, batch: int, repeat: int, device: str) -> None:
    """scores.naswot / scores.linear_regions against the plain algorithms on n_nets random small CNNs."""
    from fastexpr import scores

    rng = np.random.default_rng(1)
    torch.manual_seed(1)
    nets = [random_cnn(rng).to(device) for _ in range(n_nets)]
    x = torch.from_numpy(rng.standard_normal((batch, 1, 28, 28)).astype(np.float32)).to(device)
    print(f"| score | {n_nets} small CNNs, batch {batch} | fastexpr (s) | plain (s) | plain / fastexpr | agree |")
    print("|---|---|---|---|---|---|")
    for name, ours, plain in (("naswot", lambda m: scores.naswot(m, x, dtype="float32"), naswot_plain),
                              ("linear_regions", lambda m: scores.linear_regions(m, x, dtype="float32"),
                               linear_regions_plain)):
        t_ours = t_plain = 0.0
        a, b = [], []
        for m in nets:  # alternating net by net, so that a change in the machine's load hits both columns
            t, value = best_of(repeat, lambda: ours(m))
            t_ours, a = t_ours + t, a + [value]
            t, value = best_of(repeat, lambda: plain(m, x))
            t_plain, b = t_plain + t, b + [value]
        agree = np.allclose(a, b, rtol=1e-9) if name == "naswot" else a == b
        print(f"| {name} | | {t_ours:.2f} | {t_plain:.2f} | {t_plain / t_ours:.2f}x | {agree} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cnn-points", type=int, default=1 << 20, help="0: skip the small CNN")
    parser.add_argument("--resnet-points", type=int, default=1 << 17, help="0: skip ResNet-18")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="where the models run: cpu or cuda")
    parser.add_argument("--backends", nargs="+", help="cpu, numba, cuda, torch (the baseline); default: cpu torch "
                        "on the CPU, cuda torch on a GPU")
    parser.add_argument("--score-nets", type=int, default=1000, help="random small CNNs for the scores table (0: skip)")
    parser.add_argument("--score-batch", type=int, default=128)
    args = parser.parse_args()
    args.backends = args.backends or (["cpu", "torch"] if args.device == "cpu" else ["cuda", "torch"])
    warnings.simplefilter("ignore", fx.PrecisionWarning)
    warnings.simplefilter("ignore", fx.SaturationWarning)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    bw = bandwidth(args.device)
    started = time.perf_counter()
    where = (torch.cuda.get_device_name(args.device) if args.device != "cpu"
             else platform.processor() or platform.machine())
    print(f"# {where}, {os.cpu_count()} cores visible, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads), memory read {bw / 1e9:.1f} GB/s, "
          f"load average {os.getloadavg()[0]:.1f}\n")
    if args.cnn_points or args.resnet_points:
        print("| model | N | backend | points/s | forward alone (s) | measure (s) | outside forward | "
              "/ one read of activations | taps' reductions (s) | / one read | vs torch hooks |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name, model, shape, n in (("small CNN 28x28", small_cnn(), (1, 28, 28), args.cnn_points),
                                  ("ResNet-18 32x32", resnet18(), (3, 32, 32), args.resnet_points)):
        if n == 0:
            continue
        model = model.eval().to(args.device)
        x0, x1 = rng.standard_normal((2, *shape))
        traj = fx.line(x0, x1)
        engine_taps, _, first_layer = taps._probe(model, traj, n, shape, torch.float32, args.device,
                                                  taps.TapOptions(smooth=True))
        act_bytes = sum(c.width for c in engine_taps) * 4 * n  # every tapped activation, float32
        chunk = int(min(taps.MAX_CHUNK, max(2, taps.CHUNK_BYTES // (act_bytes // n))))
        for backend in args.backends:
            fx.measure(model, traj, 64, dtype="float32", backend=backend)  # warm-up (numba compiles)
        t_fwd, results = float("inf"), {}
        for _ in range(args.repeat):  # interleaved, so that a change in the machine's load hits every column
            t_fwd = min(t_fwd, best_of(1, lambda: forward_only(model, traj, n, chunk, shape, args.device))[0])
            for backend in args.backends:
                with ReduceTimer(backend) as reductions:
                    t, r = best_of(1, lambda: fx.measure(model, traj, n, dtype="float32", backend=backend))
                if t < results.get(backend, (float("inf"),))[0]:
                    results[backend] = (t, r, reductions.seconds)
        base = results.get("torch", (None,))[0]
        reference = results[args.backends[0]][1]
        for backend, (t, r, t_reduce) in results.items():
            assert np.array_equal(r.transitions, reference.transitions), "backends disagree"
            assert r.distinct_patterns == reference.distinct_patterns, "backends disagree"
            outside = max(t - t_fwd, 0.0)
            print(f"| {name} | {n:,} | {backend} | {n / t:,.0f} | {t_fwd:.2f} | {t:.2f} | {outside / t:.0%} | "
                  f"{outside / (act_bytes / bw):.1f}x | {t_reduce:.2f} | {t_reduce / (act_bytes / bw):.1f}x | "
                  f"{base / t if base else float('nan'):.2f}x |")
        print(f"\n{name}: {len(engine_taps)} taps, {act_bytes / n / 1e6:.2f} MB of tapped activations per sample, "
              f"chunk {chunk} samples; {reference.distinct_patterns:,} distinct patterns, "
              f"saturation {reference.saturation:.3f}; first layer {reference.first_layer} (the forward pass "
              "alone runs the first layer on the points)\n")
    if args.score_nets:
        scores_table(args.score_nets, args.score_batch, args.repeat, args.device)
    print(f"# {time.perf_counter() - started:.0f} s in all, load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
