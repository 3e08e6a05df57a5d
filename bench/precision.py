"""float32 against float64 at high resolution: how much rounding inflates lengths and moves counts.

    python bench/precision.py --points 20 22 24     # log2 of the sample counts

At N samples consecutive differences shrink like 1/N, while float32 rounding of each
activation stays near 6e-8 of its size: once the true segment is within a few ulps, the
rounded difference is dominated by rounding noise and the summed length inflates.
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

import fastexpr as fx


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--points", type=int, nargs="+", default=[20, 22, 24], help="log2 of the sample counts")
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--sigma-w", type=float, nargs="+", default=[1.0, 4.0])
    p.add_argument("--backend", default="auto")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", fx.PrecisionWarning)  # float32 at high resolution is what this measures

    print(f"hardtanh, depth {args.depth}, width {args.width}, input 784, sigma_b 0.5, arc; "
          "relative differences float32 vs float64\n")
    print(f"{'sigma_w':>7} {'N':>10} {'len L (f64)':>12} {'dlen L':>10} {'dlen 1':>10} {'trans L f32':>12} "
          f"{'trans L f64':>12} {'distinct f32':>12} {'distinct f64':>12}")
    for sigma_w in args.sigma_w:
        net = fx.random_mlp(args.depth, args.width, 784, "hardtanh", sigma_w=sigma_w, sigma_b=0.5, seed=0)
        x0, x1 = np.random.default_rng(1).standard_normal((2, 784))
        traj = fx.arc(x0, x1)
        for k in args.points:
            r32 = fx.measure(net, traj, 1 << k, backend=args.backend, dtype="float32", progress=False)
            r64 = fx.measure(net, traj, 1 << k, backend=args.backend, dtype="float64", progress=False)
            rel = (r32.lengths - r64.lengths) / r64.lengths
            print(f"{sigma_w:>7g} {'2^' + str(k):>10} {r64.lengths[-1]:>12.6g} {rel[-1]:>10.2e} {rel[1]:>10.2e} "
                  f"{r32.transitions[-1]:>12,} {r64.transitions[-1]:>12,} {r32.distinct_patterns:>12,} "
                  f"{r64.distinct_patterns:>12,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
