"""fastexpr.region_map against brute force: every pixel through the network in plain NumPy."""
import sys

import numpy as np
import pytest

import fastexpr
from fastexpr.backends import cpu
from fastexpr.regions import region_map


def brute_force(net, center, u, v, extent, resolution):
    """(whole-network pattern per pixel, per-layer patterns per pixel) as nested tuples."""
    grid = np.linspace(-extent, extent, resolution)
    whole, layers = {}, {}
    for i in range(resolution):
        for j in range(resolution):
            h = center + grid[j] * u + grid[i] * v
            codes = []
            for w, b, act in zip(net.weights, net.biases, net.activations):
                z = w @ h + b
                if act == "relu":
                    codes.append(tuple(int(x > 0) for x in z))
                    h = np.maximum(z, 0)
                elif act == "hardtanh":
                    codes.append(tuple(-1 if x < -1 else (1 if x > 1 else 0) for x in z))
                    h = np.clip(z, -1, 1)
                else:
                    codes.append((0,) * len(z))
                    h = z
            whole[i, j] = tuple(codes)
            layers[i, j] = codes
    return whole, layers


CASES = [  # depth, width, input_dim, activation, resolution, extent
    (3, 5, 2, "relu", 37, 3.0),
    (2, 7, 5, "hardtanh", 29, 2.5),
    (3, 4, 3, ["relu", "hardtanh", "identity"], 31, 4.0),
    (1, 3, 2, "relu", 2, 1.0),
]


ENGINES = ("cpu", "numpy")


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES)
def test_against_brute_force(case, engine, monkeypatch):
    depth, width, dim, act, res, extent = case
    seed = CASES.index(case)
    monkeypatch.setattr(sys.modules["fastexpr.regions"], "BLOCK_ELEMENTS", 3 * res * width)  # several blocks
    monkeypatch.setattr(cpu, "REGION_TILE", 7)  # several tiles per row, a short last one
    net = fastexpr.random_mlp(depth, width, dim, "relu", sigma_w=2.0, sigma_b=0.7, seed=seed)
    net = fastexpr.from_arrays(list(net.weights), list(net.biases), act)
    rng = np.random.default_rng(seed + 10)
    center, u, v = rng.standard_normal((3, dim))
    got = region_map(net, center, u, v, extent, res, backend=engine)
    whole, layers = brute_force(net, center, u, v, extent, res)
    assert got.n_regions == len(set(whole.values()))
    assert got.ids.shape == (res, res) and got.ids.min() == 0 and got.ids.max() == got.n_regions - 1
    first = {}  # same id <=> same pattern
    for (i, j), pattern in whole.items():
        assert first.setdefault(got.ids[i, j], pattern) == pattern
    assert len(first) == got.n_regions
    for d in range(depth):
        expected = np.zeros((res, res), dtype=bool)
        for i in range(res):
            for j in range(res):
                right = j + 1 < res and layers[i, j][d] != layers[i, j + 1][d]
                below = i + 1 < res and layers[i, j][d] != layers[i + 1, j][d]
                expected[i, j] = right or below
        assert np.array_equal(got.boundaries[d], expected), d
    if res > 2:
        assert got.n_regions > 3 and got.boundaries[0].any()


@pytest.mark.parametrize("engine", ENGINES)
def test_block_size_does_not_matter(engine, monkeypatch):
    net = fastexpr.random_mlp(3, 8, 4, "hardtanh", sigma_w=3.0, sigma_b=0.5, seed=1)
    rng = np.random.default_rng(2)
    args = (net, *rng.standard_normal((3, 4)), 2.0, 64)
    whole = region_map(*args, backend=engine)
    monkeypatch.setattr(sys.modules["fastexpr.regions"], "BLOCK_ELEMENTS", 1)
    rows = region_map(*args, backend=engine)
    assert np.array_equal(whole.ids, rows.ids) and np.array_equal(whole.boundaries, rows.boundaries)


def test_engines_and_threads_agree():
    """Wider layers than the GEMM's register tile, a resolution that is not a multiple of the tile."""
    net = fastexpr.random_mlp(3, 37, 3, "hardtanh", sigma_w=3.0, sigma_b=0.5, seed=3)
    args = (net, *np.random.default_rng(4).standard_normal((3, 3)), 2.0, 301)
    numpy = region_map(*args, backend="numpy")
    for threads in (1, 2):
        cpu = region_map(*args, backend="cpu", threads=threads)
        assert cpu.n_regions == numpy.n_regions > 100
        assert np.array_equal(cpu.ids, numpy.ids) and np.array_equal(cpu.boundaries, numpy.boundaries)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
def test_regions_agree_with_measure_on_a_row():
    """A row of pixels is a line: its distinct patterns are measure's on the same samples."""
    net = fastexpr.random_mlp(3, 9, 3, "relu", sigma_w=2.0, sigma_b=0.5, seed=4)
    center, u, v = np.random.default_rng(5).standard_normal((3, 3))
    res, extent, i = 101, 3.0, 40
    got = region_map(net, center, u, v, extent, res)
    b = np.linspace(-extent, extent, res)[i]
    pts = center + np.linspace(-extent, extent, res)[:, None] * u + b * v
    assert np.unique(got.ids[i]).size == fastexpr.measure(net, pts).distinct_patterns


def test_plot(tmp_path):
    net = fastexpr.random_mlp(3, 6, 2, "relu", sigma_w=2.0, sigma_b=0.5, seed=0)
    got = region_map(net, np.zeros(2), np.array([1.0, 0]), np.array([0, 1.0]), 2.0, 50)
    matplotlib = pytest.importorskip("matplotlib")
    backend = matplotlib.get_backend()
    got.plot(tmp_path / "map.png")
    assert (tmp_path / "map.png").stat().st_size > 1000
    assert matplotlib.get_backend() == backend  # a library call leaves the process's backend alone
    assert got.to_dict()["n_regions"] == got.n_regions


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(center=np.zeros(3)), ValueError, "center must have shape"),
    (dict(u=np.zeros((2, 2))), ValueError, "u"),
    (dict(extent=0.0), ValueError, "extent"),
    (dict(extent=float("nan")), ValueError, "extent"),
    (dict(resolution=1), ValueError, "resolution"),
    (dict(resolution=5000), ValueError, "resolution"),
    (dict(resolution=10.0), TypeError, "resolution"),
    (dict(net="net"), TypeError, "Network"),
    (dict(backend="gpu"), ValueError, "backend"),
    (dict(threads=0), ValueError, "threads"),
])
def test_bad_input(kwargs, error, match):
    net = fastexpr.random_mlp(2, 4, 2, "relu", seed=0)
    args = dict(net=net, center=np.zeros(2), u=np.ones(2), v=np.ones(2), extent=1.0, resolution=8) | kwargs
    with pytest.raises(error, match=match):
        region_map(**args)


@pytest.mark.parametrize("engine", ENGINES)
def test_overflow_is_reported(engine):
    net = fastexpr.from_arrays([np.full((3, 2), 1e300), np.full((1, 3), 1e300)], None, "relu")
    with pytest.raises(fastexpr.OverflowInForwardPass, match="layer 2"):
        region_map(net, np.ones(2), np.ones(2), np.ones(2), 1.0, 8, backend=engine)


def test_plot_pixels_must_be_positive():
    net = fastexpr.random_mlp(2, 4, 2, seed=0)
    rm = fastexpr.region_map(net, np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]), 1.0, 8)
    for pixels in (0, -5, 2.5):
        with pytest.raises(ValueError, match="pixels must be a positive integer"):
            rm.plot(pixels=pixels)
