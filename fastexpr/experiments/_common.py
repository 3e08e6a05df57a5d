"""What the paper-figure experiments share: options, the output folder, table or JSON."""
from __future__ import annotations

import argparse
import json
import os


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """``--out``, ``--quick``, ``--json``, ``--seed``, ``--no-progress``."""
    parser.add_argument("--out", default=out, help="folder for the PNG plots and results.json")
    parser.add_argument("--quick", action="store_true", help="a small smoke run (seconds)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(args: argparse.Namespace, table: str, results: dict) -> int:
    """Write ``results.json`` into ``args.out``; print the table (or the JSON) and where the files are."""
    from ..cli import _json_safe

    results = _json_safe({"config": {k: v for k, v in vars(args).items() if k != "func"}, **results})
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    if args.json:
        print(json.dumps(results, indent=1, allow_nan=False))
    else:
        print(table)
        print(f"plots and results.json in {os.path.abspath(args.out)}")
    return 0
