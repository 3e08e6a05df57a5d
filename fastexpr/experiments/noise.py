"""Remaining depth, robustness to noise (Raghu et al. 2017, Figure 6).

A small conv net is trained on scikit-learn's digits (8x8 images; the paper used a CIFAR-10
conv net, which needs a download: same idea, smaller data). Then, one layer at a time, Gaussian
noise of standard deviation ``magnitude x RMS(that layer's weights)`` is added to its weights
and the test accuracy measured (mean over ``--draws`` noise draws; the other layers intact).
The paper's finding: noise in the lower layers hurts far more than in the upper ones (their
remaining depth is larger).

Output: a table, ``noise.png`` (accuracy against magnitude, one line per layer) and
``results.json`` in ``--out``.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import add_common_arguments, begin, finish, load_digits, pyplot, scale

MAGNITUDES = (0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options; the defaults take about a minute on a 2-core CPU."""
    add_common_arguments(parser, "fastexpr_noise")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--draws", type=int, default=10, help="noise draws per (layer, magnitude)")
    parser.add_argument("--magnitudes", type=scale, nargs="+", default=list(MAGNITUDES),
                        help="noise standard deviations, in units of the layer's weight RMS")


def build():
    """Conv(1->16, 3x3) ReLU Conv(16->32, 3x3) ReLU MaxPool(2) | Linear(512->64) ReLU Linear(64->10)."""
    from torch import nn

    return nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10))


def train(net, params, data, epochs: int, seed: int, bar=None, lr: float = 1e-3) -> None:
    """Adam on ``params`` (the rest of ``net`` frozen), minibatches of 32, cross entropy, on one
    torch thread (fastest for networks this small)."""
    import torch
    import torch.nn.functional as F

    x_train, y_train, _, _ = data
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(params, lr=lr)
    order = torch.Generator().manual_seed(seed)
    net.train()
    try:
        for _ in range(epochs):
            for idx in torch.randperm(len(x_train), generator=order).split(32):
                loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if bar is not None:
                bar.update(1)
    finally:
        torch.set_num_threads(threads)


def accuracy(net, x, y) -> float:
    import torch

    net.eval()
    with torch.no_grad():
        return (net(x).argmax(1) == y).float().mean().item()


def main(args: argparse.Namespace) -> int:
    """Train, perturb each layer, print the table, write the plot and results.json."""
    begin(args, epochs=2, draws=2, magnitudes=[0.0, 0.5, 1.5])
    if args.epochs < 1 or args.draws < 1 or min(args.magnitudes) < 0:
        raise ValueError("--epochs and --draws must be at least 1 and --magnitudes non-negative")
    import torch
    from tqdm.auto import tqdm


    data = load_digits()
    _, _, x_test, y_test = data
    torch.manual_seed(args.seed)
    net = build()
    layers = [m for m in net if hasattr(m, "weight")]
    start = time.perf_counter()
    total = args.epochs + len(layers) * len(args.magnitudes) * args.draws
    with tqdm(total=total, desc="noise", unit="step", disable=args.no_progress) as bar:
        train(net, list(net.parameters()), data, args.epochs, args.seed, bar)
        clean = accuracy(net, x_test, y_test)
        gen = torch.Generator().manual_seed(args.seed + 1)
        table = []
        for layer in layers:
            original = layer.weight.detach().clone()
            rms = original.pow(2).mean().sqrt()
            row = []
            for magnitude in args.magnitudes:
                accs = []
                for _ in range(args.draws):
                    with torch.no_grad():
                        layer.weight.copy_(original + magnitude * rms * torch.randn(original.shape, generator=gen))
                    accs.append(accuracy(net, x_test, y_test))
                    bar.update(1)
                row.append(float(np.mean(accs)))
            with torch.no_grad():
                layer.weight.copy_(original)
            table.append(row)
    elapsed = time.perf_counter() - start
    names = [f"{type(m).__name__.lower()} {i + 1}" for i, m in enumerate(layers)]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, row in zip(names, table):
        ax.plot(args.magnitudes, row, marker="o", label=name)
    ax.set(xlabel="noise std / weight RMS", ylabel="test accuracy", title="digits conv net: noise in one layer")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "noise.png"), dpi=100)
    plt.close(fig)
    head = f"{'noisy layer':<12} " + " ".join(f"{m:>7.2f}" for m in args.magnitudes)
    lines = [f"digits, small conv net, {args.epochs} epochs, clean test accuracy {clean:.4f}; test accuracy with "
             f"noise of std = magnitude x weight RMS (mean of {args.draws} draws):", head, "-" * len(head)]
    lines += [f"{name:<12} " + " ".join(f"{a:>7.4f}" for a in row) for name, row in zip(names, table)]
    return finish(args, "\n".join(lines), {"seconds": elapsed, "clean_accuracy": clean, "layers": names,
                                           "magnitudes": list(args.magnitudes), "accuracy": table})
