"""Smoke tests of the ``fastexpr`` command."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fastexpr.cli import main


def test_measure_prints_a_table(capsys):
    assert main(["measure", "--depth", "3", "--width", "8", "--input-dim", "5", "--points", "1000"]) == 0
    out = capsys.readouterr().out
    assert "transitions" in out and "distinct patterns" in out
    assert len([line for line in out.splitlines() if line.strip().startswith(("1 ", "2 ", "3 "))]) == 3


def test_measure_json(capsys):
    assert main(["measure", "--depth", "2", "--width", "4", "--input-dim", "3", "--points", "1e3", "--json",
                 "--backend", "torch", "--dtype", "float64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["n_points"] == 1000 and data["backend"] == "torch" and len(data["lengths"]) == 3


def test_bad_arguments_give_an_error_not_a_traceback(capsys):
    assert main(["measure", "--points", "100", "--backend", "nope"]) == 2
    assert "unknown backend 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["measure", "--points", "0"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["measure", "--seed", "-3"])
    assert info.value.code == 2 and "argument --seed: expected a non-negative integer" in capsys.readouterr().err
    assert main(["measure", "--input-dim", "1", "--points", "10"]) == 2
    assert "needs input_dim (--input-dim) 2 or more" in capsys.readouterr().err


def test_unwritable_output_folder_is_one_line(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["demo", "--out", str(blocker / "plots"), "--points", "64", "--seeds", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastexpr: error:") and err.count("\n") == 1


def test_backends_lists_what_works(capsys):
    assert main(["backends"]) == 0
    assert "available:" in capsys.readouterr().out


def test_demo_writes_plots(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert main(["demo", "--out", str(tmp_path), "--points", "2048", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "trajectory length / input length" in out
    assert sorted(os.listdir(tmp_path)) == ["length_vs_depth.png", "transitions_vs_depth.png",
                                            "transitions_vs_length.png"]


def test_console_script_is_installed():
    exe = shutil.which("fastexpr", path=os.path.dirname(sys.executable))
    if exe is None:
        pytest.skip("fastexpr is not installed as a package in this environment")
    out = subprocess.run([exe, "measure", "--depth", "2", "--width", "4", "--input-dim", "3", "--points", "100"],
                         capture_output=True, text=True, check=True).stdout
    assert "whole network" in out


def test_python_dash_m_runs_the_command():
    run = subprocess.run([sys.executable, "-m", "fastexpr", "measure", "--depth", "2", "--width", "4", "--input-dim",
                          "3", "--points", "100"], capture_output=True, text=True, check=True)
    assert "whole network" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "fastexpr", "measure", "--threads", "3000000000"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "threads must be at most" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("argv", [["regularization", "--lr", "1e300"], ["noise", "--magnitudes", "nan"],
                                  ["trajectory-images", "--sigma-w", "inf"], ["regions", "--extent", "-1"]])
def test_experiment_scales_are_finite_numbers(argv, capsys, tmp_path):
    """NaN magnitudes ran to the end, and --lr 1e300 ended in a torch traceback."""
    with pytest.raises(SystemExit) as info:
        main(["experiment", *argv, "--out", str(tmp_path)])
    assert info.value.code == 2 and "expected a number from 0 to 1e30" in capsys.readouterr().err
