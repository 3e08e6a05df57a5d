"""The cuda backend against the float64 reference, the cpu backend and itself (GPU only).

Skipped as a whole where the cuda backend is unavailable (no CuPy or no device). Every test
runs with ``cuda.DEBUG`` on (hash buffers poisoned before each launch and checked after) and
without CuPy's memory pool, so that compute-sanitizer sees every buffer's exact bounds
(bench/notes_cuda.md has the commands).
"""
from __future__ import annotations

import numpy as np
import pytest

import fastexpr as fx
from fastexpr import backends
from fastexpr.measure import make_plan
from fastexpr.plan import pattern_keys

from .cases import NETWORKS, TRAJECTORIES, network, trajectory
from .reference import activate, reference_measure, region_codes, sample_points
from .test_parity import assert_matches_reference

try:
    cuda = backends.get("cuda")
except backends.BackendUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

import cupy  # noqa: E402  (present: the cuda backend loaded)

# Small sample counts on chaotic networks: saturated on purpose, the numbers are still checked exactly.
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")]

INPUT_DIM = 6


@pytest.fixture(autouse=True)
def debug_mode(monkeypatch):
    monkeypatch.setattr(cuda, "DEBUG", True)
    with cupy.cuda.using_allocator(None):
        yield


def reference_hashes(net, traj, n_points: int) -> set[int]:
    """The pattern hash of every sample, from the reference's codes and the keys of fastexpr.plan."""
    h = sample_points(traj, n_points)
    total = np.zeros(n_points, np.uint64)
    for layer, (w, b, act) in enumerate(zip(net.weights, net.biases, net.activations), start=1):
        z = h @ w.T + b
        codes = region_codes(z, act)
        plus, minus = pattern_keys(layer, w.shape[0])
        with np.errstate(over="ignore"):
            total += np.where(codes > 0, plus, np.where(codes < 0, minus, 0)).astype(np.uint64).sum(
                axis=1, dtype=np.uint64)
        h = activate(z, act)
    return set(total.tolist())


def assert_partials_equal(got, want, rtol=1e-9):
    np.testing.assert_array_equal(got.transitions, want.transitions)
    np.testing.assert_array_equal(got.pattern_changes, want.pattern_changes)
    assert got.network_changes == want.network_changes
    np.testing.assert_array_equal(np.unique(got.run_hashes), np.unique(want.run_hashes))
    np.testing.assert_allclose(got.lengths, want.lengths, rtol=rtol, atol=0)


def network_for(config, seed: int) -> fx.Network:
    """A mixed network whose widest layer needs exactly this configuration (odd widths, identity output)."""
    rng = np.random.default_rng(seed)
    narrower = [c.width for c in cuda.configs() if c.dtype == config.dtype and c.width < config.width]
    odd = max(narrower) + 5 if narrower else config.width - 3
    sizes = [INPUT_DIM, odd, 37, config.width, 9]
    acts = ["hardtanh", "relu", "hardtanh", "identity"]
    ws = [rng.standard_normal((o, i)) * 3.0 / np.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(o) * 0.5 for o in sizes[1:]]
    return fx.from_arrays(ws, bs, acts)


@pytest.mark.parametrize("net_name", NETWORKS)
@pytest.mark.parametrize("traj_name", TRAJECTORIES)
def test_float64_matches_reference_and_hashes(net_name, traj_name):
    n = 1237
    net = network(net_name, INPUT_DIM, seed=len(net_name))
    traj = trajectory(traj_name, INPUT_DIM, seed=len(traj_name), n_points=n)
    result = fx.measure(net, traj, n, backend="cuda", dtype="float64")
    assert_matches_reference(result, reference_measure(net, traj, n))
    emitted = set(cuda.run(make_plan(net, traj, n, "float64"), 0, n).run_hashes.tolist())
    assert emitted <= reference_hashes(net, traj, n)  # no invented hash
    assert len(emitted) == result.distinct_patterns


@pytest.mark.parametrize("net_name", NETWORKS)
@pytest.mark.parametrize("traj_name", ["arc", "polyline_dense", "points"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_cpu_backend(net_name, traj_name, dtype):
    try:
        cpu = backends.get("cpu")
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))
    n = 3001
    net = network(net_name, INPUT_DIM, seed=7)
    plan = make_plan(net, trajectory(traj_name, INPUT_DIM, seed=7, n_points=n), n, dtype)
    got, want = cuda.run(plan, 0, n), cpu.run(plan, 0, n)
    if dtype == "float64":
        assert_partials_equal(got, want)
    else:  # different summation orders: the float32 tolerance of test_parity
        for name in ("transitions", "pattern_changes", "network_changes"):
            a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
            assert np.all(np.abs(a - b) <= 2 + 0.01 * b), (name, a, b)
        np.testing.assert_allclose(got.lengths, want.lengths, rtol=1e-4)


@pytest.mark.parametrize("config", cuda.configs(), ids=lambda c: c.name)
def test_every_configuration(config):
    """Each compiled configuration, at sizes around its tile: float64 exactly, float32 within tolerance."""
    net = network_for(config, seed=config.width)
    assert cuda.config_for(make_plan(net, trajectory("arc", INPUT_DIM), 2, config.dtype.name)) == config
    for n in (2, config.rows - 1, config.rows, config.rows + 1, 3 * config.rows + 5):
        traj = trajectory("polyline", INPUT_DIM, seed=n, n_points=n)
        result = fx.measure(net, traj, n, backend="cuda", dtype=config.dtype.name)
        ref = reference_measure(net, traj, n)
        if config.dtype == np.float64:
            assert_matches_reference(result, ref)
        else:
            for name in ("transitions", "pattern_changes", "network_changes", "distinct_patterns"):
                got, want = np.asarray(getattr(result, name)), np.asarray(ref[name])
                assert np.all(np.abs(got - want) <= 2 + 0.01 * want), (n, name, got, want)
            np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=1e-4)


@pytest.mark.parametrize("launch_points", [2, 3, 50, 1000])
def test_many_launches(monkeypatch, launch_points):
    """Tiny launches share their boundary sample: totals and distinct patterns must not change."""
    net = network("hardtanh", INPUT_DIM, seed=3)
    traj = trajectory("great_circle", INPUT_DIM, seed=3)
    n = 2001
    monkeypatch.setattr(cuda, "LAUNCH_POINTS", launch_points)
    assert_matches_reference(fx.measure(net, traj, n, backend="cuda", dtype="float64"),
                             reference_measure(net, traj, n))


def test_partials_add_up():
    """run over [a, c) equals run over [a, b) plus run over [b-1, c)."""
    net = network("mixed", INPUT_DIM, seed=4)
    plan = make_plan(net, trajectory("arc", INPUT_DIM, seed=4), 5000, "float64")
    whole = cuda.run(plan, 100, 4000)
    parts = cuda.run(plan, 100, 1733)
    parts += cuda.run(plan, 1732, 4000)
    assert_partials_equal(parts, whole)


@pytest.mark.parametrize("batch", [1, 3, 700])
def test_batch_matches_single(batch):
    """One launch over many trajectories of every kind equals one run per trajectory."""
    net = network("hardtanh", INPUT_DIM, seed=9)
    n = 777
    kinds = ["line", "arc", "great_circle", "polyline", "polyline_closed", "points"]
    plans = [make_plan(net, trajectory(kinds[i % len(kinds)], INPUT_DIM, seed=i, n_points=n), n, "float64")
             for i in range(batch)]
    together = cuda.run_batch(plans, 0, n)
    for i in sorted({0, batch // 2, batch - 1}):
        assert_partials_equal(together[i], cuda.run(plans[i], 0, n))


def test_batch_rejects_different_networks():
    traj = trajectory("arc", INPUT_DIM)
    plans = [make_plan(network(name, INPUT_DIM), traj, 100, "float64") for name in ("relu", "hardtanh")]
    with pytest.raises(ValueError, match="same network"):
        cuda.run_batch(plans, 0, 100)


def test_too_wide_is_a_clear_error():
    widest = max(c.width for c in cuda.configs())
    net = fx.random_mlp(2, widest + 1, INPUT_DIM, seed=0)
    with pytest.raises(ValueError, match="neurons wide"):
        fx.measure(net, trajectory("arc", INPUT_DIM), 10, backend="cuda")


def test_single_sample_range_emits_its_hash():
    net = network("relu", INPUT_DIM, seed=2)
    traj = trajectory("line", INPUT_DIM, seed=2)
    plan = make_plan(net, traj, 50, "float64")
    part = cuda.run(plan, 17, 18)
    assert part.network_changes == 0 and not part.transitions.any() and not part.lengths.any()
    assert len(part.run_hashes) == 1 and set(part.run_hashes.tolist()) <= reference_hashes(net, traj, 50)


@pytest.mark.slow
def test_memory_is_independent_of_n():
    """2^28 samples through a small relu network: device memory stays at one launch's buffers."""
    net = fx.random_mlp(3, 8, INPUT_DIM, "relu", seed=1)
    pool = cupy.cuda.MemoryPool()  # keeps what it ever allocated: total_bytes is the peak
    with cupy.cuda.using_allocator(pool.malloc):
        result = fx.measure(net, trajectory("line", INPUT_DIM), 1 << 28, backend="cuda", progress=False)
    assert result.network_changes + 1 == result.distinct_patterns  # a line revisits no pattern
    assert pool.total_bytes() < 4 * cuda.LAUNCH_POINTS * 8  # one launch's hash buffer and its sort
