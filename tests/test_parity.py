"""Every backend against the independent float64 NumPy reference (tests/reference.py)."""
from __future__ import annotations

import numpy as np
import pytest

import fastexpr as fx

from .cases import BACKENDS, NETWORKS, TRAJECTORIES, backend_or_skip, network, trajectory
from .reference import reference_measure

# Small sample counts on chaotic networks: saturated on purpose, the numbers are still checked exactly.
pytestmark = pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")

INPUT_DIM = 6


def assert_matches_reference(result, ref, rtol=1e-9):
    np.testing.assert_array_equal(result.transitions, ref["transitions"])
    np.testing.assert_array_equal(result.pattern_changes, ref["pattern_changes"])
    assert result.network_changes == ref["network_changes"]
    assert result.distinct_patterns == ref["distinct_patterns"]
    np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=rtol, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net_name", NETWORKS)
@pytest.mark.parametrize("traj_name", TRAJECTORIES)
def test_float64_matches_reference(backend, net_name, traj_name):
    backend_or_skip(backend)
    n = 1237  # not a multiple of any tile
    net = network(net_name, INPUT_DIM, seed=len(net_name))
    traj = trajectory(traj_name, INPUT_DIM, seed=len(traj_name), n_points=n)
    result = fx.measure(net, traj, n, backend=backend, dtype="float64")
    assert result.backend == backend
    assert_matches_reference(result, reference_measure(net, traj, n))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n", [2, 3, 17, 64, 65, 255, 256, 257, 1025])
def test_awkward_sizes(backend, n):
    backend_or_skip(backend)
    net = network("mixed", INPUT_DIM, seed=n)
    for traj_name in ("arc", "polyline", "points"):
        traj = trajectory(traj_name, INPUT_DIM, seed=n, n_points=n)
        result = fx.measure(net, traj, n, backend=backend, dtype="float64")
        assert_matches_reference(result, reference_measure(net, traj, n))


@pytest.mark.parametrize("backend", BACKENDS)
def test_chunk_boundaries(backend, monkeypatch):
    """Tiny chunks: every chunk boundary shares a sample, and the totals must not change."""
    module = backend_or_skip(backend)
    net = network("hardtanh", INPUT_DIM, seed=3)
    traj = trajectory("great_circle", INPUT_DIM, seed=3)
    n = 3001
    ref = reference_measure(net, traj, n)
    for chunk in (2, 3, 97, 1000):
        monkeypatch.setattr(module, "CHUNK", chunk, raising=False)
        assert_matches_reference(fx.measure(net, traj, n, backend=backend, dtype="float64"), ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_matches_single(backend):
    backend_or_skip(backend)
    net = network("relu", INPUT_DIM, seed=5)
    trajs = [trajectory(name, INPUT_DIM, seed=5) for name in ("line", "arc", "polyline_closed")]
    batch = fx.measure(net, trajs, 999, backend=backend, dtype="float64")
    assert batch.transitions.shape == (3, net.depth)
    assert batch.lengths.shape == (3, net.depth + 1)
    for i, traj in enumerate(trajs):
        assert_matches_reference(batch[i], reference_measure(net, traj, 999))


# float32: the forward pass rounds at ~1e-7 relative. On these shallow networks a sample
# would have to land within that of a region boundary for a count to move, so counts stay
# within 1% (+2) of float64 and lengths within 1e-4 relative. Deep chaotic networks amplify
# rounding exponentially with depth (the README explains), so no such bound holds there.
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("net_name", ["relu", "mixed", "single", "wide"])
@pytest.mark.parametrize("traj_name", ["line", "arc", "polyline", "points"])
def test_float32_within_documented_tolerance(backend, net_name, traj_name):
    backend_or_skip(backend)
    n = 2049
    net = network(net_name, INPUT_DIM, seed=11)
    traj = trajectory(traj_name, INPUT_DIM, seed=11, n_points=n)
    result = fx.measure(net, traj, n, backend=backend, dtype="float32")
    ref = reference_measure(net, traj, n)
    assert result.dtype == "float32"
    for name in ("transitions", "pattern_changes", "network_changes", "distinct_patterns"):
        got, want = np.asarray(getattr(result, name)), np.asarray(ref[name])
        assert np.all(np.abs(got - want) <= 2 + 0.01 * want), (name, got, want)
    np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_inputs_of_other_dtypes_and_layouts(backend):
    """float16/float32 inputs, non-contiguous and read-only arrays give the float64 result of the same values."""
    backend_or_skip(backend)
    rng = np.random.default_rng(7)
    w1 = np.asfortranarray(rng.standard_normal((10, INPUT_DIM)).astype(np.float32))
    w2 = rng.standard_normal((16, 10))[::2, :]  # (8, 10), non-contiguous rows
    w2.flags.writeable = False
    b1, b2 = rng.standard_normal(10).astype(np.float16), rng.standard_normal(8)
    net = fx.from_arrays([w1, w2], [b1, b2], ["relu", "hardtanh"])
    x0 = rng.standard_normal(2 * INPUT_DIM)[::2]
    traj = fx.line(x0, rng.standard_normal(INPUT_DIM).astype(np.float16))
    result = fx.measure(net, traj, 500, backend=backend, dtype="float64")
    assert_matches_reference(result, reference_measure(net, traj, 500))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n_points", [2**31 + 7, 2**40 + 17])
def test_sample_indices_beyond_32_bits(backend, n_points):
    """A window of a trajectory longer than 2^31 samples: indices and counts stay 64-bit."""
    module = backend_or_skip(backend)
    net = network("mixed", INPUT_DIM, seed=2)
    start, stop = n_points - 600, n_points
    rng = np.random.default_rng(2)
    end, direction = rng.standard_normal((2, INPUT_DIM))
    # the last 600 samples run over a stretch of length 2 ending at `end`, where neurons change region
    far = end - (n_points - 1) / 600 * 2.0 * direction / np.linalg.norm(direction)
    for traj in (fx.line(far, end), fx.polyline(np.stack([end, rng.standard_normal(INPUT_DIM), far]), closed=True)):
        part = module.run(fx.make_plan(net, traj, n_points, "float64"), start, stop)
        ref = reference_measure(net, traj, n_points, start, stop)
        assert ref["network_changes"] > 0  # the window is not trivially constant
        np.testing.assert_array_equal(part.transitions, ref["transitions"])
        np.testing.assert_array_equal(part.pattern_changes, ref["pattern_changes"])
        assert part.network_changes == ref["network_changes"]
        assert np.unique(part.run_hashes).size == ref["distinct_patterns"]
        np.testing.assert_allclose(part.lengths, ref["lengths"], rtol=1e-6)
