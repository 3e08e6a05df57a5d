"""The image of a great circle after each layer (Raghu et al. 2017, Figure 3), its length
against the theory (Theorem 3, mean field) and its transitions against its length (Theorem 4,
Figure 2).

A circle of radius sqrt(input_dim) in a random plane of input space goes through a random
hard-tanh network; after each layer its image is projected onto its top two principal
components (PCA of the samples) and drawn, one panel per layer. The table gives, per layer d,
the exact length over the input's and the growth from layer d - 1 (``fastexpr.measure(...,
exact=True)``: continuum lengths, not sampled ones) beside

* the mean-field growth ``sqrt(chi)`` at the layer's own pre-activation variance q_d
  (:func:`fastexpr.theory.mean_field_layers`: Poole et al.'s recursion from the input, which
  reaches the fixed point q* after a layer or two);
* Theorem 3's base (:func:`fastexpr.theory.length_growth_bound`), an order of growth only;
* the transitions in layer d against Theorem 4 with its Kac-Rice constant: the measured length
  of layer d - 1's image times :func:`fastexpr.theory.transitions_per_length` at q_d.

``--sweep`` repeats the transitions-against-length comparison for several widths and sigma_w
(the paper's Figure 2). Output: a table, ``trajectory_images.png``, ``length_vs_depth.png``,
``transitions_vs_length.png`` and ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import add_common_arguments, begin, finish, pyplot, scale


SWEEP = ((50, 2.0), (100, 2.0), (100, 4.0), (200, 4.0), (50, 8.0), (200, 8.0))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take seconds."""
    add_common_arguments(parser, "fastexpr_trajectory_images")
    parser.add_argument("--depth", type=int, default=6, help="hidden layers")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--input-dim", type=int, default=100)
    parser.add_argument("--sigma-w", type=scale, default=4.0)
    parser.add_argument("--sigma-b", type=scale, default=0.0)
    parser.add_argument("--points", type=int, default=4000, help="samples along the circle for the images")
    parser.add_argument("--sweep", type=str, default=",".join(f"{k}:{s:g}" for k, s in SWEEP),
                        help="width:sigma_w pairs for transitions against length (input dim = width)")


def layer_rows(net, circle, widths, sigma_w: float, sigma_b: float) -> list[dict]:
    """Per layer: exact length and transitions, and what the theory predicts for them."""
    from ..measure import measure
    from ..theory import length_growth_bound, mean_field_layers, transitions_per_length

    result = measure(net, circle, exact=True)  # the continuum lengths and transitions, not sampled ones
    lengths, transitions = result.lengths, result.transitions  # lengths from the input on, transitions per layer
    q, growth = mean_field_layers("hardtanh", widths, sigma_w, sigma_b, input_second_moment=1.0)
    rows = [dict(layer=0, length_ratio=1.0, mean_field=1.0)]
    for d in range(1, len(widths)):
        rows.append(dict(
            layer=d, length_ratio=float(lengths[d] / lengths[0]), growth=float(lengths[d] / lengths[d - 1]),
            mean_field_growth=float(growth[d - 1]), mean_field=float(np.prod(growth[:d])), q=float(q[d - 1]),
            theorem3_base=length_growth_bound("hardtanh", widths[d], sigma_w, sigma_b),
            length_below=float(lengths[d - 1]), transitions=int(transitions[d - 1]),
            predicted_transitions=float(lengths[d - 1] * transitions_per_length(
                "hardtanh", widths[d], sigma_w, sigma_b, fan_in=widths[d - 1], q=q[d - 1]))))
    return rows


def _sweep(text: str) -> list[tuple[int, float]]:
    try:
        pairs = [(int(k), float(s)) for k, s in (item.split(":") for item in text.split(",") if item)]
    except ValueError:
        raise ValueError(f"--sweep must be width:sigma_w pairs separated by commas, got {text!r}") from None
    if any(k < 2 or not 0 < s <= 1e30 for k, s in pairs):
        raise ValueError(f"--sweep widths must be at least 2 and sigma_w from 0 to 1e30, got {text!r}")
    return pairs


def main(args: argparse.Namespace) -> int:
    """Images per layer; tables, plots, results.json."""
    begin(args, depth=3, width=20, input_dim=10, points=400, sweep="20:2,20:4")
    for name in ("depth", "width", "input_dim"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.input_dim < 2 or args.points < 3:
        raise ValueError("--input-dim must be at least 2 and --points at least 3")
    sweep = _sweep(args.sweep)
    from tqdm.auto import tqdm

    from ..network import random_mlp
    from ..trajectory import great_circle

    def circle(dim, seed):
        q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((dim, 2)))
        return q[:, 0] * np.sqrt(dim), q[:, 1] * np.sqrt(dim)  # radius sqrt(dim): |x|^2 / dim = 1

    u, v = circle(args.input_dim, args.seed)
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
    widths = (args.input_dim,) + (args.width,) * args.depth
    rows = layer_rows(net, great_circle(u, v), widths, args.sigma_w, args.sigma_b)
    swept = []
    for k, sw in tqdm(sweep, desc="transitions vs length", unit="net", disable=args.no_progress):
        a, b = circle(k, args.seed + 2)
        swept.append(dict(width=k, sigma_w=sw, rows=layer_rows(
            random_mlp(args.depth, k, k, "hardtanh", sigma_w=sw, seed=args.seed + 3), great_circle(a, b),
            (k,) * (args.depth + 1), sw, 0.0)))
    elapsed = time.perf_counter() - start
    _plot(images, rows, swept, args)
    head = (f"{'layer':>5} {'length/input':>12} {'growth':>7} {'mean field':>10} {'ratio':>6} {'Thm3 base':>9}"
            f" {'transitions':>11} {'Thm4 (Kac-Rice)':>15} {'ratio':>6}")
    lines = [f"hard-tanh, width {args.width}, sigma_w = {args.sigma_w}, sigma_b = {args.sigma_b}, circle in "
             f"{args.input_dim}-D (exact lengths and transitions). growth: length(d) / length(d-1); mean field: "
             f"sqrt(chi) at layer d's pre-activation variance; Thm3 base: an order of growth, not a bound on the "
             f"ratio; Thm4: transitions per length x length(d-1)", head, "-" * len(head)]
    for r in rows[1:]:
        lines.append(f"{r['layer']:>5} {r['length_ratio']:>12.4g} {r['growth']:>7.3f} {r['mean_field_growth']:>10.3f} "
                     f"{r['growth'] / r['mean_field_growth']:>6.3f} {r['theorem3_base']:>9.3f} {r['transitions']:>11} "
                     f"{r['predicted_transitions']:>15.1f} {r['transitions'] / r['predicted_transitions']:>6.3f}")
    ratios = [r["transitions"] / r["predicted_transitions"] for s in swept for r in s["rows"][1:]]
    growths = [r["growth"] / r["mean_field_growth"] for s in swept for r in s["rows"][1:]]
    if swept:
        lines.append(f"sweep over width:sigma_w {args.sweep}, depth {args.depth}: transitions / Thm4 prediction "
                     f"{min(ratios):.3f}-{max(ratios):.3f} (median {np.median(ratios):.3f}); length growth / mean field "
                     f"{min(growths):.3f}-{max(growths):.3f}")
    return finish(args, "\n".join(lines), {"seconds": elapsed, "rows": rows, "sweep": swept})


def _pca2(h: np.ndarray) -> np.ndarray:
    """The samples' coordinates on their top two principal components, ``(N, 2)``."""
    centred = h - h.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T if vt.shape[0] >= 2 else np.column_stack([centred @ vt[:1].T, np.zeros(len(h))])


def _plot(images, rows, swept, args) -> None:
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
    ax.plot(layers, [r["mean_field"] for r in rows], "k--", label=r"mean field $\prod_d \sqrt{\chi(q_d)}$")
    ax.plot(layers, [1.0] + [r["theorem3_base"] ** r["layer"] for r in rows[1:]], "k:",
            label="Theorem 3 base$^d$ (an order only)")
    ax.set(yscale="log", xlabel="layer d", ylabel="length / input length", title="length of the circle per layer")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "length_vs_depth.png"), dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(len(swept), 1)))
    for color, s in zip(colors, swept):
        below = np.array([r["length_below"] for r in s["rows"][1:]])
        ax.plot(below, [r["transitions"] for r in s["rows"][1:]], "o", color=color,
                label=f"k = {s['width']}, $\\sigma_w^2$ = {s['sigma_w'] ** 2:g}")
        ax.plot(below, [r["predicted_transitions"] for r in s["rows"][1:]], "--", color=color, lw=0.8)
    ax.set(xscale="log", yscale="log", xlabel="length of layer d-1's image", ylabel="transitions in layer d",
           title="Theorem 4: transitions against length\n(dashed: Kac-Rice constant, no fit)")
    ax.legend(fontsize="x-small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "transitions_vs_length.png"), dpi=100)
    plt.close(fig)
