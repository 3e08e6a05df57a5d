"""Bad input gives a clear ValueError/TypeError naming the problem, on every path into the library."""
from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
import torch.nn as nn

import fastexpr as fx
from fastexpr import backends, theory

from .cases import BACKENDS, backend_or_skip


@pytest.fixture
def net():
    return fx.random_mlp(2, 4, 3, seed=0)


@pytest.fixture
def traj():
    return fx.arc(np.ones(3), np.arange(3.0))


def test_mismatched_dimensions(net):
    with pytest.raises(ValueError, match="dimension 5 .* dimension 3"):
        fx.measure(net, fx.line(np.zeros(5), np.ones(5)), 10)
    with pytest.raises(ValueError, match="same length"):
        fx.line(np.zeros(3), np.ones(4))
    with pytest.raises(ValueError, match="layer 2: weights expect 5 inputs but layer 1 has 4 outputs"):
        fx.from_arrays([np.ones((4, 3)), np.ones((2, 5))], None, "relu")
    with pytest.raises(ValueError, match="bias has 3 entries"):
        fx.from_arrays([np.ones((4, 3))], [np.ones(3)], "relu")
    with pytest.raises(ValueError, match="2 activations for 1 layers"):
        fx.from_arrays([np.ones((4, 3))], None, ["relu", "relu"])


@pytest.mark.parametrize("n", [1, 0, -5])
def test_too_few_points(net, traj, n):
    with pytest.raises(ValueError, match="n_points must be at least 2"):
        fx.measure(net, traj, n)


@pytest.mark.parametrize("n", [10.0, "10", True, None])
def test_n_points_type(net, traj, n):
    with pytest.raises((TypeError, ValueError), match="n_points"):
        fx.measure(net, traj, n)


def test_empty_and_single_point_trajectories(net):
    with pytest.raises(ValueError, match="at least 2 points"):
        fx.measure(net, np.ones((1, 3)))
    with pytest.raises(ValueError, match="empty"):
        fx.measure(net, np.ones((0, 3)))
    with pytest.raises(ValueError, match="no trajectory"):
        fx.measure(net, [], 10)
    with pytest.raises(ValueError, match="explicit point set is measured at its own 4 points"):
        fx.measure(net, fx.points(np.ones((4, 3))), 10)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(net, bad):
    x = np.ones(3)
    x[1] = bad
    with pytest.raises(ValueError, match="x0 contains NaN or infinite"):
        fx.line(x, np.ones(3))
    with pytest.raises(ValueError, match="points contains NaN"):
        fx.measure(net, np.stack([np.ones(3), x]))
    w = np.ones((4, 3))
    w[0, 0] = bad
    with pytest.raises(ValueError, match=r"weights\[0\] contains NaN"):
        fx.from_arrays([w], None, "relu")
    with pytest.raises(ValueError, match="sigma_w"):
        fx.random_mlp(2, 3, 3, sigma_w=bad)


def test_unknown_names(net, traj):
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        fx.random_mlp(2, 3, 3, activation="tanh")
    with pytest.raises(TypeError, match="activation must be one name .* use fastexpr.from_arrays"):
        fx.random_mlp(3, 5, 3, ["relu", "hardtanh", "identity"])
    with pytest.raises(TypeError, match="sigma_w must be a real number, got '2'"):
        fx.random_mlp(3, 5, 3, sigma_w="2")
    with pytest.raises(ValueError, match="unknown backend 'gpu'"):
        fx.measure(net, traj, 10, backend="gpu")
    with pytest.raises(ValueError, match="dtype must be 'float32' or 'float64'"):
        fx.measure(net, traj, 10, dtype="float16")


def test_unavailable_backend_named_says_why(net, traj):
    missing = fx.missing_backends()
    if not missing:
        pytest.skip("every backend is available here")
    name, reason = next(iter(missing.items()))
    with pytest.raises(backends.BackendUnavailable, match=f"backend '{name}' is not available here"):
        fx.measure(net, traj, 10, backend=name)
    assert reason


def test_wrong_dtypes_and_types(net, traj):
    with pytest.raises(TypeError, match="real floating-point"):
        fx.line(np.arange(3), np.ones(3))
    with pytest.raises(TypeError, match="real floating-point"):
        fx.line(np.ones(3, dtype=complex), np.ones(3))
    with pytest.raises(TypeError, match="floating-point"):
        fx.from_arrays([torch.ones(4, 3, dtype=torch.int64)], None, "relu")
    with pytest.raises(TypeError, match="fastexpr Network"):
        fx.measure("not a net", traj, 10)
    with pytest.raises(TypeError, match="trajectory must be"):
        fx.measure(net, "arc", 10)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        fx.random_mlp(0, 3, 3)
    with pytest.raises(ValueError, match="2-dimensional"):
        fx.polyline(np.ones(3))


def test_unsupported_torch_layers():
    with pytest.raises(ValueError, match="unsupported layer Tanh"):
        fx.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Tanh()))
    with pytest.raises(ValueError, match="unsupported layer Conv1d"):
        fx.from_torch(nn.Sequential(nn.Sequential(nn.Conv1d(1, 1, 1))))
    with pytest.raises(ValueError, match=r"Hardtanh\(-1, 1\)"):
        fx.from_torch(nn.Sequential(nn.Linear(3, 4), nn.Hardtanh(-2, 2)))
    with pytest.raises(ValueError, match="two activations in a row"):
        fx.from_torch(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Hardtanh()))
    with pytest.raises(ValueError, match="before the first Linear"):
        fx.from_torch(nn.Sequential(nn.ReLU(), nn.Linear(3, 4)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fx.from_torch([nn.Linear(3, 4)])


def test_from_torch_matches_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Sequential(nn.Linear(3, 5), nn.ReLU()), nn.Linear(5, 4), nn.Hardtanh(),
                          nn.Identity(), nn.Linear(4, 2, bias=False))
    net = fx.from_torch(model)
    assert net.activations == ("relu", "hardtanh", "identity")
    x = torch.randn(7, 3, dtype=torch.float64)
    h = x.numpy()
    for w, b, act in zip(net.weights, net.biases, net.activations):
        h = h @ w.T + b
        h = np.maximum(h, 0) if act == "relu" else (np.clip(h, -1, 1) if act == "hardtanh" else h)
    np.testing.assert_allclose(h, model.double()(x).detach().numpy(), rtol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_check_their_arguments(backend):
    """Backends called directly with a malformed plan raise ValueError instead of crashing."""
    module = backend_or_skip(backend)
    net = fx.random_mlp(2, 4, 3, seed=0)
    plan = fx.make_plan(net, fx.arc(np.ones(3), np.arange(3.0)), 10, "float64")
    with pytest.raises(ValueError):
        module.run(plan, 5, 3)
    with pytest.raises(ValueError):
        module.run(plan, 0, 11)


def test_float32_at_high_resolution_warns(net, traj, monkeypatch):
    measure_module = importlib.import_module("fastexpr.measure")  # the attribute fx.measure is the function
    monkeypatch.setattr(measure_module, "FLOAT32_WARN_FROM", 1000)
    with pytest.warns(fx.PrecisionWarning, match="dtype='float64'"):
        fx.measure(net, traj, 1000, dtype="float32")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fx.measure(net, traj, 999, dtype="float32")
        fx.measure(net, traj, 1000)


INTEGER_ARGUMENTS = {  # a call taking one integer argument, that argument's name, and a valid value
    "random_mlp depth": (lambda v: fx.random_mlp(v, 3, 2), "depth", 2),
    "measure n_points": (lambda v: fx.measure(fx.random_mlp(1, 3, 2), fx.line(np.zeros(2), np.ones(2)), v),
                         "n_points", 100),
    "crossings max_crossings": (lambda v: fx.crossings(fx.random_mlp(1, 3, 2), fx.line(np.zeros(2), np.ones(2)),
                                                       max_crossings=v), "max_crossings", 100),
    "sweep_transitions layer": (lambda v: theory.sweep_transitions("relu", (3, 4, 4, 1), v, 2.0), "layer", 2),
    "length_growth_bound width": (lambda v: theory.length_growth_bound("relu", v, 1.0), "width", 2),
}


@pytest.mark.parametrize("call", INTEGER_ARGUMENTS.values(), ids=INTEGER_ARGUMENTS.keys())
def test_integer_arguments_refuse_bools_floats_and_strings(call):
    """Every integer argument obeys one definition (fastexpr._checks): a bool, a float and a str are
    refused with the argument's name, never truncated or passed on to fail inside the library."""
    fn, name, good = call
    for bad in (True, float(good), good + 0.5, str(good), np.float64(good)):
        with pytest.raises((TypeError, ValueError), match=name):
            fn(bad)
    fn(np.int64(good))  # NumPy integers and 0-d integer tensors are integers
    fn(torch.tensor(good))


def test_threads_beyond_any_machine_are_refused(net, traj):
    """torch's pool crashed at threads=100,000 and the extension's int stops at 2^31 (raw pybind11
    errors); every engine refuses more than fastexpr._threads.MAX_THREADS up front."""
    for kwargs in (dict(backend="torch"), dict(backend="cpu"), dict(exact=True)):
        with pytest.raises(ValueError, match="threads must be at most 1024"):
            fx.measure(net, traj, None if kwargs.get("exact") else 100, threads=100_000, **kwargs)
    with pytest.raises(ValueError, match="threads must be at most"):
        fx.region_map(net, np.zeros(3), np.eye(3)[0], np.eye(3)[1], 1.0, 8, threads=2 ** 31)


def test_flags_refuse_truthy_strings(net, traj):
    """closed="no" once closed the path and exact="yes" walked it: a flag is True or False."""
    from fastexpr import scores

    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).double()
    calls = {
        "closed": lambda: fx.polyline(np.ones((3, 3)), closed="no"),
        "exact": lambda: fx.measure(net, traj, exact="yes"),
        "progress": lambda: fx.measure(net, traj, 100, progress="yes"),
        "sweep_bias": lambda: fx.dichotomies(fx.random_mlp(2, 4, 3, output_dim=1), 1, np.ones((2, 3)), 10,
                                             sweep_bias="no"),
        "per_tap": lambda: scores.linear_regions(model, np.ones((4, 3)), per_tap="no"),
    }
    for name, call in calls.items():
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            call()
    with pytest.raises(TypeError, match="closed must be True or False"):
        fx.trajectory_length(torch.ones(3, 2), closed="no")
    assert fx.polyline(np.ones((3, 3)), closed=np.bool_(True)).basis.shape == (4, 3)


def test_models_that_cannot_be_measured_say_why(traj):
    from fastexpr import scores

    with pytest.raises(TypeError, match="expected a torch.nn.Module, got Network"):
        scores.linear_regions(fx.random_mlp(2, 4, 3), np.ones((4, 3)))
    with pytest.raises(ValueError, match="meta"):
        fx.measure(nn.Sequential(nn.Conv1d(1, 1, 1), nn.Flatten(), nn.Linear(3, 2)).to("meta"), traj, 100)
    broken = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).double()
    with torch.no_grad():
        broken[0].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match="finite"):  # not "needs a plain MLP": it is one
        fx.measure(broken, traj, exact=True)


def test_random_mlp_arguments():
    """NumPy 0-d integers and Fractions are numbers; seeds are non-negative integers or Generators."""
    from fractions import Fraction

    assert fx.random_mlp(np.array(2), np.int32(3), 2, sigma_w=Fraction(1, 3)).depth == 2
    for seed, error in ((-1, ValueError), ("a", TypeError), (True, TypeError), (1.5, TypeError)):
        with pytest.raises(error, match="seed must be"):
            fx.random_mlp(2, 3, 2, seed=seed)
    with pytest.raises(ValueError, match="finite"):
        fx.random_mlp(2, 3, 2, sigma_w=2 ** 2000)
    np.testing.assert_array_equal(fx.random_mlp(2, 3, 2, seed=np.random.default_rng(5)).weights[0],
                                  fx.random_mlp(2, 3, 2, seed=5).weights[0])


def test_activations_that_are_not_names():
    for acts in (None, 3, [["relu"]]):
        with pytest.raises(TypeError, match="activations must be"):
            fx.from_arrays([np.eye(2)], None, acts)
    assert fx.from_arrays([np.eye(2)], None, np.array(["relu"])).activations == ("relu",)


def test_bools_among_numbers_are_refused():
    """np.asarray([True, 0.5]) is a float array, so a bool mixed with numbers passed as 1.0."""
    x1 = np.ones(4)
    for bad in ([True, 0.5, 1.0, 2.0], [True, 0, 1, 2], [np.bool_(True), 0.5, 1.0, 2.0]):
        with pytest.raises(TypeError, match="bool"):
            fx.line(bad, x1)
    with pytest.raises(TypeError, match="bool"):
        fx.from_arrays([[[True, 2], [3, 4], [5, 6]]], [[0, 0, 0]], "relu")
    assert fx.line([1, 0.5, 1.0, 2.0], x1).basis.dtype == np.float64


def test_zero_dim_arrays_and_tensors_are_numbers_and_flags():
    """0-d arrays and tensors pass where a number or a flag is asked for (as they did before the shared
    checks), and 0/1 are flags; Fractions and huge ints are converted, not handed to numpy raw."""
    from fractions import Fraction

    from fastexpr import theory
    from fastexpr.nn import TrajectoryRegularization

    assert theory.mean_field("relu", np.array(1.0), torch.tensor(0.5)).chi_1 == 0.5
    theory.mean_field_layers("hardtanh", (3, 4, 4), torch.tensor([2.0, 3.0]), 0.1)
    assert TrajectoryRegularization(weight=torch.tensor(0.25)).weight == 0.25
    net = fx.random_mlp(2, 4, 2, seed=0)
    assert fx.region_map(net, np.zeros(2), np.eye(2)[0], np.eye(2)[1], Fraction(2), 8).n_regions >= 1
    for closed in (1, np.array(True), torch.tensor(True)):
        assert fx.polyline(np.eye(3), closed=closed).basis.shape == (4, 3)
    with pytest.raises(TypeError, match="closed must be True or False"):
        fx.polyline(np.eye(3), closed=2)
    with pytest.raises(TypeError, match="sigma_w must be a real number"):
        fx.random_mlp(2, 3, 2, sigma_w=np.timedelta64(1, "s"))
    with pytest.raises(ValueError, match="extent"):
        fx.region_map(net, np.zeros(2), np.eye(2)[0], np.eye(2)[1], 10 ** 400, 8)
    q, _ = theory.mean_field_layers("relu", (10,) + (100,) * 400, 4.0)  # the variance overflows: inf, no error
    assert q[-1] == np.inf


def test_arrays_of_several_values_are_not_integers():
    """operator.index takes a one-element tensor of any shape, and a bool tensor: neither is a width."""
    for bad in (torch.tensor([2]), torch.tensor([[2]]), torch.tensor([True]), torch.tensor(True), np.array([2])):
        with pytest.raises((TypeError, ValueError), match="depth"):
            fx.random_mlp(bad, 3, 2)
    assert fx.random_mlp(torch.tensor(2), 3, 2).depth == 2
