"""Trajectory regularisation against batch norm on real data (Raghu et al. 2017, section 3.3).

The same small ReLU network is trained on scikit-learn's bundled digits (8x8 images, 10
classes, no download) three ways: with no normalisation, with ``BatchNorm1d`` after every
hidden ``Linear``, and with :class:`fastexpr.nn.TrajectoryRegularization` in the same places,
over several seeds. Recorded every epoch, on the held-out test set:

* test accuracy (the paper's Figure 10);
* the length of a fixed input trajectory at every hidden layer, divided by its length at the
  input (Figures 8 and 11). The trajectory is a closed polyline through one test image of
  each class, densely sampled, pushed through the network in evaluation mode.

Output: a table on stdout and, in ``--out``, ``accuracy.png``, ``trajectory_length.png``
(per-layer length over training, one panel per method), ``final_lengths.png`` (length
against depth after training) and ``results.json`` (every number, with the learnt scales
lambda of the regularisation layers). Entry points for the
CLI: :func:`add_arguments` and :func:`main`.
"""
from __future__ import annotations

import argparse
import json
import os
import time

from ._common import load_digits, scale

METHODS = ("none", "batchnorm", "trajreg")
LABELS = {"none": "no normalisation", "batchnorm": "batch norm", "trajreg": "trajectory regularisation"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The experiment's options (the defaults take about a minute on a 2-core CPU)."""
    parser.add_argument("--out", default="fastexpr_regularization", help="folder for the plots and results.json")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seeds", type=int, default=5, help="training runs per method")
    parser.add_argument("--depth", type=int, default=6, help="hidden layers")
    parser.add_argument("--width", type=int, default=64, help="neurons per hidden layer")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=scale, default=0.01, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--weight", type=scale, default=0.01, help="scale of the trajectory-regularisation loss")
    parser.add_argument("--points-per-edge", type=int, default=100,
                        help="samples per edge of the measured input trajectory (10 edges)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (one is fastest for networks this small)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def main(args: argparse.Namespace) -> int:
    """Run the experiment, print the table, write plots and results.json into ``args.out``."""
    for name in ("epochs", "seeds", "depth", "width", "batch_size", "points_per_edge", "threads"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if not args.lr > 0 or not args.weight >= 0:
        raise ValueError("--lr must be positive and --weight non-negative")
    import torch
    from tqdm.auto import tqdm

    data = load_digits()
    trajectory = _test_trajectory(data, args.points_per_edge)
    runs = {method: [] for method in METHODS}
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    try:
        with tqdm(total=len(METHODS) * args.seeds * args.epochs, desc="regularization", unit="epoch",
                  disable=args.no_progress) as bar:
            for method in METHODS:
                for seed in range(args.seeds):
                    bar.set_postfix_str(f"{method} seed {seed}")
                    runs[method].append(_train(method, seed, data, trajectory, args, bar))
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    os.makedirs(args.out, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"config": config, "seconds": elapsed, "runs": runs}, f, indent=1)
    print(_table(runs, args))
    print(f"\n{len(METHODS) * args.seeds} runs in {elapsed:.0f} s")
    _plot(runs, args)
    print(f"plots and results.json in {os.path.abspath(args.out)}")
    return 0


def _test_trajectory(data, points_per_edge):
    """Closed polyline through the first test image of each class, ``points_per_edge`` samples per edge."""
    import torch

    _, _, x_test, y_test = data
    vertices = torch.stack([x_test[(y_test == c).nonzero()[0, 0]] for c in range(10)])
    f = torch.arange(points_per_edge, dtype=torch.float32)[:, None, None] / points_per_edge
    ends = torch.roll(vertices, -1, 0)
    return ((1 - f) * vertices + f * ends).transpose(0, 1).reshape(-1, vertices.shape[1])


def _build(method, depth, width, weight):
    """Linear -> [BatchNorm1d | TrajectoryRegularization] -> ReLU, ``depth`` times, then Linear(., 10).

    He initialisation (zero biases) for every method: with PyTorch's default initialisation the
    signal shrinks ~2.5x per layer and the deep plain network hardly trains.
    """
    from torch import nn

    from ..nn import TrajectoryRegularization, TrajectoryRegularized

    layers, fan_in = [], 64
    for _ in range(depth):
        layers.append(nn.Linear(fan_in, width))
        if method == "batchnorm":
            layers.append(nn.BatchNorm1d(width))
        elif method == "trajreg":
            layers.append(TrajectoryRegularization(weight))
        layers.append(nn.ReLU())
        fan_in = width
    layers.append(nn.Linear(fan_in, 10))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    net = nn.Sequential(*layers)
    return TrajectoryRegularized(net) if method == "trajreg" else net


def _layer_lengths(net, trajectory):
    """Length of ``trajectory`` after every hidden ReLU, divided by its input length (closed path)."""
    import torch
    from torch import nn

    from ..autograd import trajectory_length

    body = net.model if hasattr(net, "model") else net
    lengths = []
    hooks = [m.register_forward_hook(lambda m, i, o: lengths.append(trajectory_length(o, closed=True).item()))
             for m in body if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        body(trajectory)
    for hook in hooks:
        hook.remove()
    base = trajectory_length(trajectory, closed=True).item()
    return [length / base for length in lengths]


def _train(method, seed, data, trajectory, args, bar):
    """One training run; per-epoch test accuracy and layer lengths (index 0: before training)."""
    import torch
    import torch.nn.functional as F

    from ..nn import TrajectoryRegularization, regularization_loss

    x_train, y_train, x_test, y_test = data
    torch.manual_seed(seed)
    net = _build(method, args.depth, args.width, args.weight)
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    history = {"accuracy": [], "lengths": [], "train_loss": [], "scales": []}

    def evaluate():
        net.eval()
        with torch.no_grad():
            history["accuracy"].append((net(x_test).argmax(1) == y_test).float().mean().item())
        history["lengths"].append(_layer_lengths(net, trajectory))
        history["scales"].append([m.scale.item() for m in net.modules() if isinstance(m, TrajectoryRegularization)])

    evaluate()
    for _ in range(args.epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(x_train), generator=order).split(args.batch_size):
            if len(idx) < 2:  # a lone sample has no trajectory (and batch norm needs two)
                continue
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            if method == "trajreg":
                loss = loss + regularization_loss(net)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        history["train_loss"].append(total / len(x_train))
        evaluate()
        bar.update(1)
    return history


def _summary(runs, key, index):
    """Mean and standard deviation over seeds of ``history[key][index]``."""
    import numpy as np

    values = np.array([run[key][index] for run in runs], dtype=float)
    return values.mean(axis=0), values.std(axis=0)


def _table(runs, args) -> str:
    import numpy as np

    last = min(10, args.epochs)
    head = (f"{'method':<27} {'final test acc':>16} {f'last {last} epochs':>16}   "
            f"length / input length at hidden layer 1..{args.depth} (final)")
    lines = [f"digits, {args.seeds} seeds, {args.epochs} epochs, depth {args.depth}, width {args.width} "
             "(accuracy: mean ± sd over seeds)", head, "-" * len(head)]
    for method in METHODS:
        acc, acc_sd = _summary(runs[method], "accuracy", -1)
        recent = np.array([run["accuracy"][-last:] for run in runs[method]]).mean(1)
        lengths, _ = _summary(runs[method], "lengths", -1)
        lines.append(f"{LABELS[method]:<27} {acc:>7.4f} ± {acc_sd:.4f} {recent.mean():>7.4f} ± {recent.std():.4f}   "
                     + " ".join(f"{v:7.3g}" for v in lengths))
    init, _ = _summary(runs["none"], "lengths", 0)
    lines.append(f"{'(no normalisation, init)':<27} {'':>33}   " + " ".join(f"{v:7.3g}" for v in init))
    return "\n".join(lines)


def _plot(runs, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    epochs = np.arange(args.epochs + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for method in METHODS:
        acc = np.array([run["accuracy"] for run in runs[method]])
        ax.plot(epochs, acc.mean(0), label=LABELS[method])
        ax.fill_between(epochs, acc.min(0), acc.max(0), alpha=0.2)
    ax.set(xlabel="epoch", ylabel="test accuracy", title="digits: test accuracy (min-max over seeds)", ylim=(0.8, 1.0))
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "accuracy.png"), dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(METHODS), figsize=(4.5 * len(METHODS), 4), sharey=True)
    colors = plt.cm.viridis(np.linspace(0, 0.9, args.depth))
    for ax, method in zip(axes, METHODS):
        lengths = np.array([run["lengths"] for run in runs[method]]).mean(0)  # (epochs + 1, depth)
        for layer in range(args.depth):
            ax.plot(epochs, lengths[:, layer], color=colors[layer], label=f"layer {layer + 1}")
        ax.set(yscale="log", xlabel="epoch", title=LABELS[method])
    axes[0].set_ylabel("trajectory length / input length")
    axes[-1].legend(fontsize="small")
    fig.suptitle("length of a test-image trajectory at each hidden layer over training")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "trajectory_length.png"), dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    layers = np.arange(1, args.depth + 1)
    for method in METHODS:
        final = np.array([run["lengths"][-1] for run in runs[method]])
        line, = ax.plot(layers, final.mean(0), marker="o", label=LABELS[method])
        ax.fill_between(layers, final.min(0), final.max(0), color=line.get_color(), alpha=0.2)
    mean, _ = _summary(runs["none"], "lengths", 0)
    ax.plot(layers, mean, "k--", label="no normalisation, at init")
    ax.set(yscale="log", xlabel="hidden layer", ylabel="trajectory length / input length",
           title="after training (mean, min-max over seeds)")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "final_lengths.png"), dpi=120)
    plt.close(fig)
