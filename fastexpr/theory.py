"""The paper's closed forms, to draw beside the measurements.

* :func:`activation_pattern_bound` - Theorem 1 (Raghu et al. 2017): activation patterns of a
  relu or hard-tanh network on inputs of dimension m are at most the product over layers of
  the regions ``sum_{i=0}^{m} C(c n_d, i)`` of an arrangement of ``c n_d`` hyperplanes in
  R^m (c = 1 for relu, 2 for hard-tanh: a neuron has two thresholds). m = 1 bounds the
  patterns along a one-dimensional trajectory: ``prod_d (c n_d + 1)``.
* :func:`length_growth_bound` - Theorem 3's lower bound on the expected growth of trajectory
  length per layer, ``sigma_w sqrt(k) / sqrt(k + 1)`` (relu) and ``sigma_w sqrt(k) /
  sqrt(sigma_w^2 + sigma_b^2 + k sqrt(sigma_w^2 + sigma_b^2))`` (hard-tanh), k the width; the
  theorem's O() constant is not known, so only slopes in depth compare.
* :func:`mean_field` - Poole et al. (2016): the fixed point q* of the length map
  ``q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2`` (z ~ N(0, 1)) and
  ``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]``; a short segment's length grows by
  ``sqrt(chi_1)`` per layer (chaotic when chi_1 > 1).
* :func:`random_walk_dichotomies` - the paper's model of dichotomies against transitions: a
  walk on the labellings {0, 1}^n that flips one label chosen uniformly at random per step.

Weights are ``N(0, sigma_w^2 / fan_in)`` and biases ``N(0, sigma_b^2)`` as in ``random_mlp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ACTIVATIONS = ("relu", "hardtanh")


def _activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'relu' or 'hardtanh', got {activation!r}")
    return activation


def _sigmas(sigma_w: float, sigma_b: float) -> tuple[float, float]:
    sigma_w, sigma_b = float(sigma_w), float(sigma_b)
    if not (math.isfinite(sigma_w) and math.isfinite(sigma_b) and sigma_w >= 0 and sigma_b >= 0):
        raise ValueError(f"sigma_w and sigma_b must be finite and non-negative, got {sigma_w}, {sigma_b}")
    return sigma_w, sigma_b


def arrangement_regions(hyperplanes: int, dim: int) -> int:
    """Most regions ``sum_{i=0}^{dim} C(hyperplanes, i)`` that hyperplanes cut R^dim into."""
    return sum(math.comb(hyperplanes, i) for i in range(dim + 1))


def activation_pattern_bound(widths, activation: str = "relu") -> int:
    """Theorem 1's bound on activation patterns (an exact integer) for ``widths = (m, n_1, ..., n_L)``."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise ValueError(f"widths must be (input_dim, n_1, ..., n_L), all positive, got {tuple(widths)}")
    per_neuron = 1 if _activation(activation) == "relu" else 2
    return math.prod(arrangement_regions(per_neuron * n, widths[0]) for n in widths[1:])


def length_growth_bound(activation: str, width: int, sigma_w: float, sigma_b: float = 0.0) -> float:
    """Theorem 3's per-layer factor: E[length at layer d] >= O(factor^d) x input length."""
    sigma_w, sigma_b = _sigmas(sigma_w, sigma_b)
    if width < 1:
        raise ValueError(f"width must be positive, got {width}")
    k = float(width)
    if _activation(activation) == "relu":
        return sigma_w * math.sqrt(k) / math.sqrt(k + 1)
    s = sigma_w ** 2 + sigma_b ** 2
    return sigma_w * math.sqrt(k) / math.sqrt(s + k * math.sqrt(s)) if s > 0 else 0.0


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def second_moments(activation: str, q: float) -> tuple[float, float]:
    """``(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2])`` for z ~ N(0, 1), in closed form."""
    if _activation(activation) == "relu":
        return q / 2, 0.5
    if q == 0:
        return 0.0, 1.0
    c = 1 / math.sqrt(q)  # hard-tanh is linear on |z| < c
    inside = math.erf(c / math.sqrt(2))  # P(|z| < c)
    return q * (inside - 2 * c * _normal_pdf(c)) + (1 - inside), inside


@dataclass(frozen=True)
class MeanField:
    """Poole et al.'s fixed point and slope for one (activation, sigma_w, sigma_b)."""

    q_star: float       # fixed point of the length map (inf: none, the variance grows without bound)
    chi_1: float        # sigma_w^2 E[phi'(sqrt(q*) z)^2]

    @property
    def length_growth(self) -> float:
        """Predicted growth of a short segment's length per layer, ``sqrt(chi_1)``."""
        return math.sqrt(self.chi_1)


def mean_field(activation: str, sigma_w: float, sigma_b: float = 0.0, tol: float = 1e-13,
               max_iter: int = 100_000) -> MeanField:
    """q* by fixed-point iteration from q = 1 (relu, and hard-tanh with sigma_b = 0 and sigma_w <= 1,
    where q* = 0: in closed form), and chi_1 at q*."""
    sigma_w, sigma_b = _sigmas(sigma_w, sigma_b)
    if _activation(activation) == "relu":  # q -> sigma_w^2 q / 2 + sigma_b^2 is linear
        slope = sigma_w ** 2 / 2
        if slope < 1:
            return MeanField(sigma_b ** 2 / (1 - slope), slope)
        return MeanField(1.0 if sigma_b == 0 and slope == 1 else math.inf, slope)
    if sigma_b == 0 and sigma_w <= 1:  # E[phi(sqrt(q) z)^2] < q: the map contracts to 0 (slowly at sigma_w = 1)
        return MeanField(0.0, sigma_w ** 2)
    q = 1.0
    for _ in range(max_iter):
        new = sigma_w ** 2 * second_moments("hardtanh", q)[0] + sigma_b ** 2
        if abs(new - q) <= tol * max(1.0, q):
            q = new
            break
        q = new
    else:
        raise ValueError(f"the hard-tanh length map did not converge in {max_iter} iterations "
                         f"(sigma_w={sigma_w}, sigma_b={sigma_b})")
    return MeanField(q, sigma_w ** 2 * second_moments("hardtanh", q)[1])


def random_walk_dichotomies(n_inputs: int, transitions, walks: int = 32, seed=0) -> np.ndarray:
    """Mean distinct labellings visited (start included) by walks on {0, 1}^n_inputs flipping one
    uniformly random label per step, after each number of steps in ``transitions`` (n_inputs <= 63)."""
    if not 1 <= n_inputs <= 63:
        raise ValueError(f"n_inputs must be from 1 to 63, got {n_inputs}")
    steps = np.asarray(transitions, dtype=np.int64)
    if steps.ndim != 1 or np.any(steps < 0):
        raise ValueError("transitions must be a 1-D array of non-negative integers")
    rng = np.random.default_rng(seed)
    longest = int(steps.max(initial=0))
    out = np.zeros(steps.size)
    for _ in range(walks):
        flips = np.left_shift(np.uint64(1), rng.integers(0, n_inputs, longest).astype(np.uint64))
        states = np.concatenate([[np.uint64(0)], np.bitwise_xor.accumulate(flips)]) if longest else np.zeros(1, np.uint64)
        for i, t in enumerate(steps):
            out[i] += np.unique(states[: t + 1]).size
    return out / walks
