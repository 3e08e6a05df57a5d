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


def test_random_walk_dichotomies():
    got = theory.random_walk_dichotomies(3, [0, 1, 2, 1000], walks=50)
    assert got[0] == 1 and got[1] == 2           # the start, then a new labelling every first step
    assert 2 <= got[2] <= 3 and got[3] == 8      # a long walk visits all 2^3
    many = theory.random_walk_dichotomies(40, [100], walks=4)[0]
    assert 90 < many <= 101                      # on a big cube almost every step is new
    with pytest.raises(ValueError, match="n_inputs"):
        theory.random_walk_dichotomies(64, [1])
