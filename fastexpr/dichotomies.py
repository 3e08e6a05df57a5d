"""Dichotomies (Raghu et al. 2017, section 2.1): the labellings of a fixed input set while one
layer's weights sweep a great circle.

Semantics (every engine, and the NumPy reference in tests/test_dichotomies.py):

* ``W(t) = cos(2 pi t) W_a + sin(2 pi t) W_b`` for the swept layer ``layer`` (1-based), ``W_a``
  its own weights; its bias stays ``b_a``, or with ``sweep_bias`` is ``cos(2 pi t) b_a +
  sin(2 pi t) b_b``; samples ``t_i = i / (n_points - 1)``, ``i = 0 .. n_points - 1`` (so
  ``t = 0`` and ``t = 1`` are the same weights, as for a great circle in ``measure``);
* an input's label is 1 where the network's single output is ``> 0``, else 0 (``labels="sign"``),
  or the index of the largest output, the first one on ties (``labels="argmax"``);
* ``n_dichotomies`` = distinct labellings (label vectors over the inputs) among the samples,
  counted through 64-bit hashes: a labelling's hash is the wrapping sum over inputs ``k`` of
  ``splitmix64(k * n_labels + label_k)`` (collisions between two labellings: probability 2^-64);
* ``transitions`` = label changes summed over inputs and consecutive samples;
  ``labelling_changes`` = consecutive samples whose labellings differ.

Fused like ``measure``: the layers below the swept one run once per input (float64 NumPy),
the swept layer's pre-activation is ``cos(.) (W_a h) + sin(.) (W_b h) + bias``, and the layers
above run per tile of samples and input in the engine (C++ ``fastexpr._C.dichotomies`` or its
numba twin), the labelling hashed on the fly: memory does not grow with ``n_points``.
Computed in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import _threads
from ._arrays import to_float64
from ._checks import flag, is_integer
from .measure import MAX_POINTS, MAX_WORK, PROGRESS_FROM, _chunks, work_per_point
from .network import Network
from .plan import ACTIVATION_CODES, OverflowInForwardPass, splitmix64

LABELS = ("sign", "argmax")
#: Samples per tile (the first shared with the previous tile).
TILE = 256
#: Samples per engine call at most (a progress-bar step; the run-start hashes it returns are bounded by it).
CHUNK = 1 << 16


@dataclass(frozen=True)
class Dichotomies:
    """What :func:`dichotomies` measured."""

    n_dichotomies: int       # distinct labellings among the samples
    transitions: int         # label changes, summed over inputs and consecutive samples
    labelling_changes: int   # consecutive samples whose labellings differ
    hashes: np.ndarray       # the distinct labellings' hashes, sorted uint64
    n_points: int
    n_inputs: int
    layer: int
    labels: str
    backend: str

    def to_dict(self) -> dict:
        """Plain Python values (hashes left out)."""
        return {k: getattr(self, k) for k in ("n_dichotomies", "transitions", "labelling_changes", "n_points",
                                              "n_inputs", "layer", "labels", "backend")}


def label_keys(n_inputs: int, n_labels: int) -> np.ndarray:
    """``keys[k, c] = splitmix64(k * n_labels + c)`` (uint64, shape ``(n_inputs, n_labels)``)."""
    with np.errstate(over="ignore"):
        return splitmix64(np.arange(n_inputs * n_labels, dtype=np.uint64)).reshape(n_inputs, n_labels)


def _engine(backend: str):
    """(name, dichotomies_tiles) of the engine ``backends.REGISTRY["dichotomies"]`` picks: the C++
    kernel when built, else numba."""
    from . import backends

    module = backends.resolve(backend, "cpu", op="dichotomies")
    return module.NAME, module.dichotomies_tiles


def _other_end(net: Network, layer: int, w_b, seed, sweep_bias: bool):
    """``(W_b, b_b)``: given, or drawn from ``seed`` with the root-mean-square of ``W_a`` (and ``b_a``)."""
    w_a, b_a = net.weights[layer - 1], net.biases[layer - 1]
    rng = np.random.default_rng(seed)
    given_b = None
    if isinstance(w_b, tuple):
        if len(w_b) != 2:
            raise ValueError("w_b must be an array shaped like the layer's weights or a pair (W_b, b_b)")
        w_b, given_b = w_b
    if w_b is None:
        w_b = rng.standard_normal(w_a.shape) * np.sqrt(np.mean(w_a ** 2))
    else:
        try:
            w_b = to_float64(w_b, "w_b", ndim=2)
        except ValueError as exc:
            raise ValueError(f"{exc}; w_b is an array shaped like the layer's weights {w_a.shape}, or the pair "
                             "(W_b, b_b) as a tuple") from None
        if w_b.shape != w_a.shape:
            raise ValueError(f"w_b has shape {w_b.shape} but layer {layer}'s weights have shape {w_a.shape}")
    if given_b is not None:
        b_b = to_float64(given_b, "b_b", ndim=1)
        if b_b.shape != b_a.shape:
            raise ValueError(f"b_b has shape {b_b.shape} but layer {layer}'s bias has shape {b_a.shape}")
    else:
        b_b = rng.standard_normal(b_a.shape) * np.sqrt(np.mean(b_a ** 2))
    if not sweep_bias and given_b is not None:
        raise ValueError("a bias b_b was given in w_b but sweep_bias is False")
    return w_b, b_b


def dichotomies(net: Network, layer: int, inputs, n_points: int, w_b=None, seed=None, labels: str = "sign",
                sweep_bias: bool = False, backend: str = "auto", progress: bool | None = None,
                threads: int | None = None) -> Dichotomies:
    """Distinct labellings of ``inputs`` (``(n, input_dim)``) while layer ``layer``'s weights sweep
    the great circle from ``W_a`` (its own) through ``w_b`` (an array, or a pair ``(W_b, b_b)``;
    None: drawn from ``seed`` with the root-mean-square of ``W_a``; a ``b_b`` not given is drawn
    from ``seed`` with that of ``b_a``), at ``n_points`` samples.
    ``labels``: "sign" (one output) or "argmax"; ``sweep_bias`` sweeps the bias the same way.
    ``backend``: "auto", "cpu" (C++) or "numba"; ``threads``: the cpu engine's OpenMP threads (numba
    keeps its own setting); ``progress`` as in ``measure``. Module docstring: the exact semantics."""
    from tqdm.auto import tqdm

    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network, got {type(net).__name__}")
    if not is_integer(layer) or not 1 <= layer <= net.depth:
        raise ValueError(f"layer must be an integer from 1 to {net.depth} (the network's depth), got {layer!r}")
    layer = int(layer)
    if not is_integer(n_points):
        raise TypeError(f"n_points must be an integer, got {type(n_points).__name__}")
    if not 2 <= n_points <= MAX_POINTS:
        raise ValueError(f"n_points must be at least 2 and at most 2**62, got {n_points}")
    n_points = int(n_points)
    if labels not in LABELS:
        raise ValueError(f"labels must be 'sign' or 'argmax', got {labels!r}")
    outputs = net.widths[-1]
    if labels == "sign" and outputs != 1:
        raise ValueError(f"labels='sign' needs a network with one output, this one has {outputs}; use labels='argmax'")
    if labels == "argmax" and outputs < 2:
        raise ValueError("labels='argmax' needs at least two outputs; use labels='sign' for one")
    x = to_float64(inputs, "inputs", ndim=2)
    if x.shape[1] != net.input_dim or x.shape[0] < 1:
        raise ValueError(f"inputs must have shape (n, {net.input_dim}) with n >= 1, got {x.shape}")
    widths = net.widths[layer - 1:]  # the swept layer's input, and the layers it feeds
    work = x.shape[0] * n_points * (2 * widths[0] * widths[1] + work_per_point(widths))
    if work > MAX_WORK:
        raise ValueError(f"sweeping {n_points:,} points for {x.shape[0]:,} inputs through layers of widths "
                         f"{tuple(widths[1:])} is about {work:.2g} FLOP-equivalents, more than "
                         f"fastexpr.measure.MAX_WORK = {MAX_WORK:.2g} (months on a CPU); use fewer points")
    threads = _threads.check(threads)
    name, run = _engine(backend)
    w_b, b_b = _other_end(net, layer, w_b, seed, flag(sweep_bias, "sweep_bias"))

    h = x  # layers below the swept one, once per input
    for d, (w, b, act) in enumerate(zip(net.weights[: layer - 1], net.biases[: layer - 1],
                                        net.activations[: layer - 1]), start=1):
        with np.errstate(over="ignore", invalid="ignore"):
            z = h @ w.T + b
        if not np.isfinite(z).all():
            raise OverflowInForwardPass(f"the pre-activations of layer {d} overflow float64 (inf or NaN) on these "
                                        "inputs; the network or the inputs are too large")
        h = _activate(act, z)
    w_a, b_a = net.weights[layer - 1], net.biases[layer - 1]
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow here is reported by the engine
        A, B = h @ w_a.T, h @ w_b.T
    if sweep_bias:
        A, B, b_fixed = A + b_a, B + b_b, np.zeros_like(b_a)
    else:
        b_fixed = b_a
    above = slice(layer, net.depth)
    n_labels = 2 if labels == "sign" else outputs
    args = (np.ascontiguousarray(A), np.ascontiguousarray(B), np.ascontiguousarray(b_fixed),
            ACTIVATION_CODES[net.activations[layer - 1]], list(net.weights[above]), list(net.biases[above]),
            [ACTIVATION_CODES[a] for a in net.activations[above]], label_keys(x.shape[0], n_labels),
            labels == "argmax")
    transitions = changes = 0
    runs = []
    disable = (True if n_points - 1 < PROGRESS_FROM else None) if progress is None else not progress
    with _threads.using(threads), tqdm(total=n_points - 1, unit="pair", unit_scale=True, desc=f"dichotomies[{name}]",
                                        disable=disable) as bar:
        for start, stop in _chunks(n_points, CHUNK):
            t, c, hashes, overflow = run(*args, n_points, start, stop, tile=TILE)
            if overflow:
                raise OverflowInForwardPass(f"the pre-activations of layer {layer + overflow - 1} overflow float64 "
                                            "(inf or NaN) during the sweep; the network or the inputs are too large")
            transitions += int(t)
            changes += int(c)
            runs.append(hashes)
            bar.update(stop - start - 1)
    distinct = np.unique(np.concatenate(runs))
    return Dichotomies(int(distinct.size), transitions, changes, distinct, n_points, x.shape[0], layer, labels, name)


def _activate(act: str, z: np.ndarray) -> np.ndarray:
    if act == "relu":
        return np.maximum(z, 0.0)
    if act == "hardtanh":
        return np.clip(z, -1.0, 1.0)
    return z
