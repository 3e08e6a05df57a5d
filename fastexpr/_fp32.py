"""Full float32 on CUDA: TF32 off for matmuls and cuDNN convolutions inside a block.

PyTorch lets cuDNN convolutions (by default) and matmuls (where the user asked) round float32
operands to TF32's 10-bit mantissa. fastexpr compares pre-activations with thresholds and sums
lengths, so the forward passes it makes run in full float32, as its own kernels compute; the
previous settings are restored after the block. Not thread-safe: the switches are process-wide.
"""
from __future__ import annotations

import contextlib


def _switches():
    """(owner, attribute, full-float32 value) of the two TF32 switches, in this torch's spelling."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    conv = getattr(cudnn, "conv", None)
    return [(matmul, "fp32_precision", "ieee") if hasattr(matmul, "fp32_precision") else (matmul, "allow_tf32", False),
            (conv, "fp32_precision", "ieee") if hasattr(conv, "fp32_precision") else (cudnn, "allow_tf32", False)]


@contextlib.contextmanager
def full_fp32(device):
    """TF32 off inside the block when ``device`` is a CUDA device (elsewhere nothing changes)."""
    import torch

    if torch.device(device).type != "cuda":
        yield
        return
    switches = _switches()
    saved = [getattr(owner, name) for owner, name, _ in switches]
    for owner, name, value in switches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for (owner, name, _), value in zip(switches, saved):
            setattr(owner, name, value)
