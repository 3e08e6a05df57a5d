"""Differentiable trajectory length: :func:`trajectory_length`.

The length of the piecewise-linear path through the rows of ``h`` (shape ``(B, ...)``, each
sample flattened): ``sum_i ||h_{i+1} - h_i||_2``, plus ``||h_0 - h_{B-1}||`` when ``closed``.
Forward and backward are fused: the forward reads ``h`` once and keeps only the B segment
norms; the backward reads ``h`` once more and writes the gradient. A zero-length segment
gives a zero subgradient. Implementations, chosen per call (``backend="auto"`` takes the
first usable one for the tensor's device):

* ``"cpu"``: C++/OpenMP in the extension ``fastexpr._C`` (CPU tensors);
* ``"cuda"``: ``csrc/cuda/traj_length.cu`` compiled at run time through CuPy (once per device),
  launched on torch's current stream with the tensors' raw pointers (CUDA tensors);
* ``"numba"``: the same loops in numba (CPU tensors);
* ``"torch"``: plain PyTorch (any device).

Every implementation sums the squares in float64 (the C++ op: float32 partial sums over
blocks of 512 columns, then float64), so float32 activations of any magnitude neither
overflow nor underflow.

The environment variable ``FASTEXPR_TRAJ_BACKEND`` overrides ``"auto"`` (for tests).
CPU gradients from 1 MiB up (cpu and numba) come from a pool of reused blocks, see
:func:`gradient_pool_info`, :func:`set_gradient_pool_limit`, :func:`clear_gradient_pool`.
bfloat16 and float16 are computed in float32 and the result cast back.

Under ``torch.compile`` forward and backward are torch custom ops
(``fastexpr::traj_length_forward`` and ``fastexpr::traj_length_backward``), so
``torch.compile(fullgraph=True)`` works on every implementation; eager calls skip the ops'
dispatch (a plain ``torch.autograd.Function`` over the same implementations). Double (and
higher) backward is supported: with ``create_graph=True`` the gradient is built from torch
operations instead of the fused backward, so it is differentiable on every implementation; a
zero-length segment contributes zero to every derivative. Inside ``torch.func`` transforms
(grad, jacrev, hessian, vmap), which do not differentiate through a custom op's registered
backward, the length is plain torch operations with the same derivatives.
"""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import os

import numpy as np
import torch

from . import _threads, backends
from ._checks import flag, is_integer
from .backends.torch_ref import scaled_norms, scaled_rows
from .plan import SAFE_NORM_HI, SAFE_NORM_LO

ENV_BACKEND = "FASTEXPR_TRAJ_BACKEND"


def trajectory_length(h: torch.Tensor, closed: bool = False, backend: str = "auto") -> torch.Tensor:
    """Length of the path through the rows of ``h`` (B >= 2 samples), differentiable in ``h``.

    Returns a 0-dim tensor of ``h``'s dtype and device. ``backend`` is ``"auto"`` or one of
    ``"cpu"``, ``"cuda"``, ``"numba"``, ``"torch"`` (see the module docstring).
    """
    if not isinstance(h, torch.Tensor):
        raise TypeError(f"trajectory_length expects a torch.Tensor, got {type(h).__name__}")
    if not h.is_floating_point():
        raise TypeError(f"trajectory_length expects a floating-point tensor, got {h.dtype}")
    if h.dim() == 0 or h.shape[0] < 2:
        raise ValueError(f"trajectory_length needs at least two samples along dim 0, got shape {tuple(h.shape)}")
    if h[0].numel() == 0:
        raise ValueError(f"trajectory_length needs samples with at least one feature, got shape {tuple(h.shape)}")
    rows = h.reshape(h.shape[0], -1)
    if rows.dtype not in (torch.float32, torch.float64):
        rows = rows.float()
    rows, closed = rows.contiguous(), flag(closed, "closed")
    if _under_functorch():
        return _torch_length(rows, closed).to(h.dtype)
    if _seen_by_a_tracer(rows):  # the ops resolve ``backend`` when they run, where dynamo does not trace
        return _forward_op(rows, closed, backend)[0].to(h.dtype)
    return _EagerLength.apply(rows, closed, choose_backend(backend, h.device)).to(h.dtype)


def _under_functorch() -> bool:
    """Inside a ``torch.func`` transform (grad, jacrev, vmap, ...): these do not differentiate through
    a custom op's registered backward, so the length is computed there by plain torch operations."""
    try:
        return torch._C._functorch.maybe_current_level() is not None
    except AttributeError:
        return False


def _torch_length(rows, closed):
    """The length as differentiable torch operations (float64, rows scaled: no square under- or
    overflows); its derivatives are the kernels' (a zero-length segment has gradient 0)."""
    scaled, scale = scaled_rows(_torch_segments(rows, closed).double())
    return (scale * torch.linalg.vector_norm(scaled, dim=1)).sum()


def _seen_by_a_tracer(rows: torch.Tensor) -> bool:
    """Whether a compiler or tracer sees this call (``torch.compile``, ``make_fx``, AOTAutograd, a
    tensor subclass): they understand the custom ops, not a Function whose kernels read raw
    memory. Unknown internals count as traced."""
    if torch.compiler.is_compiling() or type(rows) is not torch.Tensor:
        return True
    try:
        from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

        return bool(_get_current_dispatch_mode_stack())
    except ImportError:
        return True


def unavailable_reason(name: str, device: torch.device | str) -> str | None:
    """Why implementation ``name`` cannot run on tensors of ``device`` here, or None if it can."""
    return backends.unavailable_reason(name, device, op="trajectory_length")


def available(device: torch.device | str) -> list[str]:
    """The implementations usable for tensors on ``device``, fastest first."""
    return [name for name in backends.auto_order("trajectory_length", device)
            if unavailable_reason(name, device) is None]


def choose_backend(backend: str, device: torch.device | str) -> str:
    """Resolve ``backend`` ("auto", or the environment override) to a usable implementation."""
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "auto")
    return backends.resolve(backend, device, op="trajectory_length").NAME


# Under ``torch.compile`` (and other tracers and transforms) the two halves are torch custom ops
# (``torch.library``), so that it, also with ``fullgraph=True``, treats every implementation as
# one opaque call with a known output shape instead of tracing into numba, CuPy or the extension.
# Eager calls take a plain ``torch.autograd.Function`` over the same implementations
# (``_seen_by_a_tracer`` decides): the custom ops' dispatch costs more than the kernels on small
# inputs (forward + backward of a 64 x 64 float32 h on the 2-core CPU: 188 us through the ops,
# 77 us through the Function, 24 us in the kernels; on the H100 machine's host the ops'
# backend_impl alone took 0.34 ms per call). ``impl`` names the implementation.


class _EagerLength(torch.autograd.Function):
    """The custom ops' forward and backward without their dispatch (eager mode only)."""

    @staticmethod
    def forward(ctx, h, closed, impl):
        length, norms = _run_forward(h, closed, impl)
        ctx.save_for_backward(h, norms)
        ctx.closed, ctx.impl = closed, impl
        return length

    @staticmethod
    def backward(ctx, grad_out):
        h, norms = ctx.saved_tensors
        return _gradient(h, norms, grad_out, ctx.closed, ctx.impl, _fused_backward), None, None


def _run_forward(h, closed, impl):
    """(length, float64 segment norms) from implementation ``impl``; for float64 ``h``, the segments
    whose plain sum of squares under- or overflowed float64 (norms outside about 1e-77 .. 1e154)
    recomputed scaled, so that no length or gradient is lost to the range of the squares."""
    with _library_threads(impl, h):
        length, norms = _IMPLEMENTATIONS[impl][0](h, closed)
    if h.dtype != torch.float64:  # squares of float32 differences fit float64's range
        return length, norms
    unsafe = _outside_safe_range(norms, zero=True)
    if unsafe is None:
        return length, norms
    norms = norms.clone()
    norms[unsafe] = scaled_norms(h[(unsafe + 1) % h.shape[0]] - h[unsafe])
    return norms.sum().to(h.dtype), norms


def _outside_safe_range(norms, zero: bool):
    """Indices of the float64 segment norms outside [SAFE_NORM_LO, SAFE_NORM_HI] (NaN too; zeros only
    with ``zero``: a plain sum of squares is 0 also when every square underflowed), or None when all
    are inside (tested first by their minimum and maximum: one pass, no index array)."""
    on_cpu = norms.device.type == "cpu"
    n = norms.numpy() if on_cpu else norms
    least, most = (n.min(), n.max()) if on_cpu else (float(x) for x in torch.aminmax(n))
    if least >= SAFE_NORM_LO and most <= SAFE_NORM_HI:
        return None
    outside = ~((n >= SAFE_NORM_LO) & (n <= SAFE_NORM_HI)) & (zero | (n != 0))
    index = torch.from_numpy(np.flatnonzero(outside)) if on_cpu else outside.nonzero().squeeze(1)
    return index if index.numel() else None


def _fused_backward(h, norms, grad_out, closed, impl):
    if h.dtype == torch.float64 and _outside_safe_range(norms, zero=False) is not None:
        return _differentiable_gradient(h, grad_out, closed)  # the kernels' g / norm would leave float64
    with _library_threads(impl, h):
        return _IMPLEMENTATIONS[impl][1](h, norms, grad_out.to(h.dtype), closed)


@torch.library.custom_op("fastexpr::traj_length_forward", mutates_args=())
def _forward_op(h: torch.Tensor, closed: bool, impl: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(0-dim length of h's dtype, float64 segment norms) of a contiguous (B, D) float32/float64 h;
    ``impl`` as ``trajectory_length``'s ``backend`` (resolved here: loading a backend module while
    ``torch.compile`` traces would break the graph)."""
    return _run_forward(h, closed, choose_backend(impl, h.device))


@_forward_op.register_fake
def _forward_fake(h, closed, impl):
    segments = h.shape[0] if closed else h.shape[0] - 1
    return h.new_empty(()), h.new_empty((segments,), dtype=torch.float64)


@torch.library.custom_op("fastexpr::traj_length_backward", mutates_args=())
def _backward_op(h: torch.Tensor, norms: torch.Tensor, grad_out: torch.Tensor, closed: bool,
                 impl: str) -> torch.Tensor:
    """grad_out * d(length)/dh from the forward's norms (first order only: not differentiable)."""
    return _fused_backward(h, norms, grad_out, closed, choose_backend(impl, h.device))


def _library_threads(impl: str, h):
    """numba's or torch's thread count as ``measure`` sets it (``fastexpr._threads``: one thread in a
    process forked from one with native threads, where a parallel region would hang); the cpu
    implementation passes ``_threads.current()`` to the kernel itself."""
    if impl == "numba":
        from .backends import numba_cpu

        if _threads.forked():
            raise RuntimeError("the numba trajectory_length cannot run in a process forked from one already running "
                               "OpenMP threads (numba's OpenMP layer would abort it); use backend='cpu' or 'torch', or "
                               "a 'spawn' or 'forkserver' multiprocessing context")
        return numba_cpu.launch(_threads.requested() or numba_cpu.numba.get_num_threads())
    if impl == "torch":
        from .backends import torch_ref

        return torch_ref.cpu_threads(h.device)
    return contextlib.nullcontext()


@_backward_op.register_fake
def _backward_fake(h, norms, grad_out, closed, impl):
    return torch.empty_like(h)


def _setup_context(ctx, inputs, output):
    h, closed, impl = inputs
    ctx.save_for_backward(h, output[1])
    ctx.closed, ctx.impl = closed, impl


def _backward(ctx, grad_out, _grad_norms):
    h, norms = ctx.saved_tensors
    return _gradient(h, norms, grad_out, ctx.closed, ctx.impl, _backward_op), None, None


def _gradient(h, norms, grad_out, closed, impl, fused):
    """The fused backward ``fused`` (the op, or the implementation itself), or, when the gradient
    must itself be differentiable (``create_graph=True``: grad mode is on), the same gradient as a
    torch expression of h, so that second and higher derivatives come out right on every
    implementation."""
    if torch.is_grad_enabled():
        return _differentiable_gradient(h, grad_out, closed)
    return fused(h, norms, grad_out, closed, impl)


_forward_op.register_autograd(_backward, setup_context=_setup_context)


def _differentiable_gradient(h, grad_out, closed):
    """grad_out * d(length)/dh built from differentiable torch operations of h (any device).

    Segment d with norm n contributes d/n, whose derivative is (I - u u^T)/n with u = d/n. A
    zero-length segment contributes nothing, to the gradient or to any higher derivative (the
    same zero subgradient as the fused kernels; the inner ``where`` keeps 1/n out of the graph
    there, so no inf * 0 = nan appears when differentiating again)."""
    scaled, _ = scaled_rows(_torch_segments(h, closed).double())  # u = d/n = (d/s)/|d/s|: no tiny
    norms = torch.linalg.vector_norm(scaled, dim=1)                  # or huge norm is ever squared
    positive = norms > 0
    units = scaled * torch.where(positive, 1.0 / torch.where(positive, norms, 1.0), 0.0)[:, None]
    return _torch_scatter_segments(units.to(h.dtype) * grad_out.to(h.dtype), closed)


# Each implementation: forward(h, closed) -> (0-dim length of h's dtype, float64 segment norms)
# and backward(h, norms, grad_out, closed) -> gradient, for a contiguous (B, D) float32/float64 h.


def _cpu_forward(h, closed):
    from . import _C

    total, norms = _C.traj_length_forward(h.numpy(), closed, threads=_threads.current())
    return torch.tensor(total, dtype=h.dtype), torch.from_numpy(norms)


# A fresh CPU gradient from 32 MiB up is mapped afresh by glibc on every call, and the kernel
# faults it in and zeroes it page by page: 28 of the 36 ms of a (4096, 4096) float32 backward on
# the 2-core test VM. So CPU gradients from 1 MiB up come from the extension's gradient pool
# (csrc/cpu/traj_length.cpp), which, like a GPU caching allocator, hands out the already-faulted
# blocks of gradients that have died: a loop over the same shapes pays no faults after its first
# step. Free blocks are kept up to a byte limit (1 GiB, or FASTEXPR_GRAD_POOL_MIB).
ENV_POOL_MIB = "FASTEXPR_GRAD_POOL_MIB"
_POOL_FROM = 1 << 20
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


@functools.lru_cache(maxsize=None)
def _pool():
    """The extension holding the gradient pool (its limit set from the environment), or None."""
    if unavailable_reason("cpu", "cpu") is not None:
        return None
    from . import _C

    mib = os.environ.get(ENV_POOL_MIB, "").strip()
    if mib:
        if not mib.isdigit():
            raise ValueError(f"{ENV_POOL_MIB} must be a whole number of MiB, got {mib!r}")
        _C.grad_pool_set_limit(int(mib) << 20)
    return _C


def _check_limit(nbytes, what):
    """``nbytes`` as an int if it is a non-negative integer (else TypeError/ValueError)."""
    if not is_integer(nbytes):
        raise TypeError(f"{what} must be a non-negative integer, got {nbytes!r}")
    nbytes = operator.index(nbytes)
    if nbytes < 0:
        raise ValueError(f"{what} must be a non-negative integer, got {nbytes}")
    return nbytes


def set_gradient_pool_limit(nbytes: int) -> int:
    """Keep at most ``nbytes`` of free gradient blocks (0: none; excess blocks are unmapped at
    once); returns the previous limit. Raises BackendUnavailable without the C++ extension."""
    pool = _require_pool()
    return pool.grad_pool_set_limit(_check_limit(nbytes, "the gradient pool limit"))


def clear_gradient_pool() -> None:
    """Unmap every free block of the gradient pool (blocks of live gradients stay theirs)."""
    _require_pool().grad_pool_clear()


def gradient_pool_info() -> dict:
    """``free_blocks``, ``free_bytes``, ``limit_bytes``, and the blocks ``reused`` and ``mapped`` so far."""
    return _require_pool().grad_pool_info()


def _require_pool():
    pool = _pool()
    if pool is None:
        raise backends.BackendUnavailable(f"the gradient pool needs the C++ extension: {unavailable_reason('cpu', 'cpu')}")
    return pool


def _empty_gradient(h):
    """An uninitialised CPU tensor like contiguous float32/float64 ``h`` for a backward kernel to
    overwrite: from 1 MiB up a block of the gradient pool (a tensor whose storage is exactly its
    own bytes), smaller or without the extension ``torch.empty_like``."""
    pool = _pool() if h.nbytes >= _POOL_FROM else None
    if pool is None:
        return torch.empty_like(h)
    return torch.from_numpy(pool.pooled_empty(h.shape, _NUMPY_DTYPES[h.dtype]))


def _cpu_backward(h, norms, grad_out, closed):
    from . import _C

    grad = _empty_gradient(h)
    _C.traj_length_backward(h.numpy(), norms.numpy(), float(grad_out), closed, grad.numpy(), threads=_threads.current())
    return grad


@functools.lru_cache(maxsize=None)
def _numba_kernels():
    import numba

    @numba.njit(parallel=True)
    def forward(h, norms):
        b, d = h.shape
        for i in numba.prange(norms.shape[0]):
            nxt = i + 1 if i + 1 < b else 0
            acc = 0.0
            for k in range(d):
                diff = np.float64(h[nxt, k]) - np.float64(h[i, k])
                acc += diff * diff
            norms[i] = math.sqrt(acc)

    @numba.njit(parallel=True)
    def backward(h, norms, g, closed, grad):
        b, d = h.shape
        s = norms.shape[0]
        for row in numba.prange(b):
            j = np.int64(row)  # the prange index may be unsigned; keep neighbour indices int64
            # Segment j-1 (B-1, closing, for j = 0) comes in, segment j goes out; a missing
            # neighbour (open path ends) is row j itself with a zero coefficient.
            prev, nxt = j, j
            if j > 0:
                prev = j - 1
            elif closed:
                prev = b - 1
            if j + 1 < b:
                nxt = j + 1
            elif closed:
                nxt = 0
            cp = 0.0
            if prev != j and norms[prev] > 0.0:
                cp = g / norms[prev]
            cn = 0.0
            if j < s and norms[j] > 0.0:
                cn = g / norms[j]
            for k in range(d):
                x = np.float64(h[j, k])
                grad[j, k] = cp * (x - np.float64(h[prev, k])) - cn * (np.float64(h[nxt, k]) - x)

    return forward, backward


def _numba_forward(h, closed):
    norms = np.empty(h.shape[0] if closed else h.shape[0] - 1)
    _numba_kernels()[0](h.numpy(), norms)
    return torch.tensor(norms.sum(), dtype=h.dtype), torch.from_numpy(norms)


def _numba_backward(h, norms, grad_out, closed):
    grad = _empty_gradient(h)
    _numba_kernels()[1](h.numpy(), norms.numpy(), float(grad_out), closed, grad.numpy())
    return grad


def _torch_segments(h, closed):
    return (torch.roll(h, -1, 0) - h) if closed else (h[1:] - h[:-1])


def _torch_forward(h, closed):
    norms = torch.linalg.vector_norm(_torch_segments(h, closed), dim=1, dtype=torch.float64)
    return norms.sum().to(h.dtype), norms


def _torch_scatter_segments(units, closed):
    """The gradient of a path length whose segments have the gradients ``units`` (S, D): each
    row gets its incoming segment's and loses its outgoing segment's."""
    if closed:
        return torch.roll(units, 1, 0) - units
    grad = units.new_zeros((units.shape[0] + 1, units.shape[1]))
    grad[1:] += units
    grad[:-1] -= units
    return grad


def _torch_backward(h, norms, grad_out, closed):
    safe = torch.where(norms > 0, norms, 1.0)  # zero segments are zero rows: 0 / 1 = 0
    units = (_torch_segments(h, closed).double() / safe[:, None]).to(h.dtype)  # a float32 norm may not fit float32
    return _torch_scatter_segments(units * grad_out, closed)


# Launch geometry of csrc/cuda/traj_length.cu (twins of TL_THREADS, TL_CHUNK, TL_ROWS).
_CUDA_THREADS, _CUDA_CHUNK, _CUDA_ROWS = 256, 1024, 16
_CUDA_TARGET_BLOCKS = 2048  # enough blocks to fill an H100 a few times over
_CUDA_MAX_GRID_Y = 65535


def _cuda_launch(kernel, h, grid, args):
    """Launch ``traj_length_<kernel>_<f32|f64>`` for ``h``'s dtype on ``h``'s device and torch's
    current stream there (``cuda_compile.launch``: raw pointers, the kernel object cached)."""
    from .backends.cuda_compile import launch

    launch("traj_length.cu", f"traj_length_{kernel}_{'f32' if h.dtype == torch.float32 else 'f64'}", h, grid,
           (_CUDA_THREADS,), args)


def _cuda_forward(h, closed):
    b, d = h.shape
    s = b if closed else b - 1
    tiles = -(-s // _CUDA_ROWS)
    gy = max(1, min(-(-d // _CUDA_CHUNK), -(-_CUDA_TARGET_BLOCKS // tiles), _CUDA_MAX_GRID_Y))
    nb = min(-(-s // _CUDA_THREADS), 1024)
    new = functools.partial(torch.empty, dtype=torch.float64, device=h.device)
    part, norms, block_sums = new((gy, s)), new(s), new(nb)
    counter = torch.zeros(1, dtype=torch.int32, device=h.device)
    out = torch.empty((), dtype=h.dtype, device=h.device)
    _cuda_launch("partial", h, (tiles, gy), (h, np.int64(b), np.int64(d), np.int32(closed), part))
    _cuda_launch("finalize", h, (nb,), (part, np.int64(gy), np.int64(s), norms, block_sums, counter, out))
    return out, norms


def _cuda_backward(h, norms, grad_out, closed):
    b, d = h.shape
    grad = torch.empty_like(h)
    grid = (-(-b // _CUDA_ROWS), min(-(-d // _CUDA_CHUNK), _CUDA_MAX_GRID_Y))
    args = (h, norms, grad_out.reshape(1).contiguous(), np.int64(b), np.int64(d), np.int32(closed), grad)
    _cuda_launch("backward", h, grid, args)
    return grad


_IMPLEMENTATIONS = {
    "cpu": (_cpu_forward, _cpu_backward),
    "cuda": (_cuda_forward, _cuda_backward),
    "numba": (_numba_forward, _numba_backward),
    "torch": (_torch_forward, _torch_backward),
}
