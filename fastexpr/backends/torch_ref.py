"""torch backend: the measures in plain PyTorch, on CPU or CUDA tensors.

Written the way a careful user would: samples in chunks of at most ``MAX_CHUNK`` samples and
``CHUNK_BYTES`` of intermediates (neighbouring chunks share one sample), the first layer from
the projected basis in float64, then one ``addmm`` per hidden layer in the compute dtype,
region codes by comparison, transitions and pattern changes from differences of consecutive
codes, the pattern hash as a wrapping int64 sum of per-neuron keys, and lengths as norms of
consecutive differences taken and summed in float64; one min/max reduction per layer watches
for inf or NaN pre-activations.
It is both a backend and the baseline the benchmarks compare against.

On CUDA, float32 matmuls run with TF32 disabled (full fp32, like the other backends:
fastexpr._fp32). On the CPU, ``measure``'s ``threads`` (1 in a forked child) overrides torch's
thread count for the call.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from .. import _threads
from .._fp32 import full_fp32
from ..plan import (ARC, HARDTANH, LINE, POLYLINE, RELU, SAFE_NORM_LO, Partials, check_forward_pass, distinct_sorted,
                    pattern_keys)

NAME = "torch"

#: Samples per chunk at most (neighbouring chunks share one sample).
MAX_CHUNK = 1 << 14
#: Bytes of intermediates per chunk at most: per sample and neuron of the widest layer about
#: 4 values in the compute dtype and 2 int64 hash terms (``BYTES_PER_VALUE``).
CHUNK_BYTES = 256 << 20
BYTES_PER_VALUE = 48

_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def probe() -> None:
    """Raise ImportError if PyTorch cannot be imported."""
    import torch  # noqa: F401


class _Tensors:
    """The plan's arrays as tensors on the plan's device, plus the pattern-hash keys."""

    def __init__(self, plan):
        if np.dtype(plan.dtype) not in _DTYPES:
            raise ValueError(f"plan dtype must be float32 or float64, got {plan.dtype}")
        self.device = torch.device(plan.device)
        self.dtype = _DTYPES[np.dtype(plan.dtype)]
        f64 = dict(dtype=torch.float64, device=self.device)
        self.proj = torch.tensor(plan.proj, **f64)
        self.bias1 = torch.tensor(plan.bias1, **f64)
        self.coords = torch.tensor(plan.coords, **f64)
        self.vertices = torch.tensor(plan.vertices, **f64)
        self.seg_len = torch.tensor(plan.seg_len, **f64)
        self.weights = [torch.tensor(w, dtype=self.dtype, device=self.device) for w in plan.weights]
        self.biases = [torch.tensor(b, dtype=self.dtype, device=self.device) for b in plan.biases]
        keys = [pattern_keys(d + 1, n) for d, n in enumerate(plan.widths[1:])]
        self.keys = [tuple(torch.tensor(k.view(np.int64), device=self.device) for k in pair) for pair in keys]


def _coefficients(plan, i, t):
    """Coefficients at int64 sample indices ``i`` (float64 ``t = i / (N - 1)``): (c0, c1, None), or
    (1 - f, f, segment) for POLYLINE."""
    if plan.kind == POLYLINE:  # exact integer arithmetic, as fx::polyline_segment in semantics.h
        m, a = plan.n_points - 1, plan.proj.shape[0] - 1
        seg = (i.double() * a / m).long()  # within 1 of floor(i a / m)
        rem = i * a - seg * m  # exact: int64 arithmetic wraps back into (-m, 2m)
        low, high = rem < 0, rem >= m
        seg, rem = seg - low.long() + high.long(), rem + m * low.long() - m * high.long()
        last = seg > a - 1  # the final sample: the end of the last segment
        seg = torch.where(last, a - 1, seg)
        f = torch.where(last, 1.0, rem.double() / m)
        return 1.0 - f, f, seg
    if plan.kind == LINE:  # over x0 and x1 - x0 (plan.py)
        return torch.ones_like(t), t, None
    angle = (0.5 * np.pi if plan.kind == ARC else 2.0 * np.pi) * t
    return torch.cos(angle), torch.sin(angle), None


def scaled_rows(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(``d / scale``, ``scale``): each float64 row divided by its largest |entry| (1 for a zero row or
    one holding inf or NaN), so that no square of it under- or overflows (fx::ScaledNorm's idea).
    The scale is a constant to autograd: norms and unit vectors are homogeneous in the row."""
    big = d.detach().abs().amax(dim=1)
    scale = torch.where(torch.isfinite(big) & (big > 0), big, 1.0)
    return d / scale[:, None], scale


def scaled_norms(d: torch.Tensor) -> torch.Tensor:
    """Row norms of float64 ``d`` with no square under- or overflowing; as fx::ScaledNorm, a row
    with an infinite entry has norm inf, one with a NaN NaN."""
    rows, scale = scaled_rows(d)
    return scale * torch.linalg.vector_norm(rows, dim=1)


def _step_norms(h):
    """Norms of the differences of consecutive rows of ``h``, in float64, with no square under- or
    overflowing: float32 differences cannot in float64; float64 rows that might are redone scaled."""
    d = h.diff(dim=0)
    norms = torch.linalg.vector_norm(d, dim=1, dtype=torch.float64)
    if h.dtype == torch.float64:
        redo = (norms < SAFE_NORM_LO) | torch.isinf(norms)
        if redo.any():
            norms[redo] = scaled_norms(d[redo])
    return norms


def _input_length(plan, t, c0, c1, seg, tt: _Tensors):
    """Length of the input trajectory over the chunk's pairs, float64 (formulas in plan.py)."""
    if seg is None:
        if plan.kind == LINE:
            return t.diff().abs().sum() * plan.line_norm * plan.scale
        w = 0.5 * np.pi if plan.kind == ARC else 2.0 * np.pi
        angle = w * t
        mid = 0.5 * (angle[1:] + angle[:-1])
        a = torch.sin(mid)[:, None] * tt.coords[:, 0] - torch.cos(mid)[:, None] * tt.coords[:, 1]
        return (2.0 * torch.sin(0.5 * angle.diff()).abs() * torch.hypot(a[:, 0], a[:, 1])).sum() * plan.scale
    same = seg[1:] == seg[:-1]
    along = (c1.diff().abs() * tt.seg_len[seg[:-1]])[same].sum()
    k = (~same).nonzero().squeeze(1)  # pairs that cross a vertex: direct norm from the vertices
    x0 = c0[k, None] * tt.vertices[seg[k]] + c1[k, None] * tt.vertices[seg[k] + 1]
    x1 = c0[k + 1, None] * tt.vertices[seg[k + 1]] + c1[k + 1, None] * tt.vertices[seg[k + 1] + 1]
    return (along + scaled_norms(x1 - x0).sum()) * plan.scale


def _first_layer(c0, c1, seg, tt: _Tensors):
    """Layer-1 pre-activations (n, n_1): c0 proj[.] + c1 proj[.] + bias1 in float64, then cast."""
    p0, p1 = (tt.proj[0], tt.proj[1]) if seg is None else (tt.proj[seg], tt.proj[seg + 1])
    return (c0[:, None] * p0 + c1[:, None] * p1 + tt.bias1).to(tt.dtype)


def _codes_and_activation(act, z):
    """Region codes (int8, None for identity) and post-activations of pre-activations ``z``."""
    if act == RELU:
        return (z > 0).to(torch.int8), torch.relu(z)
    if act == HARDTANH:
        return (z > 1).to(torch.int8) - (z < -1).to(torch.int8), torch.clamp(z, -1.0, 1.0)
    return None, z


def chunk_samples(plan) -> int:
    """Samples per chunk: MAX_CHUNK, or fewer (at least 2) so that a chunk stays within CHUNK_BYTES."""
    return int(min(MAX_CHUNK, max(2, CHUNK_BYTES // (BYTES_PER_VALUE * max(plan.widths[1:])))))


@contextlib.contextmanager
def cpu_threads(device: torch.device):
    """torch's intra-op threads set to ``measure``'s ``threads`` (1 in a forked child) inside the
    block, if given (CPU only; restored after)."""
    wanted = _threads.requested()
    if device.type != "cpu" or wanted is None:
        yield
        return
    saved = torch.get_num_threads()
    if wanted != saved:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != saved:
            torch.set_num_threads(saved)


def _chunk(plan, tt: _Tensors, a: int, b: int, emit_first: bool, totals: dict):
    """Samples a .. b-1: add counts and lengths into ``totals``; return the emitted run-start hashes."""
    i = torch.arange(a, b, dtype=torch.int64, device=tt.device)
    t = i.double() / (plan.n_points - 1)
    c0, c1, seg = _coefficients(plan, i, t)
    totals["lengths"][0] += _input_length(plan, t, c0, c1, seg, tt)
    hashes = torch.zeros(b - a, dtype=torch.int64, device=tt.device)
    net_changed = torch.zeros(b - a - 1, dtype=torch.bool, device=tt.device)
    h = None
    for d, act in enumerate(plan.activations):
        z = _first_layer(c0, c1, seg, tt) if d == 0 else torch.addmm(tt.biases[d - 1], h, tt.weights[d - 1].T)
        lowest, highest = torch.aminmax(z)  # NaN if any is NaN
        totals["nonfinite"][d] |= ~(torch.isfinite(lowest) & torch.isfinite(highest))
        codes, h = _codes_and_activation(act, z)
        if codes is not None:
            step = codes.diff(dim=0)
            totals["transitions"][d] += step.abs().sum()
            changed = step.any(dim=1)
            totals["pattern_changes"][d] += changed.sum()
            net_changed |= changed
            key_plus, key_minus = tt.keys[d]
            hashes += torch.where(codes > 0, key_plus, torch.where(codes < 0, key_minus, 0)).sum(dim=1)
        totals["lengths"][d + 1] += _step_norms(h).sum()
    totals["network_changes"] += net_changed.sum()
    emitted = hashes[1:][net_changed]
    return torch.cat([hashes[:1], emitted]) if emit_first else emitted


def run(plan, start: int, stop: int) -> Partials:
    """Measure samples ``start .. stop-1`` of ``plan`` (see fastexpr.plan), chunk by chunk."""
    plan.check_range(start, stop)
    tt = _Tensors(plan)
    depth = plan.depth
    zeros = dict(dtype=torch.int64, device=tt.device)
    totals = dict(transitions=torch.zeros(depth, **zeros), pattern_changes=torch.zeros(depth, **zeros),
                  network_changes=torch.zeros((), **zeros),
                  lengths=torch.zeros(depth + 1, dtype=torch.float64, device=tt.device),
                  nonfinite=torch.zeros(depth, dtype=torch.bool, device=tt.device))
    hashes = []
    chunk = chunk_samples(plan)
    with torch.no_grad(), full_fp32(tt.device), cpu_threads(tt.device):
        a = start
        while True:
            b = min(a + chunk, stop)
            hashes.append(_chunk(plan, tt, a, b, a == start, totals))
            if b == stop:
                break
            a = b - 1
    nonfinite = totals["nonfinite"].cpu().numpy()
    check_forward_pass(plan, int(np.argmax(nonfinite)) + 1 if nonfinite.any() else 0)
    run_hashes = torch.cat(hashes).cpu().numpy().view(np.uint64)
    return Partials(totals["transitions"].cpu().numpy(), totals["pattern_changes"].cpu().numpy(),
                    int(totals["network_changes"]), totals["lengths"].cpu().numpy(), distinct_sorted(run_hashes))
