"""The image of a great circle after each layer (Raghu et al. 2017, Figure 3).

A circle of radius sqrt(input_dim) in a random plane of input space goes through a random
hard-tanh network; after each layer its image is projected onto its top two principal
components (PCA of the samples) and drawn, one panel per layer. The table gives each layer's
length over the input's (``fastexpr.measure(..., exact=True)`` on the same circle: the
continuum length, not a sampled one) beside the mean-field
prediction ``sqrt(chi_1)^d`` (Poole et al. 2016) and Theorem 3's lower-bound factor^d
(:mod:`fastexpr.theory`; the theorem's constant is unknown, so only the slope compares).

Output: a table, ``trajectory_images.png``, ``length_vs_depth.png`` (measured against both
predictions) and ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import add_common_arguments, finish, pyplot


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take seconds."""
    add_common_arguments(parser, "fastexpr_trajectory_images")
    parser.add_argument("--depth", type=int, default=6, help="hidden layers")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--input-dim", type=int, default=100)
    parser.add_argument("--sigma-w", type=float, default=4.0)
    parser.add_argument("--sigma-b", type=float, default=0.0)
    parser.add_argument("--points", type=int, default=4000, help="samples along the circle for the images")


def main(args: argparse.Namespace) -> int:
    """Images per layer; table, plot, results.json."""
    if args.quick:
        args.depth, args.width, args.input_dim, args.points = 3, 20, 10, 400
    for name in ("depth", "width", "input_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.input_dim < 2 or args.points < 3:
        raise ValueError("--input-dim must be at least 2 and --points at least 3")
    from tqdm.auto import tqdm

    from ..measure import measure
    from ..network import random_mlp
    from ..theory import length_growth_bound, mean_field
    from ..trajectory import great_circle

    rng = np.random.default_rng(args.seed)
    q, _ = np.linalg.qr(rng.standard_normal((args.input_dim, 2)))
    u, v = q[:, 0] * np.sqrt(args.input_dim), q[:, 1] * np.sqrt(args.input_dim)
    net = random_mlp(args.depth, args.width, args.input_dim, "hardtanh", sigma_w=args.sigma_w, sigma_b=args.sigma_b,
                     seed=args.seed + 1)
    start = time.perf_counter()
    t = np.arange(args.points) / (args.points - 1)
    h = np.cos(2 * np.pi * t)[:, None] * u + np.sin(2 * np.pi * t)[:, None] * v
    images = [_pca2(h)]
    for w, b in tqdm(list(zip(net.weights, net.biases)), desc="trajectory-images", unit="layer",
                     disable=args.no_progress):
        h = np.clip(h @ w.T + b, -1, 1)
        images.append(_pca2(h))
    lengths = measure(net, great_circle(u, v), exact=True).lengths  # the continuum lengths, not sampled ones
    elapsed = time.perf_counter() - start
    growth = mean_field("hardtanh", args.sigma_w, args.sigma_b).length_growth
    bound = length_growth_bound("hardtanh", args.width, args.sigma_w, args.sigma_b)
    rows = [dict(layer=d, length_ratio=float(lengths[d] / lengths[0]), mean_field=growth ** d, theorem3=bound ** d)
            for d in range(args.depth + 1)]
    os.makedirs(args.out, exist_ok=True)
    _plot(images, rows, args)
    head = f"{'layer':>5} {'length / input':>15} {'sqrt(chi_1)^d':>14} {'ratio':>7} {'Thm 3 factor^d':>15}"
    lines = [f"hard-tanh, width {args.width}, sigma_w = {args.sigma_w}, sigma_b = {args.sigma_b}, circle in "
             f"{args.input_dim}-D (exact lengths); sqrt(chi_1) = {growth:.3f}, Theorem 3 factor = {bound:.3f}",
             head, "-" * len(head)]
    lines += [f"{r['layer']:>5} {r['length_ratio']:>15.4g} {r['mean_field']:>14.4g} "
              f"{r['length_ratio'] / r['mean_field']:>7.3f} {r['theorem3']:>15.4g}" for r in rows]
    return finish(args, "\n".join(lines), {"seconds": elapsed, "rows": rows})


def _pca2(h: np.ndarray) -> np.ndarray:
    """The samples' coordinates on their top two principal components, ``(N, 2)``."""
    centred = h - h.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([centred @ vt[:1].T, np.zeros(len(h))])


def _plot(images, rows, args) -> None:
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1, n, figsize=(2.4 * n, 2.6), squeeze=False)
    for ax, image, row in zip(axes[0], images, rows):
        ax.plot(image[:, 0], image[:, 1], lw=0.6)
        ax.set_title("input" if row["layer"] == 0 else f"layer {row['layer']}", fontsize="small")
        ax.set(xticks=[], yticks=[], aspect="equal")
    fig.suptitle(f"a great circle through a hard-tanh network (width {args.width}, $\\sigma_w$ = {args.sigma_w}), "
                 "PCA to 2-D", fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "trajectory_images.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    layers = [r["layer"] for r in rows]
    ax.plot(layers, [r["length_ratio"] for r in rows], "o-", label="measured (exact)")
    ax.plot(layers, [r["mean_field"] for r in rows], "k--", label=r"mean field $\sqrt{\chi_1}^{\,d}$")
    ax.plot(layers, [r["theorem3"] for r in rows], "k:", label="Theorem 3 factor$^d$ (constant unknown)")
    ax.set(yscale="log", xlabel="layer d", ylabel="length / input length", title="length of the circle per layer")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "length_vs_depth.png"), dpi=100)
    plt.close(fig)
