"""The taps engine's cuda backend (csrc/cuda/taps.cu, fastexpr/backends/taps_cuda.py): its host
logic without a GPU; on a GPU, every output of the kernel against the cpu kernel (exact counts and
hashes, lengths to float64 rounding) and whole measurements against the float64 reference."""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import torch

import fastexpr as fx
from fastexpr import backends, taps
from fastexpr.backends import cuda_compile, taps_cuda

from .test_taps import ResNetish, Zoo, _init, check, reference

STEP, CLAMP, ARGMAX = 0, 1, 2


# ----------------------------------------------------------------------------------------------
# Host logic (no GPU needed)

def test_launch_geometry():
    assert taps_cuda.launch_geometry(1, 1) == ("warp", 1)
    assert taps_cuda.launch_geometry(9, taps_cuda.WARP_ROW_FEATURES) == ("warp", 2)  # 8 rows a block
    assert taps_cuda.launch_geometry(9, taps_cuda.WARP_ROW_FEATURES + 1) == ("block", 9)
    assert taps_cuda.launch_geometry(10**9, 10**4) == ("block", taps_cuda.MAX_BLOCKS)


def test_every_kernel_the_host_names_exists():
    text = cuda_compile.source("taps.cu")
    defined = set(re.findall(r"^TP_KERNEL\((\w+), ", text, re.MULTILINE))
    named = {f"taps_reduce_{v}_{s}" for v in ("warp", "block") for s in ("f32", "f64")}
    assert defined == named
    assert re.search(rf"#define TP_THREADS {taps_cuda.THREADS}\b", text)
    for kind in ("STEP", "CLAMP", "ARGMAX"):
        assert re.search(rf"#define TP_{kind} {getattr(taps, kind)}\b", text)


def test_auto_prefers_the_cuda_kernel_for_cuda_models():
    assert backends.auto_order("taps", "cuda:1") == ("cuda", "torch")
    assert backends.REGISTRY["taps"]["cuda"].module == "fastexpr.backends.taps_cuda"


# ----------------------------------------------------------------------------------------------
# On a GPU

def _gpu():
    try:
        taps_cuda.probe()
    except Exception as exc:  # noqa: BLE001 - any reason the backend is unavailable skips
        pytest.skip(f"the cuda taps backend is unavailable: {type(exc).__name__}: {exc}")


def _cpu_reduce():
    from fastexpr.backends import taps_cpu

    try:
        taps_cpu.probe()
    except ImportError as exc:
        pytest.skip(str(exc))
    return taps_cpu.reduce


def _activation(z, kind, lo, hi):
    if kind == ARGMAX:
        return z * 0.5
    return torch.where(z > lo, z, torch.zeros_like(z)) if kind == STEP else z.clamp(lo, hi)


def _assert_same(got, want, rtol):
    assert got[0] == want[0] and got[1] == want[1]  # transitions, pattern changes
    np.testing.assert_array_equal(got[2], want[2])  # changed flags
    np.testing.assert_array_equal(got[3], want[3])  # per-sample hashes
    np.testing.assert_allclose(got[4], want[4], rtol=rtol)  # length
    assert got[5] == want[5]  # non-finite


TAP_CASES = [
    pytest.mark.parametrize("dtype", [torch.float32, torch.float64]),
    pytest.mark.parametrize("shape", [(1, 1), (2, 1), (3, 31), (17, 33), (100, 2048), (9, 2049), (41, 5000),
                                      (600_000, 2)], ids=lambda s: f"{s[0]}x{s[1]}"),
    pytest.mark.parametrize("kind, lo, hi", [(STEP, 0.0, 0.0), (STEP, 0.25, 0.25), (CLAMP, -1.0, 1.0),
                                             (CLAMP, 0.0, 6.0), (CLAMP, -np.inf, np.inf), (ARGMAX, 0.0, 0.0)],
                            ids=["relu", "threshold", "hardtanh", "relu6", "smooth", "argmax"]),
]


def _tap_cases(test):
    for mark in reversed(TAP_CASES):
        test = mark(test)
    return test


def _tap_inputs(dtype, shape, kind, lo, hi):
    """Random pre-activations z with ties on the boundary (and -inf for the smooth case) and their h."""
    gen = torch.Generator().manual_seed(hash((shape, kind, lo)) % 2**31)
    z = torch.randn(shape, generator=gen, dtype=torch.float64).mul_(2).to(dtype)
    z[::3, ::2] = lo  # ties on the boundary stay in the lower / inner region
    if kind == ARGMAX:  # window positions 0 .. 8, repeated along the rows
        z = torch.randint(0, 9, shape, generator=gen).to(dtype)
        z[1::2] = z[:-1:2] if shape[0] > 1 else z[1::2]
    return z, _activation(z, kind, lo, hi)


@_tap_cases
def test_torch_backend_equals_the_cpu_kernel(dtype, shape, kind, lo, hi):
    """The pure-PyTorch taps backend (the GPU's fallback) against the cpu kernel, infinities included."""
    from fastexpr.backends import taps_torch

    z, h = _tap_inputs(dtype, shape, kind, lo, hi)
    want = _cpu_reduce()(z, h, kind, lo, hi, 3)
    _assert_same(taps_torch.reduce(z, h, kind, lo, hi, 3), want, rtol=1e-12 if dtype == torch.float64 else 1e-6)


@pytest.mark.gpu
@_tap_cases
def test_kernel_equals_the_cpu_kernel(dtype, shape, kind, lo, hi):
    _gpu()
    z, h = _tap_inputs(dtype, shape, kind, lo, hi)
    want = _cpu_reduce()(z, h, kind, lo, hi, 3)
    got = taps_cuda.reduce(z.cuda(), h.cuda(), kind, lo, hi, 3)
    _assert_same(got, want, rtol=1e-12 if dtype == torch.float64 else 1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("scale", [1e-200, 1e-160, 1e160, 1e200])
def test_lengths_whose_squares_under_or_overflow(scale):
    _gpu()
    z = torch.randn(50, 300, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scale
    want = _cpu_reduce()(z, z, STEP, 0.0, 0.0, 1)
    got = taps_cuda.reduce(z.cuda(), z.cuda(), STEP, 0.0, 0.0, 1)
    _assert_same(got, want, rtol=1e-12)
    assert np.isfinite(got[4]) and got[4] > 0


@pytest.mark.gpu
def test_non_finite_pre_activations_are_flagged():
    _gpu()
    z = torch.zeros(7, 40, dtype=torch.float32)
    assert not taps_cuda.reduce(z.cuda(), z.cuda(), STEP, 0.0, 0.0, 1)[5]
    for bad in (float("nan"), float("inf"), -float("inf")):
        z[4, 39] = bad
        assert taps_cuda.reduce(z.cuda(), z.cuda(), STEP, 0.0, 0.0, 1)[5]


@pytest.mark.gpu
def test_runs_on_torchs_current_stream():
    _gpu()
    z = torch.randn(2000, 700, device="cuda", dtype=torch.float64)
    h = z.relu()
    want = taps_cuda.reduce(z, h, STEP, 0.0, 0.0, 2)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        z2 = z * 1.0  # produced on the side stream: the kernel must run after it
        got = taps_cuda.reduce(z2, z2.relu(), STEP, 0.0, 0.0, 2)
    _assert_same(got, want, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("model", ["resnetish", "zoo"])
@pytest.mark.parametrize("chunk", [None, 7])
def test_measure_on_the_gpu_matches_the_reference(model, chunk):
    _gpu()
    net = _init(ResNetish() if model == "resnetish" else Zoo(), 0).double()
    shape = (2, 8, 8) if model == "resnetish" else (1, 6, 6)
    x0, x1 = np.random.default_rng(3).standard_normal((2, *shape))
    ref = reference(net, x0, x1, 301)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", fx.SaturationWarning)
        result = taps.measure_model(net.cuda(), [fx.line(x0, x1)], 301, chunk=chunk)[0]
    assert result.backend == "taps-cuda"
    check(result, ref)
