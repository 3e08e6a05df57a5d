"""The cuda exact engine (csrc/cuda/exact.cu, fastexpr/backends/cuda_exact.py) against the cpu engine (GPU only).

Skipped as a whole where the cuda backend is unavailable (no CuPy or no device). Counts must
agree exactly; lengths within 1e-10 relative (the GPU may contract multiply-adds).
"""
from __future__ import annotations

import types

import numpy as np
import pytest

import fastexpr as fx
from fastexpr import backends, exact

from .cases import network, random_path

try:
    backends.get("cuda")
    cpu = backends.get("cpu")
except backends.BackendUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

from fastexpr.backends import cuda_exact  # noqa: E402

pytestmark = pytest.mark.gpu

TRAJS = ["line", "arc", "great_circle", "polyline", "polyline_closed"]
COUNTS = ("transitions", "pattern_changes")


def make_net(act: str, seed: int) -> fx.Network:
    rng = np.random.default_rng(seed)
    depth, width = int(rng.integers(2, 5)), int(rng.integers(3, 12))
    return fx.random_mlp(depth, width, 3, act, sigma_w=2.0 if act == "relu" else 3.0, sigma_b=0.5, seed=seed)


def make_traj(name: str, seed: int) -> fx.Trajectory:
    return random_path(name, 3, np.random.default_rng(seed + 500))


@pytest.fixture
def on_cuda(monkeypatch):
    """fastexpr.exact.walk(..., backend="cuda") runs cuda_exact.exact_walk."""
    engine = types.SimpleNamespace(NAME="cuda", exact_walk=cuda_exact.exact_walk)
    real = exact._backend
    monkeypatch.setattr(exact, "_backend", lambda name: engine if name == "cuda" else real(name))


def assert_same_totals(got, want):
    assert got.backend == "cuda"
    for name in COUNTS:
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.network_changes == want.network_changes
    assert got.distinct_patterns == want.distinct_patterns
    np.testing.assert_allclose(got.lengths, want.lengths, rtol=1e-10, atol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("traj_name", TRAJS)
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_matches_cpu_engine(on_cuda, act, traj_name, seed):
    net, traj = make_net(act, seed), make_traj(traj_name, seed)
    for n_units in (1, 5, 333):
        assert_same_totals(exact.walk(net, traj, backend="cuda", n_units=n_units),
                           exact.walk(net, traj, backend="cpu", n_units=n_units))


@pytest.mark.parametrize("name", ["mixed", "width1", "single", "wide"])
@pytest.mark.parametrize("traj_name", ["polyline_closed", "great_circle"])
def test_same_dict_as_cpu(name, traj_name):
    """exact_walk itself: every array of the C++ engine's dict, same shapes and dtypes."""
    net = network(name, 3, seed=5)
    units = exact.make_units(net, make_traj(traj_name, 5), 97)
    args = (units.kind, [np.ascontiguousarray(w) for w in net.weights[1:]],
            [np.ascontiguousarray(b) for b in net.biases[1:]],
            [{"identity": 0, "relu": 1, "hardtanh": 2}[a] for a in net.activations],
            units.k0, units.k1, units.k2, units.u0, units.u1, units.g_in, units.tol)
    got, want = cuda_exact.exact_walk(*args), cpu.exact_walk(*args)
    assert set(got) == set(want)
    for key in ("transitions", "pattern_changes", "network_changes", "first_code", "last_code", "hashes", "errors",
                "lengths"):
        assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
        if key == "lengths":
            np.testing.assert_allclose(got[key], want[key], rtol=1e-10, atol=1e-300)
        else:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert all(c.size == 0 for c in got["crossings"])


@pytest.mark.parametrize("capacity, slots", [(1, 1 << 25), (1, 3), (2, 1)])
def test_hash_overflow_reruns(on_cuda, monkeypatch, capacity, slots):
    """Units with more pieces than hash slots are walked again: nothing is lost."""
    net, traj = make_net("hardtanh", 3), make_traj("great_circle", 3)
    want = exact.walk(net, traj, backend="cpu", n_units=40)
    monkeypatch.setattr(cuda_exact, "HASH_CAPACITY", capacity)
    monkeypatch.setattr(cuda_exact, "HASH_SLOTS", slots)
    assert_same_totals(exact.walk(net, traj, backend="cuda", n_units=40), want)


def test_few_threads_loop_over_units(on_cuda, monkeypatch):
    """Scratch for one thread: it walks every unit in turn (the grid-stride loop)."""
    net, traj = make_net("relu", 4), make_traj("polyline", 4)
    monkeypatch.setattr(cuda_exact, "SCRATCH_BYTES", 1)
    assert_same_totals(exact.walk(net, traj, backend="cuda", n_units=50),
                       exact.walk(net, traj, backend="cpu", n_units=50))


def test_crossings_are_refused(on_cuda):
    with pytest.raises(ValueError, match="does not record crossings"):
        exact.walk(make_net("relu", 0), make_traj("line", 0), backend="cuda", max_crossings=10)
