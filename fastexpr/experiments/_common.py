"""What the paper-figure experiments share: options, the output folder, table or JSON."""
from __future__ import annotations

import argparse
import json
import os


def add_common_arguments(parser: argparse.ArgumentParser, out: str) -> None:
    """``--out``, ``--quick``, ``--json``, ``--seed``, ``--no-progress``."""
    parser.add_argument("--out", default=out, help="folder for the PNG plots and results.json")
    parser.add_argument("--quick", action="store_true",
                        help="a small smoke run (seconds): smaller defaults; options given explicitly still win")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of the table")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def scale(text: str) -> float:
    """argparse type of a weight scale, noise magnitude, learning rate or extent: a number from 0 to
    1e30 (NaN, inf and larger values would overflow float32 training and the closed forms)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 <= value <= 1e30:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1e30, got {text!r}")
    return value


def begin(args: argparse.Namespace, **quick) -> None:
    """Start an experiment: create ``args.out`` (an unwritable folder fails now, not after the run)
    and, with ``--quick``, set ``quick``'s values for every option the user left at its default
    (the command line sets ``args._parser``; without it every value applies)."""
    os.makedirs(args.out, exist_ok=True)
    if not args.quick:
        return
    parser = getattr(args, "_parser", None)
    for name, value in quick.items():
        if parser is None or getattr(args, name) == parser.get_default(name):
            setattr(args, name, value)


def pyplot():
    """matplotlib's pyplot on the Agg backend (files only)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def finish(args: argparse.Namespace, table: str, results: dict) -> int:
    """Write ``results.json`` into ``args.out``; print the table (or the JSON) and where the files are."""
    from ..cli import _json_safe

    results = _json_safe({"config": {k: v for k, v in vars(args).items() if k not in ("func", "_parser")}, **results})
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    if args.json:
        print(json.dumps(results, indent=1, allow_nan=False))
    else:
        print(table)
        print(f"plots and results.json in {os.path.abspath(args.out)}")
    return 0


def load_digits():
    """scikit-learn's bundled digits scaled to [0, 1], split 70/30 (stratified, fixed) into
    float32 inputs and long labels: (x_train, y_train, x_test, y_test)."""
    import torch
    from sklearn.datasets import load_digits as sklearn_digits
    from sklearn.model_selection import train_test_split

    x, y = sklearn_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x / 16.0, y, test_size=0.3, stratify=y, random_state=0)
    as_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    as_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    return as_x(x_train), as_y(y_train), as_x(x_test), as_y(y_test)


def hardtanh_mlp(depth: int, width: int, sigma_w: float, seed: int):
    """Linear -> Hardtanh, ``depth`` times, then Linear(., 10) on the digits' 64 inputs;
    W ~ N(0, sigma_w^2 / fan_in), b = 0."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers, fan_in = [], 64
    for _ in range(depth):
        layers += [nn.Linear(fan_in, width), nn.Hardtanh()]
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=sigma_w * m.in_features ** -0.5)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)
