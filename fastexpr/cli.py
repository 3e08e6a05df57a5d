"""The ``fastexpr`` command: ``measure``, ``demo``, ``experiment``, ``backends``."""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def _positive_int(text: str) -> int:
    value = int(float(text)) if "e" in text.lower() else int(text, 0)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _trajectory(kind: str, dim: int, seed: int):
    from . import trajectory as tr

    rng = np.random.default_rng(seed)
    if kind in ("arc", "great_circle"):
        q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))  # orthonormal pair: a true circle in input space
        return getattr(tr, kind)(q[:, 0] * np.sqrt(dim), q[:, 1] * np.sqrt(dim))
    if kind == "line":
        return tr.line(rng.standard_normal(dim), rng.standard_normal(dim))
    return tr.polyline(rng.standard_normal((8, dim)))


def cmd_measure(args) -> int:
    from .measure import measure
    from .network import random_mlp

    net = random_mlp(args.depth, args.width, args.input_dim, args.activation, sigma_w=args.sigma_w,
                     sigma_b=args.sigma_b, seed=args.seed)
    traj = _trajectory(args.trajectory, args.input_dim, args.seed + 1)
    result = measure(net, traj, args.points, backend=args.backend, dtype=args.dtype,
                     progress=None if not args.json else False)
    print(json.dumps(result.to_dict(), indent=2) if args.json else result.table())
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(out_dir=args.out, backend=args.backend, n_points=args.points, seeds=args.seeds)


def cmd_backends(args) -> int:
    from .backends import available_backends, missing_backends

    print("available:", ", ".join(available_backends()) or "none")
    for name, reason in missing_backends().items():
        print(f"missing {name}: {reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastexpr", description=__import__("fastexpr").__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")

    m = sub.add_parser("measure", help="measure one random network along one trajectory and print the table")
    m.add_argument("--depth", type=_positive_int, default=10)
    m.add_argument("--width", type=_positive_int, default=128)
    m.add_argument("--input-dim", type=_positive_int, default=784)
    m.add_argument("--activation", choices=["hardtanh", "relu", "identity"], default="hardtanh")
    m.add_argument("--sigma-w", type=float, default=4.0)
    m.add_argument("--sigma-b", type=float, default=0.5)
    m.add_argument("--trajectory", choices=["arc", "line", "great_circle", "polyline"], default="arc")
    m.add_argument("--points", type=_positive_int, default=1 << 18, help="samples along the trajectory (1e6 works)")
    m.add_argument("--backend", default="auto", help="auto, cpu, numba, torch or cuda")
    m.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="float32 is faster but can overcount from about 2^18 points (README, Precision)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.set_defaults(func=cmd_measure)

    d = sub.add_parser("demo", help="depth x sigma_w sweep on random hard-tanh networks, with plots (about a minute)")
    d.add_argument("--out", default="fastexpr_demo", help="folder for the PNG plots")
    d.add_argument("--points", type=_positive_int, default=None,
                   help="sample this many points instead of counting exactly (the default)")
    d.add_argument("--seeds", type=_positive_int, default=4)
    d.add_argument("--backend", default="auto")
    d.set_defaults(func=cmd_demo)

    e = sub.add_parser("experiment", help="reproductions of the paper's experiments")
    esub = e.add_subparsers(dest="experiment", required=True)
    from .experiments import regularization

    r = esub.add_parser("regularization", help="trajectory regularisation vs batch norm on the digits data (sec. 3.3)")
    regularization.add_arguments(r)
    r.set_defaults(func=regularization.main)

    b = sub.add_parser("backends", help="list the backends that work here, and why the others do not")
    b.set_defaults(func=cmd_backends)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from .backends import BackendUnavailable

    try:
        return args.func(args)
    except (ValueError, BackendUnavailable) as exc:
        print(f"fastexpr: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
