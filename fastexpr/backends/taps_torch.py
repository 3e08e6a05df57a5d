"""taps torch backend: the per-tap reduction in plain PyTorch (any device): the baseline.

Written the way a careful user would: region codes by comparison, transitions from differences of
consecutive codes, the tap's pattern hash as a wrapping int64 sum of per-feature keys, and
lengths as norms of consecutive differences in float64 (scaled where a square could under- or
overflow). Several (samples x features) intermediates per tap: what the fused kernels avoid.
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from ..plan import SAFE_SUM_HI, SAFE_SUM_LO, pattern_keys
from .torch_ref import scaled_norms

NAME = "torch"
STEP, CLAMP, ARGMAX = 0, 1, 2  # fastexpr.taps


def probe() -> None:
    """Raise ImportError if PyTorch cannot be imported."""
    import torch  # noqa: F401


@functools.lru_cache(maxsize=64)
def _keys(layer: int, width: int, device: str):
    kp, km = pattern_keys(layer, width)
    return (torch.from_numpy(kp.view(np.int64)).to(device), torch.from_numpy(km.view(np.int64)).to(device))


def codes(z: torch.Tensor, kind: int, lo: float, hi: float) -> torch.Tensor:
    """Region codes (int8) of pre-activations ``z`` for a tap of ``kind`` (fastexpr.taps.STEP, CLAMP, ARGMAX)."""
    if kind == STEP:
        return (z > lo).to(torch.int8)
    if kind == CLAMP:
        return (z > hi).to(torch.int8) - (z < lo).to(torch.int8)
    return z.to(torch.int8)


def all_finite(z: torch.Tensor) -> bool:
    """Whether every element of ``z`` is finite: one min/max reduction (NaN propagates through both),
    about 10x faster than ``torch.isfinite(z).all()`` on the CPU, which writes a mask first."""
    if z.numel() == 0:
        return True
    lowest, highest = torch.aminmax(z)
    return bool(torch.isfinite(lowest) & torch.isfinite(highest))


def reduce(z, h, kind: int, lo: float, hi: float, layer: int):
    """``(transitions, pattern_changes, changed, hashes, length, nonfinite)`` of one tap (see fastexpr.taps)."""
    nonfinite = not all_finite(z)
    region = codes(z, kind, lo, hi)
    kp, km = _keys(layer, z.shape[1], str(z.device))
    zero = torch.zeros((), dtype=torch.int64, device=z.device)
    # code c > 0 adds c times the +1 key (c > 1: ARGMAX), -1 the -1 key; int64 products and sums wrap
    hashes = (torch.where(region > 0, kp * region, zero) + torch.where(region < 0, km, zero)).sum(1)
    if kind == ARGMAX:  # any change of code is one transition
        step = (region[1:] != region[:-1]).sum(1)
    else:
        step = (region[1:].to(torch.int16) - region[:-1].to(torch.int16)).abs().sum(1)
    changed = step > 0
    d = h[1:].to(torch.float64) - h[:-1].to(torch.float64)
    q = (d * d).sum(1)
    norms = q.sqrt()
    unsafe = ~((q >= SAFE_SUM_LO) & (q <= SAFE_SUM_HI))  # q = 0 included: float64 squares may all have underflowed
    if bool(unsafe.any()):
        norms[unsafe] = scaled_norms(d[unsafe])
    return (int(step.sum()), int(changed.sum()), changed.to(torch.uint8).cpu().numpy(),
            hashes.cpu().numpy().view(np.uint64), float(norms.sum()), nonfinite)
