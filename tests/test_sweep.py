"""Sweeps and shards (fastexpr.sweep): the local executor, a real local Ray cluster, resuming,
a worker killed mid-task, and sharded trajectories equal to one measure call."""
from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
import time

import numpy as np
import pytest
from unittest import mock

import fastexpr as fx
from fastexpr.cli import _trajectory, main

sw = importlib.import_module("fastexpr.sweep")  # the module (fastexpr.sweep is also the function)



def _installed(*names: str) -> bool:
    try:
        for name in names:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


# Sweeps write Parquet (pyarrow) and load_sweep returns a DataFrame (pandas); shards need neither.
needs_parquet = pytest.mark.skipif(not _installed("pyarrow", "pandas"),
                                   reason="sweeps need pyarrow and pandas (pip install 'fastexpr[ray]')")

GRID = dict(depth=[2, 5], width=[16, 32], input_dim=6, sigma_w=[1.0, 8.0], sigma_b=0.5, seed=[0, 1],
            trajectory=["arc", "great_circle"], n_points=4001)  # 32 cells, each a few ms
MEASURES = ["transitions", "pattern_changes", "network_changes", "distinct_patterns", "lengths", "error"]


def rows(path):
    df = fx.load_sweep(path)
    return df.set_index("cell")


def assert_same_rows(a, b):
    assert sorted(a.index) == sorted(b.index)
    for key in a.index:
        x, y = a.loc[key], b.loc[key]
        for name in ("transitions", "pattern_changes"):
            assert list(x[name]) == list(y[name]), (key, name)
        for name in ("network_changes", "distinct_patterns", "depth", "width", "sigma_w", "seed", "trajectory"):
            assert x[name] == y[name], (key, name)
        np.testing.assert_allclose(np.array(x["lengths"]), np.array(y["lengths"]), rtol=1e-12)


def test_cells_product_and_validation():
    cells = sw.cells(GRID)
    assert len(cells) == 32 and len({sw.cell_key(c) for c in cells}) == 32
    assert sw.cells(dict(depth=3))[0]["width"] == sw.DEFAULTS["width"]
    assert len(sw.cells(dict(exact=[True], n_points=[100, 200]))) == 1  # exact cells have no n_points
    assert sw.cell_key(dict(sw.cells(dict(sigma_w=4))[0])) == sw.cell_key(sw.cells(dict(sigma_w=4.0))[0])
    with pytest.raises(ValueError, match="unknown grid key.*'widht'"):
        sw.cells(dict(widht=[3]))
    with pytest.raises(ValueError, match=r"grid\['depth'\] is an empty list"):
        sw.cells(dict(depth=[]))
    with pytest.raises(TypeError, match=r"grid\['width'\] must hold integers"):
        sw.cells(dict(width=[3.5]))
    with pytest.raises(TypeError, match=r"grid\['exact'\]"):
        sw.cells(dict(exact="yes"))
    with pytest.raises(ValueError, match=r"grid\['activation'\]: unknown value 'tanh'"):
        sw.cells(dict(activation="tanh"))
    with pytest.raises(ValueError, match="finite non-negative"):
        sw.cells(dict(sigma_w=[-1]))
    with pytest.raises(ValueError, match=r"grid\['seed'\] must hold integers of at least 0, got -1"):
        sw.cells(dict(seed=[0, -1]))
    with pytest.raises(TypeError, match="grid must be a dict"):
        sw.cells([("depth", 3)])
    with pytest.raises(ValueError, match="executor must be"):
        fx.sweep(dict(depth=2), "x", executor="dask")
    with pytest.raises(ValueError, match="threads must be at least 1"):
        fx.sweep(dict(depth=2), "x", threads=0)
    with pytest.raises(ValueError, match="workers must be"):
        fx.sweep(dict(depth=2), "x", workers=0)


@needs_parquet
def test_local_rows_match_measure(tmp_path):
    out = tmp_path / "s"
    assert fx.sweep(GRID, out, workers=1, progress=False) == 32
    df = rows(out)
    assert len(df) == 32 and df["error"].isna().all()
    cell = df.iloc[5]
    net = fx.random_mlp(int(cell.depth), int(cell.width), 6, "hardtanh", sigma_w=cell.sigma_w, sigma_b=0.5,
                        seed=int(cell.seed))
    ref = fx.measure(net, _trajectory(cell.trajectory, 6, int(cell.seed) + 1), 4001)
    assert list(cell.transitions) == ref.transitions.tolist()
    assert cell.distinct_patterns == ref.distinct_patterns and cell.network_changes == ref.network_changes
    assert list(cell.lengths) == pytest.approx(ref.lengths.tolist(), rel=1e-12)
    assert cell.machine and cell.seconds > 0 and cell.backend_used in fx.available_backends()
    assert fx.sweep(GRID, out, workers=1, progress=False) == 0  # all done: nothing re-measured


@needs_parquet
def test_local_pool_same_rows(tmp_path):
    fx.sweep(GRID, tmp_path / "one", workers=1, progress=False)
    fx.sweep(GRID, tmp_path / "pool", workers=2, progress=False)
    assert_same_rows(rows(tmp_path / "one"), rows(tmp_path / "pool"))


@needs_parquet
def test_errors_recorded_not_fatal(tmp_path):
    grid = dict(depth=3, width=8, input_dim=4, activation="identity", sigma_w=[1.0, 1e300], n_points=100)
    fx.sweep(grid, tmp_path / "e", workers=1, progress=False)
    df = rows(tmp_path / "e")
    bad = df[df.sigma_w == 1e300].iloc[0]
    assert "OverflowInForwardPass" in bad.error and bad.transitions is None
    assert df[df.sigma_w == 1.0].error.isna().all()


@needs_parquet
def test_interrupted_then_resumed_has_every_cell_once(tmp_path, monkeypatch):
    out = tmp_path / "r"
    real, calls = sw.run_cell, []

    def interrupted(cell, threads=None):
        calls.append(cell)
        if len(calls) == 11:
            raise KeyboardInterrupt  # Ctrl-C while the 11th cell is measured
        return real(cell, threads)

    monkeypatch.setattr(sw, "run_cell", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fx.sweep(GRID, out, workers=1, progress=False)
    assert len(sw._parts(str(out))) == 10  # the cells finished before the interrupt, the one in flight lost
    monkeypatch.setattr(sw, "run_cell", real)
    assert fx.sweep(GRID, out, workers=1, progress=False) == 22
    df = fx.load_sweep(out)
    assert len(df) == 32 and df["cell"].is_unique
    assert set(df["cell"]) == {sw.cell_key(c) for c in sw.cells(GRID)}
    assert not [n for n in os.listdir(out) if n.endswith(".tmp")]


@needs_parquet
def test_missing_pyarrow_and_ray_say_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"fastexpr\[ray\]"):
        fx.sweep(dict(depth=2), tmp_path / "x", workers=1)
    monkeypatch.delitem(sys.modules, "pyarrow")
    monkeypatch.setitem(sys.modules, "ray", None)
    config = tmp_path / "c.toml"
    config.write_text("[grid]\ndepth = 2\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "y"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Ray" in err and "fastexpr[ray]" in err


@needs_parquet
def test_cli_sweep_and_plot(tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text('out = "ignored"\n[grid]\ndepth = [2, 3]\nwidth = 8\ninput_dim = 4\nsigma_w = [1.0, 4.0]\n'
                      'activation = ["relu", "hardtanh"]\nn_points = 300\n')
    out = tmp_path / "cli"
    assert main(["sweep", str(config), "--out", str(out), "--workers", "1"]) == 0
    assert "8 cells measured" in capsys.readouterr().out
    assert len(fx.load_sweep(out)) == 8
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    with mock.patch.object(plt.Figure, "savefig", autospec=True, side_effect=plt.Figure.savefig) as save:
        assert main(["plot-sweep", str(out), "--out", str(tmp_path / "plots")]) == 0
    labels = [line.get_label() for line in save.call_args.args[0].axes[0].get_lines()]
    assert sorted(labels) == sorted(f"sigma_w = {s}, activation = {a}" for s in (1, 4) for a in ("hardtanh", "relu"))
    assert (tmp_path / "plots" / "sweep.png").stat().st_size > 10_000
    (tmp_path / "a_file").write_text("")
    assert main(["sweep", str(config), "--out", str(tmp_path / "a_file")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    for bad, message in (("[grid]\nwidht = 3\n", "unknown grid key"), ("out = \"x\"\n", "no [grid] table"),
                         ("[grid\n", "not valid TOML")):
        config.write_text(bad)
        assert main(["sweep", str(config), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    assert main(["sweep", str(tmp_path / "none.toml"), "--out", str(out)]) == 2
    assert main(["plot-sweep", str(tmp_path / "empty")]) == 2


SHARD_NET = dict(depth=5, width=24, input_dim=6, activation="hardtanh", sigma_w=4.0, sigma_b=0.5, seed=3)


def assert_equal_results(r, ref):
    assert r.transitions.tolist() == ref.transitions.tolist()
    assert r.pattern_changes.tolist() == ref.pattern_changes.tolist()
    assert r.network_changes == ref.network_changes and r.distinct_patterns == ref.distinct_patterns
    np.testing.assert_allclose(r.lengths, ref.lengths, rtol=1e-12)
    assert (r.n_points, r.exact, r.dtype) == (ref.n_points, ref.exact, ref.dtype)


@pytest.mark.filterwarnings("ignore::fastexpr.SaturationWarning")  # far from converged: a stiffer test
@pytest.mark.parametrize("kind", ["line", "arc", "great_circle", "polyline"])
def test_sharded_equals_measure_local(kind):
    net = fx.random_mlp(**{k: v for k, v in SHARD_NET.items() if k != "seed"}, seed=SHARD_NET["seed"])
    traj = _trajectory(kind, 6, 4)
    ref = fx.measure(net, traj, 30001)
    for shards in (1, 2, 7):
        assert_equal_results(fx.measure_sharded(net, traj, 30001, shards=shards, workers=1), ref)
    ref = fx.measure(net, traj, exact=True)
    for shards in (1, 3, 100):
        assert_equal_results(fx.measure_sharded(net, traj, shards=shards, exact=True, workers=1), ref)
    with pytest.raises(ValueError, match="shards must be"):
        fx.measure_sharded(net, traj, 100, shards=0)
    with pytest.raises(ValueError, match="n_points"):
        fx.measure_sharded(net, traj, 100, exact=True)


def test_sharded_equals_measure_when_shards_span_many_chunks(monkeypatch):
    """Each shard a sum of many chunks (chunks of at most 997 samples): the merge of shards keeps
    every distinct pattern of every chunk (it once kept only each shard's first chunk's)."""
    monkeypatch.setattr(importlib.import_module("fastexpr.measure"), "MAX_CHUNK", 997)
    net = fx.random_mlp(5, 24, 6, "relu", sigma_w=2.0, sigma_b=0.5, seed=8)
    traj = _trajectory("arc", 6, 9)
    ref = fx.measure(net, traj, 40001)
    for shards in (2, 5):
        assert_equal_results(fx.measure_sharded(net, traj, 40001, shards=shards, workers=1), ref)


def test_sharded_local_pool():
    net = fx.random_mlp(5, 24, 6, "relu", sigma_w=2.0, sigma_b=0.5, seed=8)
    traj = _trajectory("arc", 6, 9)
    assert_equal_results(fx.measure_sharded(net, traj, 50001, shards=3, workers=2), fx.measure(net, traj, 50001))


# ---------------------------------------------------------------- on a real local Ray cluster

@pytest.fixture(scope="module")
def ray():
    ray = pytest.importorskip("ray", reason="the Ray executor needs Ray (pip install 'fastexpr[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 2**20)
    yield ray
    ray.shutdown()


@needs_parquet
def test_ray_same_rows_as_local(ray, tmp_path):
    fx.sweep(GRID, tmp_path / "local", workers=1, progress=False)
    assert fx.sweep(GRID, tmp_path / "ray", executor="ray", progress=False) == 32
    assert_same_rows(rows(tmp_path / "local"), rows(tmp_path / "ray"))


@needs_parquet
def test_ray_cli(ray, tmp_path, capsys):
    config = tmp_path / "grid.toml"
    config.write_text("[grid]\ndepth = [2, 3]\nwidth = 8\ninput_dim = 4\nexact = [false, true]\nn_points = 500\n")
    assert main(["sweep", str(config), "--out", str(tmp_path / "o"), "--ray"]) == 0  # the Ray already running
    assert "4 cells measured" in capsys.readouterr().out
    df = fx.load_sweep(tmp_path / "o")
    assert sorted(df["exact"]) == [False, False, True, True] and df["error"].isna().all()
    assert df[df.exact]["n_points"].isna().all()


@needs_parquet
def test_ray_interrupted_then_resumed_has_every_cell_once(ray, tmp_path, monkeypatch):
    out = tmp_path / "r"
    real, written = sw._write_row, []

    def interrupted(path, row):
        if len(written) == 16:
            raise KeyboardInterrupt  # Ctrl-C in the driver half-way, with tasks in flight
        written.append(row["cell"])
        real(path, row)

    monkeypatch.setattr(sw, "_write_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fx.sweep(GRID, out, executor="ray", progress=False)
    assert sorted(sw._parts(str(out))) == sorted(written)
    monkeypatch.setattr(sw, "_write_row", real)
    assert fx.sweep(GRID, out, executor="ray", progress=False) == 16
    df = fx.load_sweep(out)
    assert len(df) == 32 and df["cell"].is_unique
    assert set(df["cell"]) == {sw.cell_key(c) for c in sw.cells(GRID)}


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0


def _running_task_pids(name: str) -> list[int]:
    """Processes under this one (the Ray this test started) whose title Ray set to ``ray::<name>``:
    a worker executing that task now."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                title = f.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith(f"ray::{name}"):
            pid = ancestor = int(entry)
            while ancestor > 1 and ancestor != os.getpid():
                ancestor = _parent(ancestor)
            if ancestor == os.getpid():
                pids.append(pid)
    return pids


@needs_parquet
def test_ray_worker_killed_mid_task_is_retried(ray, tmp_path):
    # Four cells of about a second each on one thread, so that one is running when the test kills it.
    grid = dict(depth=8, width=64, input_dim=6, sigma_w=2.0, seed=[0, 1, 2, 3], n_points=1 << 19)
    out = tmp_path / "k"
    errors = []

    def run():
        try:
            fx.sweep(grid, out, executor="ray", progress=False)
        except BaseException as exc:  # noqa: BLE001 (reported by the test below)
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    killed = None
    deadline = time.monotonic() + 60
    while killed is None and time.monotonic() < deadline and thread.is_alive():
        pids = _running_task_pids("run_cell")
        if pids:
            killed = pids[0]
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    thread.join(120)
    assert killed is not None, "no Ray worker was seen running a cell"
    assert not errors, errors
    df = fx.load_sweep(out)
    assert len(df) == 4 and df["cell"].is_unique and df["error"].isna().all()
    local = tmp_path / "local"
    fx.sweep(grid, local, workers=1, progress=False)
    assert_same_rows(rows(local), df.set_index("cell"))


@pytest.mark.parametrize("kind", ["arc", "great_circle"])
def test_ray_sharded_equals_measure(ray, kind):
    net = fx.random_mlp(5, 24, 6, "hardtanh", sigma_w=4.0, sigma_b=0.5, seed=5)
    traj = _trajectory(kind, 6, 6)
    assert_equal_results(fx.measure_sharded(net, traj, 40001, shards=4, executor="ray"), fx.measure(net, traj, 40001))
    assert_equal_results(fx.measure_sharded(net, traj, shards=5, exact=True, executor="ray"),
                         fx.measure(net, traj, exact=True))


def test_grid_values_beyond_the_results_columns_or_backends_are_refused(tmp_path):
    """A seed of 2^64 failed in pyarrow after measuring, and an unknown backend wrote an error row
    that counted as a finished cell: both are refused before anything runs."""
    for grid, match in ((dict(seed=2 ** 64), r"grid\['seed'\] must hold integers of at most"),
                        (dict(n_points=2 ** 63), r"grid\['n_points'\] must hold integers of at most"),
                        (dict(backend="bogus"), r"grid\['backend'\]: unknown value 'bogus'")):
        with pytest.raises(ValueError, match=match):
            fx.sweep(dict(depth=2, width=4, input_dim=3, **grid), out=str(tmp_path), workers=1)
    assert not os.listdir(tmp_path)


def test_load_sweep_names_what_it_cannot_read(tmp_path):
    pytest.importorskip("pyarrow")
    pytest.importorskip("pandas")
    with pytest.raises(TypeError, match="path of a sweep's output folder"):
        fx.load_sweep(None)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(ValueError, match="broken.parquet is not a readable sweep row"):
        fx.load_sweep(tmp_path)


def test_exact_cells_need_a_backend_with_an_exact_engine():
    with pytest.raises(ValueError, match="backend 'torch' has no exact engine"):
        sw.cells(dict(exact=True, backend="torch"))
    assert sw.cells(dict(exact=False, backend="torch", n_points=64))[0]["backend"] == "torch"
