"""Exact walk against sampling on the paper's sweep: crossings per second, and what sampling needs to catch up.

For each (width, depth, sigma_w) a random hard-tanh network (sigma_b 0.5, 784 inputs) is
measured along a line between two random points: once exactly (``measure(exact=True)``),
then sampled in float64 at N = 2^12, 2^13, ... until sampling finds 99% of the exact
crossing points, or its time passes ``--patience`` times the exact time (and
``--min-patience`` seconds), or N reaches 2^``--max-log2``. Reported: exact
crossing points and transitions, walk time, transitions per second; the sampled N and time
at the first N that reached 99% (or the best fraction seen), and the fraction of crossing
points sampling found in the walk's own time. Cases whose crossings would take longer than
``--budget`` seconds to walk (estimated from walks over the first 2^-20, 1/4096 and 1/64 of the line) are skipped.

    python bench/bench_exact.py                      # the default sweep, table on stdout
    python bench/bench_exact.py --widths 128 --depths 10 --sigmas 4   # the issue's target case
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np

import fastexpr as fx


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def one_case(width, depth, sigma_w, args):
    net = fx.random_mlp(depth, width, 784, "hardtanh", sigma_w=sigma_w, sigma_b=0.5, seed=0)
    x0, x1 = np.random.default_rng(1).standard_normal((2, 784))
    for part in (1 << 20, 4096, 64):  # walk small pieces first: the chaotic cases would take hours
        probe, t_probe = timed(lambda: fx.measure(net, fx.line(x0, x0 + (x1 - x0) / part), exact=True,
                                                  backend=args.backend))
        if probe.network_changes * part > args.budget * 3e5:  # at about 300,000 crossings/s
            return dict(width=width, depth=depth, sigma_w=sigma_w, skipped=f"~{probe.network_changes * part:.2g}")
    ex, t_exact = timed(lambda: fx.measure(net, fx.line(x0, x1), exact=True, backend=args.backend))
    row = dict(width=width, depth=depth, sigma_w=sigma_w, points=ex.network_changes,
               transitions=int(ex.transitions.sum()), t_exact=t_exact,
               rate=ex.transitions.sum() / t_exact, n_needed=None, t_needed=None, best=0.0, same_time=None)
    n = 1 << 12
    while True:
        s, t_s = timed(lambda: fx.measure(net, fx.line(x0, x1), n, dtype="float64", progress=False))
        frac = s.network_changes / max(1, ex.network_changes)
        row["best"] = max(row["best"], frac)
        if row["same_time"] is None and t_s >= t_exact:
            row["same_time"] = frac
        if frac >= 0.99:
            row["n_needed"], row["t_needed"] = n, t_s
            break
        if t_s > max(args.patience * t_exact, args.min_patience) or n >= 1 << args.max_log2:
            break
        n *= 2
    if row["same_time"] is None:
        row["same_time"] = row["best"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 6, 10, 20])
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1.0, 4.0, 16.0])
    parser.add_argument("--backend", default="cpu")
    parser.add_argument("--budget", type=float, default=60.0, help="skip cases whose walk would take longer (s)")
    parser.add_argument("--patience", type=float, default=20.0, help="stop sampling after this many walk times")
    parser.add_argument("--min-patience", type=float, default=2.0, help="but sample for at least this long (s)")
    parser.add_argument("--max-log2", type=int, default=26, help="largest sampled N is 2^this")
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {fx.__version__}, backend {args.backend}; "
          "hard-tanh, sigma_b 0.5, 784 inputs, line")
    print("| width | depth | sigma_w | crossing points | transitions | walk (s) | transitions/s "
          "| sampled N for 99% | its time (s) | found by sampling in the walk's time |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    import warnings

    warnings.simplefilter("ignore")  # saturation warnings are the point of the comparison
    for width in args.widths:
        for depth in args.depths:
            for sigma_w in args.sigmas:
                r = one_case(width, depth, sigma_w, args)
                if "skipped" in r:
                    print(f"| {width} | {depth} | {sigma_w:g} | {r['skipped']} | | skipped (over budget) | | | | |")
                    continue
                need = (f"2^{int(np.log2(r['n_needed']))}" if r["n_needed"] else f"not reached ({r['best']:.0%})")
                t_need = f"{r['t_needed']:.2f}" if r["t_needed"] else ""
                print(f"| {width} | {depth} | {sigma_w:g} | {r['points']:,} | {r['transitions']:,} | "
                      f"{r['t_exact']:.3f} | {r['rate']:,.0f} | {need} | {t_need} | {r['same_time']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
