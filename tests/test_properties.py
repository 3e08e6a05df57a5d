"""Properties that hold for any network and trajectory (hypothesis), on every backend, in float64."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastexpr as fx

from .cases import BACKENDS, backend_or_skip

# Small sample counts on chaotic networks: saturated on purpose, the numbers are still checked exactly.
pytestmark = pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def networks(draw, activations=("relu", "hardtanh", "identity")):
    depth = draw(st.integers(1, 4))
    input_dim = draw(st.integers(1, 5))
    sizes = [input_dim] + [draw(st.integers(1, 12)) for _ in range(depth)]
    acts = [draw(st.sampled_from(activations)) for _ in range(depth)]
    seed = draw(st.integers(0, 2**32 - 1))
    sigma_w = draw(st.sampled_from([0.5, 2.0, 6.0]))
    rng = np.random.default_rng(seed)
    ws = [rng.standard_normal((o, i)) * sigma_w / np.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(o) * 0.5 for o in sizes[1:]]
    return fx.from_arrays(ws, bs, acts), rng


def measure(net, traj, n, backend):
    return fx.measure(net, traj, n, backend=backend, dtype="float64")


def counts(result):
    return (tuple(result.transitions), tuple(result.pattern_changes), result.network_changes, result.distinct_patterns)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=networks(), n=st.integers(2, 400))
def test_reversal_leaves_counts_unchanged(backend, data, n):
    backend_or_skip(backend)
    net, rng = data
    pts = rng.standard_normal((int(rng.integers(2, 9)), net.input_dim))
    forward = measure(net, fx.polyline(pts), n, backend)
    backward = measure(net, fx.polyline(pts[::-1]), n, backend)
    assert counts(forward) == counts(backward)
    np.testing.assert_allclose(forward.lengths, backward.lengths, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=networks(), half=st.integers(2, 300))
def test_halves_sharing_the_middle_sum_to_the_whole(backend, data, half):
    backend_or_skip(backend)
    net, rng = data
    x0, x1 = rng.standard_normal((2, net.input_dim))
    n = 2 * half - 1
    middle = fx.line(x0, x1).sample(n)[half - 1]
    whole = measure(net, fx.line(x0, x1), n, backend)
    first = measure(net, fx.line(x0, middle), half, backend)
    second = measure(net, fx.line(middle, x1), half, backend)
    np.testing.assert_array_equal(first.transitions + second.transitions, whole.transitions)
    np.testing.assert_array_equal(first.pattern_changes + second.pattern_changes, whole.pattern_changes)
    assert first.network_changes + second.network_changes == whole.network_changes
    np.testing.assert_allclose(first.lengths + second.lengths, whole.lengths, rtol=1e-9)


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=networks(activations=("relu", "hardtanh")), n=st.integers(2, 2000))
def test_a_line_never_revisits_a_pattern(backend, data, n):
    """The paper's corollary: linear regions are convex, so a line crosses each at most once."""
    backend_or_skip(backend)
    net, rng = data
    x0, x1 = rng.standard_normal((2, net.input_dim)) * 3
    result = measure(net, fx.line(x0, x1), n, backend)
    assert result.distinct_patterns == result.network_changes + 1


@pytest.mark.parametrize("backend", BACKENDS)
@SETTINGS
@given(data=networks(), n=st.integers(2, 3000), radius=st.floats(0.01, 100))
def test_input_length_is_analytic(backend, data, n, radius):
    backend_or_skip(backend)
    net, rng = data
    x0, x1 = rng.standard_normal((2, net.input_dim))
    assert measure(net, fx.line(x0, x1), n, backend).lengths[0] == pytest.approx(np.linalg.norm(x1 - x0), rel=1e-9)
    if net.input_dim >= 2:
        q, _ = np.linalg.qr(rng.standard_normal((net.input_dim, 2)))
        u, v = radius * q[:, 0], radius * q[:, 1]
        chord = 2 * radius * np.sin(np.pi / (4 * (n - 1)))  # arc of angle pi/2 cut into n-1 equal chords
        assert measure(net, fx.arc(u, v), n, backend).lengths[0] == pytest.approx((n - 1) * chord, rel=1e-9)
