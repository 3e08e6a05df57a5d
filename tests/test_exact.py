"""The exact engine (measure(..., exact=True)) against the exact oracle, the sampled engines and hand-made cases."""
from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")

import fastexpr as fx
from fastexpr import exact

from .cases import backend_or_skip, network, trajectory
from .exact_reference import IllConditioned, exact_reference
from .reference import reference_measure

EXACT_BACKENDS = ["cpu", "numba"]
INPUT_DIM = 5


def assert_same_counts(result, ref):
    np.testing.assert_array_equal(result.transitions, ref["transitions"])
    np.testing.assert_array_equal(result.pattern_changes, ref["pattern_changes"])
    assert result.network_changes == ref["network_changes"]
    assert result.distinct_patterns == ref["distinct_patterns"]


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("net_name", ["relu", "hardtanh", "mixed", "width1", "single"])
@pytest.mark.parametrize("traj_name", ["line", "arc", "great_circle", "polyline", "polyline_closed", "points"])
def test_matches_exact_reference(backend, net_name, traj_name):
    backend_or_skip(backend)
    net = network(net_name, INPUT_DIM, seed=len(net_name) + 7)
    traj = trajectory(traj_name, INPUT_DIM, seed=len(traj_name), n_points=9)
    result = fx.measure(net, traj, exact=True, backend=backend)
    ref = exact_reference(net, traj)
    assert_same_counts(result, ref)
    np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=1e-9, atol=1e-12)
    assert result.exact and result.backend == backend


@pytest.mark.parametrize("activation", ["relu", "hardtanh"])
@pytest.mark.parametrize("kind", ["line", "arc", "great_circle", "polyline"])
@pytest.mark.parametrize("seed", range(4))
def test_sampled_never_above_exact(activation, kind, seed):
    """float64 samples can miss crossing points, never invent them; chords never exceed arcs."""
    net = fx.random_mlp(4, 12, INPUT_DIM, activation, sigma_w=3.0, sigma_b=0.4, seed=seed)
    traj = trajectory(kind, INPUT_DIM, seed=seed)
    ex = fx.measure(net, traj, exact=True)
    for n in (2 ** 8 + 1, 2 ** 12 + 3, 2 ** 16 + 1):
        sampled = fx.measure(net, traj, n, dtype="float64")
        assert np.all(sampled.transitions <= ex.transitions)
        assert np.all(sampled.pattern_changes <= ex.pattern_changes)
        assert sampled.network_changes <= ex.network_changes
        assert sampled.distinct_patterns <= ex.distinct_patterns
        assert np.all(sampled.lengths <= ex.lengths * (1 + 1e-12) + 1e-300)
    np.testing.assert_allclose(sampled.lengths, ex.lengths, rtol=1e-3)


def test_sampled_converges_to_exact():
    net = fx.random_mlp(3, 8, INPUT_DIM, "relu", sigma_w=2.0, sigma_b=0.3, seed=11)
    traj = trajectory("arc", INPUT_DIM, seed=11)
    ex = fx.measure(net, traj, exact=True)
    gaps = np.diff(np.unique(fx.crossings(net, traj)["t"]))
    assert gaps.min() > 1e-5  # so that 2^20 samples must see every piece
    sampled = fx.measure(net, traj, 2 ** 20 + 1, dtype="float64")
    assert_same_counts(sampled, dict(transitions=ex.transitions, pattern_changes=ex.pattern_changes,
                                     network_changes=ex.network_changes, distinct_patterns=ex.distinct_patterns))
    # chords cut every kink of the image short: the shortfall shrinks with the sample spacing
    coarse = fx.measure(net, traj, 2 ** 14 + 1, dtype="float64")
    assert np.all(ex.lengths - sampled.lengths <= (ex.lengths - coarse.lengths) / 8 + 1e-15 * ex.lengths)
    np.testing.assert_allclose(sampled.lengths, ex.lengths, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "hardtanh"])
def test_line_pieces_are_distinct_regions(activation):
    """Linear regions are convex, so a line meets each one in a single piece."""
    net = fx.random_mlp(6, 32, 20, activation, sigma_w=4.0, sigma_b=0.5, seed=3)
    x0, x1 = np.random.default_rng(3).standard_normal((2, 20))
    r = fx.measure(net, fx.line(x0, x1), exact=True)
    assert r.network_changes > 100
    assert r.distinct_patterns == r.network_changes + 1


@pytest.mark.parametrize("kind", ["line", "arc", "great_circle", "polyline_closed"])
def test_units_merge_exactly(kind):
    """Any cut of the path into units gives the same counts (shared ends compared once)."""
    net = fx.random_mlp(5, 16, INPUT_DIM, "hardtanh", sigma_w=4.0, sigma_b=0.3, seed=5)
    traj = trajectory(kind, INPUT_DIM, seed=5)
    base = exact.walk(net, traj, n_units=1)
    for n_units in (2, 3, 7, 64, 300):
        r = exact.walk(net, traj, n_units=n_units)
        np.testing.assert_array_equal(r.transitions, base.transitions)
        np.testing.assert_array_equal(r.pattern_changes, base.pattern_changes)
        assert (r.network_changes, r.distinct_patterns) == (base.network_changes, base.distinct_patterns)
        np.testing.assert_allclose(r.lengths, base.lengths, rtol=1e-11)


def one_neuron(w, b=0.0, activation="relu"):
    return fx.from_arrays([np.asarray(w, float)[None, :]], [np.array([b])], [activation])


def test_crossing_on_a_unit_boundary_counts_once():
    net = one_neuron([1.0, 0.0])                      # z = x_0: crosses at t = 1/2 on this line
    traj = fx.line([-1.0, 0.3], [1.0, -0.2])
    for n_units in (1, 2, 4):
        r = exact.walk(net, traj, n_units=n_units)
        assert (r.transitions[0], r.network_changes, r.distinct_patterns) == (1, 1, 2)
    np.testing.assert_allclose(r.lengths, [np.hypot(2.0, 0.5), 1.0])


def test_neurons_crossing_together_make_one_crossing_point():
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((3, 3))
    w1 = np.vstack([w1, w1[:1]])                      # neuron 3 duplicates neuron 0
    net = fx.from_arrays([w1, rng.standard_normal((2, 4))], [np.zeros(4), np.array([0.1, -0.2])], "relu")
    traj = fx.line(w1[0] * 3 + 0.1, -w1[0] * 2 + 0.3)
    cross = fx.crossings(net, traj)
    both = cross[(cross["layer"] == 1) & np.isin(cross["neuron"], [0, 3])]
    assert both.size == 2 and both["t"][0] == both["t"][1]
    r = fx.measure(net, traj, exact=True)
    assert r.network_changes == np.unique(cross["t"]).size
    assert r.transitions.sum() == np.abs(cross["to_code"].astype(int) - cross["from_code"]).sum()


def test_origin_of_a_zero_bias_relu_net_is_one_crossing_point():
    """Every pre-activation vanishes at the origin; that single point is not a region."""
    rng = np.random.default_rng(1)
    net = fx.from_arrays([rng.standard_normal((8, 3)), rng.standard_normal((6, 8)), rng.standard_normal((4, 6))],
                         None, "relu")
    a = rng.standard_normal(3)
    r = fx.measure(net, fx.line(-a, a), exact=True)
    assert (r.network_changes, r.distinct_patterns) == (1, 2)
    before = [np.asarray(c) for c in _codes(net, -a * 0.5)]
    after = [np.asarray(c) for c in _codes(net, a * 0.5)]
    np.testing.assert_array_equal(r.transitions, [np.abs(x - y).sum() for x, y in zip(before, after)])


def _codes(net, x):
    codes, h = [], x
    for w, b in zip(net.weights, net.biases):
        z = w @ h + b
        codes.append((z > 0).astype(int))
        h = np.maximum(z, 0)
    return codes


def test_path_along_a_threshold_keeps_the_tie_code():
    w1 = np.array([[1.0, 0.0, 0.0], [0.3, 1.0, 0.2]])   # neuron 0 is exactly 0 along the path
    net = fx.from_arrays([w1, np.array([[1.0, 1.0], [-1.0, 2.0]])], [np.zeros(2), np.array([0.0, -0.5])],
                         ["relu", "hardtanh"])
    r = fx.measure(net, fx.line([0.0, -2.0, 1.0], [0.0, 2.0, -1.0]), exact=True)
    cross = fx.crossings(net, fx.line([0.0, -2.0, 1.0], [0.0, 2.0, -1.0]))
    assert not np.any((cross["layer"] == 1) & (cross["neuron"] == 0))
    assert r.transitions[0] == 1


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_a_neuron_whose_inputs_all_turn_off_takes_the_tie_code_there(backend):
    """Where every input of a zero-bias relu turns off, its pre-activation is exactly 0 from then on: it
    takes the tie code at that crossing point (the walker once kept it on until a unit boundary)."""
    backend_or_skip(backend)
    chain = fx.from_arrays([np.array([[1.0]]), np.array([[1.0]])], [np.zeros(1), np.zeros(1)], ["relu", "relu"])
    line = fx.line([1.0], [-2.0])  # z1 = 1 - 3t; z2 = relu(z1) = 0 exactly from t = 1/3
    r = fx.measure(chain, line, exact=True, backend=backend)
    assert (r.network_changes, r.distinct_patterns, list(r.transitions)) == (1, 2, [1, 1])
    cross = fx.crossings(chain, line, backend=backend)
    np.testing.assert_allclose(cross["t"], [1 / 3, 1 / 3])
    # Both inputs off on x in [0.28, 0.3] only: the top neuron goes off and back on inside one unit.
    gap = fx.from_arrays([np.array([[1.0], [-1.0]]), np.array([[1.0, 1.0]])], [np.array([-0.3, 0.28]), np.zeros(1)],
                         ["relu", "relu"])
    line = fx.line([1.0], [-1.0])
    assert list(fx.measure(gap, line, exact=True, backend=backend).transitions) == [2, 2]
    assert list(fx.measure(gap, line, 2 ** 12 + 1, backend=backend).transitions) == [2, 2]
    # A saturated hardtanh whose input is left at exactly its threshold takes the inner code 0.
    held = fx.from_arrays([np.array([[1.0]]), np.array([[1.0]])], [np.zeros(1), np.ones(1)], ["relu", "hardtanh"])
    line = fx.line([1.0], [-2.0])  # z2 = relu(1 - 3t) + 1: +1 (saturated) until t = 1/3, exactly 1 after
    assert list(fx.measure(held, line, exact=True, backend=backend).transitions) == [1, 1]
    # The angle-parametrised walker: x = cos(u) - 2 sin(u) crosses 0 once on the arc, twice on the circle.
    for path, crossings in ((fx.arc([1.0], [-2.0]), 1), (fx.great_circle([1.0], [-2.0]), 2)):
        r = fx.measure(chain, path, exact=True, backend=backend)
        assert (r.network_changes, r.distinct_patterns, list(r.transitions)) == (crossings, 2, [crossings] * 2)
        sampled = fx.measure(chain, path, 2 ** 12 + 1, backend=backend)
        assert (sampled.network_changes, list(sampled.transitions)) == (crossings, [crossings] * 2)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_a_layer_flat_along_the_path_is_constant_too(backend):
    """A layer is constant when its linear neurons have slope 0 along the path (here a weight row
    orthogonal to the line), not only when every neuron is off: the layer above must be recomputed
    from scratch there too (review of the tie fix: 188 of 300 such nets were off)."""
    backend_or_skip(backend)
    w1 = np.array([[0.43263215928800514, 0.0], [1.4900938715375214, 0.0], [0.0, 1.0]])
    b1 = np.array([-0.28699051576564943, 0.29458407644599577, 0.0])
    w2, b2 = np.array([[0.3665868151247561, 0.5147786926277883, 1.0]]), np.array([-1.318207178467712])
    net = fx.from_arrays([w1, w2, np.eye(1)], [b1, b2, np.zeros(1)], ["relu"] * 3)
    line = fx.line([3.0, 1.318207178467712], [-3.0, 1.318207178467712])  # h1[2] = 1.318...: z2 + b2 hits 0
    r = fx.measure(net, line, exact=True, backend=backend)
    assert (r.network_changes, r.distinct_patterns) == (2, 3)
    sampled = fx.measure(net, line, 2 ** 16 + 1, backend=backend)
    assert (sampled.network_changes, sampled.distinct_patterns) == (2, 3)
    np.testing.assert_array_equal(sampled.transitions, r.transitions)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("kind", ["line", "arc", "polyline"])
def test_zero_bias_relu_nets_match_the_exact_reference(backend, kind):
    """Narrow zero-bias relu nets (random_mlp's default sigma_b = 0) often turn a whole layer off, which
    leaves the next layer's pre-activations exactly 0: the walker must not see rounding residue there."""
    backend_or_skip(backend)
    checked = 0
    for seed in range(150):
        net = fx.random_mlp(3, 3, 2, "relu", sigma_w=2.0, seed=seed)
        traj = trajectory(kind, 2, seed=seed)
        try:
            ref = exact_reference(net, traj)
        except IllConditioned:
            continue
        assert_same_counts(fx.measure(net, traj, exact=True, backend=backend), ref)
        checked += 1
    assert checked >= 25


def test_zero_length_segments_and_repeated_vertices():
    rng = np.random.default_rng(2)
    p = rng.standard_normal((6, INPUT_DIM))
    p[3] = p[2]
    net = fx.random_mlp(3, 8, INPUT_DIM, "relu", sigma_w=2.0, sigma_b=0.3, seed=2)
    r = fx.measure(net, fx.polyline(p), exact=True)
    ref = exact_reference(net, fx.polyline(p))
    assert_same_counts(r, ref)
    zero = fx.measure(net, fx.line(p[0], p[0]), exact=True)
    assert zero.network_changes == 0 and np.all(zero.lengths == 0)


def test_closed_path_counts_the_wrap_point():
    # z = x . e0 along cos(2 pi t) e1 + sin(2 pi t) e0 is sin(2 pi t): crossings at t = 0 (= 1) and t = 1/2.
    net = one_neuron([1.0, 0.0])
    r = fx.measure(net, fx.great_circle([0.0, 1.0], [1.0, 0.0]), exact=True)
    assert (r.transitions[0], r.network_changes, r.distinct_patterns) == (2, 2, 2)
    np.testing.assert_allclose(r.lengths, [2 * np.pi, 2.0], rtol=1e-12)  # relu(sin): up 1 and down 1


def test_hardtanh_crossings_both_thresholds():
    net = one_neuron([2.0, 0.0], activation="hardtanh")      # z = 2 x_0 from -3 to 3: crosses -1 and +1
    r = fx.measure(net, fx.line([-1.5, 0.0], [1.5, 0.0]), exact=True)
    assert (r.transitions[0], r.network_changes, r.distinct_patterns) == (2, 2, 3)
    np.testing.assert_allclose(r.lengths, [3.0, 2.0])


def test_crossings_match_counts_and_are_capped():
    net = fx.random_mlp(4, 10, INPUT_DIM, "hardtanh", sigma_w=3.0, sigma_b=0.2, seed=4)
    traj = trajectory("great_circle", INPUT_DIM, seed=4)
    r = fx.measure(net, traj, exact=True)
    cross = fx.crossings(net, traj)
    assert np.all(np.diff(cross["t"]) >= 0) and cross["t"].min() >= 0 and cross["t"].max() <= 1
    for d in range(net.depth):
        c = cross[cross["layer"] == d + 1]
        assert np.abs(c["to_code"].astype(int) - c["from_code"]).sum() == r.transitions[d]
    assert fx.crossings(net, traj, max_crossings=5).size == 5


def test_exact_argument_errors():
    net = fx.random_mlp(2, 4, 3, seed=0)
    traj = fx.line(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="n_points"):
        fx.measure(net, traj, 100, exact=True)
    with pytest.raises(ValueError, match="float64"):
        fx.measure(net, traj, exact=True, dtype="float32")
    with pytest.raises(ValueError, match="max_crossings"):
        fx.crossings(net, traj, max_crossings=0)
    with pytest.raises(ValueError, match="dimension"):
        fx.crossings(net, fx.line(np.zeros(4), np.ones(4)))
    with pytest.raises(ValueError, match="backend"):
        fx.measure(net, traj, exact=True, backend="torch")


def test_overflow_is_an_error():
    net = fx.from_arrays([np.full((3, 2), 1e200), np.full((2, 3), 1e200)], None, "relu")
    with pytest.raises(fx.OverflowInForwardPass):
        fx.measure(net, fx.line([1.0, 1.0], [-1.0, 2.0]), exact=True)


def test_sampled_reference_agrees_on_a_fine_grid():
    """The sampled oracle at a grid that resolves every piece sees exactly the exact pieces."""
    net = network("relu", INPUT_DIM, seed=9)
    traj = trajectory("line", INPUT_DIM, seed=9)
    ex = fx.measure(net, traj, exact=True)
    ref = reference_measure(net, traj, 200_001)
    assert ref["network_changes"] == ex.network_changes
    np.testing.assert_array_equal(ref["transitions"], ex.transitions)


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_an_open_path_ending_at_its_start_is_not_closed(backend):
    """Only great_circle and polyline(closed=True) join t = 1 to t = 0; a polyline (or point set) that
    merely returns to its first vertex keeps two ends (the engine once inferred closedness from the data)."""
    backend_or_skip(backend)
    net = fx.from_arrays([np.eye(2)], [np.zeros(2)], "relu")
    loop = np.array([[0.0, 0.5], [1.0, 0.5], [-1.0, 0.7], [0.0, 0.5]])  # starts and ends on neuron 0's threshold
    for path in (fx.polyline(loop), fx.points(loop)):
        r = fx.measure(net, path, exact=True, backend=backend)
        assert r.network_changes == 1 and list(r.transitions) == [1]
        assert not np.any(fx.crossings(net, path, backend=backend)["t"] == 0)
    closed = fx.measure(net, fx.polyline(loop[:-1], closed=True), exact=True, backend=backend)
    assert closed.network_changes == 2 and list(closed.transitions) == [2]


@pytest.mark.parametrize("backend", EXACT_BACKENDS)
@pytest.mark.parametrize("kind", ["line", "arc", "polyline"])
def test_lengths_of_tiny_and_huge_paths(backend, kind):
    """A zero-bias relu net is homogeneous: scaling the path by s scales every length by s and keeps
    the counts. The per-layer Gram sums once squared the scale (0 below 1e-154, a false
    OverflowInForwardPass above 1e154, and a false one for subnormal inputs)."""
    backend_or_skip(backend)
    net = fx.random_mlp(3, 6, INPUT_DIM, "relu", sigma_w=1.5, seed=3)
    traj = trajectory(kind, INPUT_DIM, seed=2)
    ref = fx.measure(net, traj, exact=True, backend=backend)
    for s in (1e-305, 1e-200, 1e-160, 1e160, 1e250):
        scaled = fx.polyline(traj.basis * s) if kind == "polyline" else type(traj)(traj.kind, traj.basis * s)
        r = fx.measure(net, scaled, exact=True, backend=backend)
        assert_same_counts(r, dict(transitions=ref.transitions, pattern_changes=ref.pattern_changes,
                                   network_changes=ref.network_changes, distinct_patterns=ref.distinct_patterns))
        np.testing.assert_allclose(r.lengths / s, ref.lengths, rtol=1e-9)
