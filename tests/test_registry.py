"""The one backend registry (fastexpr.backends): every op's entries, "auto" orders, device checks
and messages, and that each op's front end goes through it."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

import fastexpr as fx
from fastexpr import backends
from fastexpr.backends import REGISTRY, BackendUnavailable, WrongDevice


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_every_entry_names_a_module_with_that_name_and_probe(op):
    for name, entry in REGISTRY[op].items():
        module = importlib.import_module(entry.module)
        assert module.NAME == name and callable(getattr(module, entry.probe))
        assert entry.tensors_on in (None, "any", "cpu", "cuda")
    for device, order in backends.AUTO_ORDER[op].items():
        assert set(order) <= set(REGISTRY[op]) and device in ("cpu", "cuda")


@pytest.mark.parametrize("op", sorted(REGISTRY))
def test_available_and_missing_split_the_entries(op):
    available, missing = backends.available_backends(op), backends.missing_backends(op)
    assert set(available) | set(missing) == set(REGISTRY[op]) and not set(available) & set(missing)
    assert all(isinstance(reason, str) and reason for reason in missing.values())
    if available:
        assert backends.resolve("auto", "cpu", op=op).NAME in available


def test_auto_on_other_devices_takes_the_backends_that_run_anywhere():
    assert backends.auto_order("taps", "mps") == ("torch",)
    assert backends.auto_order("trajectory_length", torch.device("mps")) == ("torch",)
    assert backends.auto_order("taps", "cuda:3") == ("cuda", "torch")


def test_a_backend_named_for_the_wrong_device_is_bad_input():
    with pytest.raises(WrongDevice, match="taps backend 'numba' runs on cpu tensors only, not cuda") as info:
        backends.get("numba", "taps", device="cuda:0")
    assert isinstance(info.value, ValueError) and isinstance(info.value, BackendUnavailable)
    assert backends.unavailable_reason("cuda", "cpu", "trajectory_length") == "'cuda' runs on cuda tensors only, not cpu"


def test_unknown_names_and_ops():
    with pytest.raises(ValueError, match=r"unknown exact-counting backend 'torch'; expected 'auto' or one of "
                                         r"\['cpu', 'cuda', 'numba'\]"):
        backends.get("torch", "exact")
    with pytest.raises(ValueError, match="unknown op 'nope'"):
        backends.get("cpu", "nope")


def test_front_ends_go_through_the_registry():
    net = fx.random_mlp(2, 4, 3, seed=0)
    traj = fx.line(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="unknown exact-counting backend 'torch'"):
        fx.measure(net, traj, exact=True, backend="torch")
    with pytest.raises(ValueError, match="unknown dichotomies backend 'torch'"):
        fx.dichotomies(net, 1, np.ones((2, 3)), 16, labels="argmax", backend="torch")
    with pytest.raises(ValueError, match="unknown region-map backend 'torch'"):
        fx.region_map(net, np.zeros(3), np.eye(3)[0], np.eye(3)[1], 1.0, 8, backend="torch")
    with pytest.raises(ValueError, match="unknown trajectory-length backend 'fortran'"):
        fx.trajectory_length(torch.ones(3, 2), backend="fortran")


def test_backend_names_are_strings_and_ops_are_known():
    with pytest.raises(TypeError, match="named by a string"):
        fx.measure(fx.random_mlp(2, 4, 3), fx.line(np.zeros(3), np.ones(3)), 100, backend=["cpu"])
    for call in (fx.available_backends, fx.missing_backends):
        with pytest.raises(ValueError, match="unknown op 'bogus'"):
            call("bogus")
