"""fastexpr.dichotomies against brute force: the whole network in float64 NumPy at every t."""
import sys

import numpy as np
import pytest

import fastexpr
from fastexpr.dichotomies import dichotomies, label_keys

ENGINES = ["cpu", "numba"]


def brute_force(net, layer, x, n_points, w_b, b_b, labels, sweep_bias):
    """(distinct labellings, transitions, labelling changes, hashes) with W(t) built at every sample."""
    seen, rows = set(), []
    for i in range(n_points):
        t = i / (n_points - 1)
        c, s = np.cos(2 * np.pi * t), np.sin(2 * np.pi * t)
        h = x
        for d, (w, b, act) in enumerate(zip(net.weights, net.biases, net.activations), start=1):
            if d == layer:
                w = c * w + s * w_b
                b = c * b + s * b_b if sweep_bias else b
            z = h @ w.T + b
            h = {"relu": np.maximum(z, 0), "hardtanh": np.clip(z, -1, 1), "identity": z}[act]
        lab = (h[:, 0] > 0).astype(int) if labels == "sign" else np.argmax(h, axis=1)
        seen.add(tuple(lab))
        rows.append(lab)
    rows = np.array(rows)
    n_labels = 2 if labels == "sign" else h.shape[1]
    keys = label_keys(x.shape[0], n_labels)
    hashes = {int(np.sum(keys[np.arange(x.shape[0]), list(lab)], dtype=np.uint64)) for lab in seen}
    changes = int(np.sum(np.any(rows[1:] != rows[:-1], axis=1)))
    return len(seen), int(np.sum(rows[1:] != rows[:-1])), changes, hashes


def sweep_end(net, layer, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(net.weights[layer - 1].shape) / np.sqrt(net.widths[layer - 1]) * 2.0,
            rng.standard_normal(net.biases[layer - 1].shape) * 0.5)


CASES = [  # depth, width, input_dim, activation, output_dim, labels, layer, n_inputs, n_points, sweep_bias
    (3, 7, 5, "relu", 1, "sign", 1, 9, 301, False),
    (3, 7, 5, "relu", 1, "sign", 2, 13, 257, True),
    (2, 5, 3, "hardtanh", 1, "sign", 3, 11, 500, False),
    (4, 9, 6, "hardtanh", 1, "sign", 2, 17, 263, True),
    (2, 6, 4, "relu", 3, "argmax", 1, 10, 333, False),
    (3, 5, 2, "hardtanh", 4, "argmax", 4, 7, 129, True),
    (1, 3, 2, "relu", None, "argmax", 1, 5, 2, False),
    (1, 1, 3, "hardtanh", None, "sign", 1, 1, 3, True),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("case", CASES)
def test_against_brute_force(engine, case):
    depth, width, dim, act, out, labels, layer, n_in, n_points, sweep_bias = case
    seed = CASES.index(case)
    net = fastexpr.random_mlp(depth, width, dim, act, sigma_w=2.0, sigma_b=0.5, output_dim=out, seed=seed)
    x = np.random.default_rng(seed + 1).standard_normal((n_in, dim))
    w_b, b_b = sweep_end(net, layer, seed + 2)
    got = dichotomies(net, layer, x, n_points, w_b=(w_b, b_b) if sweep_bias else w_b, labels=labels,
                      sweep_bias=sweep_bias, backend=engine)
    n, transitions, changes, hashes = brute_force(net, layer, x, n_points, w_b, b_b, labels, sweep_bias)
    assert (got.n_dichotomies, got.transitions, got.labelling_changes) == (n, transitions, changes)
    assert set(map(int, got.hashes)) == hashes
    assert got.backend == engine


@pytest.mark.parametrize("engine", ENGINES)
def test_chunks_and_tiles_do_not_change_counts(engine, monkeypatch):
    net = fastexpr.random_mlp(3, 11, 4, "hardtanh", sigma_w=3.0, output_dim=1, seed=5)
    x = np.random.default_rng(6).standard_normal((15, 4))
    whole = dichotomies(net, 2, x, 3001, seed=1, backend=engine)
    module = sys.modules["fastexpr.dichotomies"]  # fastexpr.dichotomies is the function
    monkeypatch.setattr(module, "CHUNK", 97)
    monkeypatch.setattr(module, "TILE", 5)
    cut = dichotomies(net, 2, x, 3001, seed=1, backend=engine)
    assert (cut.n_dichotomies, cut.transitions, cut.labelling_changes) == (
        whole.n_dichotomies, whole.transitions, whole.labelling_changes)
    assert np.array_equal(cut.hashes, whole.hashes) and whole.n_dichotomies > 5


def test_drawn_end_is_seeded_and_scaled():
    net = fastexpr.random_mlp(2, 8, 3, "relu", sigma_w=2.0, output_dim=1, seed=0)
    x = np.random.default_rng(1).standard_normal((12, 3))
    a = dichotomies(net, 1, x, 400, seed=7)
    assert np.array_equal(a.hashes, dichotomies(net, 1, x, 400, seed=7).hashes)
    rng = np.random.default_rng(7)
    w_b = rng.standard_normal((8, 3)) * np.sqrt(np.mean(net.weights[0] ** 2))
    b = dichotomies(net, 1, x, 400, w_b=w_b)
    assert (a.n_dichotomies, a.transitions) == (b.n_dichotomies, b.transitions)


def test_threads_give_the_same_counts():
    net = fastexpr.random_mlp(3, 10, 4, "relu", sigma_w=2.0, output_dim=1, seed=3)
    x = np.random.default_rng(4).standard_normal((20, 4))
    one = dichotomies(net, 1, x, 5000, seed=2, threads=1)
    two = dichotomies(net, 1, x, 5000, seed=2, threads=2)
    assert (one.n_dichotomies, one.transitions, one.labelling_changes) == (
        two.n_dichotomies, two.transitions, two.labelling_changes)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layer=0), ValueError, "layer must be"),
    (dict(layer=4), ValueError, "layer must be"),
    (dict(n_points=1), ValueError, "n_points"),
    (dict(n_points=10.0), TypeError, "n_points"),
    (dict(labels="max"), ValueError, "labels"),
    (dict(labels="argmax"), ValueError, "two outputs"),
    (dict(inputs=np.zeros((3, 2))), ValueError, "inputs must have shape"),
    (dict(w_b=np.zeros((2, 2))), ValueError, "w_b has shape"),
    (dict(w_b=(np.zeros((6, 4)), np.zeros(6))), ValueError, "sweep_bias is False"),
    (dict(w_b=[np.zeros((6, 4)), np.zeros(6)], sweep_bias=True), ValueError, r"or the pair \(W_b, b_b\) as a tuple"),
    (dict(backend="cuda"), ValueError, "backend"),
])
def test_bad_input(kwargs, error, match):
    net = fastexpr.random_mlp(2, 6, 4, "relu", output_dim=1, seed=0)
    args = dict(net=net, layer=1, inputs=np.zeros((3, 4)), n_points=10) | kwargs
    with pytest.raises(error, match=match):
        dichotomies(**args)


def test_sign_needs_one_output():
    net = fastexpr.random_mlp(2, 6, 4, "relu", output_dim=3, seed=0)
    with pytest.raises(ValueError, match="one output"):
        dichotomies(net, 1, np.zeros((3, 4)), 10)


@pytest.mark.parametrize("layer", [1, 2])
def test_overflow_is_reported(layer):
    ws = [np.full((3, 2), 1e300), np.full((1, 3), 1e300)]
    net = fastexpr.from_arrays(ws, None, ["identity", "identity"])
    with pytest.raises(fastexpr.OverflowInForwardPass, match="layer 2"):  # below the swept layer or above it
        dichotomies(net, layer, np.ones((2, 2)), 10, w_b=np.zeros(ws[layer - 1].shape))


def test_work_beyond_the_limit_is_refused():
    """n_points = 2^62 ran for ever; the sweep now meets measure's MAX_WORK up front."""
    net = fastexpr.random_mlp(3, 8, 4, sigma_w=4.0, sigma_b=0.5, output_dim=1, seed=0)
    x = np.random.default_rng(1).standard_normal((10, 4))
    with pytest.raises(ValueError, match="MAX_WORK"):
        dichotomies(net, 1, x, 2 ** 62, seed=2)
