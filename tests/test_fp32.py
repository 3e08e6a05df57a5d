"""fastexpr._fp32.full_fp32: TF32 off for CUDA matmuls and cuDNN convolutions inside the block
(readable through PyTorch's legacy getters there), the previous settings back after it (also
after an exception, also when blocks overlap in threads), nothing changed for the CPU."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from fastexpr import _fp32
from fastexpr._fp32 import full_fp32


def _state():
    return [value for _, value in _fp32._save()]


def _tf32_off() -> bool:
    """What code inside the block sees (torch.backends.cudnn.flags() reads these getters)."""
    return torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False


@pytest.fixture(autouse=True)
def _torch_defaults():
    """Each test starts from, and leaves, the TF32 settings it found."""
    before = _fp32._save()
    yield
    _fp32._restore(before)


@pytest.mark.parametrize("device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_devices_run_in_full_float32_and_restore(device):
    before = _state()
    assert torch.backends.cudnn.allow_tf32  # PyTorch's default lets cuDNN convolutions use TF32
    with full_fp32(device):
        assert _tf32_off()
        with torch.backends.cudnn.flags(enabled=False):  # a common idiom inside a model's forward
            pass
    assert _state() == before
    with pytest.raises(KeyError), full_fp32(device):
        raise KeyError("inside")
    assert _state() == before


def test_matmul_precision_set_by_the_user_is_restored():
    torch.set_float32_matmul_precision("high")  # TF32 matmuls, the usual speed setting
    before = _state()
    with full_fp32("cuda"):
        assert _tf32_off()
    assert _state() == before
    assert torch.get_float32_matmul_precision() == "high"


def test_a_mix_of_the_two_apis_is_put_back():
    """After the user mixed PyTorch's legacy and per-operator settings (its getters then raise),
    the block still turns TF32 off and puts the per-operator settings back."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    owners = (matmul, getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None))
    if not all(hasattr(owner, "fp32_precision") for owner in owners):
        pytest.skip("this torch has no per-operator fp32_precision settings")
    torch.set_float32_matmul_precision("high")
    matmul.allow_tf32 = False   # the legacy setter after the new API
    cudnn.conv.fp32_precision = "ieee"  # conv and rnn now differ: cudnn.allow_tf32 raises
    before = [owner.fp32_precision for owner in owners]
    with full_fp32("cuda"):
        assert _tf32_off()
    assert [owner.fp32_precision for owner in owners] == before


def test_overlapping_blocks_in_threads_restore_the_first_settings():
    """Thread A enters, B enters, A leaves, B leaves: the settings A found come back, not B's."""
    before = _state()
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    inside_b_after_a_left = []

    def a():
        with full_fp32("cuda"):
            a_in.set()
            b_in.wait(30)
        a_out.set()

    def b():
        a_in.wait(30)
        with full_fp32("cuda"):
            b_in.set()
            a_out.wait(30)
            inside_b_after_a_left.append(_tf32_off())

    threads = [threading.Thread(target=a, daemon=True), threading.Thread(target=b, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert inside_b_after_a_left == [True]  # A's exit did not restore while B was inside
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
