"""Dichotomies (Raghu et al. 2017, section 2.1): how many labellings of n fixed
inputs a random network produces while one layer's weights sweep a great circle.

Random hard-tanh networks (``random_mlp``, one linear output read by its sign), ``--inputs``
Gaussian inputs, :func:`fastexpr.dichotomies` at ``--points`` samples of the sweep:

* against depth, one line per width, and against width, one line per depth, sweeping the
  first layer;
* against remaining depth: one deep network, sweeping each of its layers in turn;
* against label transitions, every run above, beside the paper's random-walk model (each
  transition flips one label chosen uniformly at random, :func:`fastexpr.theory.random_walk_dichotomies`)
  and the ``2^n`` labellings there are.

Each run also gets a prediction with no fitted constant: its label transitions from the mean
field and Kac-Rice (:func:`fastexpr.theory.sweep_transitions`, per input, summed), and the
random walk's dichotomies at that many transitions (dashed in the depth, width and
remaining-depth plots; the table gives measured/predicted).

Output: a table, ``dichotomies_vs_depth.png``, ``dichotomies_vs_width.png``, ``remaining_depth.png``,
``dichotomies_vs_transitions.png`` and ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import add_common_arguments, begin, finish, pyplot, scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take a few minutes on a 2-core CPU."""
    add_common_arguments(parser, "fastexpr_dichotomies")
    parser.add_argument("--widths", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--max-depth", type=int, default=10)
    parser.add_argument("--deep-width", type=int, default=25, help="width of the network swept layer by layer")
    parser.add_argument("--inputs", type=int, default=15, help="n fixed inputs (at most 63)")
    parser.add_argument("--input-dim", type=int, default=16)
    parser.add_argument("--sigma-w", type=scale, default=4.0)
    parser.add_argument("--sigma-b", type=scale, default=0.0)
    parser.add_argument("--nets", type=int, default=2, help="random networks per setting (averaged)")
    parser.add_argument("--points", type=int, default=1 << 15, help="samples of the weight sweep")


def main(args: argparse.Namespace) -> int:
    """Run the sweeps, print the table, write plots and results.json."""
    begin(args, widths=[5, 8], max_depth=3, deep_width=6, inputs=6, nets=1, points=400)
    for name in ("max_depth", "deep_width", "inputs", "input_dim", "nets", "points"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if min(args.widths) < 1 or not 1 <= args.inputs <= 63 or args.points < 2:
        raise ValueError("--widths must be positive, --inputs from 1 to 63 and --points at least 2")
    from tqdm.auto import tqdm

    from ..dichotomies import dichotomies
    from ..network import random_mlp

    x = np.random.default_rng(args.seed).standard_normal((args.inputs, args.input_dim))
    jobs = [("depth", w, d, 1) for w in args.widths for d in range(1, args.max_depth + 1)]
    jobs += [("remaining", args.deep_width, args.max_depth, layer) for layer in range(1, args.max_depth + 1)]
    runs = []
    start = time.perf_counter()
    with tqdm(total=len(jobs) * args.nets, desc="dichotomies", unit="sweep", disable=args.no_progress) as bar:
        for kind, width, depth, layer in jobs:
            found, transitions = [], []
            for net_seed in range(args.nets):
                net = random_mlp(depth, width, args.input_dim, "hardtanh", sigma_w=args.sigma_w,
                                 sigma_b=args.sigma_b, output_dim=1, seed=(args.seed, width, depth, net_seed))
                got = dichotomies(net, layer, x, args.points, seed=(args.seed, 1, width, depth, net_seed, layer))
                found.append(got.n_dichotomies)
                transitions.append(got.transitions)
                bar.update(1)
            runs.append(dict(kind=kind, width=width, depth=depth, layer=layer, remaining=depth - layer + 1,
                             dichotomies=float(np.mean(found)), transitions=float(np.mean(transitions)),
                             per_net=found, transitions_per_net=transitions))
    elapsed = time.perf_counter() - start
    _add_random_walk(runs, args, x)
    _plot(runs, args)
    return finish(args, _table(runs, args, elapsed), {"seconds": elapsed, "runs": runs})


def _add_random_walk(runs, args, x) -> None:
    """Each run's random-walk prediction at its own number of transitions (per network, averaged),
    the predicted transitions (summed over the inputs) and the random walk at those."""
    from ..theory import random_walk_dichotomies, sweep_transitions

    moments = np.sum(x ** 2, axis=1) / x.shape[1]
    for run in runs:
        run["random_walk"] = float(np.mean(random_walk_dichotomies(args.inputs, run["transitions_per_net"],
                                                                   seed=args.seed)))
        widths = (args.input_dim,) + (run["width"],) * run["depth"] + (1,)
        run["predicted_transitions"] = float(sum(sweep_transitions("hardtanh", widths, run["layer"], args.sigma_w,
                                                                   args.sigma_b, m) for m in moments))
        run["predicted_dichotomies"] = float(random_walk_dichotomies(
            args.inputs, [round(run["predicted_transitions"])], seed=args.seed)[0])


def _table(runs, args, elapsed) -> str:
    head = f"{'sweep':<10} {'width':>5} {'depth':>5} {'layer':>5} {'dichotomies':>11} {'transitions':>11} " \
           f"{'random walk':>11} {'measured/walk':>13} {'pred. trans.':>12} {'ratio':>6} {'pred. dich.':>11} {'ratio':>6}"
    lines = [f"{args.inputs} inputs (2^n = {2 ** args.inputs}), hard-tanh, sigma_w = {args.sigma_w}, sigma_b = "
             f"{args.sigma_b}, {args.points} samples, {args.nets} network(s) per row, {elapsed:.0f} s; random walk: at "
             "the measured transitions; pred.: transitions from the mean field and Kac-Rice, dichotomies from the "
             "random walk at those", head, "-" * len(head)]
    for r in runs:
        lines.append(f"{r['kind']:<10} {r['width']:>5} {r['depth']:>5} {r['layer']:>5} {r['dichotomies']:>11.1f} "
                     f"{r['transitions']:>11.1f} {r['random_walk']:>11.1f} {r['dichotomies'] / r['random_walk']:>13.3f} "
                     f"{r['predicted_transitions']:>12.1f} {r['transitions'] / r['predicted_transitions']:>6.3f} "
                     f"{r['predicted_dichotomies']:>11.1f} {r['dichotomies'] / r['predicted_dichotomies']:>6.3f}")
    return "\n".join(lines)


def _plot(runs, args) -> None:
    depth_runs = [r for r in runs if r["kind"] == "depth"]
    def series(rows, x, label):
        return [r[x] for r in rows], [r["dichotomies"] for r in rows], [r["predicted_dichotomies"] for r in rows], label

    by_width = [series([r for r in depth_runs if r["width"] == w], "depth", f"width {w}") for w in args.widths]
    by_depth = [series([r for r in depth_runs if r["depth"] == d], "width", f"depth {d}")
                for d in sorted({1, (args.max_depth + 1) // 2, args.max_depth})]
    remaining = [r for r in runs if r["kind"] == "remaining"]
    plt = pyplot()
    _log_plot(plt, args, by_width, "depth (first layer swept)", f"dichotomies of {args.inputs} inputs vs depth",
              "dichotomies_vs_depth.png")
    _log_plot(plt, args, by_depth, "width (first layer swept)", f"dichotomies of {args.inputs} inputs vs width",
              "dichotomies_vs_width.png")
    _log_plot(plt, args, [series(remaining, "remaining", f"depth {args.max_depth}, width {args.deep_width}")],
              "remaining depth (layers from the swept one up)", "dichotomies vs remaining depth", "remaining_depth.png")

    from ..theory import random_walk_dichotomies

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for kind, marker in (("depth", "o"), ("remaining", "s")):
        rows = [r for r in runs if r["kind"] == kind]
        ax.scatter([r["transitions"] for r in rows], [r["dichotomies"] for r in rows], marker=marker, s=18,
                   label="first layer swept" if kind == "depth" else "each layer of the deep net")
    top = max(r["transitions"] for r in runs)
    steps = np.unique(np.geomspace(1, max(top, 2), 60).astype(np.int64))
    ax.plot(steps, random_walk_dichotomies(args.inputs, steps, seed=args.seed), "k-", lw=1, label="random walk")
    ax.axhline(2 ** args.inputs, color="k", ls="--", lw=1, label=f"$2^{{{args.inputs}}}$")
    ax.set(xscale="log", yscale="log", xlabel="label transitions", ylabel="unique dichotomies",
           title="dichotomies vs transitions")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "dichotomies_vs_transitions.png"), dpi=100)
    plt.close(fig)


def _log_plot(plt, args, series, xlabel: str, title: str, name: str) -> None:
    """Dichotomies on a log axis, one line per (xs, ys, predicted ys, label), the prediction dashed in
    the same colour, with the 2^inputs ceiling dashed in black."""
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for xs, ys, predicted, label in series:
        line, = ax.plot(xs, ys, marker="o", label=label)
        ax.plot(xs, predicted, ls="--", lw=1, color=line.get_color())
    ax.axhline(2 ** args.inputs, color="k", ls="--", lw=1, label=f"$2^{{{args.inputs}}}$")
    ax.set(yscale="log", xlabel=xlabel, ylabel="unique dichotomies",
           title=title + "\n(dashed: mean field + Kac-Rice + random walk, no fit)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, name), dpi=100)
    plt.close(fig)
