"""The taps engine (fastexpr.taps) against a plain float64 reference: every activation call of a
small batch of trajectory samples collected by wrapping torch's functional activations, then
counted with NumPy."""
from __future__ import annotations

import contextlib
import warnings
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fastexpr as fx
from fastexpr import backends, taps
from fastexpr.taps import ARGMAX, ARGMAX_CODES, CLAMP, STEP, UntappedWarning, measure_model

BACKENDS = ["cpu", "numba", "torch"]


# ----------------------------------------------------------------------------------------------
# The reference: wrap F.relu & co. (which nn.ReLU & co. call), collect (pre, post, codes) per call.

def _step(z, thr=0.0):
    return (z > thr).astype(np.int64)


def _clamp(z, lo, hi):
    return np.where(z < lo, -1, np.where(z > hi, 1, 0))


# function -> its region codes from the pre-activation z and the call's other arguments
RULES = {
    (F, "relu"): lambda z, inplace=False: _step(z),
    (torch, "relu"): lambda z: _step(z),
    (torch.Tensor, "relu_"): lambda z: _step(z),
    (F, "leaky_relu"): lambda z, negative_slope=0.01, inplace=False: _step(z),
    (F, "prelu"): lambda z, weight: _step(z),
    (F, "threshold"): lambda z, threshold, value, inplace=False: _step(z, threshold),
    (F, "hardtanh"): lambda z, min_val=-1.0, max_val=1.0, inplace=False: _clamp(z, min_val, max_val),
    (F, "relu6"): lambda z, inplace=False: _clamp(z, 0.0, 6.0),
    (F, "hardsigmoid"): lambda z, inplace=False: _clamp(z, -3.0, 3.0),
}


def _sign(z, *args, **kwargs):
    return _step(z)


def _no_codes(z, *args, **kwargs):
    return np.zeros(z.shape, dtype=np.int64)


# smooth activations (nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid call these): lengths, codes with smooth_sign
SMOOTH = [(F, "gelu"), (F, "silu"), (torch, "tanh"), (torch, "sigmoid"), (F, "elu"), (F, "selu"), (F, "celu"),
          (F, "softplus"), (F, "mish"), (F, "hardswish")]


def _window_argmax(zp, starts, offsets, margin):
    """Argmax (first maximum, row-major) of every window of the images zp (padded by ``margin``
    with -inf): output o's window along axis a is ``starts[a][o] + offsets[a][o]``."""
    b, c = zp.shape[:2]
    codes = np.empty((b, c, len(starts[0]), len(starts[1])), dtype=np.int64)
    for oh, h0 in enumerate(starts[0]):
        for ow, w0 in enumerate(starts[1]):
            hs, ws = margin + h0 + offsets[0][oh], margin + w0 + offsets[1][ow]
            codes[:, :, oh, ow] = zp[:, :, hs[:, None], ws[None, :]].reshape(b, c, -1).argmax(-1)
    return codes


def _max_pool_codes(z, out_shape, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                    return_indices=False):
    k, s, p, d = (np.broadcast_to(v, 2) for v in (kernel_size, stride or kernel_size, padding, dilation))
    margin = int(p.max() + (k * d).max())
    zp = np.pad(z, ((0, 0), (0, 0), (margin, margin), (margin, margin)), constant_values=-np.inf)
    starts = [np.arange(out_shape[a]) * s[a] - p[a] for a in range(2)]
    offsets = [[d[a] * np.arange(k[a])] * out_shape[a] for a in range(2)]
    return _window_argmax(zp, starts, offsets, margin)


def _adaptive_max_pool_codes(z, out_shape, output_size, return_indices=False):
    starts, offsets = [], []
    for a, n_in in enumerate(z.shape[2:]):
        o = np.arange(out_shape[a])
        lo, hi = o * n_in // out_shape[a], -(-(o + 1) * n_in // out_shape[a])
        starts.append(lo)
        offsets.append([np.arange(e - b) for b, e in zip(lo, hi)])
    return _window_argmax(z, starts, offsets, 0)


POOLS = {(F, "max_pool2d"): _max_pool_codes, (F, "adaptive_max_pool2d"): _adaptive_max_pool_codes}


@contextlib.contextmanager
def _collect(calls, smooth_sign=False, maxpool_argmax=False, pooled=None):
    """Wrap the activation functions (nn.ReLU & co. call them too), the smooth ones and, with
    ``maxpool_argmax``, max-pooling; each outermost call appends (codes, post-activation), float64
    NumPy (samples, features), and to ``pooled`` whether it was a max-pool (any change of code is
    one transition). The input is copied before the call."""
    depth = [0]
    pooled = [] if pooled is None else pooled

    def wrap(orig, rule, pool=False):
        def fn(x, *args, **kwargs):
            if depth[0]:  # F.relu calls torch.relu: record the outermost call only
                return orig(x, *args, **kwargs)
            z = x.detach().double().numpy().copy()
            depth[0] += 1
            try:
                out = orig(x, *args, **kwargs)
            finally:
                depth[0] -= 1
            codes = rule(z, out.shape[2:], *args, **kwargs) if pool else rule(z, *args, **kwargs)
            calls.append((codes.reshape(len(z), -1), out.detach().double().numpy().reshape(len(z), -1)))
            pooled.append(pool)
            return out
        return fn

    rules = {**RULES, **{key: _sign if smooth_sign else _no_codes for key in SMOOTH}}
    with contextlib.ExitStack() as stack:
        for (owner, name), rule in rules.items():
            stack.enter_context(mock.patch.object(owner, name, wrap(getattr(owner, name), rule)))
        for (owner, name), rule in POOLS.items() if maxpool_argmax else ():
            stack.enter_context(mock.patch.object(owner, name, wrap(getattr(owner, name), rule, pool=True)))
        yield


def reference_points(model, pts, shape, **options):
    """Measures of the trajectory through the float64 points ``pts`` (n, prod(shape)) through
    ``model`` (float64), counted with NumPy; ``options``: smooth_sign, maxpool_argmax."""
    calls, pooled = [], []
    model = model.double()
    with torch.no_grad(), _collect(calls, pooled=pooled, **options):
        model(torch.from_numpy(pts).reshape(len(pts), *shape))
    steps = [(np.diff(c, axis=0) != 0) if pool else np.abs(np.diff(c, axis=0)) for (c, _), pool in zip(calls, pooled)]
    transitions = np.array([st.sum() for st in steps])
    changed = np.array([st.any(axis=1) for st in steps])
    pattern_changes = changed.sum(axis=1)
    lengths = [np.linalg.norm(np.diff(pts, axis=0), axis=1).sum()]
    lengths += [np.linalg.norm(np.diff(h, axis=0), axis=1).sum() for _, h in calls]
    whole = np.concatenate([c for c, _ in calls], axis=1)
    return dict(transitions=transitions, pattern_changes=pattern_changes,
                network_changes=int(changed.any(axis=0).sum()),
                distinct_patterns=len(np.unique(whole, axis=0)), lengths=np.array(lengths),
                widths=[c.shape[1] for c, _ in calls])


def reference(model, x0, x1, n, **options):
    """Measures of the line x0 -> x1 at n samples (reference_points)."""
    t = np.arange(n) / (n - 1)
    flat0, flat1 = np.ravel(x0), np.ravel(x1)
    return reference_points(model, flat0 + t[:, None] * (flat1 - flat0), np.shape(x0), **options)


def check(result, ref):
    np.testing.assert_array_equal(result.transitions, ref["transitions"])
    np.testing.assert_array_equal(result.pattern_changes, ref["pattern_changes"])
    assert result.network_changes == ref["network_changes"]
    assert result.distinct_patterns == ref["distinct_patterns"]
    np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=1e-9)
    assert list(result.widths[1:]) == ref["widths"]


# ----------------------------------------------------------------------------------------------
# Models

class Block(nn.Module):
    """A torchvision-style BasicBlock: one in-place ReLU called twice, a residual addition."""

    def __init__(self, c):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetish(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.LeakyReLU(0.1))
        self.pool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(Block(4), Block(4))
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.act = nn.Hardtanh(-2, 2)

    def forward(self, x):
        x = self.layer1(self.pool(self.stem(x)))
        x = F.avg_pool2d(F.relu(x), 1)
        return self.act(self.head(torch.flatten(x, 1)))


class Zoo(nn.Module):
    """Every tappable kind once: functional relu, Tensor.relu_, torch.relu, relu6, prelu, threshold."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.avg = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(12, 16)
        self.relu6 = nn.ReLU6()
        self.prelu = nn.PReLU(16)
        self.thr = nn.Threshold(0.1, -0.5)
        self.fc2 = nn.Linear(16, 8)
        self.hard_inplace = nn.Hardtanh(-0.5, 0.5, inplace=True)

    def forward(self, x):
        x = self.avg(F.relu(self.conv(x)))
        x = self.fc1(x.flatten(1))
        x = self.relu6(3 * x) + self.prelu(x) + torch.relu(x - 0.2)
        x = self.thr(x).clone().relu_()
        return self.hard_inplace(self.fc2(x))


def _init(model, seed):
    torch.manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics: eval mode must use them
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(-0.5, 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def resnetish():
    return _init(ResNetish(), 0).double()


@pytest.fixture(scope="module")
def endpoints():
    rng = np.random.default_rng(3)
    return rng.standard_normal((2, 2, 8, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_resnet_like_matches_reference(resnetish, endpoints, backend):
    x0, x1 = endpoints
    ref = reference(resnetish, x0, x1, 301)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        result = fx.measure(resnetish, fx.line(x0, x1), 301, backend=backend)
    check(result, ref)
    assert result.taps == ("stem.2", "layer1.0.relu", "layer1.0.relu#2", "layer1.1.relu", "layer1.1.relu#2",
                           "F.relu", "act")
    assert result.activations[-1] == "ht(-2,2)"
    assert result.backend == f"taps-{backend}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_zoo_matches_reference(backend):
    model = _init(Zoo(), 1).double()
    x0, x1 = np.random.default_rng(4).standard_normal((2, 1, 6, 6)) * 2
    ref = reference(model, x0, x1, 257)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        result = fx.measure(model, fx.line(x0, x1), 257, backend=backend)
    check(result, ref)
    assert result.taps == ("F.relu", "relu6", "prelu", "F.relu#2", "thr", "F.relu_", "hard_inplace")
    assert result.activations == ("relu", "relu6", "prelu", "relu", "thr(0.1)", "relu", "ht(-0.5,0.5)")


@pytest.mark.parametrize("chunk", [2, 3, 7, 50, 1000])
def test_odd_chunks_give_the_same_result(resnetish, endpoints, chunk):
    x0, x1 = endpoints
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        result = measure_model(resnetish, [fx.line(x0, x1)], 61, backend="cpu", chunk=chunk)[0]
    check(result, reference(resnetish, x0, x1, 61))


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("chunk", [6, 7, 8])
def test_the_chunk_boundary_sample(chunk):
    """One unit flips between samples 6 and 7 of 13: counted once whichever chunk holds the pair."""
    model = nn.Sequential(nn.Linear(1, 1), nn.LeakyReLU(0.5)).double()
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(-0.05)
    result = measure_model(model, [fx.line([-1.0], [1.0])], 13, backend="cpu", chunk=chunk)[0]
    assert result.first_layer == "projected: 0 (linear)"
    assert result.transitions.tolist() == [1]
    assert (result.network_changes, result.distinct_patterns) == (1, 2)
    np.testing.assert_allclose(result.lengths, [2.0, 0.5 * 1.05 + 0.95])


def test_batch_of_trajectories(resnetish, endpoints):
    x0, x1 = endpoints
    trajs = [fx.line(x0, x1), fx.arc(x0, x1), fx.points(np.stack([x0, x1, -x0]))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        batch = fx.measure(resnetish, trajs[:2], 101)
        single = [fx.measure(resnetish, t, 101) for t in trajs[:2]]
        explicit = fx.measure(resnetish, trajs[2])
    assert batch.transitions.shape == (2, 7)
    for i in range(2):
        np.testing.assert_array_equal(batch[i].transitions, single[i].transitions)
        assert batch[i].distinct_patterns == single[i].distinct_patterns
        assert batch[i].taps == single[i].taps
    assert explicit.n_points == 3
    assert "layer1.0.relu#2" in batch.table()
    assert batch[1].to_dict()["taps"][1] == "layer1.0.relu"


def test_plain_mlp_module_takes_the_mlp_engine_and_taps_agree():
    torch.manual_seed(5)
    mlp = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.Hardtanh(), nn.Linear(16, 4))
    x0, x1 = np.random.default_rng(6).standard_normal((2, 6)) * 3
    via_module = fx.measure(mlp, fx.arc(x0, x1), 4001)
    via_network = fx.measure(fx.from_torch(mlp), fx.arc(x0, x1), 4001)
    assert via_module.backend == via_network.backend and not hasattr(via_module, "taps")
    np.testing.assert_array_equal(via_module.transitions, via_network.transitions)
    np.testing.assert_array_equal(via_module.lengths, via_network.lengths)
    assert via_module.distinct_patterns == via_network.distinct_patterns
    taps = measure_model(mlp, [fx.arc(x0, x1)], 4001, backend="cpu")[0]  # the same network as taps
    np.testing.assert_array_equal(taps.transitions, via_network.transitions[:2])
    np.testing.assert_array_equal(taps.pattern_changes, via_network.pattern_changes[:2])
    assert taps.network_changes == via_network.network_changes
    assert taps.distinct_patterns == via_network.distinct_patterns  # the same hash keys
    np.testing.assert_allclose(taps.lengths, via_network.lengths[:3], rtol=1e-9)


def test_float32_backends_agree(endpoints):
    model = _init(ResNetish(), 7)
    x0, x1 = endpoints
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        results = [fx.measure(model, fx.line(x0, x1), 201, dtype="float32", backend=b) for b in BACKENDS]
    for r in results[1:]:
        np.testing.assert_array_equal(r.transitions, results[0].transitions)
        assert r.distinct_patterns == results[0].distinct_patterns
        np.testing.assert_allclose(r.lengths, results[0].lengths, rtol=1e-6)
    assert results[0].dtype == "float32"
    assert next(model.parameters()).dtype == torch.float32  # the caller's model is not converted


# ----------------------------------------------------------------------------------------------
# Bad input

def test_no_tappable_activation():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Softsign())
    with pytest.raises(ValueError, match="calls no activation that fastexpr can tap"):
        fx.measure(model, fx.line(np.zeros((1, 5, 5)), np.ones((1, 5, 5))), 10)


def test_trajectory_shape_does_not_fit(resnetish):
    with pytest.raises(ValueError, match=r"cannot take trajectory points of shape \(3, 8, 8\)"):
        fx.measure(resnetish, fx.line(np.zeros((3, 8, 8)), np.ones((3, 8, 8))), 10)
    with pytest.raises(ValueError, match="same shape"):
        fx.line(np.zeros((2, 8, 8)), np.ones((2, 8, 7)))


def test_train_mode_batch_norm_is_refused():
    model = ResNetish().train()
    with pytest.raises(ValueError, match=r"stem.1 \(BatchNorm2d\) is in training mode"):
        fx.measure(model, fx.line(np.zeros((2, 8, 8)), np.ones((2, 8, 8))), 10)


class Counter(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return F.relu(x)


def test_model_that_changes_state_is_refused():
    with pytest.raises(ValueError, match="changed its buffer 'calls'"):
        fx.measure(Counter(), fx.line(np.zeros(3), np.ones(3)), 10)


def test_other_errors():
    traj = fx.line(np.zeros((1, 5, 5)), np.ones((1, 5, 5)))
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with pytest.raises(ValueError, match="exact=True needs a plain MLP"):
        fx.measure(conv, traj, exact=True)
    with pytest.raises(ValueError, match="taps backend 'cuda' runs on cuda tensors only, not cpu"):
        fx.measure(conv, traj, 10, backend="cuda")
    with pytest.raises(ValueError, match="unknown taps backend 'tpu'"):
        fx.measure(conv, traj, 10, backend="tpu")
    with pytest.raises(ValueError, match="chunk must be an integer"):
        measure_model(conv, [traj], 10, chunk=1)
    big = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).double()
    with torch.no_grad():
        big[0].bias.fill_(float("inf"))
    with pytest.raises(fx.OverflowInForwardPass, match="tap 1 are inf or NaN"):
        fx.measure(big, traj, 10)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
def test_taps_off_the_batch_axis_and_untapped_ops_are_reported():
    class Transposed(nn.Module):
        def forward(self, x):
            return F.relu(x.t()).t()

    class Clamped(nn.Module):
        def forward(self, x):
            return F.relu(x).clamp(max=1.0)

    traj = fx.line(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="first axis is not the batch"):
        fx.measure(Transposed(), traj, 10)
    with pytest.warns(UntappedWarning, match="clamp"):
        fx.measure(Clamped(), traj, 10)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("op, name", [(lambda z: z.clip(-1, 1), "clamp"), (lambda z: torch.clip(z, max=1), "clamp"),
                                      (lambda z: z.maximum(-z), "maximum"), (lambda z: torch.max(z, 1 - z), "max"),
                                      (lambda z: torch.fmax(z, -z), "fmax"), (lambda z: z.abs_(), "abs_"),
                                      (lambda z: torch.min(z, other=z * 2), "min")])
def test_every_form_of_an_untapped_piecewise_linear_op_warns(op, name):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 4)

        def forward(self, x):
            return F.relu(op(self.fc(x)))

    with pytest.warns(UntappedWarning, match=rf"calls {name}\b"):
        fx.measure(Net(), fx.line(np.zeros(3), np.ones(3)), 10)


def test_reductions_and_constant_ops_do_not_warn():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.w = nn.Linear(3, 4), nn.Parameter(torch.randn(4))

        def forward(self, x):  # max over features, and a clamp of a parameter: no piecewise-linear op of the data
            z = F.relu(self.fc(x) * self.w.clamp(0, 1))
            return z.max(dim=1).values + torch.max(z)

    with warnings.catch_warnings():
        warnings.simplefilter("error", UntappedWarning)
        fx.measure(Net(), fx.line(np.zeros(3), np.ones(3)), 10)


class Gated(nn.Module):
    """Activations of parameters only (constant gates, the same for every sample) beside one of the data;
    ``w``'s first axis is 2, the probe's batch."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.w, self.alpha = nn.Parameter(torch.randn(2, 3)), nn.Parameter(torch.randn(3))
        self.constants = None  # (gate, w): the same numbers computed before the forward pass, for the reference

    def forward(self, x):
        gate, w = self.constants or (torch.sigmoid(self.alpha), F.relu(self.w))
        return (F.relu(self.fc(x)) * gate) @ w.T


@pytest.mark.parametrize("n", [2, 3, 57])
def test_activations_of_parameters_are_constant_gates_not_taps(n):
    torch.manual_seed(12)
    gated = Gated().double()
    traj = fx.line([-1.0, 0.5, 2.0], [1.0, -0.5, -2.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        result = fx.measure(gated, traj, n)
    assert result.taps == ("F.relu",)
    x0, x1 = np.array([-1.0, 0.5, 2.0]), np.array([1.0, -0.5, -2.0])
    with torch.no_grad():
        gated.constants = (torch.sigmoid(gated.alpha), F.relu(gated.w))
    check(result, reference(gated, x0, x1, n))


class BatchStats(nn.Module):
    def __init__(self, how):
        super().__init__()
        self.conv, self.how = nn.Conv2d(1, 2, 3), how
        self.bn = nn.BatchNorm2d(2, track_running_stats=False)

    def forward(self, x):
        z = self.conv(x)
        if self.how == "module":
            z = self.bn(z)
        elif self.how == "functional":
            z = F.batch_norm(z, None, None, training=True)
        else:
            z = F.dropout(z, 0.5, training=True)
        return F.relu(z)


@pytest.mark.parametrize("how", ["module", "functional", "dropout"])
def test_models_whose_function_depends_on_the_batch_are_refused(how):
    model = BatchStats(how).eval()
    traj = fx.line(np.zeros((1, 5, 5)), np.ones((1, 5, 5)))
    with pytest.raises(ValueError, match="depends on the batch"):
        fx.measure(model, traj, 10)


def test_data_dependent_taps_are_refused():
    class Branchy(nn.Module):
        def forward(self, x):
            x = F.relu(x)
            return F.relu(x - 1) if float(x[0, 0]) > 0 else x

    with pytest.raises(ValueError, match="taps changed between forward passes"):
        measure_model(Branchy(), [fx.line([-1.0, 0.0], [1.0, 0.0])], 20, chunk=4)


# ----------------------------------------------------------------------------------------------
# Smooth activations and max-pooling

class Smooth(nn.Module):
    """GELU, SiLU, tanh and sigmoid (modules and a functional call) around one ReLU."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.gelu = nn.GELU()
        self.silu = nn.SiLU()
        self.fc = nn.Linear(3 * 4 * 4, 6)
        self.tanh = nn.Tanh()

    def forward(self, x):
        x = self.silu(self.gelu(self.conv(x)) - 0.1)
        x = self.tanh(self.fc(x.flatten(1)))
        return torch.sigmoid(F.relu(x) * 2 - 0.5)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("smooth_sign", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_smooth_activations_give_lengths_and_optional_sign_codes(backend, smooth_sign):
    model = _init(Smooth(), 8).double()
    x0, x1 = np.random.default_rng(9).standard_normal((2, 1, 6, 6)) * 2
    result = fx.measure(model, fx.line(x0, x1), 203, backend=backend, smooth_sign=smooth_sign)
    check(result, reference(model, x0, x1, 203, smooth_sign=smooth_sign))
    assert result.taps == ("gelu", "silu", "tanh", "F.relu", "F.sigmoid")
    smooth = ("gelu", "silu", "tanh", "sigmoid")
    labels = tuple(f"sign({a})" for a in smooth) if smooth_sign else smooth
    assert result.activations == labels[:3] + ("relu",) + labels[3:]
    smooth_transitions = result.transitions[[0, 1, 2, 4]]
    assert smooth_transitions.sum() > 0 if smooth_sign else not smooth_transitions.any()


class MoreActivations(nn.Module):
    """Hardsigmoid (piecewise linear: codes at -3 and 3) and the other smooth activations."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 12), nn.Linear(12, 6)
        self.acts = nn.ModuleList([nn.ELU(), nn.SELU(), nn.CELU(0.5), nn.Softplus(), nn.Mish(), nn.Hardswish()])
        self.hsig = nn.Hardsigmoid()

    def forward(self, x):
        z = self.hsig(self.fc1(x) * 4)
        z = sum(act(z - 0.5) for act in self.acts)
        return F.relu(self.fc2(z))


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("smooth_sign", [False, True])
def test_hardsigmoid_and_more_smooth_activations(smooth_sign):
    model = _init(MoreActivations(), 13).double()
    x0, x1 = np.random.default_rng(13).standard_normal((2, 4)) * 2
    result = fx.measure(model, fx.line(x0, x1), 301, smooth_sign=smooth_sign)
    check(result, reference(model, x0, x1, 301, smooth_sign=smooth_sign))
    assert result.taps == ("hsig", "acts.0", "acts.1", "acts.2", "acts.3", "acts.4", "acts.5", "F.relu")
    assert result.activations[0] == "hardsigmoid" and result.transitions[0] > 0


def test_a_tanh_network_has_lengths_and_no_transitions():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh()).double()
    x0, x1 = np.random.default_rng(10).standard_normal((2, 1, 5, 5))
    result = fx.measure(model, fx.line(x0, x1), 50)
    check(result, reference(model, x0, x1, 50))
    assert result.transitions.tolist() == [0] and result.distinct_patterns == 1


@pytest.mark.parametrize("inplace, plain", [(lambda x: x.sigmoid_(), torch.sigmoid), (lambda x: x.tanh_(), torch.tanh),
                                            (lambda x: F.silu(x, inplace=True), F.silu)])
def test_in_place_smooth_activations_code_their_input(inplace, plain):
    class Net(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.fc, self.act = nn.Linear(3, 8), act

        def forward(self, x):
            return F.relu(self.act(self.fc(x).clone()) - 0.3)

    torch.manual_seed(11)
    a, b = Net(inplace).double(), Net(plain).double()
    b.load_state_dict(a.state_dict())
    traj = fx.line([-2.0, 1.0, 0.5], [2.0, -1.0, 1.5])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        ra, rb = (fx.measure(m, traj, 101, smooth_sign=True) for m in (a, b))
    np.testing.assert_array_equal(ra.transitions, rb.transitions)
    assert ra.transitions[0] > 0 and ra.distinct_patterns == rb.distinct_patterns
    np.testing.assert_allclose(ra.lengths, rb.lengths, rtol=1e-12)


class Pooled(nn.Module):
    """Max-pooling before a ReLU (no ties), after one (ties among zeros), adaptive, with padding,
    ceil mode and dilation."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)   # 8x8 -> 5x5
        self.pool2 = nn.MaxPool2d(2, stride=1, dilation=2)                 # -> 3x3
        self.adaptive = nn.AdaptiveMaxPool2d((2, 3))                       # overlapping windows
        self.fc = nn.Linear(3 * 2 * 3, 4)

    def forward(self, x):
        x = self.pool2(F.relu(self.pool(self.conv(x))))
        return F.relu(self.fc(self.adaptive(x).flatten(1)))


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("maxpool_argmax", [False, True])
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_argmax_codes(backend, maxpool_argmax):
    model = _init(Pooled(), 12).double()
    x0, x1 = np.random.default_rng(13).standard_normal((2, 2, 8, 8)) * 2
    result = fx.measure(model, fx.line(x0, x1), 241, backend=backend, maxpool_argmax=maxpool_argmax)
    ref = reference(model, x0, x1, 241, maxpool_argmax=maxpool_argmax)
    check(result, ref)
    if maxpool_argmax:
        assert result.taps == ("pool", "F.relu", "pool2", "adaptive", "F.relu#2")
        assert result.activations[0] == "max_pool2d" and result.activations[3] == "adaptive_max_pool2d"
        assert (result.transitions[[0, 2, 3]] > 0).all()
        assert result.distinct_patterns > measure_model(model, [fx.line(x0, x1)], 241).distinct_patterns[0]
    else:
        assert result.taps == ("F.relu", "F.relu#2")


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("backend", BACKENDS)
def test_max_pool_ties_take_the_first_position(backend):
    """After a ReLU a window of zeros is a tie: its code is position 0 (torch's first maximum), so
    only a positive entry elsewhere changes the code."""
    model = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2))
    low = -np.ones((1, 2, 2))
    for corner, expected in (((1, 1), [1, 1]), ((0, 0), [1, 0])):
        high = low.copy()
        high[(0, *corner)] = 1.0
        result = fx.measure(model, fx.line(low, high), 11, backend=backend, maxpool_argmax=True)
        assert result.transitions.tolist() == expected and result.distinct_patterns == 2


@pytest.mark.parametrize("kind, lo, hi", [(STEP, 0.0, 0.0), (CLAMP, -0.5, 0.5), (CLAMP, -np.inf, np.inf),
                                          (ARGMAX, 0.0, 0.0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_backends_agree_on_every_kind(kind, lo, hi, dtype):
    """The same transitions, changes, hashes and lengths from the C++, numba and torch reductions."""
    rng = np.random.default_rng(14)
    if kind == ARGMAX:  # codes 0 .. 127, often repeated from one sample to the next
        z = np.repeat(rng.integers(0, ARGMAX_CODES, (20, 300)), 3, axis=0).astype(dtype)
    else:
        z = rng.standard_normal((60, 300)).astype(dtype)
    h = rng.standard_normal(z.shape).astype(dtype)
    results = [backends.get(b, "taps").reduce(torch.from_numpy(z), torch.from_numpy(h), kind, lo, hi, 3)
               for b in BACKENDS]
    for r in results[1:]:
        assert r[:2] == results[0][:2] and r[5] == results[0][5]
        np.testing.assert_array_equal(r[2], results[0][2])
        np.testing.assert_array_equal(r[3], results[0][3])
        # float32: the cpu pass sums float32 squares in blocks (about 1e-7 relative, csrc/cpu/taps.cpp)
        np.testing.assert_allclose(r[4], results[0][4], rtol=1e-12 if dtype == np.float64 else 1e-6)
    assert (results[0][0] == 0) == (not np.isfinite(lo))  # infinite bounds: one region, no transition


# ----------------------------------------------------------------------------------------------
# The first layer from the trajectory's basis

class ConvFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        return F.hardtanh(self.fc(F.relu(self.conv(x)).flatten(1)))


def _linear_first():
    """nn.Linear on the last axis of (C, H, W) points."""
    return nn.Sequential(nn.Linear(8, 5), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 8 * 5, 4), nn.ReLU())


def _trajectories():
    rng = np.random.default_rng(15)
    x0, x1 = rng.standard_normal((2, 2, 8, 8)) * 2
    return {"line": fx.line(x0, x1), "arc": fx.arc(x0, x1), "great_circle": fx.great_circle(x0, x1),
            "polyline": fx.polyline(rng.standard_normal((4, 2, 8, 8)) * 2),
            "points": fx.points(rng.standard_normal((41, 2, 8, 8)))}


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("chunk", [None, 2, 7])
@pytest.mark.parametrize("kind", ["line", "arc", "great_circle", "polyline", "points"])
@pytest.mark.parametrize("make, name", [(ConvFirst, "conv (conv2d)"), (_linear_first, "0 (linear)")])
def test_first_layer_from_the_projected_basis(make, name, kind, chunk):
    model = _init(make(), 16).double()
    traj = _trajectories()[kind]
    n = 41 if kind == "points" else 121
    result = measure_model(model, [traj], n, chunk=chunk)[0]
    assert result.first_layer == f"projected: {name}"
    check(result, reference_points(model, traj.sample(n), traj.shape))
    with mock.patch.object(taps, "PROJECT_BYTES", 0):
        direct = measure_model(model, [traj], n, chunk=chunk)[0]
    assert direct.first_layer.startswith("direct: the first layer's output on the trajectory's")
    np.testing.assert_array_equal(result.transitions, direct.transitions)
    assert result.distinct_patterns == direct.distinct_patterns
    np.testing.assert_allclose(result.lengths, direct.lengths, rtol=1e-12)


def test_projected_first_layer_in_float32_and_a_batch():
    model = _init(ConvFirst(), 17)
    trajs = list(_trajectories().values())[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        batch = fx.measure(model, trajs, 101, dtype="float32")
        with mock.patch.object(taps, "PROJECT_BYTES", 0):
            direct = fx.measure(model, trajs, 101, dtype="float32")
    assert batch[2].first_layer == "projected: conv (conv2d)" and direct.first_layer.startswith("direct")
    np.testing.assert_allclose(batch.lengths, direct.lengths, rtol=1e-5)
    assert np.abs(batch.transitions - direct.transitions).max() <= 2  # float32 rounding may move a crossing


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
def test_a_parametrized_first_layer_is_projected():
    """weight_norm computes a new weight tensor in every forward pass: still the same layer."""
    torch.manual_seed(21)
    conv = nn.utils.parametrizations.weight_norm(nn.Conv2d(2, 3, 3, padding=1))
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 8 * 8, 4), nn.ReLU()).double()
    traj = _trajectories()["great_circle"]
    result = measure_model(model, [traj], 81, chunk=9)[0]
    assert result.first_layer == "projected: 0 (conv2d)"
    check(result, reference_points(model, traj.sample(81), traj.shape))


class InputTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 3, padding=1)

    def forward(self, x):
        return F.relu(self.conv(x) + x)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")
@pytest.mark.parametrize("make, why", [
    (lambda: nn.Sequential(nn.BatchNorm2d(2), nn.Conv2d(2, 3, 3), nn.ReLU()), "the first op on the input is batch_norm"),
    (lambda: nn.Sequential(nn.ReLU(), nn.Conv2d(2, 3, 3), nn.ReLU()), "the first op on the input is relu"),
    (lambda: nn.Sequential(nn.Flatten(), nn.Linear(128, 6), nn.ReLU()), "the first op on the input is flatten"),
    (InputTwice, "the input is used by 2 ops: conv2d (in conv), add"),
])
def test_first_layer_falls_back_to_the_points(make, why):
    model = _init(make(), 18).double()
    traj = _trajectories()["arc"]
    result = measure_model(model, [traj], 61, chunk=7)[0]
    assert result.first_layer.startswith(f"direct: {why}")
    check(result, reference_points(model, traj.sample(61), traj.shape))


def test_input_used_differently_in_a_later_chunk_is_refused():
    class LateUse(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 3)

        def forward(self, x):
            h = self.fc(x)
            return F.relu(h + x.sum(1, keepdim=True) if float(h[0, 0]) > 0.5 else h)

    model = LateUse().double()
    with torch.no_grad():
        model.fc.weight.copy_(torch.eye(3, 2))
        model.fc.bias.zero_()
    with pytest.raises(ValueError, match="used its input differently in this forward pass"):
        measure_model(model, [fx.line([-1.0, 0.0], [1.0, 0.0])], 20, chunk=4)


# ----------------------------------------------------------------------------------------------
# Warnings, instance norm, bad input

def test_untapped_calls_in_later_chunks_warn_once_per_name():
    class LateClamp(nn.Module):
        def forward(self, x):
            h = F.relu(x)
            if float(x[0, 0]) > 0.2:  # only in later chunks
                h = h.clamp(max=0.5).abs()
            return h

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        measure_model(LateClamp(), [fx.line([-1.0, 0.0], [1.0, 0.0])], 40, chunk=4)
    untapped = [w for w in caught if issubclass(w.category, UntappedWarning)]
    assert len(untapped) == 1 and "abs, clamp" in str(untapped[0].message)
    assert untapped[0].filename == __file__  # attributed to the caller


def test_instance_norm_in_training_mode_is_per_sample():
    def make(track):
        torch.manual_seed(19)
        return nn.Sequential(nn.Conv2d(1, 3, 3), nn.InstanceNorm2d(3, affine=True, track_running_stats=track),
                             nn.ReLU()).double()

    traj = fx.line(*np.random.default_rng(20).standard_normal((2, 1, 6, 6)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        train, evaluated = fx.measure(make(False).train(), traj, 64), fx.measure(make(False).eval(), traj, 64)
    np.testing.assert_array_equal(train.transitions, evaluated.transitions)
    np.testing.assert_array_equal(train.lengths, evaluated.lengths)
    with pytest.raises(ValueError, match=r"1 \(InstanceNorm2d\) is in training mode"):
        fx.measure(make(True).train(), traj, 64)


def test_bad_tap_options():
    traj = fx.line(np.zeros((1, 12, 12)), np.ones((1, 12, 12)))
    with pytest.raises(ValueError, match="max_pool2d: a window of 144 positions"):
        fx.measure(nn.Sequential(nn.ReLU(), nn.MaxPool2d(12)), traj, 10, maxpool_argmax=True)
    with pytest.raises(TypeError, match="smooth_sign must be True or False"):
        fx.measure(nn.Sequential(nn.Conv2d(1, 1, 3), nn.GELU()), traj, 10, smooth_sign="yes")
    with pytest.raises(ValueError, match="apply to torch models"):
        fx.measure(fx.random_mlp(2, 4, 3, seed=0), fx.line(np.zeros(3), np.ones(3)), 10, maxpool_argmax=True)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), -float("inf")])
def test_all_finite_agrees_with_isfinite(dtype, bad):
    """The torch backend's and the scores' non-finite check (one min/max reduction) against isfinite."""
    from fastexpr.backends.taps_torch import all_finite

    z = torch.randn(9, 31, generator=torch.Generator().manual_seed(0)).to(dtype)
    if bad is not None:
        z[4, 17] = bad
    assert all_finite(z) == bool(torch.isfinite(z).all()) == (bad is None)
    assert all_finite(z[:0]) and all_finite(torch.tensor(2.0, dtype=dtype))


def test_nan_activation_parameters_are_refused():
    """F.hardtanh(x, nan, 1) and F.threshold(x, t, nan) gave NaN lengths or all-zero codes silently."""
    traj = fx.line(np.zeros(3), np.ones(3))
    class Net(nn.Module):
        def __init__(self, act):
            super().__init__()
            self.linear, self.act = nn.Linear(3, 4), act

        def forward(self, x):
            return self.act(self.linear(x))

    for act in (lambda z: F.hardtanh(z, float("nan"), 1.0), lambda z: F.threshold(z, 0.5, float("nan")),
                lambda z: F.threshold(z, float("nan"), 0.0)):
        with pytest.raises(ValueError, match="is NaN"):
            fx.measure(Net(act).double(), traj, 100)
