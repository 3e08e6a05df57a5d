"""Scores over a batch of inputs for other tools (zero-cost proxies in architecture search), with
the same taps, region codes and pattern hashes as ``measure`` on a torch model (``fastexpr.taps``).

* :func:`linear_regions`: the number of distinct whole-network activation patterns among the
  points of a batch, the linear-region count of TENAS (Chen, Gong and Wang, "Neural Architecture
  Search on ImageNet in Four GPU Hours: A Theoretically Inspired Perspective", ICLR 2021).
* :func:`naswot`: the log-determinant of the Hamming-similarity kernel of the points' activation
  codes (Mellor, Turner, Storkey and Crowley, "Neural Architecture Search without Training",
  ICML 2021).

Semantics shared by both: the model runs under ``torch.no_grad`` in eval mode for batch norm and
dropout (a model with either in training mode is refused: the score would depend on how the batch
is split, and the published implementations differ on this, NASWOT issues 1 and 30; so is any other
dependence on the batch, found by running the first point alone too); an inf or NaN pre-activation
raises ``OverflowInForwardPass`` (no region code is defined there); every call of
a piecewise-linear activation is a tap (README, Any PyTorch model); a unit's region code is that of
``measure`` (relu-like: 1 if the pre-activation is above its threshold else 0; hardtanh-like: -1, 0,
+1), taken from the pre-activation, which for ReLU agrees with the published codes ``output > 0``.
"""
from __future__ import annotations

import numpy as np

from ._checks import flag, is_integer
from .taps import STEP, _backend, _first_row, _model_dtype_device, check_batch_independent, check_model, forward

#: Bytes of tapped activations per forward pass that ``linear_regions`` aims its batches at.
BATCH_BYTES = 128 << 20
#: Points of ``linear_regions``'s first batch when no ``batch_size`` is given (it sizes the rest).
FIRST_BATCH = 64


def _inputs(x, name: str = "x"):
    """A float64 torch tensor (N, ...) of N >= 1 finite points."""
    import torch

    from ._arrays import to_float64

    arr = to_float64(x, name)
    if arr.ndim < 2:
        raise ValueError(f"{name} must be a batch of points, shape (N, ...) with N >= 1, got shape {arr.shape}")
    return torch.from_numpy(arr)


def _forward(model, x, torch_dtype, device, reduce, first: bool = False):
    """Forward ``x`` (float64 tensor) through ``model`` with every tap passed to ``reduce``; the taps.
    ``first``: the first batch, where a model whose function depends on the batch is refused."""
    points = x.reshape(x.shape[0], -1).numpy()
    rows = []  # the first point's taps, for the batch-independence check

    def reduce_and_keep(layer, spec, z, out):
        rows.append(_first_row(layer, spec, z, out))
        return reduce(layer, spec, z, out)

    try:
        calls, _ = forward(model, points, tuple(x.shape[1:]), torch_dtype, device, reduce_and_keep if first else reduce)
        if first and len(points) > 1:
            check_batch_independent(model, points, tuple(x.shape[1:]), torch_dtype, device,
                                    first_rows=[(c.name, row) for c, row in zip(calls, rows)])
    except (RuntimeError, TypeError, IndexError) as exc:
        raise ValueError(f"the model cannot take inputs of shape {tuple(x.shape[1:])}: {type(exc).__name__}: {exc}") from exc
    if not calls:
        raise ValueError("the model calls no piecewise-linear activation that fastexpr can tap")
    return calls


def _finite(layer: int, nonfinite: bool) -> None:
    """OverflowInForwardPass for a tap whose pre-activations are inf or NaN (as ``measure`` raises)."""
    if nonfinite:
        from .plan import OverflowInForwardPass

        raise OverflowInForwardPass(f"the pre-activations of tap {layer} are inf or NaN for these inputs; no region "
                                    "code is defined there")


def linear_regions(model, x, per_tap: bool = False, dtype="float64", backend: str = "auto",
                   batch_size: int | None = None):
    """Distinct activation patterns among the N points ``x`` (array or tensor ``(N, *input_shape)``).

    The whole-network pattern of a point is its region codes at every tap; patterns are compared
    through the 64-bit additive Zobrist hashes of ``measure`` (collision probability 2^-64 per pair
    of distinct patterns). The points run in batches of ``batch_size`` (None: ``FIRST_BATCH``
    points, then about ``BATCH_BYTES`` of tapped activations), and only the distinct hashes are
    kept: memory grows with the number of distinct patterns (8 bytes each), not with N, where
    TENAS holds every point's full code vector. With ``per_tap=True``: a dict from tap name to
    the number of distinct patterns of that tap alone. Returns an int (or the dict).
    """
    check_model(model)
    per_tap = flag(per_tap, "per_tap")
    model, torch_dtype, device = _model_dtype_device(model, dtype)
    module = _backend(backend, device)
    x = _inputs(x)
    if batch_size is not None and (not is_integer(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    kept: dict[int, np.ndarray] = {}  # tap (0: whole network) -> distinct hashes so far
    names = None
    start = 0
    while start < x.shape[0]:
        size = batch_size or FIRST_BATCH
        calls = _forward(model, x[start:start + size], torch_dtype, device, _hash_reducer(module), first=start == 0)
        if names is None:
            names = [c.name for c in calls]
            if batch_size is None:
                per_point = sum(c.width for c in calls) * torch_dtype.itemsize
                batch_size = int(max(1, BATCH_BYTES // per_point))
        elif [c.name for c in calls] != names:
            raise ValueError(f"the model's taps changed between batches: first {names}, now {[c.name for c in calls]}")
        total = np.zeros(min(size, x.shape[0] - start), dtype=np.uint64)
        for d, call in enumerate(calls, start=1):
            hashes = call.reduced
            total += hashes
            if per_tap:
                kept[d] = np.union1d(kept.get(d, hashes[:0]), hashes)
        kept[0] = np.union1d(kept.get(0, total[:0]), total)
        start += size
    if per_tap:
        return {name: int(kept[d].size) for d, name in enumerate(names, start=1)}
    return int(kept[0].size)


def _hash_reducer(module):
    """A tap reducer giving each point's pattern hash at that tap (the taps backend's hashes)."""
    def reduce(layer, spec, z, out):
        z2 = z.detach().reshape(z.shape[0], -1).contiguous()
        reduced = module.reduce(z2, z2, spec.kind, spec.lo, spec.hi, layer)
        _finite(layer, reduced[5])
        return reduced[3]
    return reduce


def _agreements(c, kind: int):
    """N x N float64 counts of the units of one tap whose codes ``c`` (N, F) agree at two points.

    With a = |c| (1 where the code is non-zero) and s its row sums, the agreements of units with
    codes in {0, 1} (STEP) or {-1, 0, +1} are (c c^T + 3 a a^T) / 2 - s_i - s_j + F (for 0/1 codes
    c c^T = a a^T, and 2 a a^T - s_i - s_j + F is Mellor et al.'s c c^T + (1-c)(1-c)^T): one
    GEMM for relu-like taps, two for three-region ones, in float32 where every sum is an integer
    below 2^24 (exact, twice float64's speed) and in float64 otherwise."""
    import torch

    f = c.shape[1]
    x = c.to(torch.float32 if f < 1 << 24 else torch.float64)
    a = x if kind == STEP else x.abs()
    aa = (a @ a.T).double()
    cc = aa if kind == STEP else (x @ x.T).double()
    s = a.sum(1).double()
    return (cc + 3 * aa) / 2 - s[:, None] - s[None, :] + f


def naswot(model, x, per_tap: bool = False, dtype="float64"):
    """NASWOT score of the N points ``x``: ``log |det K|`` with ``K[i, j]`` the number of units
    (over all taps) whose region codes agree at points i and j (N_A minus the Hamming distance of
    the binary codes in Mellor et al.; a hardtanh-like unit agrees when both points are in the same
    of its three regions). ``K`` is N x N, accumulated tap by tap in float64 (exact integers; see
    ``_agreements``), so the codes are never held; N is the small batch of the method (Mellor et
    al. use 128), since ``K`` itself has N^2 entries. Returns a float (``-inf`` for a singular K,
    e.g. two points with the same pattern), or with ``per_tap=True`` a dict from tap name to the
    score of that tap's own kernel.
    """
    import torch

    from .backends.taps_torch import all_finite, codes as region_codes

    check_model(model)
    per_tap = flag(per_tap, "per_tap")
    model, torch_dtype, device = _model_dtype_device(model, dtype)
    x = _inputs(x)
    kernels = []  # per tap with per_tap, else one running sum

    def reduce(layer, spec, z, out):
        _finite(layer, not all_finite(z))
        k = _agreements(region_codes(z.detach().reshape(z.shape[0], -1), spec.kind, spec.lo, spec.hi), spec.kind)
        if per_tap or not kernels:
            kernels.append(k)
        else:
            kernels[0] += k

    calls = _forward(model, x, torch_dtype, device, reduce, first=True)

    def logdet(k):
        return float(np.linalg.slogdet(k.cpu().numpy())[1])

    if per_tap:
        return {call.name: logdet(k) for call, k in zip(calls, kernels)}
    return logdet(kernels[0])
