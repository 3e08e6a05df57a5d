"""Sampled counts against the number of samples, with the exact count drawn in (docs/convergence.png).

    python bench/convergence_plot.py [--out docs/convergence.png]
"""
from __future__ import annotations

import argparse
import warnings

import numpy as np

import fastexpr as fx


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/convergence.png")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    warnings.simplefilter("ignore")
    x0, x1 = np.random.default_rng(1).standard_normal((2, 784))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, sigma_w in zip(axes, (2.0, 8.0)):
        net = fx.random_mlp(8, 64, 784, "hardtanh", sigma_w=sigma_w, sigma_b=0.5, seed=0)
        traj = fx.line(x0, x1)
        ex = fx.measure(net, traj, exact=True)
        ns = 2 ** np.arange(6, 23, 2) + 1
        found = [fx.measure(net, traj, int(n), progress=False).network_changes for n in ns]
        ax.loglog(ns, found, "o-", label="sampled (float64)")
        ax.loglog(ns, ns - 1, ":", color="grey", label="every pair changes (saturated)")
        ax.axhline(ex.network_changes, color="k", label=f"exact: {ex.network_changes:,}")
        ax.set_ylim(1, ex.network_changes * 3)
        ax.set_xlabel("samples N")
        ax.set_ylabel("crossing points found")
        ax.set_title(f"hard-tanh, width 64, depth 8, $\\sigma_w$={sigma_w:g}")
        ax.legend(loc="lower right")
    fig.suptitle("Sampled counts are lower bounds that converge to the exact count")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"written {args.out}")


if __name__ == "__main__":
    main()
