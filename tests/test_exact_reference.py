"""Self-checks of the exact oracle (tests/exact_reference.py), independent of any exact engine."""
from __future__ import annotations

import math

import numpy as np
import pytest

import fastexpr as fx
from tests.cases import random_path
from tests.exact_reference import IllConditioned, exact_reference, point
from tests.reference import reference_measure

CLOSED = {"great_circle", "polyline_closed"}
TRAJS = ["line", "arc", "great_circle", "polyline", "polyline_closed"]
COUNTS = ("transitions", "pattern_changes", "network_changes", "distinct_patterns")


def make_net(act: str, seed: int) -> fx.Network:
    rng = np.random.default_rng(seed)
    depth, width = int(rng.integers(2, 5)), int(rng.integers(3, 9))
    sigma_w = 2.0 if act == "relu" else 3.0
    return fx.random_mlp(depth, width, 3, act, sigma_w=sigma_w, sigma_b=0.5, seed=seed)


def make_traj(name: str, seed: int) -> fx.Trajectory:
    return random_path(name, 3, np.random.default_rng(seed + 500))


def well_conditioned_case(act: str, traj: str, seed: int):
    """(net, trajectory, exact) for the first seed from ``seed`` on that the oracle can resolve."""
    for s in range(seed, seed + 50):
        net, tr = make_net(act, s), make_traj(traj, s)
        try:
            return net, tr, exact_reference(net, tr)
        except IllConditioned:
            continue
    raise AssertionError("no well-conditioned seed found")


def forward_all(net, xs: np.ndarray) -> list[np.ndarray]:
    """h_0 .. h_L at the rows of xs, straight from the definitions."""
    hs, h = [xs], xs
    for w, b, act in zip(net.weights, net.biases, net.activations):
        z = h @ w.T + b
        h = np.maximum(z, 0) if act == "relu" else np.clip(z, -1, 1) if act == "hardtanh" else z
        hs.append(h)
    return hs


def counts_from_crossings(crossings, depth: int, skip_wrap: bool) -> dict:
    """The summary counts recomputed from the crossings list (optionally without the wrap point t = 1)."""
    cs = [c for c in crossings if not (skip_wrap and c[0] == 1.0)]
    transitions = np.zeros(depth, dtype=np.int64)
    layer_ts = [set() for _ in range(depth)]
    for t, layer, _j, old, new in cs:
        transitions[layer - 1] += abs(new - old)
        layer_ts[layer - 1].add(t)
    return dict(
        transitions=transitions,
        pattern_changes=np.array([len(s) for s in layer_ts]),
        network_changes=len({c[0] for c in cs}),
    )


# ------------------------------------------------------------------------- hand-made cases


def test_hand_computed_line():
    # layer 1: relu(x0 - 1/4); layer 2: hardtanh(4 h1 - 1). Along x = (t, 0, 0):
    # z1 = t - 1/4 crosses 0 at t = 1/4; z2 = -1 (on the threshold: tie code 0) until t = 1/4,
    # then 4 t - 2, crossing +1 at t = 3/4.
    net = fx.from_arrays([np.array([[1.0, 0.0, 0.0]]), np.array([[4.0]])],
                         [np.array([-0.25]), np.array([-1.0])], ["relu", "hardtanh"])
    e = exact_reference(net, fx.line([0.0, 0, 0], [1.0, 0, 0]))
    assert e["crossings"] == [(0.25, 1, 0, 0, 1), (0.75, 2, 0, 0, 1)]
    assert e["transitions"].tolist() == [1, 1]
    assert e["pattern_changes"].tolist() == [1, 1]
    assert e["network_changes"] == 2
    assert e["distinct_patterns"] == 3
    np.testing.assert_allclose(e["lengths"], [1.0, 0.75, 2.0], rtol=1e-14)


def test_one_neuron_hardtanh_counts_both_thresholds():
    net = fx.from_arrays([np.array([[2.0, 0.0]])], [np.array([0.0])], ["hardtanh"])
    e = exact_reference(net, fx.line([-1.0, 0], [1.0, 0]))  # z = 4 t - 2: -1 -> 0 at t=1/4, 0 -> +1 at 3/4
    assert e["crossings"] == [(0.25, 1, 0, -1, 0), (0.75, 1, 0, 0, 1)]
    assert e["transitions"].tolist() == [2] and e["network_changes"] == 2 and e["distinct_patterns"] == 3
    np.testing.assert_allclose(e["lengths"], [2.0, 2.0], rtol=1e-14)


def test_touch_on_a_circle_is_no_crossing():
    # z = x0 + 1 = cos(2 pi t) + 1 >= 0 touches 0 at t = 1/2 only: no crossing, one piece.
    net = fx.from_arrays([np.array([[1.0, 0.0]])], [np.array([1.0])], ["relu"])
    e = exact_reference(net, fx.great_circle([1.0, 0], [0.0, 1]))
    assert e["crossings"] == [] and e["network_changes"] == 0 and e["distinct_patterns"] == 1
    # h1 = cos(2 pi t) + 1: length = int 2 pi |sin 2 pi t| = 4 (speed vanishes at t = 1/2)
    np.testing.assert_allclose(e["lengths"], [2 * math.pi, 4.0], rtol=1e-12)


def test_polyline_vertices_cross_and_touch():
    net = fx.from_arrays([np.array([[1.0, 0.0]])], [np.array([0.0])], ["relu"])
    # crossing exactly at the vertex t = 1/2
    e = exact_reference(net, fx.polyline([[-1.0, 0], [0.0, 0], [1.0, 0]]))
    assert e["crossings"] == [(0.5, 1, 0, 0, 1)] and e["distinct_patterns"] == 2
    np.testing.assert_allclose(e["lengths"], [2.0, 1.0], rtol=1e-14)
    # touching 0 at a vertex from either side and returning: no crossing
    for sign in (1.0, -1.0):
        e = exact_reference(net, fx.polyline([[sign, 0], [0.0, 1], [sign, 2]]))
        assert e["crossings"] == [] and e["network_changes"] == 0 and e["distinct_patterns"] == 1
    # a closed polyline: vertex crossings, pattern repeats, no wrap crossing
    e = exact_reference(net, fx.polyline([[-1.0, 0], [1.0, 0], [1.0, 1]], closed=True))
    assert e["network_changes"] == 2 and e["distinct_patterns"] == 2
    assert [c[0] for c in e["crossings"]] == pytest.approx([1 / 6, 2 / 3 + 1 / 6])


def test_wrap_crossing_of_a_closed_path():
    # the crossing sits exactly at t = 0 = 1 of the closed polyline: counted once, at t = 1.0
    net = fx.from_arrays([np.array([[1.0, 0.0]])], [np.array([0.0])], ["relu"])
    e = exact_reference(net, fx.polyline([[0.0, 0], [1.0, 0], [-1.0, 1]], closed=True))
    # z = x0 along 0 -> 1 -> -1 -> 0: positive, crosses 0 once on the middle segment, then
    # returns to 0 from below at the wrap point
    assert e["network_changes"] == 2 and e["distinct_patterns"] == 2
    assert e["crossings"][-1] == (1.0, 1, 0, 0, 1)
    assert e["transitions"].tolist() == [2]
    # an open polyline along the same vertices has no crossing at its ends
    e = exact_reference(net, fx.polyline([[0.0, 0], [1.0, 0], [-1.0, 1], [0.0, 0.5]]))
    assert e["network_changes"] == 1 and e["transitions"].tolist() == [1]


def test_duplicated_neurons_cross_together():
    # a single layer with two identical rows: one crossing point, two transitions
    w = np.array([[1.0, 2.0, -1.0], [1.0, 2.0, -1.0], [0.0, 1.0, 3.0]])
    net = fx.from_arrays([w], [np.array([0.3, 0.3, -5.0])], ["relu"])
    e = exact_reference(net, fx.line([-1.0, 0, 0], [1.0, 0, 0]))  # z0 = z1 = 2t - 0.7
    assert e["network_changes"] == 1 and e["transitions"].tolist() == [2] and e["pattern_changes"].tolist() == [1]
    (t0, *rest0), (t1, *rest1) = e["crossings"]
    assert t0 == t1 == pytest.approx(0.35, rel=1e-15)
    assert rest0 == [1, 0, 0, 1] and rest1 == [1, 1, 0, 1]


@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_duplicated_neuron_in_a_deep_net(act):
    # net B = net A with layer 1's neuron 0 duplicated (its copy feeds nothing): same crossing
    # points and patterns, layer 1 counts every neuron-0 transition twice.
    for seed in range(20):
        a = make_net(act, seed)
        w1 = np.concatenate([a.weights[0], a.weights[0][:1]])
        b1 = np.concatenate([a.biases[0], a.biases[0][:1]])
        w2 = np.concatenate([a.weights[1], np.zeros((a.weights[1].shape[0], 1))], axis=1)
        b = fx.from_arrays([w1, w2, *a.weights[2:]], [b1, *a.biases[1:]], a.activations)
        tr = make_traj("arc", seed)
        try:
            ea, eb = exact_reference(a, tr), exact_reference(b, tr)
        except IllConditioned:
            continue
        n0 = sum(abs(c[4] - c[3]) for c in ea["crossings"] if c[1] == 1 and c[2] == 0)
        if n0 == 0:
            continue
        assert eb["network_changes"] == ea["network_changes"]
        assert eb["distinct_patterns"] == ea["distinct_patterns"]
        assert eb["pattern_changes"].tolist() == ea["pattern_changes"].tolist()
        assert eb["transitions"][0] == ea["transitions"][0] + n0
        assert eb["transitions"][1:].tolist() == ea["transitions"][1:].tolist()
        copies = [c for c in eb["crossings"] if c[1] == 1 and c[2] == w1.shape[0] - 1]
        originals = [c for c in eb["crossings"] if c[1] == 1 and c[2] == 0]
        assert [c[0] for c in copies] == [c[0] for c in originals]
        np.testing.assert_allclose(np.delete(eb["lengths"], 1), np.delete(ea["lengths"], 1), rtol=1e-12)
        return
    raise AssertionError("no usable seed")


# --------------------------------------------------------------------- random networks


@pytest.mark.parametrize("traj", TRAJS)
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_against_sampled_reference(act, traj):
    closed = traj in CLOSED
    for seed in (0, 100):
        net, tr, e = well_conditioned_case(act, traj, seed)
        depth = len(net.weights)
        # the summary counts agree with the crossings list, which is sorted
        cs = e["crossings"]
        assert cs == sorted(cs, key=lambda c: (c[0], c[1], c[2]))
        assert all(0.0 < c[0] < 1.0 or (closed and c[0] == 1.0) for c in cs)
        full = counts_from_crossings(cs, depth, skip_wrap=False)
        assert full["transitions"].tolist() == e["transitions"].tolist()
        assert full["pattern_changes"].tolist() == e["pattern_changes"].tolist()
        assert full["network_changes"] == e["network_changes"]
        if traj == "line":
            assert e["distinct_patterns"] == e["network_changes"] + 1
        seen = counts_from_crossings(cs, depth, skip_wrap=closed)  # what samples on [0, 1] can see
        seen["distinct_patterns"] = e["distinct_patterns"]

        # coarse sampling never sees more than there is
        lo = reference_measure(net, tr, 20001)
        for k in COUNTS:
            assert np.all(np.asarray(lo[k]) <= np.asarray(e[k])), (k, lo[k], e[k])
        assert np.all(lo["lengths"] <= e["lengths"] * (1 + 1e-12))

        if seed != 0:
            continue
        # fine sampling sees everything when crossing points are far enough apart: with gaps
        # above two sample spacings (1e-5 here) every piece holds a sample
        hi = reference_measure(net, tr, 200001)
        ts = sorted({c[0] for c in cs if c[0] < 1.0})
        min_gap = min(np.diff(ts)) if len(ts) > 1 else 1.0
        for k in COUNTS:
            assert np.all(np.asarray(hi[k]) <= np.asarray(e[k])), (k, hi[k], e[k])
            if min_gap > 1e-5:
                assert np.array_equal(np.asarray(hi[k]), np.asarray(seen[k])), (k, hi[k], seen[k], min_gap)
        # inscribed chords underestimate lengths, by O(h) at the kinks: converging
        assert np.all(hi["lengths"] <= e["lengths"] * (1 + 1e-12))
        err_lo = 1 - lo["lengths"] / e["lengths"]
        err_hi = 1 - hi["lengths"] / e["lengths"]
        assert np.all(err_hi <= 1e-3)
        # the 20001-point grid is a subset of the 200001-point one: refining only adds length
        assert np.all(err_hi <= err_lo + 1e-12), (err_lo, err_hi)


@pytest.mark.parametrize("traj", ["line", "polyline", "polyline_closed"])
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_lengths_exact_through_breakpoints(act, traj):
    # on a line or polyline every h_d is affine between consecutive breakpoints (crossing
    # points and vertices), so the chords through the breakpoints give the exact length
    net, tr, e = well_conditioned_case(act, traj, 7)
    k = tr.basis.shape[0]
    bps = sorted({0.0, 1.0} | {c[0] for c in e["crossings"]} | {j / (k - 1) for j in range(k)})
    hs = forward_all(net, np.array([point(tr, t) for t in bps]))
    for d, h in enumerate(hs):
        chords = float(np.sum(np.linalg.norm(np.diff(h, axis=0), axis=1)))
        assert chords == pytest.approx(e["lengths"][d], rel=1e-12, abs=1e-13)


@pytest.mark.parametrize("traj", ["arc", "great_circle"])
@pytest.mark.parametrize("act", ["relu", "hardtanh"])
def test_lengths_of_curves_by_extrapolated_chords(act, traj):
    # between crossing points h_d is smooth, so chord sums converge like h^2 there and
    # Richardson extrapolation over two resolutions per piece cancels that term. Where a
    # layer's image runs back and forth along a line (one active relu), its speed vanishes
    # and the chord across the turn leaves an O(h^2) error: hence the fine grids.
    net, tr, e = well_conditioned_case(act, traj, 3)
    bps = sorted({0.0, 1.0} | {c[0] for c in e["crossings"]})
    omega = math.pi / 2 if traj == "arc" else 2 * math.pi

    def chord_lengths(n):
        tot = np.zeros(len(net.weights) + 1)
        for t0, t1 in zip(bps, bps[1:]):
            t = np.linspace(t0, t1, n + 1)
            xs = np.cos(omega * t)[:, None] * tr.basis[0] + np.sin(omega * t)[:, None] * tr.basis[1]
            tot += [np.sum(np.linalg.norm(np.diff(h, axis=0), axis=1)) for h in forward_all(net, xs)]
        return tot

    l1, l2 = chord_lengths(10000), chord_lengths(20000)
    np.testing.assert_allclose(e["lengths"], (4 * l2 - l1) / 3, rtol=1e-9)
