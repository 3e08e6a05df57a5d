"""Trajectory length and weight scale through training (Raghu et al. 2017, Figures 8 and 9).

A hard-tanh MLP without batch norm (``--depth`` hidden layers of ``--width``, initialised with
``W ~ N(0, sigma_w^2 / fan_in)``, zero biases) is trained on scikit-learn's digits. At every
epoch (and before training) it records, per hidden layer:

* the length of a great circle through two test images (``x(t) = cos(2 pi t) x_a +
  sin(2 pi t) x_b``) over its input length, measured with :func:`fastexpr.measure`
  (Figure 8: training lengthens the trajectory, most in the lower layers' images);
* the weight scale ``sigma_w`` estimated from the layer's weights, ``sqrt(fan_in x
  mean(W^2))`` (Figure 9: sigma_w grows during training);
* the paper's explanation as a number: the length ratio the mean field predicts for a random
  network with those sigma_w (and sigma_b, the RMS of each layer's biases), layer by layer from
  the circle's second moment (:func:`fastexpr.theory.mean_field_layers`). Where the measured
  ratio follows it, the growth in sigma_w accounts for the growth in length; where it departs,
  the trained weights are no longer like random ones of that scale.

With batch norm the same is in ``fastexpr experiment regularization`` (Figure 10).
Output: a table, ``training_length.png`` and ``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from ._common import add_common_arguments, begin, finish, hardtanh_mlp, load_digits, pyplot, scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take about a minute on a 2-core CPU."""
    add_common_arguments(parser, "fastexpr_training_length")
    parser.add_argument("--depth", type=int, default=6, help="hidden layers")
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument("--sigma-w", type=scale, default=1.0, help="initial weight scale")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--points", type=int, default=20000, help="samples along the circle")


def snapshot(net, circle, points: int, depth: int, second_moment: float) -> dict:
    """Per-hidden-layer length ratios along ``circle``, estimated sigma_w and sigma_b (all layers)
    and the mean-field length ratios for those scales (``second_moment``: the circle's mean
    ``|x|^2 / input_dim``)."""
    from ..measure import SaturationWarning, measure
    from ..network import from_torch
    from ..theory import mean_field_layers

    fx_net = from_torch(net)
    with warnings.catch_warnings():  # only the lengths are used
        warnings.simplefilter("ignore", SaturationWarning)
        lengths = measure(fx_net, circle, points).lengths
    sigmas = [float(np.sqrt(w.shape[1] * np.mean(w ** 2))) for w in fx_net.weights]
    biases = [float(np.sqrt(np.mean(b ** 2))) for b in fx_net.biases]
    widths = [fx_net.weights[0].shape[1]] + [w.shape[0] for w in fx_net.weights[:depth]]
    _, growth = mean_field_layers("hardtanh", widths, sigmas[:depth], biases[:depth], second_moment)
    return {"length_ratio": [float(v) for v in lengths[1: depth + 1] / lengths[0]], "sigma_w": sigmas,
            "sigma_b": biases, "mean_field_ratio": [float(v) for v in np.cumprod(growth)]}


def main(args: argparse.Namespace) -> int:
    """Train with snapshots; print the table, write the plot and results.json."""
    begin(args, depth=3, width=16, epochs=2, points=2000)
    for name in ("depth", "width", "epochs"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be at least 1")
    if args.points < 2 or not args.sigma_w > 0:
        raise ValueError("--points must be at least 2 and --sigma-w positive")
    from tqdm.auto import tqdm

    from ..trajectory import great_circle
    from .noise import accuracy, train

    data = load_digits()
    x_train, y_train, x_test, y_test = data
    x_a, x_b = x_test[0].double().numpy(), x_test[1].double().numpy()
    circle = great_circle(x_a, x_b)
    second = float((x_a @ x_a + x_b @ x_b) / (2 * x_a.size))  # |x(t)|^2 / dim averaged over the circle
    net = hardtanh_mlp(args.depth, args.width, args.sigma_w, args.seed)
    start = time.perf_counter()
    history = [dict(epoch=0, test=accuracy(net, x_test, y_test), **snapshot(net, circle, args.points, args.depth, second))]
    with tqdm(total=args.epochs, desc="training-length", unit="epoch", disable=args.no_progress) as bar:
        for epoch in range(1, args.epochs + 1):
            train(net, list(net.parameters()), data, 1, args.seed + epoch, bar)
            history.append(dict(epoch=epoch, test=accuracy(net, x_test, y_test),
                                **snapshot(net, circle, args.points, args.depth, second)))
    elapsed = time.perf_counter() - start
    _plot(history, args)
    head = f"{'epoch':>5} {'test acc':>8}   length / input at hidden layer 1..{args.depth}" \
           f"   | mean field at {args.depth}  ratio   |   sigma_w of layer 1..{args.depth + 1}"
    lines = [f"digits, hard-tanh MLP depth {args.depth} width {args.width}, initial sigma_w = {args.sigma_w}, "
             f"no batch norm; a great circle through two test images at {args.points} samples; mean field: the "
             f"length ratio a random network with the estimated sigma_w, sigma_b would give", head, "-" * len(head)]
    for h in history:
        if h["epoch"] in (0, 1, 2, 5) or h["epoch"] % 10 == 0 or h["epoch"] == args.epochs:
            last, predicted = h["length_ratio"][-1], h["mean_field_ratio"][-1]
            lines.append(f"{h['epoch']:>5} {h['test']:>8.4f}   " + " ".join(f"{v:7.3g}" for v in h["length_ratio"])
                         + f"   | {predicted:13.3g} {last / predicted:6.3f}   |   "
                         + " ".join(f"{v:5.2f}" for v in h["sigma_w"]))
    return finish(args, "\n".join(lines), {"seconds": elapsed, "history": history})


def _plot(history, args) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    lengths = np.array([h["length_ratio"] for h in history])
    sigmas = np.array([h["sigma_w"] for h in history])
    colors = plt.cm.viridis(np.linspace(0, 0.9, sigmas.shape[1]))
    predicted = np.array([h["mean_field_ratio"] for h in history])
    for d in range(lengths.shape[1]):
        axes[0].plot(epochs, lengths[:, d], color=colors[d], label=f"layer {d + 1}")
        axes[0].plot(epochs, predicted[:, d], "--", color=colors[d], lw=0.8)
    for d in range(sigmas.shape[1]):
        axes[1].plot(epochs, sigmas[:, d], color=colors[d], label=f"layer {d + 1}")
    axes[0].set(yscale="log", xlabel="epoch", ylabel="trajectory length / input length",
                title="length of a circle through two test images (Fig. 8)\n"
                "dashed: mean field at the estimated $\\sigma_w$, $\\sigma_b$")
    axes[1].set(xlabel="epoch", ylabel=r"$\sigma_w$ from the weights", title=r"weight scale $\sigma_w$ (Fig. 9)")
    axes[1].legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "training_length.png"), dpi=100)
    plt.close(fig)
