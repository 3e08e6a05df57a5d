"""cuda backend: the fused kernels of ``csrc/cuda/measure.cu``, compiled at first use (NVRTC via CuPy).

One launch measures every trajectory of a batch through the same network (block x of the grid
works on trajectory x // workers) over a range of samples; a run loops over launches that share
their boundary sample, each sized to take about ``LAUNCH_SECONDS`` (first from the work per
sample and a guessed rate, then from the rate the launches achieve), so that Ctrl-C and display
watchdogs never wait long and memory does not grow with N. Counters accumulate on the device;
after each launch the run-start hashes of all trajectories are de-duplicated on the device in one
segmented sort and only the distinct ones are copied back. NumPy in, NumPy out: the plan's
arrays are uploaded once per call. Design and performance notes: bench/notes_cuda.md.

CuPy is imported lazily, so importing this module never touches CUDA, and its host logic
(layouts, grid, launch sizing, de-duplication; NumPy stands in for CuPy) runs without it
(tests/test_cuda_host.py). Set ``FASTEXPR_DEBUG=1`` (or ``DEBUG = True``) to poison the hash
buffer before every launch, check what the kernel wrote, and compile with line information for
compute-sanitizer.
"""
from __future__ import annotations

import ctypes
import functools
import os
import re
import sys
from dataclasses import dataclass
from time import perf_counter

import numpy as np

from ..plan import Partials, Plan, check_forward_pass, distinct_sorted, pattern_keys
from . import cuda_compile

from .cuda_exact import EXACT_UNITS, exact_walk  # noqa: F401  (the exact engine on the GPU)

NAME = "cuda"

#: Seconds of GPU work per ``run_batch`` call that ``chunk_points`` aims at (``measure``'s progress).
CHUNK_SECONDS = 1.0
#: Seconds one launch should take: long enough to hide the launch and the host's share, short
#: enough for Ctrl-C and display watchdogs.
LAUNCH_SECONDS = 0.25
#: Most samples per launch, all trajectories together: the hash buffer holds 8 bytes per sample.
MAX_LAUNCH_POINTS = 1 << 24
#: Blocks per trajectory; None: one wave of resident blocks (tests set it low: many tiles per block).
BLOCKS_PER_TRAJECTORY: int | None = None
#: The kernels' speed in FLOP-equivalents per second (``work_per_point``) assumed before a launch
#: has been timed, by item size: well below an H100's, so that a first launch on a smaller GPU
#: stays short too.
RATE_GUESS = {4: 2e13, 8: 4e12}
#: Epilogue cost per neuron and layer in FLOP-equivalents (about 20 instructions; bench/notes_cuda.md).
EPILOGUE_FLOPS = 40
#: The largest gridDim.x.
MAX_GRID_X = 2**31 - 1
#: Poison outputs and check them after every launch; compile with -lineinfo.
DEBUG = os.environ.get("FASTEXPR_DEBUG", "0") not in ("", "0")
#: What an unwritten hash slot holds in debug mode.
POISON = np.uint64(0xDEADBEEFDEADBEEF)
#: The kernel's ``overflow`` output before any block reports a layer with an inf or NaN pre-activation.
NO_OVERFLOW = np.iinfo(np.int32).max

SOURCE = "measure.cu"
_KERNEL_LINE = re.compile(r"^FX_KERNEL\((\w+), (float|double), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)\)$",
                          re.MULTILINE)
_ERROR_LINE = re.compile(r"^#define FX_ERROR_(\w+) (\d+)\b", re.MULTILINE)
#: A tiny kernel that ``probe`` compiles and runs: it includes the shared header like measure.cu does.
_PROBE_SOURCE = r"""
#include "semantics.h"
extern "C" __global__ void fx_probe(unsigned long long* keys) {
  keys[threadIdx.x] = fx::pattern_key(1, threadIdx.x, 1);
}
"""
#: Samples per second achieved so far, per (device, configuration, padded widths).
_RATES: dict[tuple, float] = {}


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
    """Raise as ``probe_runtime`` does, and when no configuration of the measure kernels fits the
    current device's shared memory."""
    probe_runtime()
    import cupy

    device = cupy.cuda.Device().id
    limit, need = _smem_limit(cupy, device), min(c.smem_bytes(1) for c in configs())
    if need > limit:
        raise RuntimeError(f"the cuda kernels need at least {need} bytes of shared memory per block, "
                           f"device {device} offers {limit}")


def probe_runtime() -> None:
    """Raise ImportError without CuPy (saying which extra to install), RuntimeError without a device,
    when a tiny kernel that includes the shared header cannot be compiled (NVRTC missing, too new
    for the driver, broken) or run, or computes wrong keys."""
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
    try:
        keys = cupy.zeros(32, np.uint64)
        cuda_compile.load_code(_PROBE_SOURCE).get_function("fx_probe")((1,), (32,), (keys,))
        got = cupy.asnumpy(keys)
    except Exception as exc:  # noqa: BLE001 - NVRTC, the driver and CuPy each raise their own kinds
        raise RuntimeError(f"CuPy cannot compile and run a CUDA kernel here ({type(exc).__name__}: {exc}); "
                           f"{_install_hint()}") from exc
    if not np.array_equal(got, pattern_keys(1, 32)[0]):
        raise RuntimeError("a CUDA kernel computed wrong pattern keys: the GPU or its compiler is unusable")


def _smem_limit(cupy, device: int) -> int:
    """Shared memory one block of ``device`` may opt in to, in bytes."""
    runtime = cupy.cuda.runtime
    return runtime.deviceGetAttribute(runtime.cudaDevAttrMaxSharedMemoryPerBlockOptin, device)


def _device_index(plan: Plan, cupy) -> int:
    """The plan's GPU ("cuda:N"), else CuPy's current device."""
    return int(plan.device.split(":")[1]) if plan.device.startswith("cuda:") else cupy.cuda.Device().id


def unavailable_reason(plans: list[Plan]) -> str | None:
    """Why these plans cannot run on this backend here (a layer too wide, too little shared memory
    on their device), or None: what ``auto`` checks before it picks this backend."""
    import cupy

    try:
        config_for(plans[0], _smem_limit(cupy, _device_index(plans[0], cupy)))
    except ValueError as exc:
        return str(exc)
    return None


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
    found = []
    for name, ctype, *numbers in _KERNEL_LINE.findall(cuda_compile.source(SOURCE)):
        dtype = np.dtype(np.float32 if ctype == "float" else np.float64)
        found.append(Config(name, dtype, *map(int, numbers)))
    return tuple(sorted(found, key=lambda c: (c.dtype.itemsize, c.width)))


@functools.lru_cache(maxsize=None)
def errors() -> dict[str, int]:
    """The bits of the kernels' ``error`` flag (the FX_ERROR_* lines of measure.cu), by name."""
    return {name: int(bit) for name, bit in _ERROR_LINE.findall(cuda_compile.source(SOURCE))}


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
    """Zeroed counters, ``overflow`` at NO_OVERFLOW, the error flag and the hash buffer, as ``xp``
    (numpy or cupy) arrays."""
    return dict(
        trans=xp.zeros((batch, depth), np.uint64), pcs=xp.zeros((batch, depth), np.uint64),
        net=xp.zeros(batch, np.uint64), lengths=xp.zeros((batch, depth + 1), np.float64),
        overflow=xp.full(batch, NO_OVERFLOW, np.int32), hcount=xp.zeros(batch, np.uint64),
        hashes=xp.zeros((batch, capacity), np.uint64), error=xp.zeros(1, np.int32))


def kernel_args(net: dict, traj: dict, out: dict, plan: Plan, start: int, stop: int, smem: int,
                workers: int) -> tuple:
    """The kernel's arguments in the order of FX_KERNEL_PARAMS (arrays of any array library)."""
    return (net["wt"], net["bias"], net["keys"], net["acts"], net["npad"], np.int32(plan.depth), net["bias1"],
            traj["proj"], traj["geom"], traj["verts"], traj["seglen"], traj["traj"], np.int32(plan.widths[0]),
            np.int64(start), np.int64(stop), out["trans"], out["pcs"], out["net"], out["lengths"], out["overflow"],
            out["hcount"], out["hashes"], np.int64(out["hashes"].shape[1]), np.int64(smem), np.int32(workers),
            out["error"])


def workers(config: Config, batch: int, start: int, stop: int, sms: int) -> int:
    """Blocks per trajectory: one wave of persistent blocks over the batch (or BLOCKS_PER_TRAJECTORY),
    at least one, never more than the tiles, and ``workers * batch`` within gridDim.x."""
    tiles = max(1, -(-(stop - start - 1) // (config.rows - 1)))
    wave = BLOCKS_PER_TRAJECTORY or -(-sms * config.min_blocks // batch)
    return max(1, min(tiles, wave, MAX_GRID_X // batch))


def work_per_point(plan: Plan, config: Config) -> int:
    """The kernel's work per sample in FLOP-equivalents: the GEMMs of layers 2..L as computed
    (``config.width`` columns deep as the previous padded width) and every layer's epilogue."""
    return config.width * (2 * sum(padded_widths(plan, config)[:-1]) + EPILOGUE_FLOPS * plan.depth)


def guessed_rate(plan: Plan, config: Config) -> float:
    """Samples per second expected before any launch was timed (RATE_GUESS over the work per sample)."""
    return RATE_GUESS[config.dtype.itemsize] / work_per_point(plan, config)


def _rate_key(plan: Plan, config: Config, device: int) -> tuple:
    """What the achieved rate of a launch depends on: the device, the kernel and the layer sizes it computes."""
    return device, config.name, tuple(padded_widths(plan, config))


def launch_points(rate: float, batch: int) -> int:
    """Samples per trajectory for a launch of LAUNCH_SECONDS at ``rate`` samples per second (all
    trajectories together): at least 2, at most MAX_LAUNCH_POINTS over the batch."""
    return max(2, min(int(rate * LAUNCH_SECONDS), MAX_LAUNCH_POINTS) // batch)


def check_launch(counts: np.ndarray, capacity: int, error: int) -> None:
    """RuntimeError when the kernel raised an error bit or emitted more hashes than a row holds
    (it writes only the first ``capacity``): both would be bugs, never a property of the input."""
    if error & errors()["SHARED_MEMORY"]:
        raise RuntimeError("the cuda kernel's shared-memory layout (Smem in measure.cu) needs more than "
                           "Config.smem_bytes gave the launch")
    if error:
        raise RuntimeError(f"the cuda kernel reported error bits {error:#x}")
    if counts.size and int(counts.max()) > capacity:
        raise RuntimeError(f"the cuda kernel emitted {int(counts.max())} hashes into a row of {capacity} slots")


def distinct_hashes(xp, hashes, counts, host_counts: np.ndarray) -> list[np.ndarray]:
    """Per row b of ``hashes`` (batch, capacity), the distinct values among its first ``counts[b]``,
    sorted, as host arrays: one segmented sort on the device ((row, hash) pairs in lexicographic
    order), one copy back. ``host_counts`` is ``counts`` on the host."""
    to_host = getattr(xp, "asnumpy", np.asarray)
    batch = hashes.shape[0]
    used = int(host_counts.max()) if host_counts.size else 0
    if used == 0:
        return [np.empty(0, np.uint64) for _ in range(batch)]
    rows, cols = xp.nonzero(xp.arange(used)[None, :] < counts.astype(np.int64)[:, None])
    values = hashes[rows, cols]
    if DEBUG and bool((values == POISON).any()):
        raise RuntimeError("the cuda kernel left a reserved hash slot unwritten")
    rows = rows.astype(np.uint64)
    order = xp.lexsort(xp.stack([values, rows]))
    rows, values = rows[order], values[order]
    first = xp.ones(rows.size, bool)
    first[1:] = (rows[1:] != rows[:-1]) | (values[1:] != values[:-1])
    pairs = to_host(xp.stack([rows[first], values[first]]))
    bounds = np.searchsorted(pairs[0], np.arange(batch + 1, dtype=np.uint64))
    return [pairs[1, a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def partials(out: dict, found: list[list[np.ndarray]]) -> list[Partials]:
    """Host Partials per trajectory from the (host) counters and each launch's distinct hashes."""
    return [
        Partials(transitions=out["trans"][b].astype(np.int64), pattern_changes=out["pcs"][b].astype(np.int64),
                 network_changes=int(out["net"][b]), lengths=out["lengths"][b].copy(),
                 run_hashes=distinct_sorted(np.concatenate(found[b])))
        for b in range(len(found))
    ]


# --------------------------------------------------------------------------------------------
# Running


def measure_launches(plans: list[Plan], start: int, stop: int, config: Config, xp, launch, sms: int,
                     device: int = 0) -> list[Partials]:
    """The launch loop behind ``run_batch``, for any array library ``xp`` and ``launch(grid, args)``.

    Each launch covers the same samples of every trajectory, as many as take about LAUNCH_SECONDS
    (``launch_points`` at the rate of earlier launches on this device and network layout, else
    ``guessed_rate``); neighbouring launches share one sample. Counters accumulate in place;
    each launch's hashes are de-duplicated on the device (``distinct_hashes``). Raises
    OverflowInForwardPass when the kernel saw an inf or NaN pre-activation.
    """
    to_host = getattr(xp, "asnumpy", np.asarray)
    first, batch = plans[0], len(plans)
    net = {k: xp.asarray(v) for k, v in network_arrays(first, config).items()}
    traj = {k: xp.asarray(v) for k, v in trajectory_arrays(plans, config).items()}
    capacity = min(max(2, MAX_LAUNCH_POINTS // batch), stop - start)
    out = output_arrays(xp, batch, first.depth, capacity)
    smem = config.smem_bytes(first.depth)
    key = _rate_key(first, config, device)
    rate = _RATES.get(key) or guessed_rate(first, config)
    found: list[list[np.ndarray]] = [[] for _ in plans]
    a = start
    while True:
        planned = min(launch_points(rate, batch), capacity)
        b = min(a + planned, stop)
        began = perf_counter()
        out["hcount"].fill(0)
        if DEBUG:
            out["hashes"].fill(POISON)
        blocks = workers(config, batch, a, b, sms)
        launch((blocks * batch, 1, 1), kernel_args(net, traj, out, first, a, b, smem, blocks))
        counts = to_host(out["hcount"])
        check_launch(counts, capacity, int(to_host(out["error"])[0]))
        for row, distinct in zip(found, distinct_hashes(xp, out["hashes"], out["hcount"], counts)):
            row.append(distinct)
        if b - a == planned:  # a launch cut short by `stop` would understate the rate
            rate = _RATES[key] = batch * planned / max(perf_counter() - began, 1e-6)
        if b == stop:
            break
        a = b - 1
    host = {k: to_host(v) for k, v in out.items() if k != "hashes"}
    for plan, layer in zip(plans, host["overflow"]):
        check_forward_pass(plan, 0 if layer == NO_OVERFLOW else int(layer))
    return partials(host, found)


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

    Runs on the plan's GPU (``plan.device`` "cuda:N"), else on CuPy's current device, on CuPy's
    current stream.
    """
    import cupy

    plans = list(plans)
    if not plans:
        raise ValueError("run_batch needs at least one plan")
    _validate(plans, start, stop)
    device = _device_index(plans[0], cupy)
    with cupy.cuda.Device(device):
        config = config_for(plans[0], _smem_limit(cupy, device))
        smem = config.smem_bytes(plans[0].depth)
        kernel = cuda_compile.get_function(SOURCE, config.name, ("-lineinfo",) if DEBUG else ())
        kernel.max_dynamic_shared_size_bytes = smem
        runtime = cupy.cuda.runtime
        sms = runtime.deviceGetAttribute(runtime.cudaDevAttrMultiProcessorCount, device)

        def launch(grid_dims, args):
            kernel(grid_dims, (config.threads, 1, 1), args, shared_mem=smem)

        return measure_launches(plans, start, stop, config, cupy, launch, sms, device)


def run(plan: Plan, start: int, stop: int) -> Partials:
    """Partials of samples ``start .. stop-1`` of ``plan`` (see fastexpr.plan.Partials)."""
    return run_batch([plan], start, stop)[0]


def chunk_points(plans: list[Plan]) -> int:
    """Samples per trajectory for one ``run_batch`` call of about CHUNK_SECONDS, at the rate of
    earlier launches (else the guessed one): how ``measure`` cuts a trajectory, so that its
    progress moves while each call still holds several launches."""
    import cupy

    device = _device_index(plans[0], cupy)
    config = config_for(plans[0], _smem_limit(cupy, device))
    rate = _RATES.get(_rate_key(plans[0], config, device)) or guessed_rate(plans[0], config)
    return max(2, int(rate * CHUNK_SECONDS) // len(plans))
