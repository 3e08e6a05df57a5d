"""Networks: a chain of affine layers, each followed by relu, hardtanh or identity."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._arrays import device_of, to_float64
from ._checks import as_float, is_integer, is_real
from .plan import ACTIVATION_CODES


@dataclass(frozen=True, eq=False)
class Network:
    """Layers ``z_d = W_d h_{d-1} + b_d``, ``h_d = act_d(z_d)`` for d = 1..L.

    Weights and biases are stored as read-only float64 NumPy arrays that the network owns
    (``W_d`` has shape ``(n_d, n_{d-1})``). ``device`` records where the data came from ("cpu" or
    "cuda:N") so that ``backend="auto"`` can run next to it.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    activations: tuple[str, ...]
    device: str = "cpu"

    @property
    def depth(self) -> int:
        """Number of layers L."""
        return len(self.weights)

    @property
    def widths(self) -> tuple[int, ...]:
        """``(input_dim, n_1, ..., n_L)``."""
        return (self.weights[0].shape[1],) + tuple(w.shape[0] for w in self.weights)

    @property
    def input_dim(self) -> int:
        return self.weights[0].shape[1]

    def __repr__(self) -> str:
        layers = ", ".join(f"{n}:{a}" for n, a in zip(self.widths[1:], self.activations))
        return f"Network(input_dim={self.input_dim}, layers=[{layers}], device={self.device!r})"


def _activation_list(activations, depth: int) -> tuple[str, ...]:
    if isinstance(activations, str):
        activations = [activations] * depth
    if not isinstance(activations, (list, tuple, np.ndarray)):
        raise TypeError(f"activations must be a name or a list of names, one per layer, got {activations!r}")
    activations = tuple(activations)
    if len(activations) != depth:
        raise ValueError(f"got {len(activations)} activations for {depth} layers")
    for a in activations:
        if not isinstance(a, str):
            raise TypeError(f"activations must be names such as 'relu', got {a!r} ({type(a).__name__})")
        if a not in ACTIVATION_CODES:
            raise ValueError(f"unknown activation {a!r}; expected one of {sorted(ACTIVATION_CODES)}")
    return activations


def _owned(a: np.ndarray) -> np.ndarray:
    """A read-only copy of ``a``: later changes to the caller's arrays cannot reach the network."""
    a = a.copy()
    a.setflags(write=False)
    return a


def from_arrays(weights, biases, activations) -> Network:
    """A network from per-layer weights ``(n_d, n_{d-1})``, biases ``(n_d,)`` and activations.

    ``activations`` is one name for every layer or a sequence of names from
    {"relu", "hardtanh", "identity"}. ``biases=None`` means zero biases. Arrays may be
    NumPy, torch or CuPy, of any float dtype; they are copied to read-only float64 arrays.
    """
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError("weights must be a non-empty list of 2-D arrays, one per layer")
    ws = tuple(to_float64(w, f"weights[{i}]", ndim=2) for i, w in enumerate(weights))
    if biases is None:
        bs = tuple(np.zeros(w.shape[0]) for w in ws)
    else:
        if not isinstance(biases, (list, tuple)) or len(biases) != len(ws):
            raise ValueError(f"biases must be a list of {len(ws)} 1-D arrays (one per layer) or None")
        bs = tuple(to_float64(b, f"biases[{i}]", ndim=1) for i, b in enumerate(biases))
    for i, (w, b) in enumerate(zip(ws, bs)):
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"layer {i + 1}: bias has {b.shape[0]} entries but weights have {w.shape[0]} rows")
        if i > 0 and w.shape[1] != ws[i - 1].shape[0]:
            raise ValueError(
                f"layer {i + 1}: weights expect {w.shape[1]} inputs but layer {i} has {ws[i - 1].shape[0]} outputs"
            )
    devices = {device_of(w) for w in weights}
    device = next((d for d in devices if d != "cpu"), "cpu")
    return Network(tuple(map(_owned, ws)), tuple(map(_owned, bs)), _activation_list(activations, len(ws)), device)


def random_mlp(
    depth: int,
    width: int,
    input_dim: int,
    activation: str = "hardtanh",
    sigma_w: float = 1.0,
    sigma_b: float = 0.0,
    output_dim: int | None = None,
    seed=None,
) -> Network:
    """The paper's random network: ``depth`` hidden layers of ``width`` neurons.

    ``W ~ N(0, sigma_w^2 / fan_in)``, ``b ~ N(0, sigma_b^2)``. With ``output_dim`` an
    extra identity (linear) output layer of that size is appended.
    """
    for name, value in (("depth", depth), ("width", width), ("input_dim", input_dim)):
        if not is_integer(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if output_dim is not None and (not is_integer(output_dim) or output_dim < 1):
        raise ValueError(f"output_dim must be a positive integer or None, got {output_dim!r}")
    if not isinstance(activation, str):
        raise TypeError(f"activation must be one name for every hidden layer ('hardtanh', 'relu' or 'identity'), "
                        f"got {type(activation).__name__}; for per-layer activations use fastexpr.from_arrays")
    for name, value in (("sigma_w", sigma_w), ("sigma_b", sigma_b)):
        if not is_real(value):
            raise TypeError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    sigma_w, sigma_b = as_float(sigma_w), as_float(sigma_b)
    if not (np.isfinite(sigma_w) and np.isfinite(sigma_b) and sigma_w >= 0 and sigma_b >= 0):
        raise ValueError(f"sigma_w and sigma_b must be finite and non-negative, got {sigma_w}, {sigma_b}")
    depth, width, input_dim = int(depth), int(width), int(input_dim)
    output_dim = None if output_dim is None else int(output_dim)
    if isinstance(seed, (bool, np.bool_, str, float)):
        raise TypeError(f"seed must be None, a non-negative integer or a numpy Generator, got {seed!r}")
    if is_integer(seed) and seed < 0:
        raise ValueError(f"seed must be None, a non-negative integer or a numpy Generator, got {seed!r}")
    rng = np.random.default_rng(seed)
    sizes = [input_dim] + [width] * depth + ([output_dim] if output_dim is not None else [])
    weights = [rng.standard_normal((n_out, n_in)) * (sigma_w / np.sqrt(n_in)) for n_in, n_out in zip(sizes, sizes[1:])]
    biases = [rng.standard_normal(n_out) * sigma_b for n_out in sizes[1:]]
    acts = [activation] * depth + (["identity"] if output_dim is not None else [])
    return from_arrays(weights, biases, acts)


class NotAPlainMLP(ValueError):
    """from_torch's refusal of a module that is no plain MLP (``measure`` sends it to the taps engine)."""


def _check_plain(m, base) -> None:
    """ValueError unless module ``m`` computes exactly what ``base`` (the class fastexpr reads it as) does."""
    if type(m).forward is not base.forward:
        raise NotAPlainMLP(f"{type(m).__name__} overrides {base.__name__}.forward, which fastexpr would bypass "
                         f"(it reads only the layer's parameters); use a plain {base.__name__}")
    if m._forward_hooks or m._forward_pre_hooks:
        raise NotAPlainMLP(f"{type(m).__name__} has forward hooks, which fastexpr would bypass; remove them")


def from_torch(module) -> Network:
    """A network from a torch ``nn.Linear`` or (nested) ``nn.Sequential``.

    Supported layers: ``Linear``, ``ReLU``, ``Hardtanh(-1, 1)``, ``Identity``, ``Flatten``
    (trajectory points are already flat). Each activation applies to the preceding
    ``Linear``; a ``Linear`` with no activation after it is linear (identity). Subclasses that
    override ``forward`` and modules with forward hooks are refused (their code would be
    bypassed); parameters are copied.
    """
    import torch.nn as nn
    from torch.nn.modules import module as torch_module

    def flat(m):
        if isinstance(m, nn.Sequential):
            _check_plain(m, nn.Sequential)
            for child in m:
                yield from flat(child)
        else:
            yield m

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    if getattr(torch_module, "_global_forward_hooks", None) or getattr(torch_module, "_global_forward_pre_hooks", None):
        raise NotAPlainMLP("global forward hooks are registered (torch.nn.modules.module."
                           "register_module_forward_hook), which fastexpr would bypass; remove them")
    weights, biases, acts = [], [], []
    for m in flat(module):
        base = next((c for c in (nn.Linear, nn.Identity, nn.Flatten, nn.ReLU, nn.Hardtanh) if isinstance(m, c)), None)
        if base is None:
            raise NotAPlainMLP(
                f"unsupported layer {type(m).__name__}; fastexpr handles Linear, ReLU, Hardtanh(-1, 1), "
                "Identity and Flatten"
            )
        _check_plain(m, base)
        if base is nn.Linear:
            weights.append(m.weight)
            biases.append(m.bias if m.bias is not None else m.weight.new_zeros(m.out_features))
            acts.append("identity")
        elif base in (nn.ReLU, nn.Hardtanh):
            name = "relu" if base is nn.ReLU else "hardtanh"
            if name == "hardtanh" and (m.min_val != -1.0 or m.max_val != 1.0):
                raise NotAPlainMLP(f"only Hardtanh(-1, 1) is supported, got Hardtanh({m.min_val}, {m.max_val})")
            if not weights:
                raise NotAPlainMLP(f"{type(m).__name__} before the first Linear layer is not supported")
            if acts[-1] != "identity":
                raise NotAPlainMLP(f"two activations in a row ({acts[-1]} then {name}) after Linear layer "
                                   f"{len(weights)}")
            acts[-1] = name
    if not weights:
        raise NotAPlainMLP("the module contains no Linear layer")
    return from_arrays(weights, biases, acts)
