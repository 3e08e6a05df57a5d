"""fastexpr._fp32.full_fp32: TF32 off for CUDA matmuls and cuDNN convolutions inside the block,
the previous settings back after it (also after an exception), nothing changed for the CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fastexpr import _fp32
from fastexpr._fp32 import full_fp32


def _state():
    return [getattr(owner, name) for owner, name, _ in _fp32._switches()]


def _full():
    return [value for _, _, value in _fp32._switches()]


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_devices_run_in_full_float32_and_restore(device):
    before = _state()
    assert before != _full()  # PyTorch's defaults let cuDNN convolutions use TF32
    with full_fp32(device):
        assert _state() == _full()
    assert _state() == before
    with pytest.raises(KeyError), full_fp32(device):
        raise KeyError("inside")
    assert _state() == before


def test_overlapping_blocks_in_threads_restore_the_first_settings():
    """Thread A enters, B enters, A leaves, B leaves: the settings A found come back, not B's."""
    import threading

    before = _state()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside_b_after_a_left = []

    def a():
        with full_fp32("cuda"):
            a_in.set()
            b_in.wait()
        a_out.set()

    def b():
        a_in.wait()
        with full_fp32("cuda"):
            b_in.set()
            a_out.wait()
            inside_b_after_a_left.append(_state())

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert inside_b_after_a_left == [_full()]  # A's exit did not restore while B was inside
    assert _state() == before


def test_the_cpu_is_left_alone():
    before = _state()
    with full_fp32("cpu"):
        assert _state() == before


def test_the_taps_forward_pass_runs_in_full_float32(monkeypatch):
    """The taps engine's forward passes go through full_fp32 with the input's device."""
    import fastexpr as fx

    seen = []
    real = _fp32.full_fp32

    def spy(device):
        seen.append(torch.device(device).type)
        return real(device)

    monkeypatch.setattr(_fp32, "full_fp32", spy)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(12, 2))
    result = fx.measure(model, fx.line(np.zeros((1, 4, 4)), np.ones((1, 4, 4))), 50, progress=False)
    assert len(result.transitions) == 1 and seen and set(seen) == {"cpu"}
