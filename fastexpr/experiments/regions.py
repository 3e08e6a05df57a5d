"""Linear regions on a 2-D slice of input space (Raghu et al. 2017, Figure 1).

A random relu network on 2-D inputs (the slice is the input plane itself, through the origin
along the two axes); :func:`fastexpr.region_map` on a ``--resolution``-square grid for the
first layer alone, the first two, and all three, with the boundaries drawn per layer (first
layer black, second green, third purple, as in the paper). Each count is set beside Theorem
1's bound on activation patterns (:func:`fastexpr.theory.activation_pattern_bound`).

Output: a table, ``regions.png`` (one panel per prefix of the network) and ``results.json``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import add_common_arguments, begin, finish, pyplot, scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take seconds."""
    add_common_arguments(parser, "fastexpr_regions")
    parser.add_argument("--depth", type=int, default=3, help="hidden layers")
    parser.add_argument("--width", type=int, default=8)
    parser.add_argument("--activation", choices=["relu", "hardtanh"], default="relu")
    parser.add_argument("--sigma-w", type=scale, default=2.0)
    parser.add_argument("--sigma-b", type=scale, default=1.0)
    parser.add_argument("--extent", type=scale, default=3.0, help="the slice spans [-extent, extent]^2")
    parser.add_argument("--resolution", type=int, default=1024, help="pixels per side (at most 4096)")


def main(args: argparse.Namespace) -> int:
    """Region maps of each prefix of the network; table, plots, results.json."""
    begin(args, resolution=64, width=4)
    if args.depth < 1 or args.width < 1:
        raise ValueError("--depth and --width must be at least 1")
    from tqdm.auto import tqdm

    from ..network import from_arrays, random_mlp
    from ..regions import region_map
    from ..theory import activation_pattern_bound

    net = random_mlp(args.depth, args.width, 2, args.activation, sigma_w=args.sigma_w, sigma_b=args.sigma_b,
                     seed=args.seed)
    maps, rows = [], []
    start = time.perf_counter()
    for d in tqdm(range(1, args.depth + 1), desc="regions", unit="prefix", disable=args.no_progress):
        prefix = from_arrays(list(net.weights[:d]), list(net.biases[:d]), list(net.activations[:d]))
        tick = time.perf_counter()
        got = region_map(prefix, np.zeros(2), np.array([1.0, 0.0]), np.array([0.0, 1.0]), args.extent,
                         args.resolution)
        maps.append(got)
        rows.append(dict(layers=d, regions=got.n_regions, bound=activation_pattern_bound(prefix.widths, args.activation),
                         seconds=time.perf_counter() - tick, boundary_pixels=got.to_dict()["boundary_pixels"]))
    elapsed = time.perf_counter() - start
    plt = pyplot()
    fig, axes = plt.subplots(1, args.depth, figsize=(4 * args.depth, 4), squeeze=False)
    for ax, got, row in zip(axes[0], maps, rows):
        got.plot(ax=ax, title=f"layers 1..{row['layers']}: {row['regions']} regions (Thm 1: {row['bound']})")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "regions.png"), dpi=100)
    plt.close(fig)
    head = f"{'layers':>6} {'regions in slice':>16} {'Theorem 1 bound':>16} {'seconds':>8}"
    lines = [f"{args.activation} network, width {args.width}, 2-D input, sigma_w = {args.sigma_w}, sigma_b = "
             f"{args.sigma_b}, slice [-{args.extent}, {args.extent}]^2 at {args.resolution}^2 pixels", head,
             "-" * len(head)]
    lines += [f"{r['layers']:>6} {r['regions']:>16} {r['bound']:>16} {r['seconds']:>8.2f}" for r in rows]
    return finish(args, "\n".join(lines), {"seconds": elapsed, "rows": rows})
