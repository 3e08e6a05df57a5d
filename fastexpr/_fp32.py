"""Full float32 on CUDA: TF32 off for matmuls and cuDNN convolutions inside a block.

PyTorch lets cuDNN convolutions (by default) and matmuls (where the user asked) round float32
operands to TF32's 10-bit mantissa. fastexpr compares pre-activations with thresholds and sums
lengths, so the forward passes it makes run in full float32, as its own kernels compute. The
switches are process-wide: the first block to enter (of any thread) saves them and the last to
leave restores them, so overlapping blocks in several threads leave the user's settings as
they found them.
"""
from __future__ import annotations

import contextlib
import threading

_lock = threading.Lock()
_open = 0       # blocks inside full_fp32 now, over all threads
_saved = None   # the settings the first of them found


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

    global _open, _saved
    if torch.device(device).type != "cuda":
        yield
        return
    switches = _switches()
    with _lock:
        if _open == 0:
            _saved = [getattr(owner, name) for owner, name, _ in switches]
            for owner, name, value in switches:
                setattr(owner, name, value)
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0:
                for (owner, name, _), value in zip(switches, _saved):
                    setattr(owner, name, value)
