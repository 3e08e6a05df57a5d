"""The cuda backend and the CUDA trajectory_length against the float64 reference, the cpu backend and themselves (GPU only).

Skipped as a whole where the cuda backend is unavailable (no CuPy or no device). Every test
runs with ``cuda.DEBUG`` on (hash buffers poisoned before each launch and checked after) and
without CuPy's memory pool, so that compute-sanitizer sees every buffer's exact bounds
(bench/notes_cuda.md has the commands). The host logic alone is tested without a GPU in
tests/test_cuda_host.py.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastexpr as fx
from fastexpr import backends
from fastexpr.backends import cuda_compile
from fastexpr.measure import make_plan
from fastexpr.plan import pattern_keys

from .cases import NETWORKS, TRAJECTORIES, network, trajectory
from .reference import reference_measure
from .test_cuda_host import sample_hashes
from .test_parity import assert_matches_reference

try:
    cuda = backends.get("cuda")
except backends.BackendUnavailable as exc:
    pytest.skip(str(exc), allow_module_level=True)

import cupy  # noqa: E402  (present: the cuda backend loaded)

# Small sample counts on chaotic networks: saturated on purpose, the numbers are still checked exactly.
pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning"),
              pytest.mark.filterwarnings("ignore::fastexpr.PrecisionWarning")]

INPUT_DIM = 6
COUNTS = ("transitions", "pattern_changes", "network_changes")


@pytest.fixture(autouse=True)
def debug_mode(monkeypatch):
    monkeypatch.setattr(cuda, "DEBUG", True)
    with cupy.cuda.using_allocator(None):
        yield


def cpu_backend():
    try:
        return backends.get("cpu")
    except backends.BackendUnavailable as exc:
        pytest.skip(str(exc))


def reference_hashes(net, traj, n_points: int) -> set[int]:
    """The pattern hash of every sample (the reference's codes, the keys of fastexpr.plan)."""
    return set(sample_hashes(net, traj, n_points).tolist())


def assert_partials_equal(got, want, rtol=1e-9, atol=0.0):
    np.testing.assert_array_equal(got.transitions, want.transitions)
    np.testing.assert_array_equal(got.pattern_changes, want.pattern_changes)
    assert got.network_changes == want.network_changes
    np.testing.assert_array_equal(got.distinct(), want.distinct())
    np.testing.assert_allclose(got.lengths, want.lengths, rtol=rtol, atol=atol)


def assert_partials_close(got, want, rtol=1e-4, atol=0.0):
    """float32 against float64: counts within 1% (+2), lengths within ``rtol`` (test_parity's tolerance)."""
    for name in COUNTS:
        a, b = np.asarray(getattr(got, name)), np.asarray(getattr(want, name))
        assert np.all(np.abs(a - b) <= 2 + 0.01 * b), (name, a, b)
    np.testing.assert_allclose(got.lengths, want.lengths, rtol=rtol, atol=atol)


def network_for(config, seed: int, depth: int = 4, sigma_w: float = 3.0) -> fx.Network:
    """A mixed network whose widest layer needs exactly this configuration (odd widths, identity output)."""
    rng = np.random.default_rng(seed)
    narrower = [c.width for c in cuda.configs() if c.dtype == config.dtype and c.width < config.width]
    odd = max(narrower) + 5 if narrower else config.width - 3
    hidden = [odd, 37, config.width] + [37, odd] * depth  # layers 1..L-1, cut to length
    sizes = [INPUT_DIM, *hidden[: depth - 1], 9]
    acts = (["hardtanh", "relu"] * depth)[: depth - 1] + ["identity"]
    ws = [rng.standard_normal((o, i)) * sigma_w / np.sqrt(i) for i, o in zip(sizes, sizes[1:])]
    bs = [rng.standard_normal(o) * 0.5 for o in sizes[1:]]
    return fx.from_arrays(ws, bs, acts)


def plan_for(config, net, traj_name: str, n: int, seed: int = 0):
    plan = make_plan(net, trajectory(traj_name, INPUT_DIM, seed=seed, n_points=n), n, config.dtype.name)
    assert cuda.config_for(plan) == config
    return plan


# --------------------------------------------------------------------------------------------
# Against the reference and the cpu backend


@pytest.mark.parametrize("net_name", NETWORKS)
@pytest.mark.parametrize("traj_name", TRAJECTORIES)
def test_float64_matches_reference_and_hashes(net_name, traj_name):
    n = 1237
    net = network(net_name, INPUT_DIM, seed=len(net_name))
    traj = trajectory(traj_name, INPUT_DIM, seed=len(traj_name), n_points=n)
    result = fx.measure(net, traj, n, backend="cuda", dtype="float64")
    assert_matches_reference(result, reference_measure(net, traj, n))
    emitted = set(cuda.run(make_plan(net, traj, n, "float64"), 0, n).run_hashes.tolist())
    assert emitted <= reference_hashes(net, traj, n)  # no invented hash
    assert len(emitted) == result.distinct_patterns


@pytest.mark.parametrize("net_name", NETWORKS)
@pytest.mark.parametrize("traj_name", ["arc", "polyline_dense", "points"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_cpu_backend(net_name, traj_name, dtype):
    n = 3001
    net = network(net_name, INPUT_DIM, seed=7)
    plan = make_plan(net, trajectory(traj_name, INPUT_DIM, seed=7, n_points=n), n, dtype)
    got, want = cuda.run(plan, 0, n), cpu_backend().run(plan, 0, n)
    if dtype == "float64":
        assert_partials_equal(got, want)
    else:  # different summation orders: the float32 tolerance of test_parity
        assert_partials_close(got, want)


@pytest.mark.parametrize("traj_name", ["line", "arc", "great_circle", "polyline"])
@pytest.mark.parametrize("config", cuda.configs(), ids=lambda c: c.name)
def test_every_configuration_many_tiles_per_block(monkeypatch, config, traj_name):
    """Each configuration on every kind of trajectory, one or two blocks per trajectory taking
    many tiles each (the persistent loop, the W^T pipeline across tiles), against the cpu
    backend in float64: float64 exactly, float32 within tolerance."""
    net = network_for(config, seed=config.width)
    cpu = cpu_backend()
    for blocks, tiles in ((1, 7), (2, 9)):
        monkeypatch.setattr(cuda, "BLOCKS_PER_TRAJECTORY", blocks)
        n = tiles * (config.rows - 1) + 3
        plan = plan_for(config, net, traj_name, n, seed=tiles)
        want = cpu.run(make_plan(net, trajectory(traj_name, INPUT_DIM, seed=tiles, n_points=n), n, "float64"), 0, n)
        got = cuda.run(plan, 0, n)
        if config.dtype == np.float64:
            assert_partials_equal(got, want)
        else:
            assert_partials_close(got, want)


@pytest.mark.parametrize("config", cuda.configs(), ids=lambda c: c.name)
def test_every_configuration_around_its_tile(config):
    """Sizes around one tile: float64 exactly against the reference, float32 within tolerance."""
    net = network_for(config, seed=config.width)
    for n in (2, config.rows - 1, config.rows, config.rows + 1, 3 * config.rows + 5):
        traj = trajectory("polyline", INPUT_DIM, seed=n, n_points=n)
        result = fx.measure(net, traj, n, backend="cuda", dtype=config.dtype.name)
        ref = reference_measure(net, traj, n)
        if config.dtype == np.float64:
            assert_matches_reference(result, ref)
        else:
            for name in ("transitions", "pattern_changes", "network_changes", "distinct_patterns"):
                got, want = np.asarray(getattr(result, name)), np.asarray(ref[name])
                assert np.all(np.abs(got - want) <= 2 + 0.01 * want), (n, name, got, want)
            np.testing.assert_allclose(result.lengths, ref["lengths"], rtol=1e-4)


@pytest.mark.parametrize("depth", [30, 150])
@pytest.mark.parametrize("config", cuda.configs(), ids=lambda c: c.name)
def test_deep_networks(config, depth):
    """Depth 30 and 150 (shared memory grows by three counters per layer; fewer resident blocks):
    against the cpu backend in float64. A contracting network, so that float32 counts stay close.
    Deep layers' steps shrink to the rounding of their activations, so lengths compare up to an
    absolute 1e-12 in float64 and within 2% or 1e-3 in float32 (README, Precision)."""
    net = network_for(config, seed=depth, depth=depth, sigma_w=1.0)
    n = 2 * config.rows + 7
    plan = plan_for(config, net, "arc", n)
    want = cpu_backend().run(make_plan(net, trajectory("arc", INPUT_DIM, n_points=n), n, "float64"), 0, n)
    got = cuda.run(plan, 0, n)
    if config.dtype == np.float64:
        assert_partials_equal(got, want, atol=1e-12)
    else:
        assert_partials_close(got, want, rtol=2e-2, atol=1e-3)


# --------------------------------------------------------------------------------------------
# Launches, chunks and batches


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_partials_add_up(dtype):
    """run over [a, c) equals run over [a, b) plus run over [b-1, c): counts exactly, in float32 too."""
    net = network("mixed", INPUT_DIM, seed=4)
    plan = make_plan(net, trajectory("arc", INPUT_DIM, seed=4), 5000, dtype)
    whole = cuda.run(plan, 100, 4000)
    for b in (101, 1733, 3999):
        parts = cuda.run(plan, 100, b)
        parts += cuda.run(plan, b - 1, 4000)
        assert_partials_equal(parts, whole, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("max_launch", [2, 3, 50, 1000])
def test_many_launches(monkeypatch, dtype, max_launch):
    """Tiny launches share their boundary sample: the same totals and patterns as one launch
    (float64: the reference; float32: exactly the counts of one launch)."""
    net = network("hardtanh", INPUT_DIM, seed=3)
    traj = trajectory("great_circle", INPUT_DIM, seed=3)
    n = 2001
    one = fx.measure(net, traj, n, backend="cuda", dtype=dtype)
    monkeypatch.setattr(cuda, "MAX_LAUNCH_POINTS", max_launch)
    many = fx.measure(net, traj, n, backend="cuda", dtype=dtype)
    if dtype == "float64":
        assert_matches_reference(many, reference_measure(net, traj, n))
    for name in (*COUNTS, "distinct_patterns"):
        np.testing.assert_array_equal(getattr(many, name), getattr(one, name), err_msg=name)
    np.testing.assert_allclose(many.lengths, one.lengths, rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_launches_and_chunks_in_batches(monkeypatch, dtype):
    """A batch over several measure chunks of several launches each equals one launch per trajectory."""
    net = network("mixed", INPUT_DIM, seed=5)
    kinds = ["line", "arc", "great_circle", "polyline", "polyline_closed"]
    trajs = [trajectory(kind, INPUT_DIM, seed=i) for i, kind in enumerate(kinds)]
    n = 3000
    single = [fx.measure(net, t, n, backend="cuda", dtype=dtype) for t in trajs]
    monkeypatch.setattr(cuda, "MAX_LAUNCH_POINTS", 97 * len(trajs))
    monkeypatch.setattr(cuda, "CHUNK", 700, raising=False)  # measure's samples per backend call
    batch = fx.measure(net, trajs, n, backend="cuda", dtype=dtype)
    for i, one in enumerate(single):
        for name in (*COUNTS, "distinct_patterns"):
            np.testing.assert_array_equal(getattr(batch[i], name), getattr(one, name), err_msg=(i, name))
        np.testing.assert_allclose(batch[i].lengths, one.lengths, rtol=1e-12)


def test_launches_follow_the_measured_rate(monkeypatch):
    """After a timed launch the next ones are sized from the rate it achieved, not the guess."""
    net = network("relu", INPUT_DIM, seed=6)
    plan = make_plan(net, trajectory("line", INPUT_DIM, seed=6), 1 << 20, "float64")
    monkeypatch.setattr(cuda, "_RATES", {})
    monkeypatch.setattr(cuda, "RATE_GUESS", {4: 1e9, 8: 1e9})  # a first launch of a few thousand samples
    assert_partials_equal(cuda.run(plan, 0, 1 << 20), cpu_backend().run(plan, 0, 1 << 20))
    (rate,) = cuda._RATES.values()
    assert rate > 10 * cuda.guessed_rate(plan, cuda.config_for(plan))
    assert cuda.chunk_points([plan]) == int(rate * cuda.CHUNK_SECONDS)  # measure's chunks follow it too


@pytest.mark.parametrize("batch", [1, 3, 700])
def test_batch_matches_single(batch):
    """One launch over many trajectories of every kind equals one run per trajectory."""
    net = network("hardtanh", INPUT_DIM, seed=9)
    n = 777
    kinds = ["line", "arc", "great_circle", "polyline", "polyline_closed", "points"]
    plans = [make_plan(net, trajectory(kinds[i % len(kinds)], INPUT_DIM, seed=i, n_points=n), n, "float64")
             for i in range(batch)]
    together = cuda.run_batch(plans, 0, n)
    for i in sorted({0, batch // 2, batch - 1}):
        assert_partials_equal(together[i], cuda.run(plans[i], 0, n))


def test_batch_above_65535_trajectories():
    """More trajectories than gridDim.y could hold: the trajectory index lives in blockIdx.x."""
    net = network("relu", INPUT_DIM, seed=8)
    rng = np.random.default_rng(8)
    trajs = [fx.line(*rng.standard_normal((2, INPUT_DIM))) for _ in range(65_537 + 40)]
    n = 40
    result = fx.measure(net, trajs, n, backend="cuda", dtype="float64", progress=False)
    for i in (0, 65_535, 65_536, len(trajs) - 1):
        assert_matches_reference(result[i], reference_measure(net, trajs[i], n))


@pytest.mark.parametrize("launches", [1, 4])
def test_full_hash_buffer(monkeypatch, launches):
    """Random points through a chaotic network: every pair changes pattern, so each launch emits
    a hash for every one of its samples and fills its buffer to the last slot."""
    n = 4000
    net = network("hardtanh", INPUT_DIM, seed=10)
    traj = trajectory("points", INPUT_DIM, seed=10, n_points=n)
    monkeypatch.setattr(cuda, "MAX_LAUNCH_POINTS", -(-n // launches) + 1)
    got = cuda.run(make_plan(net, traj, n, "float64"), 0, n)
    assert reference_measure(net, traj, n)["network_changes"] == n - 1  # the setting does fill the buffer
    assert got.network_changes == n - 1
    assert set(got.run_hashes.tolist()) == reference_hashes(net, traj, n)


def test_batch_rejects_different_networks():
    traj = trajectory("arc", INPUT_DIM)
    plans = [make_plan(network(name, INPUT_DIM), traj, 100, "float64") for name in ("relu", "hardtanh")]
    with pytest.raises(ValueError, match="same network"):
        cuda.run_batch(plans, 0, 100)


def test_too_wide_is_a_clear_error():
    widest = max(c.width for c in cuda.configs())
    net = fx.random_mlp(2, widest + 1, INPUT_DIM, seed=0)
    with pytest.raises(ValueError, match="neurons wide"):
        fx.measure(net, trajectory("arc", INPUT_DIM), 10, backend="cuda")
    plan = make_plan(net, trajectory("arc", INPUT_DIM), 10, "float64")
    assert "neurons wide" in cuda.unavailable_reason([plan])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")
def test_auto_falls_back_when_no_configuration_fits():
    """Data on the GPU and a layer wider than every kernel: "auto" takes the torch backend."""
    widest = max(c.width for c in cuda.configs())
    net = fx.random_mlp(2, widest + 1, INPUT_DIM, seed=0)
    x0, x1 = torch.tensor(np.random.default_rng(0).standard_normal((2, INPUT_DIM)), device="cuda")
    assert fx.measure(net, fx.line(x0, x1), 100).backend == "torch"


def test_single_sample_range_emits_its_hash():
    net = network("relu", INPUT_DIM, seed=2)
    traj = trajectory("line", INPUT_DIM, seed=2)
    plan = make_plan(net, traj, 50, "float64")
    part = cuda.run(plan, 17, 18)
    assert part.network_changes == 0 and not part.transitions.any() and not part.lengths.any()
    assert len(part.run_hashes) == 1 and set(part.run_hashes.tolist()) <= reference_hashes(net, traj, 50)


def test_shared_memory_mismatch_is_reported_not_trapped(monkeypatch):
    """A launch with less shared memory than the layout needs sets the error flag; the CUDA
    context survives (a later run works)."""
    net = network("relu", INPUT_DIM, seed=2)
    plan = make_plan(net, trajectory("line", INPUT_DIM, seed=2), 50, "float64")
    with monkeypatch.context() as patch:
        patch.setattr(cuda.Config, "smem_bytes", lambda self, depth: 16)
        with pytest.raises(RuntimeError, match="shared-memory layout"):
            cuda.run(plan, 0, 50)
    assert_partials_equal(cuda.run(plan, 0, 50), cpu_backend().run(plan, 0, 50))


@pytest.mark.slow
def test_memory_is_independent_of_n():
    """2^28 samples through a small relu network: device memory stays at one launch's buffers."""
    net = fx.random_mlp(3, 8, INPUT_DIM, "relu", seed=1)
    pool = cupy.cuda.MemoryPool()  # keeps what it ever allocated: total_bytes is the peak
    with cupy.cuda.using_allocator(pool.malloc):
        result = fx.measure(net, trajectory("line", INPUT_DIM), 1 << 28, backend="cuda", dtype="float64",
                            progress=False)
    assert result.network_changes + 1 == result.distinct_patterns  # a line revisits no pattern
    assert pool.total_bytes() < 4 * cuda.MAX_LAUNCH_POINTS * 8  # one launch's hash buffer and its sort


# --------------------------------------------------------------------------------------------
# Compilation


def test_edited_header_recompiles(tmp_path):
    """CuPy's disk cache is keyed by the source and options: an edit of an included header
    (here the pattern keys of semantics.h) must change the key and the kernel's output. The
    first compile is on disk when the second load looks (CuPy reads CUPY_CACHE_DIR once per
    process, so the cache is CuPy's own), and this process's cache is cleared in between: an
    unchanged key would load the stale kernel and give the old keys."""
    root = tmp_path / "csrc"
    shutil.copytree(cuda_compile.source_dir(), root)

    def keys():
        out = cupy.zeros(32, np.uint64)
        cuda_compile.load_code(cuda._PROBE_SOURCE, (), root).get_function("fx_probe")((1,), (32,), (out,))
        return cupy.asnumpy(out)

    before = cuda_compile.nvrtc_options(cuda._PROBE_SOURCE, (), root)
    np.testing.assert_array_equal(keys(), pattern_keys(1, 32)[0])
    header = root / "common" / "semantics.h"
    header.write_text(header.read_text().replace("0x9E3779B97F4A7C15ULL", "0x9E3779B97F4A7C17ULL"))
    cuda_compile.load_code.cache_clear()  # this process's cache; a new process starts without it
    assert cuda_compile.nvrtc_options(cuda._PROBE_SOURCE, (), root) != before
    assert not np.array_equal(keys(), pattern_keys(1, 32)[0])


# --------------------------------------------------------------------------------------------
# trajectory_length on the GPU: streams and devices

needs_torch_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="PyTorch sees no CUDA device")


def lengths_agree(h):
    """The fused CUDA length and gradient equal the torch implementation's on ``h``."""
    got = h.detach().clone().requires_grad_(True)
    want = h.detach().clone().requires_grad_(True)
    a = fx.trajectory_length(got, backend="cuda")
    b = fx.trajectory_length(want, backend="torch")
    a.backward()
    b.backward()
    torch.cuda.synchronize()
    assert a.device == h.device
    torch.testing.assert_close(a, b, rtol=1e-5, atol=0)
    torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-6)


@needs_torch_cuda
def test_trajectory_length_in_a_side_stream():
    """On a non-default stream right after a long product that computes h: the kernels must run
    on that stream (else they read h before it is written)."""
    stream = torch.cuda.Stream()
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        h = (a @ a) @ a
        lengths_agree(h[:2048])


@needs_torch_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_trajectory_length_on_the_second_gpu():
    """A tensor on cuda:1 while cuda:0 is current: kernels run on cuda:1."""
    with torch.cuda.device(0):
        lengths_agree(torch.randn(1000, 3000, device="cuda:1"))


@needs_torch_cuda
def test_trajectory_length_with_per_thread_default_stream():
    """CUPY_CUDA_PER_THREAD_DEFAULT_STREAM=1 changes CuPy's default stream, not torch's: the
    kernels still run on torch's current stream."""
    script = textwrap.dedent("""
        import torch, fastexpr as fx
        a = torch.randn(4096, 4096, device="cuda")
        torch.cuda.synchronize()
        h = ((a @ a) @ a)[:2048].clone().requires_grad_(True)
        got = fx.trajectory_length(h, backend="cuda")
        got.backward()
        want = fx.trajectory_length(h.detach(), backend="torch")
        torch.cuda.synchronize()
        print(abs(float(got) / float(want) - 1))
    """)
    env = dict(os.environ, CUPY_CUDA_PER_THREAD_DEFAULT_STREAM="1")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout.split()[-1]) < 1e-5
