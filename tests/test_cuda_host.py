"""The cuda backend's host logic without a GPU or CuPy: compile options and cache key, kernel
arguments against measure.cu's parameter list, shared memory, grid, array layouts, launch
sizing, the launch loop and its de-duplication (NumPy standing in for CuPy, a NumPy model of
one launch standing in for the kernel)."""
from __future__ import annotations

import dataclasses

import re
import shutil
import sys
import types

import numpy as np
import pytest

import fastexpr as fx
from fastexpr.backends import cuda, cuda_compile
from fastexpr.measure import make_plan
from fastexpr.plan import pattern_keys

from .cases import network, trajectory
from .reference import activate, reference_measure, region_codes, sample_points

pytestmark = pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")

INPUT_DIM = 6
SOURCES = ("measure.cu", "traj_length.cu", "exact.cu", "taps.cu")


# --------------------------------------------------------------------------------------------
# Helpers; the reference's per-sample view is shared with tests/test_cuda.py


def forward(net, traj, n_points: int):
    """Per layer, the region codes and activations of every sample (float64 reference)."""
    h = sample_points(traj, n_points)
    layers = []
    for w, b, act in zip(net.weights, net.biases, net.activations):
        z = h @ w.T + b
        h = activate(z, act)
        layers.append((region_codes(z, act), h))
    return layers


def fx_net(sizes, act="relu", seed=0) -> fx.Network:
    """A random network with these layer sizes (input first)."""
    rng = np.random.default_rng(seed)
    return fx.from_arrays([rng.standard_normal((o, i)) for i, o in zip(sizes, sizes[1:])],
                          [rng.standard_normal(o) for o in sizes[1:]], [act] * (len(sizes) - 1))


def sample_hashes(net, traj, n_points: int) -> np.ndarray:
    """The pattern hash of every sample, from the reference's codes and the keys of fastexpr.plan."""
    total = np.zeros(n_points, np.uint64)
    for layer, (codes, _) in enumerate(forward(net, traj, n_points), start=1):
        plus, minus = pattern_keys(layer, codes.shape[1])
        with np.errstate(over="ignore"):
            total += np.where(codes > 0, plus, np.where(codes < 0, minus, 0)).astype(np.uint64).sum(
                axis=1, dtype=np.uint64)
    return total


# --------------------------------------------------------------------------------------------
# Compile options and CuPy's cache key


def copied_sources(tmp_path):
    root = tmp_path / "csrc"
    shutil.copytree(cuda_compile.source_dir(), root)
    return root


def include_digest(filename: str, root) -> str:
    (option,) = [o for o in cuda_compile.nvrtc_options(cuda_compile.source(filename, root), (), root)
                 if o.startswith("-DFX_INCLUDES_SHA256=")]
    return option


def test_included_files_are_found_transitively():
    root = cuda_compile.source_dir()
    dirs = cuda_compile.include_dirs(root)
    names = {f: [p.name for p in cuda_compile.included_files(cuda_compile.source(f), dirs)] for f in SOURCES}
    assert names == {"measure.cu": ["semantics.h"], "traj_length.cu": [], "exact.cu": ["exact_walk.h", "semantics.h"],
                     "taps.cu": []}


def test_options_keep_the_include_path_and_extra_options():
    root = cuda_compile.source_dir()
    options = cuda_compile.nvrtc_options(cuda_compile.source("measure.cu"), ("-lineinfo",), root)
    assert options[0] == "-std=c++17" and options[-1] == "-lineinfo"
    assert f"-I{root / 'common'}" in options and f"-I{root / 'cuda'}" in options


@pytest.mark.parametrize("header, changed", [("semantics.h", {"measure.cu", "exact.cu"}),
                                             ("exact_walk.h", {"exact.cu"})])
def test_an_edited_header_changes_the_key(tmp_path, header, changed):
    """CuPy keys its disk cache by source and options: the digest option must follow every
    included file, transitively (exact.cu -> exact_walk.h -> semantics.h)."""
    root = copied_sources(tmp_path)
    before = {f: include_digest(f, root) for f in SOURCES}
    path = root / "common" / header
    path.write_text(path.read_text() + "\n// edited\n")
    after = {f: include_digest(f, root) for f in SOURCES}
    assert {f for f in SOURCES if before[f] != after[f]} == changed


def test_an_edited_header_reaches_cupy(tmp_path, monkeypatch):
    """What CuPy is handed after an edit differs, so it compiles afresh (a new process, or after
    clearing this process's cache), while an unchanged tree is served from the cache."""
    handed = []
    fake = types.SimpleNamespace(RawModule=lambda code, options: handed.append((code, options)) or object())
    monkeypatch.setitem(sys.modules, "cupy", fake)
    root = copied_sources(tmp_path)
    cuda_compile.load_code.cache_clear()
    try:
        cuda_compile.load_module("measure.cu", (), root)
        cuda_compile.load_module("measure.cu", (), root)
        assert len(handed) == 1
        header = root / "common" / "semantics.h"
        header.write_text(header.read_text().replace("0x9E3779B97F4A7C15ULL", "0x9E3779B97F4A7C17ULL"))
        cuda_compile.load_code.cache_clear()
        cuda_compile.load_module("measure.cu", (), root)
    finally:
        cuda_compile.load_code.cache_clear()
    (code1, options1), (code2, options2) = handed
    assert code1 == code2 and options1 != options2


# --------------------------------------------------------------------------------------------
# Kernel parameters, errors, configurations, shared memory


def kernel_params() -> list[tuple[str, str, bool]]:
    """(name, C type, pointer) of each parameter in FX_KERNEL_PARAMS of measure.cu."""
    text = (cuda_compile.source_dir() / "cuda" / "measure.cu").read_text()
    body = re.search(r"#define FX_KERNEL_PARAMS\(T\)(.*?)\n\n", text, re.S).group(1).replace("\\\n", " ")
    params = []
    for part in body.split(","):
        words = part.replace("*", " * ").split()
        params.append((words[-1], " ".join(w for w in words[:-1] if w not in ("const", "*")), "*" in words))
    return params


def arrays_for(plans, config, capacity=10):
    net = cuda.network_arrays(plans[0], config)
    traj = cuda.trajectory_arrays(plans, config)
    out = cuda.output_arrays(np, len(plans), plans[0].depth, capacity)
    return net, traj, out


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_args_match_the_kernel_parameters(dtype):
    """kernel_args passes what FX_KERNEL_PARAMS declares, in order: arrays of the declared element
    type for pointers, int32 for int, int64 for long long."""
    plan = make_plan(network("mixed", INPUT_DIM), trajectory("arc", INPUT_DIM), 100, dtype)
    config = cuda.config_for(plan)
    args = cuda.kernel_args(*arrays_for([plan], config), plan, 0, 100, config.smem_bytes(plan.depth), 3)
    params = kernel_params()
    assert len(args) == len(params)
    element = {"T": np.dtype(dtype), "double": np.float64, "int": np.int32, "long long": np.int64,
               "unsigned long long": np.uint64}
    for arg, (name, ctype, pointer) in zip(args, params):
        if pointer:
            assert isinstance(arg, np.ndarray) and arg.dtype == element[ctype] and arg.flags.c_contiguous, name
        else:
            assert type(arg) is {"int": np.int32, "long long": np.int64}[ctype], name


def test_error_bits_are_read_from_the_source():
    assert cuda.errors() == {"SHARED_MEMORY": 1}


def test_configurations():
    names = [c.name for c in cuda.configs()]
    assert len(names) == len(set(names)) == 10
    for c in cuda.configs():
        assert c.name == f"measure_f{8 * c.dtype.itemsize}_w{c.width}"
        assert c.threads % 32 == 0 and c.rows % c.rows_per_thread == 0 and c.width % c.k_tile == 0


# Shared memory per block at depth 10 in KiB, as bench/notes_cuda.md tabulates it.
SMEM_KIB_DEPTH_10 = {"measure_f32_w64": 62.8125, "measure_f32_w128": 110.8125, "measure_f32_w256": 107.5625,
                     "measure_f32_w512": 106.4375, "measure_f32_w1024": 211.46875, "measure_f64_w64": 103.3125,
                     "measure_f64_w128": 99.8125, "measure_f64_w256": 98.0625, "measure_f64_w512": 97.5,
                     "measure_f64_w1024": 160.90625}
H100_SMEM_OPTIN = 232448
A100_SMEM_OPTIN = 166912


@pytest.mark.parametrize("config", cuda.configs(), ids=lambda c: c.name)
def test_smem_bytes(config):
    assert config.smem_bytes(10) == SMEM_KIB_DEPTH_10[config.name] * 1024
    sizes = [config.smem_bytes(d) for d in range(1, 200)]
    assert all(s % 16 == 0 for s in sizes)
    # three 8-byte counters per layer (transitions, pattern changes, length), each part 16-byte aligned
    assert all(0 <= b - a <= 48 for a, b in zip(sizes, sizes[1:])) and abs(sizes[-1] - sizes[0] - 198 * 24) <= 48
    assert config.smem_bytes(150) <= H100_SMEM_OPTIN


def test_config_for_picks_the_narrowest_that_fits():
    net = fx_net([INPUT_DIM, 100, 100])
    plan = make_plan(net, trajectory("arc", INPUT_DIM), 10, "float32")
    assert cuda.config_for(plan).name == "measure_f32_w128"
    assert cuda.config_for(plan, 108 * 1024).name == "measure_f32_w256"  # w128 needs 110.8 KiB
    wide = make_plan(fx_net([INPUT_DIM, 1000]), trajectory("arc", INPUT_DIM), 10, "float32")
    assert cuda.config_for(wide, H100_SMEM_OPTIN).name == "measure_f32_w1024"
    with pytest.raises(ValueError, match="shared memory"):
        cuda.config_for(wide, A100_SMEM_OPTIN)
    with pytest.raises(ValueError, match="neurons wide"):
        cuda.config_for(make_plan(fx_net([INPUT_DIM, 1025]), trajectory("arc", INPUT_DIM), 10, "float64"))


# --------------------------------------------------------------------------------------------
# Grid and array layouts


def test_workers():
    config = dataclasses.replace(next(c for c in cuda.configs() if c.name == "measure_f32_w128"), min_blocks=2)
    assert config.rows == 128
    assert cuda.workers(config, 1, 0, 2, 132) == 1                       # one pair: one tile
    assert cuda.workers(config, 1, 0, 10**6, 132) == 264                 # one wave
    assert cuda.workers(config, 3, 0, 10**6, 132) == 88
    assert cuda.workers(config, 1000, 0, 10**6, 132) == 1                # at least one per trajectory
    assert cuda.workers(config, 1, 0, 127 * 5 + 1, 132) == 5             # never more than the tiles
    assert cuda.workers(config, 1, 0, 127 * 5 + 2, 132) == 6
    assert cuda.workers(config, 1, 5, 6, 132) == 1                       # a single sample
    assert cuda.workers(config, 2**30, 0, 10**6, 132) * 2**30 <= cuda.MAX_GRID_X


def test_workers_override(monkeypatch):
    config = cuda.configs()[0]
    monkeypatch.setattr(cuda, "BLOCKS_PER_TRAJECTORY", 2)
    assert cuda.workers(config, 7, 0, 10**6, 132) == 2
    assert cuda.workers(config, 7, 0, 3, 132) == 1


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_network_arrays(dtype):
    net = network("mixed", INPUT_DIM, seed=1)  # widths 13, 7, 19, 5
    plan = make_plan(net, trajectory("arc", INPUT_DIM), 10, dtype)
    config = cuda.config_for(plan)
    arrays = cuda.network_arrays(plan, config)
    width, npad = config.width, cuda.padded_widths(plan, config)
    assert npad == [-(-w // config.k_tile) * config.k_tile for w in (13, 7, 19, 5)]
    assert arrays["wt"].dtype == np.dtype(dtype) and arrays["wt"].size == sum(npad[:-1]) * width
    offset = 0
    for d, (w, b) in enumerate(zip(plan.weights, plan.biases)):
        block = arrays["wt"][offset: offset + npad[d] * width].reshape(npad[d], width)
        np.testing.assert_array_equal(block[: w.shape[1], : w.shape[0]], w.T)
        assert not block[w.shape[1]:].any() and not block[:, w.shape[0]:].any()
        bias = arrays["bias"][d * width: (d + 1) * width]
        np.testing.assert_array_equal(bias[: b.size], b)
        assert not bias[b.size:].any()
        offset += npad[d] * width
    keys = arrays["keys"].reshape(plan.depth, width, 2)
    for layer, n in enumerate(plan.widths[1:], start=1):
        plus, minus = pattern_keys(layer, n)
        np.testing.assert_array_equal(keys[layer - 1, :n, 0], plus)
        np.testing.assert_array_equal(keys[layer - 1, :n, 1], minus)
        assert not keys[layer - 1, n:].any()
    np.testing.assert_array_equal(arrays["bias1"][:13], plan.bias1)
    assert arrays["bias1"].size == width and not arrays["bias1"][13:].any()
    np.testing.assert_array_equal(arrays["acts"], plan.activations)
    np.testing.assert_array_equal(arrays["npad"], npad)


def test_trajectory_arrays():
    net = network("relu", INPUT_DIM, seed=1)
    kinds = ["line", "polyline", "arc", "polyline_closed", "great_circle"]
    plans = [make_plan(net, trajectory(k, INPUT_DIM, seed=i), 50, "float64") for i, k in enumerate(kinds)]
    config = cuda.config_for(plans[0])
    arrays = cuda.trajectory_arrays(plans, config)
    for b, plan in enumerate(plans):
        kind, n, proj_at, k, verts_at, seg_at = arrays["traj"][b]
        assert (kind, n, k) == (plan.kind, 50, plan.proj.shape[0])
        proj = arrays["proj"][proj_at: proj_at + k * config.width].reshape(k, config.width)
        np.testing.assert_array_equal(proj[:, : plan.proj.shape[1]], plan.proj)
        assert not proj[:, plan.proj.shape[1]:].any()
        np.testing.assert_array_equal(arrays["verts"][verts_at: verts_at + plan.vertices.size], plan.vertices.ravel())
        np.testing.assert_array_equal(arrays["seglen"][seg_at: seg_at + plan.seg_len.size], plan.seg_len)
        np.testing.assert_array_equal(arrays["geom"][6 * b: 6 * b + 6],
                                      [plan.scale, plan.line_norm, *plan.coords.ravel()])


# --------------------------------------------------------------------------------------------
# Launch sizing


def test_work_and_launch_points(monkeypatch):
    monkeypatch.setattr(cuda, "LAUNCH_SECONDS", 0.25)
    plan = make_plan(fx_net([784] + [128] * 10, "hardtanh"), trajectory("arc", 784), 10, "float32")
    config = cuda.config_for(plan)
    assert cuda.work_per_point(plan, config) == 128 * (2 * 9 * 128 + cuda.EPILOGUE_FLOPS * 10)
    assert cuda.guessed_rate(plan, config) == cuda.RATE_GUESS[4] / cuda.work_per_point(plan, config)
    assert cuda.launch_points(4e6, 1) == 1_000_000
    assert cuda.launch_points(4e6, 3) == 333_333
    assert cuda.launch_points(1e12, 1) == cuda.MAX_LAUNCH_POINTS
    assert cuda.launch_points(1.0, 1) == 2
    assert cuda.launch_points(1e12, cuda.MAX_LAUNCH_POINTS) == 2           # at least 2 per trajectory
    monkeypatch.setattr(cuda, "LAUNCH_SECONDS", 1.0)
    assert cuda.launch_points(4e6, 1) == 4_000_000


def test_check_launch():
    cuda.check_launch(np.array([3, 0, 5], np.uint64), 5, 0)
    with pytest.raises(RuntimeError, match="emitted 6 hashes into a row of 5"):
        cuda.check_launch(np.array([3, 6], np.uint64), 5, 0)
    with pytest.raises(RuntimeError, match="shared-memory layout"):
        cuda.check_launch(np.array([1], np.uint64), 5, 1)
    with pytest.raises(RuntimeError, match="error bits 0x4"):
        cuda.check_launch(np.array([1], np.uint64), 5, 4)


def test_distinct_hashes():
    """Per row, the distinct values among the written slots, whatever lies beyond them."""
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 6, (5, 40)).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    hashes[1, 3] = np.uint64(2**64 - 1)
    counts = np.array([40, 7, 0, 1, 23], np.uint64)
    got = cuda.distinct_hashes(np, hashes, counts, counts)
    for row, count, distinct in zip(hashes, counts, got):
        np.testing.assert_array_equal(distinct, np.unique(row[: int(count)]))
    assert all(len(d) == 0 for d in cuda.distinct_hashes(np, hashes, counts * 0, counts * 0))


# --------------------------------------------------------------------------------------------
# The launch loop, with a NumPy model of the kernel


class ModelKernel:
    """One launch of measure.cu in NumPy, from the reference's per-sample codes and activations:
    the contract the host loop relies on. Records each launch's grid and sample range; a fake
    clock advances by the samples over ``rate``."""

    def __init__(self, net, trajs, n_points, rate=1e6):
        self.pairs = []
        for traj in trajs:
            layers = forward(net, traj, n_points)
            x = sample_points(traj, n_points)
            step = [np.linalg.norm(np.diff(x, axis=0), axis=1)] + [np.linalg.norm(np.diff(h, axis=0), axis=1)
                                                                   for _, h in layers]
            diff = [np.abs(np.diff(c, axis=0)) for c, _ in layers]
            self.pairs.append(dict(
                trans=np.stack([d.sum(axis=1) for d in diff]), pcs=np.stack([d.any(axis=1) for d in diff]),
                net=np.any([d.any(axis=1) for d in diff], axis=0), lengths=np.stack(step),
                hashes=sample_hashes(net, traj, n_points)))
        self.names = [name for name, _, _ in kernel_params()]
        self.launches, self.now, self.rate = [], 0.0, rate

    def clock(self):
        return self.now

    def __call__(self, grid, args):
        a = dict(zip(self.names, args))
        start, stop, workers = int(a["start"]), int(a["stop"]), int(a["workers"])
        batch = len(self.pairs)
        assert grid == (workers * batch, 1, 1) and a["hashes"].shape == (batch, int(a["cap"]))
        self.launches.append((start, stop, workers))
        self.now += batch * (stop - start) / self.rate
        for b, p in enumerate(self.pairs):
            pair = slice(start, stop - 1)
            a["trans"][b] += p["trans"][:, pair].sum(axis=1).astype(np.uint64)
            a["pcs"][b] += p["pcs"][:, pair].sum(axis=1).astype(np.uint64)
            a["net"][b] += np.uint64(p["net"][pair].sum())
            a["lengths"][b] += p["lengths"][:, pair].sum(axis=1)
            starts = np.concatenate([[start], start + 1 + np.flatnonzero(p["net"][pair])])
            emitted = p["hashes"][starts]
            a["hashes"][b, : min(len(emitted), int(a["cap"]))] = emitted[: int(a["cap"])]
            a["hcount"][b] += np.uint64(len(emitted))


def run_model(plans, start, stop, model, monkeypatch):
    monkeypatch.setattr(cuda, "perf_counter", model.clock)
    monkeypatch.setattr(cuda, "_RATES", {})
    config = cuda.config_for(plans[0])
    return cuda.measure_launches(plans, start, stop, config, np, model, sms=4)


def assert_matches(part, ref):
    np.testing.assert_array_equal(part.transitions, ref["transitions"])
    np.testing.assert_array_equal(part.pattern_changes, ref["pattern_changes"])
    assert part.network_changes == ref["network_changes"]
    assert part.distinct().size == ref["distinct_patterns"]
    np.testing.assert_allclose(part.lengths, ref["lengths"], rtol=1e-9)


@pytest.mark.parametrize("max_launch", [2, 3, 50, 10**6])
@pytest.mark.parametrize("debug", [False, True])
def test_launch_loop_with_a_model_kernel(monkeypatch, max_launch, debug):
    """Launches sharing their boundary sample, counters accumulated, hashes de-duplicated per
    trajectory: a batch over any launch size gives the reference's totals."""
    net = network("hardtanh", INPUT_DIM, seed=3)
    kinds = ["great_circle", "line", "points"]
    n = 301
    trajs = [trajectory(k, INPUT_DIM, seed=i, n_points=n) for i, k in enumerate(kinds)]
    plans = [make_plan(net, t, n, "float64") for t in trajs]
    monkeypatch.setattr(cuda, "MAX_LAUNCH_POINTS", max_launch)
    monkeypatch.setattr(cuda, "DEBUG", debug)
    model = ModelKernel(net, trajs, n)
    for start, stop in ((0, n), (17, 18), (5, 250)):
        model.launches.clear()
        parts = run_model(plans, start, stop, model, monkeypatch)
        for part, traj in zip(parts, trajs):
            assert_matches(part, reference_measure(net, traj, n, start, stop))
        ranges = [(a, b) for a, b, _ in model.launches]
        assert ranges[0][0] == start and ranges[-1][1] == stop
        assert all(b0 - 1 == a1 for (_, b0), (a1, _) in zip(ranges, ranges[1:]))  # one shared sample
        assert all(b - a <= max(2, max_launch // len(plans)) for a, b in ranges)


def test_launches_are_sized_by_the_measured_rate(monkeypatch):
    """The first launch comes from the guessed rate, the next ones from the achieved rate:
    LAUNCH_SECONDS of work each."""
    net = network("relu", INPUT_DIM, seed=1)
    trajs = [trajectory("line", INPUT_DIM, seed=1), trajectory("arc", INPUT_DIM, seed=2)]
    n = 200_001
    plans = [make_plan(net, t, n, "float64") for t in trajs]
    config = cuda.config_for(plans[0])
    monkeypatch.setattr(cuda, "LAUNCH_SECONDS", 0.25)
    monkeypatch.setattr(cuda, "RATE_GUESS", {4: 1.0, 8: 50_000.0 * cuda.work_per_point(plans[0], config)})
    model = ModelKernel(net, trajs, n, rate=400_000.0)
    parts = run_model(plans, 0, n, model, monkeypatch)
    sizes = [b - a for a, b, _ in model.launches]
    assert sizes[0] == 50_000 // 4 // 2                                   # guessed: 50k samples/s, two trajectories
    assert all(s == 400_000 // 4 // 2 for s in sizes[1:-1])               # achieved: 400k samples/s
    assert cuda._RATES == {(0, config.name, tuple(cuda.padded_widths(plans[0], config))): 400_000.0}
    for part, traj in zip(parts, trajs):
        assert_matches(part, reference_measure(net, traj, n))


def test_a_kernel_that_overflows_its_hash_buffer_is_caught():
    net = network("relu", INPUT_DIM, seed=1)
    traj = trajectory("points", INPUT_DIM, seed=1, n_points=100)
    plan = make_plan(net, traj, 100, "float64")
    model = ModelKernel(net, [traj], 100)

    def overflowing(grid, args):
        model(grid, args)
        args[model.names.index("hcount")][0] += np.uint64(args[model.names.index("cap")])

    with pytest.raises(RuntimeError, match="hashes into a row"):
        cuda.measure_launches([plan], 0, 100, cuda.config_for(plan), np, overflowing, sms=4)


def test_debug_mode_catches_unwritten_slots(monkeypatch):
    net = network("relu", INPUT_DIM, seed=1)
    traj = trajectory("points", INPUT_DIM, seed=1, n_points=100)
    plan = make_plan(net, traj, 100, "float64")
    model = ModelKernel(net, [traj], 100)

    def forgetful(grid, args):
        model(grid, args)
        args[model.names.index("hashes")][0, 0] = cuda.POISON

    monkeypatch.setattr(cuda, "DEBUG", True)
    with pytest.raises(RuntimeError, match="unwritten"):
        cuda.measure_launches([plan], 0, 100, cuda.config_for(plan), np, forgetful, sms=4)


def test_probe_without_cupy(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match="CuPy is not installed"):
        cuda.probe()


def test_configurations_come_from_the_compiled_source(monkeypatch):
    """cuda.configs() parses the text cuda_compile.source gives, the same text NVRTC compiles, so
    that a patched source (bench/kernel_variants.py, bench/racecheck_measure.py) sizes its grids by
    its own launch bounds."""
    full = cuda_compile.source
    line = re.search(r"^FX_KERNEL\(measure_f32_w64, .*, (\d+)\)$", full(cuda.SOURCE), re.MULTILINE)
    blocks = int(line.group(1))
    other = line.group(0)[: line.start(1) - line.start(0)] + f"{blocks + 1})"

    def patched(filename, root=None):
        return full(filename, root).replace(line.group(0), other)

    monkeypatch.setattr(cuda_compile, "source", patched)
    cuda.configs.cache_clear()
    try:
        assert next(c for c in cuda.configs() if c.name == "measure_f32_w64").min_blocks == blocks + 1
    finally:
        monkeypatch.undo()
        cuda.configs.cache_clear()
    assert next(c for c in cuda.configs() if c.name == "measure_f32_w64").min_blocks == blocks


def test_exact_scratch_layout_matches_the_walker():
    """cuda_exact allocates GRAM doubles per layer for the walker's Gram sums: the header's stride."""
    from fastexpr.backends import cuda_exact

    header = (cuda_compile.source_dir() / "common" / "exact_walk.h").read_text()
    assert int(re.search(r"static const int GRAM = (\d+);", header).group(1)) == cuda_exact.GRAM
