"""Full float32 on CUDA: TF32 off for matmuls and cuDNN convolutions inside a block.

PyTorch lets cuDNN convolutions (by default) and matmuls (where the user asked) round float32
operands to TF32's 10-bit mantissa. fastexpr compares pre-activations with thresholds and sums
lengths, so the forward passes it makes run in full float32, as its own kernels compute.

Switched with PyTorch's documented pair of settings, ``torch.set_float32_matmul_precision`` and
``torch.backends.cudnn.allow_tf32``, which recent PyTorch keeps consistent with its per-operator
``fp32_precision`` settings, so code inside the block may read either (``torch.backends.cudnn.flags()``
does); where the user's own mix of the two APIs makes a getter raise, the per-operator settings
are saved and put back instead. The settings are process-wide: the first block to enter (of any
thread) saves them and the last to leave restores them.
"""
from __future__ import annotations

import contextlib
import functools
import threading

_lock = threading.Lock()
_open = 0       # blocks inside full_fp32 now, over all threads
_saved = None   # [(setter, value)] as the first of them found the settings


def _readable(owner, names) -> list:
    """[(setter, value)] of the first of ``names`` that ``owner`` has and that reads without raising."""
    for name in names:
        try:
            return [(functools.partial(setattr, owner, name), getattr(owner, name))]
        except (AttributeError, RuntimeError):
            continue
    return []


def _save() -> list:
    """How to put back every TF32 setting as it is now: [(setter, value)]."""
    import torch

    cudnn = torch.backends.cudnn
    try:
        saved = [(torch.set_float32_matmul_precision, torch.get_float32_matmul_precision())]
    except RuntimeError:  # PyTorch refuses to read it after a mix of its two APIs
        saved = _readable(torch.backends.cuda.matmul, ("allow_tf32", "fp32_precision"))
    try:
        saved.append((functools.partial(setattr, cudnn, "allow_tf32"), cudnn.allow_tf32))
    except RuntimeError:
        for owner in (cudnn, getattr(cudnn, "conv", None), getattr(cudnn, "rnn", None)):
            saved += _readable(owner, ("fp32_precision",))
    return saved


def _restore(saved: list) -> None:
    for setter, value in saved:
        setter(value)


@contextlib.contextmanager
def full_fp32(device):
    """TF32 off inside the block when ``device`` is a CUDA device (elsewhere nothing changes)."""
    import torch

    global _open, _saved
    if torch.device(device).type != "cuda":
        yield
        return
    with _lock:
        if _open == 0:
            saved = _save()
            try:
                torch.set_float32_matmul_precision("highest")
                torch.backends.cudnn.allow_tf32 = False
            except BaseException:
                _restore(saved)
                raise
            _saved = saved
        _open += 1
    try:
        yield
    finally:
        with _lock:
            _open -= 1
            if _open == 0:
                _restore(_saved)
