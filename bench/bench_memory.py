"""Memory of the distinct-pattern hashes and of the backends' buffers (bench/RESULTS.md section 9).

    python bench/bench_memory.py hashes     # Partials merge: traced bytes per distinct pattern
    python bench/bench_memory.py run        # the cpu backend's chunked run on 2M random points: 2M distinct patterns
    python bench/bench_memory.py wide       # peak RSS of one very wide layer, per backend (own process each)

Peaks of Python/NumPy memory are tracemalloc's (numba's arrays are traced, the C++ kernel's and torch's not);
``wide`` reports the process's peak RSS (VmHWM, reset before the call) minus its RSS before it.
"""
from __future__ import annotations

import subprocess
import sys
import time
import tracemalloc

import numpy as np


def hashes(total: int = 1 << 22, chunk: int = 1 << 16, overlap: float = 0.25) -> None:
    """Chunks of sorted, unique hashes as a backend returns them (a quarter repeats earlier ones)."""
    from fastexpr.plan import Partials

    rng = np.random.default_rng(0)
    zeros = dict(transitions=np.zeros(1, np.int64), pattern_changes=np.zeros(1, np.int64), network_changes=0,
                 lengths=np.zeros(2))
    previous = np.zeros(0, np.uint64)
    tracemalloc.start()
    acc = Partials(**zeros, run_hashes=np.zeros(0, np.uint64))
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    for _ in range(total // chunk):
        new = rng.integers(0, 2**64, int(chunk * (1 - overlap)), dtype=np.uint64)
        old = rng.choice(previous, int(chunk * overlap)) if previous.size else previous
        acc += Partials(**zeros, run_hashes=np.sort(np.concatenate([new, old])))
        previous = new
    distinct = acc.distinct().size
    elapsed = time.perf_counter() - t
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    print(f"hashes: {distinct:,} distinct of {total:,} emitted in chunks of {chunk:,}: "
          f"peak {(peak - base) / distinct:.1f} bytes per distinct pattern, kept {(current - base) / distinct:.1f}, "
          f"{elapsed:.2f} s")


def run(n: int = 1 << 21) -> None:
    """The cpu backend over ``n`` random points through 8 -> 8 (identity) -> 64 -> 64 hardtanh
    (nearly every sample has its own pattern): traced memory of the chunked run and its distinct
    hashes, above what the plan holds."""
    import fastexpr as fx
    from fastexpr import backends
    from fastexpr.measure import _run

    rng = np.random.default_rng(0)
    widths = (8, 8, 64, 64)
    weights = [rng.standard_normal((b, a)) * 4 / np.sqrt(a) for a, b in zip(widths, widths[1:])]
    biases = [rng.standard_normal(b) for b in widths[1:]]
    net = fx.from_arrays(weights, biases, ["identity", "hardtanh", "hardtanh"])
    plan = fx.make_plan(net, rng.standard_normal((n, 8)))
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    t = time.perf_counter()
    distinct = _run(backends.get("cpu"), [plan], n, progress=False)[0].distinct().size
    elapsed = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    print(f"run: {n:,} points, {distinct:,} distinct patterns: traced peak {peak / 2**20:.0f} MiB, "
          f"{peak / distinct:.1f} bytes per distinct pattern, {elapsed:.1f} s")


WIDE = """
import sys, numpy as np, fastexpr as fx
width, backend = int(sys.argv[1]), sys.argv[2]
net = fx.random_mlp(1, width, 2, activation="relu", seed=0)
tr = fx.arc(*np.random.default_rng(0).standard_normal((2, 2)))
fx.measure(fx.random_mlp(1, 8, 2, activation="relu", seed=0), tr, 3, backend=backend, progress=False,
           threads=1)  # imports and compiles on a narrow layer: no freed wide buffer to reuse
open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS (VmHWM)
status = lambda key: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith(key))) * 1024
before = status("VmRSS")
fx.measure(net, tr, 1025, backend=backend, progress=False, threads=1)
print(status("VmHWM") - before)
"""


def wide(widths=(1 << 16, 1 << 20)) -> None:
    """Peak RSS growth of one measure call (1,025 samples, one thread) through one layer of each width."""
    for width in widths:
        for backend in ("cpu", "numba", "torch"):
            out = subprocess.run([sys.executable, "-c", WIDE, str(width), backend], capture_output=True, text=True)
            if out.returncode:
                print(f"wide: width {width:,} {backend}: failed: {out.stderr.strip().splitlines()[-1]}")
                continue
            grew = int(out.stdout.split()[-1])
            print(f"wide: width {width:,} {backend}: peak RSS {grew / 2**20:,.0f} MiB above the warmed-up process")


if __name__ == "__main__":
    what = sys.argv[1:] or ["hashes", "run", "wide"]
    for name in what:
        {"hashes": hashes, "run": run, "wide": wide}[name]()
