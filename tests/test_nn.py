"""fastexpr.nn.TrajectoryRegularization and the regularisation experiment."""
from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch
from torch import nn

from fastexpr.autograd import trajectory_length
from fastexpr.nn import TrajectoryRegularization, TrajectoryRegularized, regularization_loss, trajectory_reference


def mlp(weight=0.01):
    torch.manual_seed(0)
    return TrajectoryRegularized(nn.Sequential(nn.Linear(5, 8), TrajectoryRegularization(weight), nn.ReLU(),
                                               nn.Linear(8, 3)))


def test_scales_output_and_records_the_paper_term():
    net = mlp(weight=0.5)
    layer = net.model[1]
    with torch.no_grad():
        layer.scale.fill_(-2.0)
    x = torch.randn(6, 5)
    out = net(x)
    hidden = net.model[0](x)
    torch.testing.assert_close(out, net.model[3](torch.relu(-2.0 * hidden)))
    expected = 0.5 * 2.0 * trajectory_length(hidden) / trajectory_length(x)
    torch.testing.assert_close(layer.loss, expected)
    torch.testing.assert_close(regularization_loss(net), expected)


def test_gradients_reach_scale_and_weights():
    net = mlp()
    x, y = torch.randn(6, 5), torch.randint(0, 3, (6,))
    loss = nn.functional.cross_entropy(net(x), y) + regularization_loss(net)
    loss.backward()
    for p in net.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # d(term)/d(scale) = weight * sign(scale) * L / L0 (the cross entropy adds its own part).
    net.zero_grad()
    net(x)
    regularization_loss(net).backward()
    layer = net.model[1]
    ratio = trajectory_length(net.model[0](x)) / trajectory_length(x)
    torch.testing.assert_close(layer.scale.grad, 0.01 * ratio.detach())


def test_train_and_eval_compute_the_same():
    net = mlp()
    x = torch.randn(7, 5)
    net.train()
    out_train, loss_train = net(x), regularization_loss(net)
    net.eval()
    out_eval, loss_eval = net(x), regularization_loss(net)
    torch.testing.assert_close(out_train, out_eval, rtol=0, atol=0)
    torch.testing.assert_close(loss_train, loss_eval, rtol=0, atol=0)


def test_after_conv2d_in_sequential():
    torch.manual_seed(0)
    net = TrajectoryRegularized(nn.Sequential(nn.Conv2d(1, 4, 3), TrajectoryRegularization(), nn.ReLU(),
                                              nn.Conv2d(4, 2, 3), TrajectoryRegularization(), nn.Flatten()))
    x = torch.randn(5, 1, 8, 8)
    out = net(x)
    assert out.shape == (5, 2 * 4 * 4)
    loss = regularization_loss(net)
    first = 0.01 * trajectory_length(net.model[0](x)) / trajectory_length(x)
    assert loss.item() > first.item() > 0
    loss.backward()
    assert net.model[0].weight.grad is not None and net.model[1].scale.grad is not None


def test_context_manager_and_explicit_use():
    body = mlp().model
    x = torch.randn(4, 5)
    body(x)  # plain call: scales, records nothing
    assert body[1].loss is None
    with pytest.raises(RuntimeError, match="recorded no loss term"):
        regularization_loss(body)
    with trajectory_reference(x) as reference:
        body(x)
    torch.testing.assert_close(reference, trajectory_length(x))
    assert body[1].loss is not None
    body(x)  # outside the block again
    assert body[1].loss is None


def test_minibatch_of_one_has_no_term():
    net = mlp()
    out = net(torch.randn(1, 5))
    assert out.shape == (1, 3) and net.model[1].loss is None
    with pytest.raises(RuntimeError, match="at least two samples"):
        regularization_loss(net)


def test_equal_inputs_record_a_zero_term():
    """L0 = 0 leaves nothing to compare with: the term is 0 (it was L / tiny = inf with dropout)."""
    net = TrajectoryRegularized(nn.Sequential(nn.Dropout(0.5), TrajectoryRegularization(0.1)))
    net(torch.ones(8, 4))
    loss = regularization_loss(net)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(net.model[1].scale.grad)


def test_copies_leave_the_graph_behind():
    net = mlp()
    net(torch.randn(4, 5))
    clone = copy.deepcopy(net)
    assert clone.model[1].loss is None and net.model[1].loss is not None
    torch.testing.assert_close(clone.model[1].scale, net.model[1].scale)


def test_bad_input():
    for weight, error in ((-1.0, ValueError), (float("inf"), ValueError), (float("nan"), ValueError),
                          ("a", TypeError), (None, TypeError), (True, TypeError)):
        with pytest.raises(error, match="weight"):
            TrajectoryRegularization(weight=weight)
    with pytest.raises(ValueError, match="no TrajectoryRegularization layer"):
        regularization_loss(nn.Linear(2, 2))
    with pytest.raises(TypeError, match="torch.Tensor"):
        with trajectory_reference([1.0, 2.0]):
            pass

    class ToMeta(nn.Module):
        def forward(self, x):
            return x.to("meta")

    net = TrajectoryRegularized(nn.Sequential(ToMeta(), TrajectoryRegularization().to("meta")))
    with pytest.raises(ValueError, match="on cpu but the activations are on meta"):
        net(torch.randn(3, 5))


def test_regularization_experiment_smoke(tmp_path, capsys):
    from fastexpr.experiments import regularization

    parser = argparse.ArgumentParser()
    regularization.add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--epochs", "2", "--seeds", "1", "--depth", "2", "--width", "8",
                              "--points-per-edge", "5", "--no-progress"])
    assert regularization.main(args) == 0
    table = capsys.readouterr().out
    for label in regularization.LABELS.values():
        assert label in table
    for name in ("accuracy.png", "trajectory_length.png", "final_lengths.png"):
        assert (tmp_path / name).stat().st_size > 0
    results = json.loads((tmp_path / "results.json").read_text())
    for method in regularization.METHODS:
        (run,) = results["runs"][method]
        assert len(run["accuracy"]) == 3 and all(len(lengths) == 2 for lengths in run["lengths"])
    assert len(results["runs"]["trajreg"][0]["scales"][0]) == 2
    with pytest.raises(ValueError, match="--epochs"):
        regularization.main(parser.parse_args(["--epochs", "0"]))
