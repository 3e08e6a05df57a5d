"""taps cuda backend: the fused per-tap reduction of ``csrc/cuda/taps.cu`` (NVRTC via CuPy).

One launch per tap on torch's current stream, reading the activation tensor torch produced on
the GPU in place (raw pointers, no copy): region codes, comparison with the previous sample,
the tap's pattern hash per sample and the float64 squared segment differences. One copy of
4 x 8 bytes per sample comes back to the host, where the counts and the length are summed.
Pattern keys are the torch backend's tables (uploaded once per tap and device).
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from . import cuda_compile
from ..plan import SAFE_SUM_HI, SAFE_SUM_LO
from .taps_torch import _keys
from .torch_ref import scaled_norms

NAME = "cuda"
#: Block size of csrc/cuda/taps.cu (TP_THREADS).
THREADS = 256
#: Taps with at most this many features per sample give one warp a row; wider ones a whole block.
WARP_ROW_FEATURES = 2048
#: Most blocks per launch; the kernel strides over the rows beyond.
MAX_BLOCKS = 1 << 16
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def probe() -> None:
    """Raise when torch has no CUDA device, the cuda backend cannot compile and run a kernel, or
    this kernel disagrees with the torch backend on a small tap (both variants, both dtypes)."""
    from . import cuda, taps_torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    cuda.probe_runtime()
    _self_check(taps_torch.reduce)


@functools.lru_cache(maxsize=None)
def _self_check(baseline) -> None:
    """Compare with ``baseline`` on taps of 3 x 40 and 3 x (WARP_ROW_FEATURES + 1) features, once per process."""
    gen = torch.Generator().manual_seed(0)
    for f in (40, WARP_ROW_FEATURES + 1):
        for dtype in _SUFFIX:
            z = torch.randn(3, f, generator=gen, dtype=torch.float64).to(dtype=dtype, device="cuda")
            got, want = reduce(z, z.relu(), 0, 0.0, 0.0, 1), baseline(z, z.relu(), 0, 0.0, 0.0, 1)
            same = got[:2] == want[:2] and np.array_equal(got[2], want[2]) and np.array_equal(got[3], want[3])
            if not same or not np.isclose(got[4], want[4], rtol=1e-5):
                raise RuntimeError(f"the cuda taps kernel disagrees with the torch backend on a 3 x {f} {dtype} tap")


def launch_geometry(samples: int, features: int) -> tuple[str, int]:
    """The kernel variant ("warp": one warp per row, "block": a block per row) and the grid size."""
    variant = "warp" if features <= WARP_ROW_FEATURES else "block"
    rows_per_block = THREADS // 32 if variant == "warp" else 1
    return variant, max(1, min(-(-samples // rows_per_block), MAX_BLOCKS))


def reduce(z, h, kind: int, lo: float, hi: float, layer: int):
    """``(transitions, pattern_changes, changed, hashes, length, nonfinite)`` of one tap (see fastexpr.taps);
    ``z`` and ``h`` are C-contiguous (samples, features) CUDA tensors of one float dtype."""
    if z.dtype not in _SUFFIX or h.dtype != z.dtype:
        raise TypeError(f"the cuda taps kernel takes float32 or float64 activations, got {z.dtype} and {h.dtype}")
    b, f = z.shape
    kp, km = _keys(layer, f, str(z.device))
    out = torch.empty(4 * b, dtype=torch.int64, device=z.device)
    variant, blocks = launch_geometry(b, f)
    args = (z, h, np.int64(b), np.int64(f), np.int32(kind), np.float64(lo), np.float64(hi), kp, km, out)
    cuda_compile.launch("taps.cu", f"taps_reduce_{variant}_{_SUFFIX[z.dtype]}", z, (blocks,), (THREADS,), args)
    step, hashes, q, bad = out.cpu().numpy().reshape(4, b)  # waits for the kernel on torch's stream
    step, q = step[1:], q[1:].view(np.float64)
    changed = step > 0
    norms = np.sqrt(q)
    unsafe = ~((q >= SAFE_SUM_LO) & (q <= SAFE_SUM_HI))  # q = 0 included: float64 squares may all have underflowed
    if unsafe.any():
        rows = torch.from_numpy(np.flatnonzero(unsafe)).to(z.device)
        norms[unsafe] = scaled_norms(h[rows + 1].double() - h[rows].double()).cpu().numpy()
    return (int(step.sum()), int(changed.sum()), changed.astype(np.uint8), hashes.view(np.uint64),
            float(norms.sum()), bool(bad.any()))
