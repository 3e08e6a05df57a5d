"""One measure kernel configuration for compute-sanitizer's racecheck (issue 9), small enough to
finish: two hard-tanh layers and a linear output, whose widest layer needs that configuration, one block per trajectory
taking three tiles (the persistent loop and the W^T pipeline across layers and tiles), from a module
that holds only that configuration's kernel (the sanitizer instruments every kernel of a module it
loads). Checks the counts against the cpu backend in float64 and prints them.

    compute-sanitizer --tool racecheck --racecheck-report hazard python bench/racecheck_measure.py measure_f32_w64
"""
from __future__ import annotations

import sys
import time

import numpy as np

import fastexpr as fx
from fastexpr.backends import cuda, cuda_compile


def only_kernel(name: str) -> None:
    """Make cuda_compile compile measure.cu with the FX_KERNEL line of ``name`` alone."""
    full = cuda_compile.source

    def source(filename, root=None):
        text = full(filename, root)
        if filename != cuda.SOURCE:
            return text
        return "\n".join(line for line in text.splitlines()
                         if not line.startswith("FX_KERNEL(") or line.startswith(f"FX_KERNEL({name},"))

    cuda_compile.source = source


def main(name: str) -> None:
    config = {c.name: c for c in cuda.configs()}[name]
    only_kernel(name)
    cuda.BLOCKS_PER_TRAJECTORY = 1
    rng = np.random.default_rng(config.width)
    net = fx.random_mlp(2, config.width, 20, "hardtanh", sigma_w=3.0, sigma_b=0.5, output_dim=9, seed=0)
    traj = fx.arc(*rng.standard_normal((2, 20)))
    n = 3 * (config.rows - 1) + 3
    t0 = time.perf_counter()
    got = fx.measure(net, traj, n, backend="cuda", dtype=config.dtype.name, progress=False)
    seconds = time.perf_counter() - t0
    want = fx.measure(net, traj, n, backend="cpu", dtype="float64", progress=False)
    print(f"{name}: {n} samples in {seconds:.1f} s; transitions cuda {got.transitions.tolist()} "
          f"cpu float64 {want.transitions.tolist()}")
    if config.dtype == np.float64:
        assert np.array_equal(got.transitions, want.transitions), "cuda and cpu disagree"


if __name__ == "__main__":
    main(sys.argv[1])
