"""pytest-benchmark suite: one measurement per available backend in issue 2's setting.

    pytest bench/bench_measure.py --benchmark-columns=median,ops

(``ops`` is calls per second; multiply by the point count for points/s.) bench/compare.py
prints the same comparison as ratios against the pure-PyTorch baseline and the fp32 limit.
"""
import numpy as np
import pytest

import fastexpr as fx

POINTS = 1 << 16
BACKENDS = [b for b in fx.available_backends() if b != "cuda"]


@pytest.fixture(scope="module")
def setting():
    net = fx.random_mlp(10, 128, 784, "hardtanh", sigma_w=4.0, sigma_b=0.5, seed=0)
    x0, x1 = np.random.default_rng(1).standard_normal((2, 784))
    return net, fx.arc(x0, x1)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_measure(benchmark, setting, backend, dtype):
    net, traj = setting
    fx.measure(net, traj, 1024, backend=backend, dtype=dtype, progress=False)  # warm-up (JIT, caches)
    result = benchmark(fx.measure, net, traj, POINTS, backend=backend, dtype=dtype, progress=False)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["points_per_s"] = POINTS / benchmark.stats.stats.median
    assert result.network_changes > 0
