"""The paper's closed forms, to draw beside the measurements.

* :func:`activation_pattern_bound` - Theorem 1 (Raghu et al. 2017): activation patterns of a
  relu or hard-tanh network on inputs of dimension m are at most the product over layers of
  the regions ``sum_{i=0}^{m} C(c n_d, i)`` of an arrangement of ``c n_d`` hyperplanes in
  R^m (c = 1 for relu, 2 for hard-tanh: a neuron has two thresholds). m = 1 bounds the
  patterns along a one-dimensional trajectory: ``prod_d (c n_d + 1)``.
* :func:`length_growth_bound` - the base of Theorem 3's order-of-growth statement
  ``E[l(z^(d))] >= O(factor^d) l(x)``: ``sigma_w sqrt(k) / sqrt(k + 1)`` (relu) and
  ``sigma_w sqrt(k) / sqrt(sigma_w^2 + sigma_b^2 + k sqrt(sigma_w^2 + sigma_b^2))`` (hard-tanh), k
  the width. It is an O() statement, not a numerical per-layer lower bound: at large width the
  base lies above the exact mean-field growth ``sqrt(chi_1)`` by a constant per layer
  (``(pi / 2)^(1/4)`` for hard-tanh as sigma_w grows, ``sqrt(2)`` for relu), so only orders of
  growth compare.
* :func:`transitions_per_length` - Theorem 4 states only an order: in the very large sigma_w
  regime a hard-tanh network's sign transitions are ``O(g)``, ``g = (sqrt(k) / sqrt(1 +
  sigma_b^2 / sigma_w^2))^n`` for n layers. With its constant, by the Kac-Rice formula: a layer
  of k units whose input image has constant radius makes ``k sigma_w sum_c exp(-c^2 / 2q) /
  (pi sqrt(q n))`` transitions per unit of that image's length (c over a unit's thresholds: 0
  for relu, -1 and 1 for hard-tanh; q the pre-activation variance, n the fan-in). For saturated
  hard-tanh units that is ``2 sqrt(k) / (pi sqrt(1 + sigma_b^2 / sigma_w^2))``: g's base, times
  2 / pi, times the length.
* :func:`mean_field` - Poole et al. (2016): the fixed point q* of the length map
  ``q -> sigma_w^2 E[phi(sqrt(q) z)^2] + sigma_b^2`` (z ~ N(0, 1)) and
  ``chi_1 = sigma_w^2 E[phi'(sqrt(q*) z)^2]``; a short segment's length grows by
  ``sqrt(chi_1)`` per layer (chaotic when chi_1 > 1).
* :func:`mean_field_layers` - the same recursion layer by layer from a given input (before q
  reaches q*), with per-layer sigma_w and sigma_b: each layer's pre-activation variance and
  predicted length growth.
* :func:`sweep_transitions` - the label transitions of one input while a layer's weights sweep a
  great circle (the dichotomies experiment), from the mean field and Kac-Rice.
* :func:`random_walk_dichotomies` - the paper's model of dichotomies against transitions: a
  walk on the labellings {0, 1}^n that flips one label chosen uniformly at random per step.

Weights are ``N(0, sigma_w^2 / fan_in)`` and biases ``N(0, sigma_b^2)`` as in ``random_mlp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._checks import as_float, is_integer, is_real

ACTIVATIONS = ("relu", "hardtanh")


def _activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be 'relu' or 'hardtanh', got {activation!r}")
    return activation


def _widths(widths, what: str = "(input_dim, n_1, ..., n_L)") -> list[int]:
    """``widths`` as positive ints (a float such as 2.5 is refused, not truncated)."""
    out = []
    for w in widths:
        if not is_integer(w) or w < 1:
            raise ValueError(f"widths must be {what}, all positive integers, got {tuple(widths)}")
        out.append(int(w))
    return out


def _width(width, name: str = "width") -> int:
    """A layer width as a positive int."""
    if not is_integer(width) or width < 1:
        raise ValueError(f"{name} must be a positive integer, got {width!r}")
    return int(width)


#: Largest sigma_w or sigma_b taken: the closed forms square them (and q) in float64.
MAX_SIGMA = 1e100


def _real(value, name: str, at_most: float = math.inf) -> float:
    """``value`` as a float: a real number (no bool, str or None), finite, from 0 to ``at_most``."""
    if not is_real(value):
        raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = as_float(value)
    if not (math.isfinite(value) and 0 <= value <= at_most):
        limit = f" and at most {at_most:g}" if at_most < math.inf else ""
        raise ValueError(f"{name} must be finite and non-negative{limit}, got {value}")
    return value


def _sigmas(sigma_w: float, sigma_b: float) -> tuple[float, float]:
    return _real(sigma_w, "sigma_w", MAX_SIGMA), _real(sigma_b, "sigma_b", MAX_SIGMA)


def arrangement_regions(hyperplanes: int, dim: int) -> int:
    """Most regions ``sum_{i=0}^{dim} C(hyperplanes, i)`` that hyperplanes cut R^dim into."""
    for value, name in ((hyperplanes, "hyperplanes"), (dim, "dim")):
        if not is_integer(value) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    hyperplanes, dim = int(hyperplanes), int(dim)
    return sum(math.comb(hyperplanes, i) for i in range(min(dim, hyperplanes) + 1))  # C(n, i) = 0 for i > n


def activation_pattern_bound(widths, activation: str = "relu") -> int:
    """Theorem 1's bound on activation patterns (an exact integer) for ``widths = (m, n_1, ..., n_L)``."""
    widths = _widths(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must be (input_dim, n_1, ..., n_L), got {tuple(widths)}")
    per_neuron = 1 if _activation(activation) == "relu" else 2
    return math.prod(arrangement_regions(per_neuron * n, widths[0]) for n in widths[1:])


def length_growth_bound(activation: str, width: int, sigma_w: float, sigma_b: float = 0.0) -> float:
    """The base of Theorem 3: ``E[l(z^(d))] >= O(factor^d) l(x)``. An order of growth (the O()
    hides constants, per layer too: see the module docstring), not a number to hold a
    measured per-layer ratio to."""
    sigma_w, sigma_b = _sigmas(sigma_w, sigma_b)
    k = float(_width(width))
    if _activation(activation) == "relu":
        return sigma_w * math.sqrt(k) / math.sqrt(k + 1)
    s = sigma_w ** 2 + sigma_b ** 2
    return sigma_w * math.sqrt(k) / math.sqrt(s + k * math.sqrt(s)) if s > 0 else 0.0


def transitions_per_length(activation: str, width: int, sigma_w: float, sigma_b: float = 0.0,
                           fan_in: int | None = None, q: float | None = None) -> float:
    """Expected transitions of a random layer of ``width`` units per unit length of its input's
    image (``fan_in`` units, default ``width``), for an image of constant radius (``z . dz = 0``,
    as on a circle, or saturated hard-tanh units). ``q = sigma_w^2 |z|^2 / fan_in + sigma_b^2`` is
    the pre-activation variance; by default the mean-field fixed point q*.

    Kac-Rice: a unit's pre-activation ``u = w . z + b`` is Gaussian with variance q, its rate
    ``u' = w . dz/dt`` independent of it with standard deviation ``sigma_w |dz/dt| / sqrt(fan_in)``,
    so it crosses a threshold c at ``exp(-c^2 / 2q) / sqrt(2 pi q) x E|u'|`` per unit t. The
    thresholds are 0 (relu) and -1, +1 (hard-tanh)."""
    sigma_w, sigma_b = _sigmas(sigma_w, sigma_b)
    width = _width(width)
    fan_in = width if fan_in is None else _width(fan_in, "fan_in")
    if q is None:
        q = mean_field(activation, sigma_w, sigma_b).q_star
        if not 0 < q < math.inf or (activation == "relu" and sigma_b == 0):  # relu, no bias: no scale of its own
            raise ValueError(f"the mean field fixes no pre-activation variance here (q* = {q}); pass q")
    q = _real(q, "q")
    if not q > 0:
        raise ValueError(f"q must be finite and positive, got {q}")
    thresholds = (0.0,) if _activation(activation) == "relu" else (-1.0, 1.0)
    crossings = sum(math.exp(-c * c / (2 * q)) for c in thresholds)
    return width * crossings * sigma_w / (math.pi * math.sqrt(q * fan_in))


def _normal_pdf(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def second_moments(activation: str, q: float) -> tuple[float, float]:
    """``(E[phi(sqrt(q) z)^2], E[phi'(sqrt(q) z)^2])`` for z ~ N(0, 1), in closed form (q >= 0; at
    q = inf, where a deep relu recursion's variance overflows, the limits: relu (inf, 1/2),
    hard-tanh (1, 0))."""
    if not is_real(q):
        raise TypeError(f"q must be a real number, got {q!r} ({type(q).__name__})")
    q = as_float(q)
    if not q >= 0:
        raise ValueError(f"q must be non-negative, got {q}")
    if _activation(activation) == "relu":
        return q / 2, 0.5
    if q == 0:
        return 0.0, 1.0
    if q == math.inf:
        return 1.0, 0.0
    c = 1 / math.sqrt(q)  # hard-tanh is linear on |z| < c
    inside = math.erf(c / math.sqrt(2))  # P(|z| < c)
    return q * _linear_part(c, inside) + (1 - inside), inside


def _linear_part(c: float, inside: float) -> float:
    """``E[z^2; |z| < c] = P(|z| < c) - 2 c pdf(c)``; for small c (large q) from its series
    ``sqrt(2 / pi) sum_{n>=1} (-1)^(n+1) 2n c^(2n+1) / ((2n+1) n! 2^n)``, as the difference
    cancels (at q = 1e30 it was off by 10%)."""
    if c >= 0.1:
        return inside - 2 * c * _normal_pdf(c)
    total, power = 0.0, c  # power = c^(2n+1) / (n! 2^n), starting at n = 0
    for n in range(1, 12):
        power *= -c * c / (2 * n)
        total -= power * 2 * n / (2 * n + 1)
    return math.sqrt(2 / math.pi) * total


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
    if not is_integer(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive integer, got {max_iter!r}")
    if not is_real(tol) or not tol > 0:
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if _activation(activation) == "relu":  # q -> sigma_w^2 q / 2 + sigma_b^2 is linear
        slope = sigma_w ** 2 / 2
        if math.isclose(slope, 1.0, rel_tol=1e-12):  # sigma_w = sqrt(2) (He), up to rounding: q -> q + sigma_b^2
            return MeanField(1.0 if sigma_b == 0 else math.inf, 1.0)
        if slope < 1:
            return MeanField(sigma_b ** 2 / (1 - slope), slope)
        return MeanField(math.inf, slope)
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


def mean_field_layers(activation: str, widths, sigma_w, sigma_b=0.0,
                      input_second_moment: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Poole et al.'s recursion layer by layer, before the fixed point is reached, for widths
    ``(m, n_1, ..., n_L)`` and per-layer ``sigma_w``, ``sigma_b`` (sequences of L values, or
    scalars for every layer). Returns ``(q, growth)``: the pre-activation variances ``q_d =
    sigma_w_d^2 s_{d-1} + sigma_b_d^2`` (``s_0 = |x|^2 / m = input_second_moment``, ``s_d =
    E[phi(sqrt(q_d) z)^2]``) and the predicted growth of a short segment's length (perpendicular
    to the input) through each layer, ``sqrt(n_d / n_{d-1}) sqrt(sigma_w_d^2 E[phi'(sqrt(q_d) z)^2])``."""
    widths = _widths(widths)
    if len(widths) < 2:
        raise ValueError(f"widths must be (input_dim, n_1, ..., n_L), got {tuple(widths)}")
    layers = len(widths) - 1
    sws, sbs = _per_layer(sigma_w, "sigma_w", layers), _per_layer(sigma_b, "sigma_b", layers)
    second = _real(input_second_moment, "input_second_moment")
    _activation(activation)
    q, growth = np.empty(layers), np.empty(layers)
    for d in range(layers):
        sw, sb = _sigmas(sws[d], sbs[d])
        q[d] = sw ** 2 * second + sb ** 2
        second, slope = second_moments(activation, q[d])
        growth[d] = math.sqrt(widths[d + 1] / widths[d] * sw ** 2 * slope)
    return q, growth


def _per_layer(values, name: str, layers: int) -> list:
    """A scalar for every layer, or a sequence of one value per layer."""
    if np.ndim(values) == 0:
        return [values] * layers
    values = list(values)
    if len(values) != layers:
        raise ValueError(f"{name} must be one number or {layers} (one per layer), got {len(values)}")
    return values


def sweep_transitions(activation: str, widths, layer: int, sigma_w: float, sigma_b: float = 0.0,
                      input_second_moment: float = 1.0) -> float:
    """Expected sign changes of the single linear output of a random network, widths ``(m, n_1,
    ..., n_L, 1)``, on one input (``|x|^2 / m = input_second_moment``) while layer ``layer``'s
    weights sweep the great circle ``cos(2 pi t) W_a + sin(2 pi t) W_b``, t in [0, 1] (``W_b``
    independent of ``W_a`` and of the same scale, the bias fixed), as ``fastexpr.dichotomies``
    sweeps. Mean field and Kac-Rice: the swept layer's pre-activations trace circles of variance
    ``sigma_w^2 s`` (s the second moment of its input) about the fixed bias, so its image has
    length ``2 pi sqrt(n sigma_w^2 s E[phi'^2])``; the layers above grow it as
    :func:`mean_field_layers` says, and the output crosses 0 at :func:`transitions_per_length`'s
    rate."""
    widths = _widths(widths, "(input_dim, n_1, ..., n_L, 1)")
    if len(widths) < 3 or widths[-1] != 1:
        raise ValueError(f"widths must be (input_dim, n_1, ..., n_L, 1), all positive, got {tuple(widths)}")
    hidden = len(widths) - 2
    if not is_integer(layer) or not 1 <= layer <= hidden:
        raise ValueError(f"layer must be a hidden layer, 1 to {hidden}, got {layer!r}")
    sigma_w, sigma_b = _sigmas(sigma_w, sigma_b)
    _activation(activation)
    second = _real(input_second_moment, "input_second_moment")
    for _ in range(layer - 1):  # the fixed input through the layers below
        second = second_moments(activation, sigma_w ** 2 * second + sigma_b ** 2)[0]
    moment, slope = second_moments(activation, sigma_w ** 2 * second + sigma_b ** 2)
    length = 2 * math.pi * math.sqrt(widths[layer] * sigma_w ** 2 * second * slope)
    if layer < hidden:
        _, growth = mean_field_layers(activation, widths[layer:-1], sigma_w, sigma_b, moment)
        length *= float(np.prod(growth))
        for d in range(layer + 1, hidden + 1):
            moment = second_moments(activation, sigma_w ** 2 * moment + sigma_b ** 2)[0]
    q_out = sigma_w ** 2 * moment + sigma_b ** 2
    if length == 0 or q_out == 0:
        return 0.0
    # the output's sign changes where a relu unit on it would transition: threshold 0
    return length * transitions_per_length("relu", 1, sigma_w, sigma_b, fan_in=widths[-2], q=q_out)


def random_walk_dichotomies(n_inputs: int, transitions, walks: int = 32, seed=0) -> np.ndarray:
    """Mean distinct labellings visited (start included) by walks on {0, 1}^n_inputs flipping one
    uniformly random label per step, after each number of steps in ``transitions`` (n_inputs <= 63)."""
    if not is_integer(n_inputs) or not 1 <= n_inputs <= 63:
        raise ValueError(f"n_inputs must be an integer from 1 to 63, got {n_inputs!r}")
    if not is_integer(walks) or walks < 1:
        raise ValueError(f"walks must be a positive integer, got {walks!r}")
    steps = np.asarray(transitions)
    if steps.ndim != 1 or not (steps.size == 0 or np.issubdtype(steps.dtype, np.integer)) or np.any(steps < 0):
        raise ValueError(f"transitions must be a 1-D array of non-negative integers, got {transitions!r}")
    if steps.size and steps.max() > 1 << 28:
        raise ValueError(f"transitions must be at most 2**28 steps (a walk's states are stored), got {steps.max()}")
    steps = steps.astype(np.int64)
    rng = np.random.default_rng(seed)
    longest = int(steps.max(initial=0))
    out = np.zeros(steps.size)
    for _ in range(walks):
        flips = np.left_shift(np.uint64(1), rng.integers(0, n_inputs, longest).astype(np.uint64))
        states = np.concatenate([[np.uint64(0)], np.bitwise_xor.accumulate(flips)]) if longest else np.zeros(1, np.uint64)
        for i, t in enumerate(steps):
            out[i] += np.unique(states[: t + 1]).size
    return out / walks
