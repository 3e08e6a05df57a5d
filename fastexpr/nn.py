"""Trajectory regularisation (Raghu et al. 2017, section 3.3), a replacement for batch norm.

The minibatch, in the order it comes, is a trajectory: the piecewise-linear path through the
samples' activations. A :class:`TrajectoryRegularization` layer scales its input by a learnt
scalar ``lambda`` and records the loss term ``weight * |lambda| * L / L0``, where ``L`` is the
length of that path through the activations entering the layer and ``L0`` the length of the
path through the same minibatch at the network's input. It computes the same thing in training
and in evaluation (no running statistics). ``|lambda|`` rather than ``lambda`` in the loss
keeps a negative scale from turning the penalty into a reward for longer trajectories.

How ``L0`` reaches the layers: wrap the network in :class:`TrajectoryRegularized`, whose
forward measures the input's length and makes it visible to every layer for the duration of
the call (a :mod:`contextvars` variable, so it is per thread and per task); or do the same by
hand with ``with trajectory_reference(x): out = model(x)``. Then add
:func:`regularization_loss` ``(model)`` to the task loss. Called without a reference (a plain
``model(x)``, or a minibatch of one sample) the layers still scale their input but record no
term, and :func:`regularization_loss` says so::

    net = TrajectoryRegularized(nn.Sequential(nn.Linear(64, 100), TrajectoryRegularization(), nn.ReLU(), ...))
    loss = F.cross_entropy(net(x), y) + regularization_loss(net)
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import torch
from torch import nn

from ._checks import as_float, is_real
from .autograd import trajectory_length

_REFERENCE: contextvars.ContextVar[torch.Tensor | None] = contextvars.ContextVar("fastexpr_trajectory_reference",
                                                                                  default=None)


@contextlib.contextmanager
def trajectory_reference(x: torch.Tensor):
    """Within the block, layers normalise by the length of the path through the samples of ``x``.

    ``x`` is the network's input minibatch (B, ...); with fewer than two samples there is no
    path and the layers record no loss term.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"trajectory_reference expects the input minibatch as a torch.Tensor, got {type(x).__name__}")
    reference = None
    if x.dim() > 0 and x.shape[0] >= 2:
        with torch.no_grad():
            reference = trajectory_length(x.detach() if x.is_floating_point() else x.detach().float())
    token = _REFERENCE.set(reference)
    try:
        yield reference
    finally:
        _REFERENCE.reset(token)


class TrajectoryRegularization(nn.Module):
    """Scale activations by a learnt scalar ``lambda`` and record ``weight * |lambda| * L / L0``.

    ``L`` is the length of the path through the minibatch's incoming activations (any shape
    (B, ...), so it fits after ``nn.Linear`` and ``nn.Conv2d`` alike), ``L0`` the input's
    length given by :class:`TrajectoryRegularized` or :func:`trajectory_reference`. The term
    of the latest forward is in ``self.loss`` (None without a reference; 0 where the inputs of
    the minibatch are all equal, L0 = 0, which leaves nothing to compare with).
    """

    def __init__(self, weight: float = 0.01):
        super().__init__()
        if not is_real(weight):
            raise TypeError(f"weight must be a non-negative number, got {weight!r} ({type(weight).__name__})")
        if not (math.isfinite(as_float(weight)) and weight >= 0):
            raise ValueError(f"weight must be a finite non-negative number, got {weight!r}")
        self.weight = as_float(weight)
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.loss: torch.Tensor | None = None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        reference = _REFERENCE.get()
        self.loss = None
        if reference is not None and h.shape[0] >= 2:
            if reference.device != h.device:
                raise ValueError(f"the input's trajectory length is on {reference.device} but the activations are on "
                                 f"{h.device}; keep the model on one device")
            # L0 = 0 (a minibatch of equal inputs) has no trajectory to compare with: the term is 0
            empty = reference == 0  # (a NaN reference stays NaN)
            ratio = torch.where(empty, 0.0, trajectory_length(h) / torch.where(empty, 1.0, reference))
            self.loss = self.weight * self.scale.abs() * ratio.to(self.scale.dtype)
        return h * self.scale.to(h.dtype)

    def __getstate__(self):
        """Copies and pickles leave the last loss term (and its graph) behind."""
        state = self.__dict__.copy()
        state["loss"] = None
        return state

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


class TrajectoryRegularized(nn.Module):
    """Wraps a model so that its :class:`TrajectoryRegularization` layers see the input's length."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, *args, **kwargs):
        with trajectory_reference(x):
            return self.model(x, *args, **kwargs)


def regularization_loss(model: nn.Module) -> torch.Tensor:
    """Sum of the loss terms its :class:`TrajectoryRegularization` layers recorded in the latest forward."""
    layers = [m for m in model.modules() if isinstance(m, TrajectoryRegularization)]
    if not layers:
        raise ValueError("the model has no TrajectoryRegularization layer")
    missing = [i for i, m in enumerate(layers) if m.loss is None]
    if missing:
        raise RuntimeError(f"TrajectoryRegularization layers {missing} recorded no loss term: call the model through "
                           "TrajectoryRegularized (or inside `with trajectory_reference(x)`) on a minibatch of at "
                           "least two samples before asking for the loss")
    return sum(m.loss for m in layers)
