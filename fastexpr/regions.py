"""Region maps (Raghu et al. 2017, Figure 1): the linear regions of a network on a 2-D slice
of its input space.

Pixel ``(i, j)`` is the point ``center + a[j] u + b[i] v``, ``a = b = linspace(-extent,
extent, resolution)``. Each pixel's whole-network activation pattern is hashed exactly as
``measure`` hashes a sample's (README, Semantics: region codes with their ties, the additive
Zobrist keys of ``fastexpr.plan.pattern_keys``), so ``n_regions`` counts distinct patterns
among the pixels the way ``distinct_patterns`` counts them among samples. A pixel lies on a
layer-d boundary when its layer-d codes differ from those of its right or lower neighbour.

The slice is a plane "trajectory", in float64: the first layer comes from the projected basis
(``W1 center + b1``, ``W1 u``, ``W1 v``, computed once, so a pixel costs two multiply-adds per
first-layer neuron), and only per-pixel hashes and boundary flags are kept, block of pixel
rows by block. Two engines give each pixel's per-layer hashes: the fused C++ kernel
(``fastexpr._C.region_hashes``: tiles of a row's pixels through measure's register-tiled GEMM,
OpenMP over tiles) and a vectorised NumPy pass (BLAS on a block, used when the extension is
not built).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _threads
from ._arrays import to_float64
from ._checks import as_float, is_integer, is_real
from .network import Network
from .plan import OverflowInForwardPass

#: Most pixels x neurons per block (bounds the work memory: about 8 bytes each, a few times over).
BLOCK_ELEMENTS = 1 << 22
#: Largest resolution accepted (the issue's 4096 x 4096 pixels).
MAX_RESOLUTION = 4096
#: Boundary colours of layers 1, 2, 3 (the paper's black, green, purple), then further layers.
LAYER_COLORS = ("black", "tab:green", "tab:purple", "tab:orange", "tab:blue", "tab:red", "tab:brown", "tab:gray")


@dataclass(frozen=True)
class RegionMap:
    """Linear regions of a network on a 2-D slice (see :func:`region_map`)."""

    n_regions: int            # distinct whole-network patterns among the pixels
    ids: np.ndarray           # (resolution, resolution) int64: region of pixel (i, j), 0 .. n_regions-1
    boundaries: np.ndarray    # (L, resolution, resolution) bool: pixel on a layer-d boundary (d = index + 1)
    extent: float
    activations: tuple[str, ...]

    @property
    def resolution(self) -> int:
        return self.ids.shape[0]

    def to_dict(self) -> dict:
        """Counts only: regions, resolution, boundary pixels per layer."""
        return {"n_regions": self.n_regions, "resolution": self.resolution, "extent": self.extent,
                "boundary_pixels": [int(b.sum()) for b in self.boundaries]}

    def plot(self, path=None, ax=None, title: str | None = None, pixels: int = 300):
        """Boundaries per layer (layer 1 black, 2 green, 3 purple, ...) on the slice, drawn on at most
        ``pixels`` per side (a block of pixels shows a boundary if any of its pixels lies on one);
        saved to ``path`` when given. Returns the matplotlib axes."""
        from matplotlib.colors import to_rgb
        from matplotlib.lines import Line2D

        if not is_integer(pixels) or pixels < 1:
            raise ValueError(f"pixels must be a positive integer, got {pixels!r}")
        f = -(-self.resolution // pixels)  # blocks of f x f pixels drawn as one: thin lines survive
        n = -(-self.resolution // f)
        pooled = np.zeros((len(self.boundaries), n * f, n * f), dtype=bool)
        pooled[:, : self.resolution, : self.resolution] = self.boundaries
        pooled = pooled.reshape(len(self.boundaries), n, f, n, f).any(axis=(2, 4))
        image = np.ones((n, n, 3))
        for d in reversed(range(len(pooled))):  # layer 1 drawn last, on top
            image[pooled[d]] = to_rgb(LAYER_COLORS[d % len(LAYER_COLORS)])
        own = ax is None
        if own and path is not None:  # a figure of its own, not pyplot's: the process's backend is left alone
            from matplotlib.figure import Figure

            ax = Figure(figsize=(5, 5)).subplots()
        elif own:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(figsize=(5, 5))
        e = self.extent
        ax.imshow(image, origin="lower", extent=(-e, e, -e, e), interpolation="nearest")
        ax.set(xlabel="a (along u)", ylabel="b (along v)",
               title=title or f"{self.n_regions} linear regions ({self.resolution}² pixels)")
        handles = [Line2D([], [], color=LAYER_COLORS[d % len(LAYER_COLORS)], label=f"layer {d + 1}")
                   for d in range(len(self.boundaries))]
        ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.8)
        if own and path is not None:
            ax.figure.tight_layout()
            ax.figure.savefig(path, dpi=120)
        return ax


def overflow_error(layer: int) -> OverflowInForwardPass:
    """The error of a slice whose layer-``layer`` pre-activations overflow float64 (every engine)."""
    return OverflowInForwardPass(f"the pre-activations of layer {layer} overflow float64 (inf or NaN) on "
                                 "this slice; the network or the slice is too large")


def _engine(backend: str):
    """(name, region_layer_hashes) of the engine ``backends.REGISTRY["regions"]`` picks: the C++
    kernel when built, else NumPy."""
    from . import backends

    module = backends.resolve(backend, "cpu", op="regions")
    return module.NAME, module.region_layer_hashes


def region_map(net: Network, center, u, v, extent: float, resolution: int, backend: str = "auto",
               threads: int | None = None) -> RegionMap:
    """Linear regions of ``net`` on the slice ``center + a u + b v``, ``a, b`` in
    ``linspace(-extent, extent, resolution)`` (pixel ``(i, j)`` at ``a[j]``, ``b[i]``);
    ``resolution`` from 2 to 4096. ``backend``: "auto", "cpu" (C++) or "numpy"; ``threads``: the
    cpu engine's OpenMP threads. Module docstring: the semantics."""
    if not isinstance(net, Network):
        raise TypeError(f"expected a fastexpr Network, got {type(net).__name__}")
    vectors = [to_float64(x, name, ndim=1) for x, name in ((center, "center"), (u, "u"), (v, "v"))]
    for x, name in zip(vectors, ("center", "u", "v")):
        if x.shape != (net.input_dim,):
            raise ValueError(f"{name} must have shape ({net.input_dim},), the network's input, got {x.shape}")
    if not is_real(extent) or not (math.isfinite(as_float(extent)) and extent > 0):
        raise ValueError(f"extent must be a positive finite number, got {extent!r}")
    extent = as_float(extent)
    if not is_integer(resolution):
        raise TypeError(f"resolution must be an integer, got {type(resolution).__name__}")
    if not 2 <= resolution <= MAX_RESOLUTION:
        raise ValueError(f"resolution must be from 2 to {MAX_RESOLUTION}, got {resolution}")
    threads = _threads.check(threads)
    _, layer_hashes = _engine(backend)
    center, u, v = vectors
    resolution, extent = int(resolution), float(extent)
    grid = np.linspace(-extent, extent, resolution)
    w1, b1 = net.weights[0], net.biases[0]
    base, pu, pv = w1 @ center + b1, w1 @ u, w1 @ v
    rows_per_block = max(1, BLOCK_ELEMENTS // (resolution * max(net.widths[1:])))
    hashes = np.empty((resolution, resolution), dtype=np.uint64)
    boundaries = np.zeros((net.depth, resolution, resolution), dtype=bool)
    for lo in range(0, resolution, rows_per_block):
        hi = min(lo + rows_per_block, resolution)
        extra = 1 if hi < resolution else 0  # the next block's first row, for the lower neighbours
        with _threads.using(threads):
            layers = layer_hashes(net, base, pu, pv, grid, grid[lo:hi + extra])
        with np.errstate(over="ignore"):
            hashes[lo:hi] = layers[:, : hi - lo].sum(axis=0, dtype=np.uint64)
        edge = boundaries[:, lo:hi]
        edge[:, :, :-1] |= layers[:, : hi - lo, :-1] != layers[:, : hi - lo, 1:]
        below = layers[:, 1:] != layers[:, :-1]  # row r against row r + 1, within the block (+ extra row)
        edge[:, : below.shape[1]] |= below
    starts = np.ones(hashes.shape, dtype=bool)  # every pattern starts a run of equal pixels in some row
    starts[:, 1:] = hashes[:, 1:] != hashes[:, :-1]
    distinct = np.unique(hashes[starts])  # sorting the run starts only, not every pixel
    ids = np.searchsorted(distinct, hashes).astype(np.int64)
    return RegionMap(int(distinct.size), ids, boundaries, extent, net.activations)
