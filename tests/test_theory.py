"""fastexpr.theory against values worked out by hand and independent numerical integration."""
import math

import numpy as np
import pytest

from fastexpr import theory


def test_arrangement_regions_by_hand():
    assert theory.arrangement_regions(3, 2) == 7      # three lines in general position cut the plane in 7
    assert theory.arrangement_regions(4, 1) == 5      # four points cut a line in 5
    assert theory.arrangement_regions(2, 5) == 4      # fewer hyperplanes than dimensions: 2^k
    assert theory.arrangement_regions(6, 2) == 22     # 1 + 6 + 15


def test_activation_pattern_bound_by_hand():
    assert theory.activation_pattern_bound((2, 3, 3)) == 49              # 7 x 7
    assert theory.activation_pattern_bound((2, 3, 3), "hardtanh") == 484  # 22 x 22
    assert theory.activation_pattern_bound((1, 4, 4, 4)) == 125          # a trajectory: (k + 1)^n
    assert theory.activation_pattern_bound((1, 4, 4), "hardtanh") == 81  # (2k + 1)^n
    with pytest.raises(ValueError, match="activation"):
        theory.activation_pattern_bound((2, 3), "tanh")
    with pytest.raises(ValueError, match="widths"):
        theory.activation_pattern_bound((2,))


def test_length_growth_bound_by_hand():
    assert theory.length_growth_bound("relu", 3, 2.0) == pytest.approx(2 * math.sqrt(3) / 2)
    # hard-tanh, k = 4, sigma_w = 3, sigma_b = 4: s = 25, factor = 3 * 2 / sqrt(25 + 4 * 5) = 6 / sqrt(45)
    assert theory.length_growth_bound("hardtanh", 4, 3.0, 4.0) == pytest.approx(6 / math.sqrt(45))
    with pytest.raises(ValueError, match="sigma"):
        theory.length_growth_bound("relu", 4, -1.0)


def test_length_growth_bound_is_an_order_not_a_number():
    """At large width Theorem 3's base lies above the exact (mean-field) growth by a constant per
    layer: (pi / 2)^(1/4) for hard-tanh as sigma_w grows, sqrt(2) for relu. So it bounds orders of
    growth only, and the package must not present it as a per-layer lower bound."""
    k = 10 ** 8
    hard = theory.length_growth_bound("hardtanh", k, 1e4) / theory.mean_field("hardtanh", 1e4).length_growth
    assert hard == pytest.approx((math.pi / 2) ** 0.25, rel=1e-3)
    relu = theory.length_growth_bound("relu", k, 2.0) / theory.mean_field("relu", 2.0).length_growth
    assert relu == pytest.approx(math.sqrt(2), rel=1e-6)


def test_transitions_per_length_by_hand():
    # relu, 4 units fed by 4, sigma_w = 2, q = 4: 4 * 1 * 2 / (pi * sqrt(16)) = 2 / pi
    assert theory.transitions_per_length("relu", 4, 2.0, q=4.0) == pytest.approx(2 / math.pi)
    # hard-tanh, q = 2: two thresholds, each exp(-1/4); 9 units fed by 16: 9 * 2 e^-1/4 * 3 / (pi sqrt(32))
    got = theory.transitions_per_length("hardtanh", 9, 3.0, fan_in=16, q=2.0)
    assert got == pytest.approx(9 * 2 * math.exp(-0.25) * 3 / (math.pi * math.sqrt(32)))
    # saturated hard-tanh (large sigma_w): the paper's base sqrt(k) / sqrt(1 + sigma_b^2 / sigma_w^2) times 2 / pi
    k, sw, sb = 100, 1e3, 500.0
    assert theory.transitions_per_length("hardtanh", k, sw, sb) == pytest.approx(
        2 / math.pi * math.sqrt(k) / math.sqrt(1 + sb ** 2 / sw ** 2), rel=1e-3)  # q* -> sigma_w^2 + sigma_b^2
    with pytest.raises(ValueError, match="q"):
        theory.transitions_per_length("relu", 4, 1.0)  # relu without bias: q* = 0, pass q
    with pytest.raises(ValueError, match="q"):
        theory.transitions_per_length("relu", 4, math.sqrt(2))  # every q is a fixed point there
    with pytest.raises(ValueError, match="positive"):
        theory.transitions_per_length("hardtanh", 0, 1.0, q=1.0)


@pytest.mark.parametrize("activation, n, k, sigma_w, sigma_b, radius",
                         [("relu", 6, 5, 1.5, 0.7, 2.0), ("hardtanh", 8, 3, 4.0, 0.0, 2.5),
                          ("hardtanh", 5, 7, 1.2, 0.5, 1.0)])
def test_transitions_per_length_against_monte_carlo(activation, n, k, sigma_w, sigma_b, radius):
    """Random layers on a circle of the given radius in R^n, crossings counted exactly: a unit's
    pre-activation is A cos t + B sin t + b, which crosses a level c twice when |c - b| < sqrt(A^2 + B^2)."""
    rng = np.random.default_rng(5)
    draws = 400_000
    w = rng.standard_normal((draws, 2)) * sigma_w / np.sqrt(n) * radius  # (A, B) = radius (w . e1, w . e2)
    b = rng.standard_normal(draws) * sigma_b
    amplitude = np.hypot(w[:, 0], w[:, 1])
    levels = [0.0] if activation == "relu" else [-1.0, 1.0]
    crossings = sum(2 * (np.abs(c - b) < amplitude) for c in levels)
    per_length = k * crossings.mean() / (2 * np.pi * radius)
    q = sigma_w ** 2 * radius ** 2 / n + sigma_b ** 2
    assert theory.transitions_per_length(activation, k, sigma_w, sigma_b, fan_in=n, q=q) == pytest.approx(
        per_length, rel=0.01)


def _moments_by_quadrature(activation, q):
    z = np.linspace(-12, 12, 2_000_001)
    pdf = np.exp(-z ** 2 / 2) / np.sqrt(2 * np.pi)
    x = np.sqrt(q) * z
    phi = np.maximum(x, 0) if activation == "relu" else np.clip(x, -1, 1)
    dphi = (x > 0).astype(float) if activation == "relu" else (np.abs(x) < 1).astype(float)
    return np.trapezoid(phi ** 2 * pdf, z), np.trapezoid(dphi * pdf, z)


@pytest.mark.parametrize("activation, q", [("relu", 0.7), ("hardtanh", 0.3), ("hardtanh", 2.5), ("hardtanh", 40.0)])
def test_second_moments_against_quadrature(activation, q):
    assert theory.second_moments(activation, q) == pytest.approx(_moments_by_quadrature(activation, q), rel=5e-5)


def test_mean_field_relu_by_hand():
    mf = theory.mean_field("relu", 1.0, 1.0)  # q = q/2 + 1
    assert (mf.q_star, mf.chi_1) == (2.0, 0.5)
    assert theory.mean_field("relu", 2.0, 0.5).q_star == math.inf  # slope 2: no fixed point
    assert theory.mean_field("relu", 2.0).length_growth == pytest.approx(math.sqrt(2))  # chi_1 = 4 / 2
    he = theory.mean_field("relu", math.sqrt(2))  # sigma_w^2 / 2 rounds to 1.0000000000000002: still critical
    assert (he.q_star, he.chi_1) == (1.0, 1.0)
    assert theory.mean_field("relu", math.sqrt(2), 0.1).q_star == math.inf  # q -> q + sigma_b^2 grows


def test_widths_must_be_integers():
    with pytest.raises(ValueError, match="positive integers, got \\(2.5, 3\\)"):
        theory.activation_pattern_bound((2.5, 3))
    with pytest.raises(ValueError, match="width must be a positive integer, got 0.5"):
        theory.length_growth_bound("relu", 0.5, 1.0)
    with pytest.raises(ValueError, match="fan_in must be a positive integer"):
        theory.transitions_per_length("hardtanh", 4, 1.0, fan_in=2.5, q=1.0)


@pytest.mark.parametrize("sigma_w, sigma_b", [(2.0, 0.0), (4.0, 0.5), (1.5, 1.0), (0.5, 0.3)])
def test_mean_field_hardtanh_is_a_fixed_point(sigma_w, sigma_b):
    mf = theory.mean_field("hardtanh", sigma_w, sigma_b)
    e_phi2, e_dphi2 = _moments_by_quadrature("hardtanh", mf.q_star)
    assert mf.q_star == pytest.approx(sigma_w ** 2 * e_phi2 + sigma_b ** 2, rel=5e-5)
    assert mf.chi_1 == pytest.approx(sigma_w ** 2 * e_dphi2, rel=5e-5)
    assert mf.q_star > 0


def test_mean_field_hardtanh_ordered_phase():
    mf = theory.mean_field("hardtanh", 0.8)
    assert mf.q_star == 0 and mf.chi_1 == pytest.approx(0.64)
    assert theory.mean_field("hardtanh", 4.0).chi_1 > 1  # chaotic: lengths grow


def test_mean_field_layers_by_hand():
    q, growth = theory.mean_field_layers("relu", (4, 4, 16), 2.0, 1.0, input_second_moment=1.0)
    assert list(q) == [5.0, 11.0]                                  # 4 * 1 + 1, then 4 * 5 / 2 + 1
    assert growth == pytest.approx([math.sqrt(2), 2 * math.sqrt(2)])  # sqrt(4 / 2), then x sqrt(16 / 4)
    mf = theory.mean_field("hardtanh", 4.0, 0.5)  # started at the fixed point it stays there
    q, growth = theory.mean_field_layers("hardtanh", (8,) * 4, 4.0, 0.5, (mf.q_star - 0.25) / 16)
    assert q == pytest.approx([mf.q_star] * 3) and growth == pytest.approx([mf.length_growth] * 3)
    q, _ = theory.mean_field_layers("hardtanh", (3, 3, 3), [1.0, 2.0], [0.0, 3.0], 2.0)
    assert q[0] == 2.0 and q[1] == pytest.approx(4 * theory.second_moments("hardtanh", 2.0)[0] + 9)
    with pytest.raises(ValueError, match="widths"):
        theory.mean_field_layers("relu", (4,), 1.0)


@pytest.mark.parametrize("activation, sigma_w, sigma_b", [("hardtanh", 3.0, 0.5), ("relu", 1.5, 0.3)])
def test_mean_field_layers_against_a_wide_network(activation, sigma_w, sigma_b):
    """A wide random network in plain NumPy: 64 tiny steps perpendicular to the input, pushed
    through each layer's Jacobian, grow in root-mean-square by the predicted factor (width 3000; seeds 0-3 and 11 within 2.5%)."""
    rng = np.random.default_rng(11)
    widths, second = (2000, 3000, 3000, 3000), 0.8
    x = rng.standard_normal(widths[0])
    x *= np.sqrt(second * widths[0]) / np.linalg.norm(x)
    dx = rng.standard_normal((widths[0], 64))
    dx -= np.outer(x, x @ dx) / (x @ x)
    _, predicted = theory.mean_field_layers(activation, widths, sigma_w, sigma_b, second)
    z, dz = x, dx
    for d in range(3):
        w = rng.standard_normal((widths[d + 1], widths[d])) * sigma_w / np.sqrt(widths[d])
        h = w @ z + rng.standard_normal(widths[d + 1]) * sigma_b
        slope = (h > 0) if activation == "relu" else (np.abs(h) < 1)
        z, new = (np.maximum(h, 0) if activation == "relu" else np.clip(h, -1, 1)), slope[:, None] * (w @ dz)
        growth = np.sqrt(np.mean(np.sum(new ** 2, axis=0) / np.sum(dz ** 2, axis=0)))
        assert growth == pytest.approx(predicted[d], rel=0.04)  # q itself varies 2-3% between draws at this width
        dz = new


def test_sweep_transitions_by_hand():
    # relu, no bias, the only hidden layer swept: image length 2 pi sqrt(k sigma_w^2 / 2), the output
    # q = sigma_w^4 / 2, rate sigma_w / (pi sqrt(q k)): 2 sign changes per turn, whatever k and sigma_w
    for k, sw in ((5, 1.0), (300, 2.5)):
        assert theory.sweep_transitions("relu", (7, k, 1), 1, sw) == pytest.approx(2.0)
    # each relu layer above at sigma_w^2 = 2 keeps the length (sqrt(chi) = 1) and the output's scale
    assert theory.sweep_transitions("relu", (7, 9, 9, 9, 1), 1, math.sqrt(2)) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="layer"):
        theory.sweep_transitions("hardtanh", (4, 5, 5, 1), 3, 2.0)
    with pytest.raises(ValueError, match="widths"):
        theory.sweep_transitions("hardtanh", (4, 5, 5, 2), 1, 2.0)


@pytest.mark.parametrize("layer, sigma_w, sigma_b", [(1, 4.0, 0.0), (2, 3.0, 0.5)])
def test_sweep_transitions_against_monte_carlo(layer, sigma_w, sigma_b):
    """Random hard-tanh networks (20, 200, 200, 200, 1) in plain NumPy, the layer's weights swept over
    2048 samples of the circle, the output's sign changes counted on 100 networks: the prediction
    lies within three standard errors of their mean (about 5% each; it was within one)."""
    widths = (20, 200, 200, 200, 1)
    rng = np.random.default_rng(7)
    t = np.arange(2048) / 2048 * 2 * np.pi
    counts = []
    for _ in range(100):
        x = rng.standard_normal(widths[0])
        x *= np.sqrt(widths[0]) / np.linalg.norm(x)  # |x|^2 / m = 1
        ws = [rng.standard_normal((o, i)) * sigma_w / np.sqrt(i) for i, o in zip(widths, widths[1:])]
        bs = [rng.standard_normal(o) * sigma_b for o in widths[1:]]
        z = x
        for d in range(layer - 1):
            z = np.clip(ws[d] @ z + bs[d], -1, 1)
        w_b = rng.standard_normal(ws[layer - 1].shape) * sigma_w / np.sqrt(widths[layer - 1])
        h = np.outer(np.cos(t), ws[layer - 1] @ z) + np.outer(np.sin(t), w_b @ z) + bs[layer - 1]
        for d in range(layer, len(ws)):
            h = np.clip(h, -1, 1) @ ws[d].T + bs[d]
        out = h[:, 0]
        counts.append(np.count_nonzero(np.sign(out) != np.sign(np.roll(out, 1))))
    predicted = theory.sweep_transitions("hardtanh", widths, layer, sigma_w, sigma_b)
    assert abs(np.mean(counts) - predicted) < 3 * np.std(counts) / np.sqrt(len(counts))


def test_random_walk_dichotomies():
    got = theory.random_walk_dichotomies(3, [0, 1, 2, 1000], walks=50)
    assert got[0] == 1 and got[1] == 2           # the start, then a new labelling every first step
    assert 2 <= got[2] <= 3 and got[3] == 8      # a long walk visits all 2^3
    many = theory.random_walk_dichotomies(40, [100], walks=4)[0]
    assert 90 < many <= 101                      # on a big cube almost every step is new
    with pytest.raises(ValueError, match="n_inputs"):
        theory.random_walk_dichotomies(64, [1])


def test_arrangement_regions_stops_at_the_hyperplanes():
    """C(n, i) = 0 for i > n: a huge input dimension costs nothing (it once looped over every i)."""
    assert theory.arrangement_regions(3, 10 ** 12) == 8
    assert theory.activation_pattern_bound((10 ** 12, 8)) == 2 ** 8
    assert theory.arrangement_regions(5, 2) == 1 + 5 + 10


@pytest.mark.parametrize("call, error", [
    (lambda: theory.arrangement_regions(10, -1), ValueError),
    (lambda: theory.arrangement_regions(-1, 2), ValueError),
    (lambda: theory.random_walk_dichotomies(3, [1, 2], walks=0), ValueError),
    (lambda: theory.random_walk_dichotomies(2.5, [1]), ValueError),
    (lambda: theory.random_walk_dichotomies(3, [1.7, 2.9]), ValueError),  # once truncated to [1, 2]
    (lambda: theory.random_walk_dichotomies(3, [2 ** 70]), ValueError),
    (lambda: theory.second_moments("relu", -1.0), ValueError),
    (lambda: theory.second_moments("hardtanh", -1.0), ValueError),
    (lambda: theory.second_moments("hardtanh", math.nan), ValueError),
    (lambda: theory.sweep_transitions("hardtanh", (4, 10, 10, 1), 1, 4.0, 0.5, input_second_moment=-1.0), ValueError),
    (lambda: theory.mean_field("hardtanh", "4"), TypeError),
    (lambda: theory.mean_field("hardtanh", True), TypeError),
    (lambda: theory.mean_field("relu", None), TypeError),
    (lambda: theory.mean_field("relu", 1e200), ValueError),  # squared: once a raw OverflowError
    (lambda: theory.mean_field("relu", 2.0, max_iter=2.5), ValueError),
    (lambda: theory.mean_field_layers("relu", (2, 3, 4), [1.0, 2.0, 3.0]), ValueError),
    (lambda: theory.length_growth_bound("hardtanh", 10, 1e200), ValueError),
])
def test_bad_arguments_are_named(call, error):
    with pytest.raises(error):
        call()


def test_second_moments_of_hardtanh_at_infinite_variance():
    assert theory.second_moments("hardtanh", math.inf) == (1.0, 0.0)
    m, s = theory.second_moments("hardtanh", 1e30)
    assert m == pytest.approx(1.0) and s < 1e-14
