"""Exact walk on the GPU: ``csrc/cuda/exact.cu`` (one thread per unit), compiled through CuPy/NVRTC.

``exact_walk`` takes the arguments of the C++ engine (``fastexpr._C.exact_walk``, used by
``fastexpr.exact``) and returns the same dict. Piece hashes go to a per-unit slice of a device
buffer; units that produced more than their slice holds are walked again with enough slots.
Hashes are de-duplicated on the device; no crossings are recorded (``max_crossings`` must be 0).
CuPy is imported lazily: importing this module never touches CUDA.
"""
from __future__ import annotations

import numpy as np

from ..plan import pattern_keys
from . import cuda_compile

NAME = "cuda"
SOURCE = "exact.cu"
KERNELS = ("exact_walk_linear", "exact_walk_trig")
#: Threads per block (at most FX_EXACT_THREADS of exact.cu).
THREADS = 64
#: Hash slots per unit on the first walk (fewer when there are many units).
HASH_CAPACITY = 256
#: Most hash slots (8 bytes each) allocated for one launch.
HASH_SLOTS = 1 << 25
#: Most bytes of walker scratch for one launch (also at most a quarter of the free device memory).
SCRATCH_BYTES = 1 << 30
#: Units (sub-intervals) to cut a trajectory into for the GPU: one thread walks each.
EXACT_UNITS = 1 << 14
#: Doubles per layer of the walker's Gram sums (twin of fx::GRAM in csrc/common/exact_walk.h).
GRAM = 4
#: Deepest network: each block holds 2 pointers per layer in shared memory (48 KiB at most).
MAX_DEPTH = 3072


def probe() -> None:
    from .cuda import probe as cuda_probe

    cuda_probe()


def _network(weights, biases, activations, n1: int) -> dict:
    """The network in the kernel's flat layout (host arrays), validated like exact.cpp does."""
    L = len(activations)
    if L < 1:
        raise ValueError("the network needs at least one layer")
    if len(weights) != L - 1 or len(biases) != L - 1:
        raise ValueError("expected L-1 hidden weights and biases")
    if L > MAX_DEPTH:
        raise ValueError(f"the cuda exact engine handles at most {MAX_DEPTH} layers, this network has {L}")
    if any(a not in (0, 1, 2) for a in activations):
        raise ValueError(f"unknown activation code in {list(activations)}")
    widths = [n1]
    for d, (w, b) in enumerate(zip(weights, biases)):
        if np.ndim(w) != 2 or np.shape(w)[1] != widths[-1] or np.shape(b) != (np.shape(w)[0],):
            raise ValueError(f"weights[{d}] or biases[{d}] has the wrong shape")
        widths.append(np.shape(w)[0])
    offset = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    wt = [np.asarray(w, np.float64).T.ravel() for w in weights]
    bias = [np.asarray(b, np.float64) for b in biases]
    keys = [pattern_keys(d + 1, n) for d, n in enumerate(widths)]
    return dict(
        widths=np.asarray(widths, np.int32), acts=np.asarray(activations, np.int32), offset=offset,
        wt=np.concatenate(wt + [np.zeros(1)]), wt_off=np.cumsum([0, 0] + [p.size for p in wt])[:L].astype(np.int64),
        bias=np.concatenate(bias + [np.zeros(1)]),
        bias_off=np.cumsum([0, 0] + [p.size for p in bias])[:L].astype(np.int64),
        key_pos=np.concatenate([k[0] for k in keys]), key_neg=np.concatenate([k[1] for k in keys]))


def _walk(cp, kernel, net: dict, dims: tuple, units: list, tol: float, cap: int) -> dict:
    """One launch over the units (device arrays k0, k1, k2, u0, u1, g_in): the per-unit device outputs.
    ``net``: the device arrays of ``_network``; ``dims``: depth, total neurons, widest layer."""
    k0, k1, k2, u0, u1, g_in = units
    U, n1 = k0.shape
    L, total, widest = dims
    per_thread = 8 * (7 * total + L + GRAM * (L + 1)) + 4 * total + 4 * widest
    free = cp.cuda.runtime.memGetInfo()[0]
    attributes = cp.cuda.Device().attributes
    sms = attributes["MultiProcessorCount"]
    threads = min(U, sms * attributes["MaxThreadsPerMultiProcessor"],
                  max(1, min(SCRATCH_BYTES, free // 4) // per_thread))
    # Units diverge: first one per warp scheduler (4 per multiprocessor), then fuller warps.
    block = min(THREADS, -(-threads // (4 * sms)))
    blocks = -(-threads // block)
    T = blocks * block
    out = dict(transitions=cp.zeros((U, L), np.int64), pattern_changes=cp.zeros((U, L), np.int64),
               network_changes=cp.zeros(U, np.int64), repairs=cp.zeros(U, np.int64),
               lengths=cp.zeros((U, L + 1), np.float64), first_code=cp.zeros((U, total), np.int8),
               last_code=cp.zeros((U, total), np.int8), errors=cp.zeros(U, np.int32),
               hashes=cp.zeros((U, cap), np.uint64), hash_count=cp.zeros(U, np.int64))
    scratch = [cp.zeros(T * n, dt) for n, dt in ((3 * total, np.float64), (3 * total, np.float64),
                                                  (total, np.float64), (total, np.int8), (total, np.int8),
                                                  (total, np.int8), (total, np.int8), (widest, np.int32))]
    scratch += [np.int32(widest), cp.zeros(T * L, np.float64), cp.zeros(T * GRAM * (L + 1), np.float64)]
    args = (np.int32(L), net["widths"], net["acts"], net["offset"], net["wt"], net["wt_off"], net["bias"],
            net["bias_off"], net["key_pos"], net["key_neg"], np.int64(U), np.int32(n1), k0, k1, k2, u0, u1, g_in,
            np.float64(tol), *scratch, *(out[k] for k in ("transitions", "pattern_changes", "network_changes",
                                                          "repairs", "lengths", "first_code", "last_code", "errors",
                                                          "hashes")), np.int64(cap), out["hash_count"])
    kernel((blocks,), (block,), args, shared_mem=16 * L)
    return out


def _emitted(cp, hashes, counts):
    """The written hashes of each row of (U, cap) ``hashes`` (the first min(count, cap))."""
    return hashes[cp.arange(hashes.shape[1])[None, :] < counts[:, None]]


def exact_walk(unit_kind, weights, biases, activations, k0, k1, k2, u0, u1, g_in, tol, max_crossings=0) -> dict:
    """Exact walk of units through a float64 network on the GPU; arguments and result as ``_C.exact_walk``."""
    if max_crossings > 0:
        raise ValueError("the cuda exact engine does not record crossings (max_crossings > 0); "
                         "use backend='cpu' or 'numba' for fastexpr.crossings")
    if unit_kind not in (0, 1):
        raise ValueError("unit_kind must be 0 (linear) or 1 (trig)")
    if not tol > 0:
        raise ValueError("tol must be positive")
    k0 = np.asarray(k0, np.float64)
    if k0.ndim != 2 or k0.shape[0] < 1 or k0.shape[1] < 1:
        raise ValueError("k0 must be 2-D (units, n_1) with at least one unit and one first-layer neuron")
    U, n1 = k0.shape
    host = [k0, k1, k2 if unit_kind == 1 else np.zeros((U, 1)), u0, u1, g_in]  # linear units: k2 unused
    for name, a, shape in zip(("k0", "k1", "k2", "u0", "u1", "g_in"), host,
                              ((U, n1), (U, n1), (U, n1 if unit_kind == 1 else 1), (U,), (U,), (U, 3))):
        if np.shape(a) != shape:
            raise ValueError(f"{name} has the wrong shape")
    net_host = _network(weights, biases, activations, n1)

    import cupy as cp

    kernel = cuda_compile.get_function(SOURCE, KERNELS[unit_kind])
    net = {k: cp.asarray(v) for k, v in net_host.items()}
    dims = (len(activations), int(net_host["offset"][-1]), int(net_host["widths"].max()))
    dev = [cp.asarray(np.ascontiguousarray(a, np.float64)) for a in host]
    cap = max(1, min(HASH_CAPACITY, HASH_SLOTS // U))
    out = _walk(cp, kernel, net, dims, dev, tol, cap)
    counts = out.pop("hash_count")
    parts = [_emitted(cp, out.pop("hashes"), counts)]
    # Units whose hashes overflowed their slots: again, with as many slots as the fullest needs.
    over = cp.flatnonzero(counts > cap)
    if over.size:
        need = int(counts[over].max())
        per_launch = max(1, HASH_SLOTS // need)
        for a in range(0, over.size, per_launch):
            again = _walk(cp, kernel, net, dims, [x[over[a:a + per_launch]] for x in dev], tol, need)
            parts.append(_emitted(cp, again["hashes"], again["hash_count"]))
    result = {k: cp.asnumpy(v) for k, v in out.items()}
    result["hashes"] = cp.asnumpy(cp.unique(cp.concatenate(parts)))
    empty = np.empty(0, np.int64)
    result["crossings"] = (empty, np.empty(0), empty, empty, np.empty(0, np.int8), np.empty(0, np.int8))
    return result
