"""cuda backend: the fused kernels of ``csrc/cuda/measure.cu``, compiled at first use (NVRTC via CuPy).

One launch measures every trajectory of a batch through the same network (grid y = trajectory)
over at most ``LAUNCH_POINTS`` samples in all; longer ranges loop over launches that share
their boundary sample, so memory does not grow with N. Counters accumulate on the device;
each launch's run-start hashes are de-duplicated on the device (``cupy.unique``) and only the
distinct ones are copied back. NumPy in, NumPy out: the plan's arrays are uploaded once per
call. Design and performance notes: bench/notes_cuda.md.

CuPy is imported lazily, so importing this module never touches CUDA. Set
``FASTEXPR_DEBUG=1`` (or ``DEBUG = True``) to poison the hash buffer before every launch,
check what the kernel wrote, and compile with line information for compute-sanitizer.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from dataclasses import dataclass

import numpy as np

from ..plan import Partials, Plan, check_forward_pass, pattern_keys
from . import cuda_compile

from .cuda_exact import EXACT_UNITS, exact_walk  # noqa: F401  (the exact engine on the GPU)

NAME = "cuda"

#: Samples per ``run`` call when ``measure`` chunks a trajectory (neighbouring chunks share one).
CHUNK = 1 << 24
#: Samples per kernel launch, all trajectories of a batch together (bounds device memory).
LAUNCH_POINTS = 1 << 24
#: Poison outputs and check them after every launch; compile with -lineinfo.
DEBUG = os.environ.get("FASTEXPR_DEBUG", "0") not in ("", "0")
#: What an unwritten hash slot holds in debug mode.
POISON = np.uint64(0xDEADBEEFDEADBEEF)
#: The kernel's ``overflow`` output before any block reports a layer with an inf or NaN pre-activation.
NO_OVERFLOW = np.iinfo(np.int32).max

SOURCE = "measure.cu"
_KERNEL_LINE = re.compile(r"^FX_KERNEL\((\w+), (float|double), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)$",
                          re.MULTILINE)


# --------------------------------------------------------------------------------------------
# Availability


def _driver_version() -> int | None:
    """The CUDA driver's version (e.g. 12040), or None without an NVIDIA driver."""
    name = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    version = ctypes.c_int(0)
    if lib.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return version.value


def _install_hint() -> str:
    """Which CuPy to install, from the driver's CUDA version."""
    version = _driver_version()
    if version is None:
        return "no NVIDIA driver was found either: the cuda backend needs an NVIDIA GPU and its driver"
    major, minor = version // 1000, version % 1000 // 10
    if major >= 13:
        return f"the driver supports CUDA {major}.{minor}: pip install 'fastexpr[cuda13]'"
    if major == 12:
        return f"the driver supports CUDA {major}.{minor}: pip install 'fastexpr[cuda12]'"
    return f"the driver supports CUDA {major}.{minor} only; CuPy needs CUDA 12 or newer: update the NVIDIA driver"


def probe() -> None:
    """Raise ImportError without CuPy (saying which extra to install), RuntimeError without a device."""
    try:
        import cupy
    except ImportError as exc:
        raise ImportError(f"CuPy is not installed ({exc}); {_install_hint()}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - CuPy raises several kinds here, all meaning "no device"
        raise RuntimeError(f"CuPy cannot reach a CUDA device: {exc}") from exc
    if count == 0:
        raise RuntimeError("CuPy sees no CUDA device (check CUDA_VISIBLE_DEVICES)")


# --------------------------------------------------------------------------------------------
# Kernel configurations (the FX_KERNEL lines of measure.cu)


@dataclass(frozen=True)
class Config:
    """One compiled configuration: NT threads, BM tile rows, TM x CN outputs per thread, BK W^T rows per stage."""

    name: str
    dtype: np.dtype
    threads: int
    rows: int
    rows_per_thread: int
    cols_per_thread: int
    k_tile: int
    min_blocks: int

    @property
    def thread_rows(self) -> int:
        return self.rows // self.rows_per_thread

    @property
    def thread_cols(self) -> int:
        return self.threads // self.thread_rows

    @property
    def width(self) -> int:
        """The widest layer this configuration handles."""
        return self.thread_cols * self.cols_per_thread

    def smem_bytes(self, depth: int) -> int:
        """Dynamic shared memory of one block: the parts of ``Smem`` in measure.cu, each 16-byte aligned."""
        item = self.dtype.itemsize
        slots = self.rows * max(1, self.thread_cols // 32)
        parts = [
            self.width * self.rows * item,         # h
            2 * self.k_tile * self.width * item,   # w (two stages)
            self.thread_rows * self.width * item,  # edge
            slots * 8, slots * item, slots * 4,    # row_hash, row_sq, row_chg
            self.rows * 4,                         # net_row
            4 * self.rows * 8,                     # in0, seg, w0, w1
            self.threads // 32 * 4,                # warp_trans
            depth * 8, depth * 8, (depth + 1) * 8, 8, 4,  # blk_trans, blk_pc, blk_len, blk_net, blk_bad
        ]
        return sum(-(-p // 16) * 16 for p in parts)


@functools.lru_cache(maxsize=None)
def configs() -> tuple[Config, ...]:
    """Every configuration compiled into measure.cu, narrowest first within each dtype."""
    text = (cuda_compile.source_dir() / "cuda" / SOURCE).read_text()
    found = []
    for name, ctype, *numbers in _KERNEL_LINE.findall(text):
        dtype = np.dtype(np.float32 if ctype == "float" else np.float64)
        found.append(Config(name, dtype, *map(int, numbers)))
    return tuple(sorted(found, key=lambda c: (c.dtype.itemsize, c.width)))


def config_for(plan: Plan, smem_limit: int | None = None) -> Config:
    """The narrowest configuration of the plan's dtype that holds its widest layer (within ``smem_limit`` bytes)."""
    widest = max(plan.widths[1:])
    candidates = [c for c in configs() if c.dtype == np.dtype(plan.dtype)]
    wide_enough = [c for c in candidates if c.width >= widest]
    if not wide_enough:
        raise ValueError(f"the cuda backend handles layers up to {candidates[-1].width} neurons wide, this network "
                         f"has one of {widest}; use the cpu or torch backend")
    for config in wide_enough:
        if smem_limit is None or config.smem_bytes(plan.depth) <= smem_limit:
            return config
    need = wide_enough[0].smem_bytes(plan.depth)
    raise ValueError(f"a {plan.dtype} network with a layer of {widest} neurons needs {need} bytes of shared memory "
                     f"per block and this GPU offers {smem_limit}; use the torch backend")


# --------------------------------------------------------------------------------------------
# Host arrays in the kernel's layout


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def padded_widths(plan: Plan, config: Config) -> list[int]:
    """Widths of layers 1..L rounded up to the k-tile: how deep the next layer's GEMM runs."""
    return [_round_up(w, config.k_tile) for w in plan.widths[1:]]


def _packed(parts: list[np.ndarray], dtype) -> np.ndarray:
    """The parts concatenated; never empty, so that the kernel gets a valid pointer."""
    return np.concatenate([np.asarray(p, dtype).ravel() for p in parts] or [np.zeros(1, dtype)])


def network_arrays(plan: Plan, config: Config) -> dict[str, np.ndarray]:
    """The network in the kernel's layout, every layer ``config.width`` neurons wide (zero padding):
    W^T of layers 2..L with the previous width rounded up to the k-tile as rows, biases, pattern keys."""
    npad, width = padded_widths(plan, config), config.width
    wt, bias = [], []
    for d, (w, b) in enumerate(zip(plan.weights, plan.biases), start=1):
        block = np.zeros((npad[d - 1], width), plan.dtype)
        block[: w.shape[1], : w.shape[0]] = w.T
        wt.append(block)
        padded = np.zeros(width, plan.dtype)
        padded[: b.size] = b
        bias.append(padded)
    keys = []
    for layer, n in enumerate(plan.widths[1:], start=1):
        table = np.zeros((width, 2), np.uint64)
        table[:n, 0], table[:n, 1] = pattern_keys(layer, n)
        keys.append(table)
    bias1 = np.zeros(width)
    bias1[: plan.bias1.size] = plan.bias1
    return dict(
        wt=_packed(wt, plan.dtype), bias=_packed(bias, plan.dtype), keys=_packed(keys, np.uint64),
        acts=np.asarray(plan.activations, np.int32), npad=np.asarray(npad, np.int32), bias1=bias1)


def trajectory_arrays(plans: list[Plan], config: Config) -> dict[str, np.ndarray]:
    """Every trajectory's projected basis (padded), input-length fields (scale, line_norm, coords),
    vertices and segment lengths, packed."""
    n1 = plans[0].widths[1]
    traj = np.zeros((len(plans), 6), np.int64)
    proj, verts, seglen = [], [], []
    offsets = np.zeros(3, np.int64)
    for b, plan in enumerate(plans):
        k = plan.proj.shape[0]
        padded = np.zeros((k, config.width))
        padded[:, :n1] = plan.proj
        traj[b] = (plan.kind, plan.n_points, offsets[0], k, offsets[1], offsets[2])
        proj.append(padded)
        verts.append(plan.vertices)
        seglen.append(plan.seg_len)
        offsets += (padded.size, plan.vertices.size, plan.seg_len.size)
    geom = [np.concatenate([[p.scale, p.line_norm], p.coords.ravel()]) for p in plans]
    return dict(traj=traj, proj=_packed(proj, np.float64), geom=_packed(geom, np.float64),
                verts=_packed(verts, np.float64), seglen=_packed(seglen, np.float64))


def output_arrays(xp, batch: int, depth: int, capacity: int) -> dict:
    """Zeroed counters, ``overflow`` at NO_OVERFLOW and the hash buffer, as ``xp`` (numpy or cupy) arrays."""
    return dict(
        trans=xp.zeros((batch, depth), np.uint64), pcs=xp.zeros((batch, depth), np.uint64),
        net=xp.zeros(batch, np.uint64), lengths=xp.zeros((batch, depth + 1), np.float64),
        overflow=xp.full(batch, NO_OVERFLOW, np.int32), hcount=xp.zeros(batch, np.uint64),
        hashes=xp.zeros((batch, capacity), np.uint64))


def kernel_args(net: dict, traj: dict, out: dict, plan: Plan, start: int, stop: int, smem: int) -> tuple:
    """The kernel's arguments in the order of FX_KERNEL_PARAMS (arrays of any array library)."""
    return (net["wt"], net["bias"], net["keys"], net["acts"], net["npad"], np.int32(plan.depth), net["bias1"],
            traj["proj"], traj["geom"], traj["verts"], traj["seglen"], traj["traj"], np.int32(plan.widths[0]),
            np.int64(start), np.int64(stop), out["trans"], out["pcs"], out["net"], out["lengths"], out["overflow"],
            out["hcount"], out["hashes"], np.int64(out["hashes"].shape[1]), np.int64(smem))


def grid(config: Config, batch: int, start: int, stop: int, sms: int) -> tuple[int, int, int]:
    """One wave of persistent blocks (at least one per trajectory), never more than the tiles."""
    tiles = max(1, -(-(stop - start - 1) // (config.rows - 1)))
    return (max(1, min(tiles, -(-sms * config.min_blocks // batch))), batch, 1)


def partials(out: dict, hashes: list[list[np.ndarray]]) -> list[Partials]:
    """Host Partials per trajectory from the (host) counters and the per-launch distinct hashes."""
    return [
        Partials(transitions=out["trans"][b].astype(np.int64), pattern_changes=out["pcs"][b].astype(np.int64),
                 network_changes=int(out["net"][b]), lengths=out["lengths"][b].copy(),
                 run_hashes=np.unique(np.concatenate(hashes[b])))
        for b in range(len(hashes))
    ]


# --------------------------------------------------------------------------------------------
# Running


def measure_launches(plans: list[Plan], start: int, stop: int, config: Config, xp, launch, sms: int) -> list[Partials]:
    """The launch loop behind ``run_batch``, for any array library ``xp`` and ``launch(grid, args)``.

    Each launch covers at most LAUNCH_POINTS samples of all trajectories together; neighbouring
    launches share one sample. Counters accumulate in place across launches; each launch's hashes
    are de-duplicated with ``xp.unique`` before they reach the host. Raises OverflowInForwardPass
    when the kernel saw an inf or NaN pre-activation.
    """
    to_host = getattr(xp, "asnumpy", np.asarray)
    first, batch = plans[0], len(plans)
    net = {k: xp.asarray(v) for k, v in network_arrays(first, config).items()}
    traj = {k: xp.asarray(v) for k, v in trajectory_arrays(plans, config).items()}
    per_launch = max(2, LAUNCH_POINTS // batch)
    capacity = min(per_launch, stop - start)
    out = output_arrays(xp, batch, first.depth, capacity)
    smem = config.smem_bytes(first.depth)
    hashes: list[list[np.ndarray]] = [[] for _ in plans]
    a = start
    while True:
        b = min(a + per_launch, stop)
        out["hcount"].fill(0)
        if DEBUG:
            out["hashes"].fill(POISON)
        launch(grid(config, batch, a, b, sms), kernel_args(net, traj, out, first, a, b, smem))
        counts = to_host(out["hcount"])
        if DEBUG and np.any(counts > capacity):
            raise RuntimeError(f"the cuda kernel reserved {counts.max()} hash slots of {capacity}")
        for i, count in enumerate(counts):
            emitted = out["hashes"][i, : int(count)]
            if DEBUG and bool((emitted == POISON).any()):
                raise RuntimeError("the cuda kernel left a reserved hash slot unwritten")
            hashes[i].append(to_host(xp.unique(emitted)))
        if b == stop:
            break
        a = b - 1
    host = {k: to_host(v) for k, v in out.items() if k != "hashes"}
    for plan, layer in zip(plans, host["overflow"]):
        check_forward_pass(plan, 0 if layer == NO_OVERFLOW else int(layer))
    return partials(host, hashes)


def _validate(plans: list[Plan], start: int, stop: int) -> None:
    first = plans[0]
    for plan in plans:
        plan.check_range(start, stop)
        same = (plan.widths == first.widths and plan.activations == first.activations
                and np.dtype(plan.dtype) == np.dtype(first.dtype)
                and all(a is b or np.array_equal(a, b) for a, b in zip(
                    (plan.bias1, *plan.weights, *plan.biases), (first.bias1, *first.weights, *first.biases))))
        if not same:
            raise ValueError("run_batch needs the same network (weights, biases, activations, dtype) in every plan")


def run_batch(plans: list[Plan], start: int, stop: int) -> list[Partials]:
    """Partials of samples ``start .. stop-1`` of every plan (one network, many trajectories).

    Runs on the plan's GPU (``plan.device`` "cuda:N"), else on CuPy's current device.
    """
    import cupy

    plans = list(plans)
    if not plans:
        raise ValueError("run_batch needs at least one plan")
    _validate(plans, start, stop)
    where = plans[0].device
    device = int(where.split(":")[1]) if where.startswith("cuda:") else cupy.cuda.Device().id
    with cupy.cuda.Device(device):
        runtime = cupy.cuda.runtime
        limit = runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device)
        config = config_for(plans[0], limit)
        smem = config.smem_bytes(plans[0].depth)
        kernel = cuda_compile.get_function(SOURCE, config.name, ("-lineinfo",) if DEBUG else ())
        kernel.max_dynamic_shared_size_bytes = smem
        sms = runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device)

        def launch(grid_dims, args):
            kernel(grid_dims, (config.threads, 1, 1), args, shared_mem=smem)

        return measure_launches(plans, start, stop, config, cupy, launch, sms)


def run(plan: Plan, start: int, stop: int) -> Partials:
    """Partials of samples ``start .. stop-1`` of ``plan`` (see fastexpr.plan.Partials)."""
    return run_batch([plan], start, stop)[0]
