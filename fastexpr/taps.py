"""The taps engine: expressivity measures of any ``torch.nn.Module`` along a trajectory.

Torch runs the model's own forward pass chunk by chunk (consecutive chunks share their boundary
sample, as in ``measure``); every call of a piecewise-linear activation is a *tap*, reduced the
moment torch produces it by one fused pass (``fastexpr.backends.taps_cpu``, ``taps_numba``,
``taps_torch``) into the same additive :class:`~fastexpr.plan.Partials` as the MLP engine, merged
by ``measure``'s own chunk loop.

How taps are seen: a ``torch.overrides.TorchFunctionMode`` is active during the forward pass and
intercepts every call of the functions in ``_specs``: ``F.relu``, ``torch.relu``, ``Tensor.relu``,
their in-place forms, ``F.relu6``, ``F.hardtanh``, ``F.leaky_relu``, ``F.prelu``, ``F.threshold``;
with :class:`TapOptions` also the smooth activations (``F.gelu``, ``F.silu``, tanh, sigmoid:
lengths, and with ``smooth_sign`` the sign of their input as codes) and max-pooling (codes: the
argmax's position in its window), whoever calls them: activation modules (``nn.ReLU`` calls
``F.relu``), functional calls in a ``forward``, calls inside loops and branches, a module called
several times. Forward pre-hooks on every submodule keep the current module path, which names the
tap: ``layer1.0.relu`` for an activation module, ``layer1.0.F.relu`` for a functional call in
``layer1.0``'s forward, and ``#k`` for the k-th call of the same name in one forward pass
(``layer1.0.relu#2``). Calls of other piecewise-linear functions (``clamp``, ``maximum``, ...)
are not taps: ``measure`` warns once per name, in whichever forward pass they first appear
(:class:`UntappedWarning`).

Codes from the output: where that is unambiguous (relu, leaky relu with a non-negative slope,
threshold with value <= threshold: output > threshold exactly when input > threshold) the codes
come from the output, in place or not, so the fused pass reads one tensor (bench/notes_taps.md).
Otherwise (hardtanh, relu6, prelu, negative slopes, smooth activations with ``smooth_sign``) they
come from the input, for an in-place call from a copy taken just before it. An input of -inf,
whose output is 0, is then not reported as an overflow; its code, and the output's length, are
those of any large negative input.

The first layer: when the model's input is consumed by exactly one op, a ``F.linear`` (``nn.Linear``)
or ``F.conv2d`` (``nn.Conv2d``), that layer is applied once, in float64 and without its bias, to
the trajectory's basis vectors (``Trajectory.plan_basis``), rounded once to the forward pass's
dtype; each chunk forms its output in that dtype as the samples' two-term combinations of those
plus the layer applied to zero (its bias), and the rest of the model runs from there
(:class:`FirstLayer`). Otherwise the model runs on the points.
"""
from __future__ import annotations

import dataclasses
import functools
import warnings
from dataclasses import dataclass

import numpy as np

from . import _threads
from ._checks import flag, is_integer
from .plan import OverflowInForwardPass, Partials
from .result import Result

#: Tap kinds, shared with csrc/cpu/taps.cpp. STEP: code 1 if z > lo else 0. CLAMP: -1 if z < lo,
#: +1 if z > hi, else 0. Ties stay in the lower (STEP) or inner (CLAMP) region. ARGMAX: the code
#: is z itself, a small integer (0 .. ARGMAX_CODES - 1), and any change of code is one transition.
#: A smooth activation without codes is a CLAMP tap with infinite bounds: one region, code 0.
STEP, CLAMP, ARGMAX = 0, 1, 2
#: Positions a max-pool window may have with ``maxpool_argmax`` (the kernels keep codes in int8).
ARGMAX_CODES = 128
#: Bytes the first layer's output on the trajectory's basis may take (in float64, as it is
#: computed); beyond, the model runs on the points.
PROJECT_BYTES = 256 << 20

#: Bytes of tapped activations per forward pass (all taps of one chunk) that the chunk size aims at.
CHUNK_BYTES = 128 << 20
#: Samples per forward pass at most.
MAX_CHUNK = 1 << 14


class UntappedWarning(UserWarning):
    """The model calls a piecewise-linear function that the taps engine does not count."""


@dataclass(frozen=True)
class TapOptions:
    """Which calls besides the piecewise-linear activations are taps.

    ``smooth``: GELU, SiLU, tanh, sigmoid, ELU, SELU, CELU, softplus, Mish and hardswish are taps
    with lengths and no codes (``measure`` includes them; ``fastexpr.scores`` counts activation
    codes only). ``smooth_sign``: their codes
    are the sign of their input (1 if z > 0 else 0), a pattern these functions do not have
    themselves. ``maxpool_argmax``: max-pooling (``F.max_pool1d/2d/3d``, ``F.adaptive_max_pool1d/
    2d/3d``) is a tap whose code per output is the position of its argmax in its window (row-major;
    ties go where torch puts them, the first maximum). Off by default: the published counts
    (Raghu et al., TENAS, NASWOT) are over activation units, and after a ReLU a window's maximum
    is often a tie among exact zeros, where the argmax is torch's tie-break and not a property of
    the function.
    """

    smooth: bool = False
    smooth_sign: bool = False
    maxpool_argmax: bool = False


@dataclass(frozen=True)
class TapSpec:
    """One call of an activation: its code rule, and how its pre-activation is read."""

    activation: str   # "relu", "hardtanh", ..., "gelu", "tanh", ..., "max_pool2d", ...
    kind: int         # STEP, CLAMP or ARGMAX
    lo: float
    hi: float
    inplace: bool
    from_output: bool  # the codes of the output equal those of the input (read from the output)


def _args(args, kwargs, names, defaults):
    """Positional and keyword arguments of a call as one dict (missing ones from ``defaults``)."""
    bound = dict(defaults)
    bound.update(zip(names, args))
    bound.update(kwargs)
    return bound


def _parameter(activation, name, value) -> float:
    """An activation's threshold, bound or fill value as a float: NaN would make its codes and lengths
    meaningless (every comparison false), so it is refused."""
    value = float(value)
    if np.isnan(value):
        raise ValueError(f"{activation}'s {name} is NaN: its region codes and output are undefined")
    return value


def _step(activation, lo, inplace, from_output=True):
    return TapSpec(activation, STEP, _parameter(activation, "threshold", lo), float(lo), bool(inplace),
                   bool(from_output))


def _clamp(activation, lo, hi, inplace):
    return TapSpec(activation, CLAMP, _parameter(activation, "lower bound", lo),
                   _parameter(activation, "upper bound", hi), bool(inplace), False)


def _relu(inplace):
    return lambda a, k: _step("relu", 0.0, _args(a, k, ("input", "inplace"), {"inplace": inplace})["inplace"])


def _hardtanh(inplace):
    def spec(a, k):
        b = _args(a, k, ("input", "min_val", "max_val", "inplace"), {"min_val": -1.0, "max_val": 1.0, "inplace": inplace})
        return _clamp("hardtanh", b["min_val"], b["max_val"], b["inplace"])
    return spec


def _leaky(inplace):
    def spec(a, k):
        b = _args(a, k, ("input", "negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": inplace})
        return _step("leaky_relu", 0.0, b["inplace"], from_output=b["negative_slope"] >= 0)
    return spec


def _threshold(inplace):
    def spec(a, k):
        b = _args(a, k, ("input", "threshold", "value", "inplace"), {"inplace": inplace})
        value = _parameter("threshold", "value", b["value"])
        return _step("threshold", b["threshold"], b["inplace"], from_output=value <= b["threshold"])
    return spec


def _hardsigmoid(a, k):
    """hardsigmoid(z) = clamp(z / 6 + 1/2, 0, 1): the regions of hardtanh at (-3, 3), read from z."""
    return _clamp("hardsigmoid", -3.0, 3.0, _args(a, k, ("input", "inplace"), {"inplace": False})["inplace"])


def _smooth(activation, inplace, sign):
    """A smooth activation: lengths only (CLAMP with infinite bounds), or with ``sign`` the sign of
    its input (read before an in-place call). ``inplace`` None: from the call's ``inplace`` argument."""
    def spec(a, k):
        inplace_ = bool(_args(a, k, ("input", "inplace"), {"inplace": False})["inplace"]) if inplace is None else inplace
        if sign:
            return TapSpec(activation, STEP, 0.0, 0.0, inplace_, False)
        return TapSpec(activation, CLAMP, -np.inf, np.inf, inplace_, inplace_)
    return spec


def _pool(activation):
    return lambda a, k: TapSpec(activation, ARGMAX, 0.0, 0.0, False, False)


@functools.lru_cache(maxsize=None)
def _specs(options: TapOptions = TapOptions()) -> dict:
    """Intercepted function -> (short name, rule giving the TapSpec of a call from its arguments)."""
    import torch
    import torch.nn.functional as F

    relu6 = lambda a, k: _clamp("relu6", 0.0, 6.0, _args(a, k, ("input", "inplace"), {"inplace": False})["inplace"])  # noqa: E731
    prelu = lambda a, k: _step("prelu", 0.0, False, from_output=False)  # noqa: E731 - its slopes may be negative
    specs = {
        F.relu: ("relu", _relu(False)), torch.relu: ("relu", _relu(False)), torch.Tensor.relu: ("relu", _relu(False)),
        torch.relu_: ("relu_", _relu(True)), torch.Tensor.relu_: ("relu_", _relu(True)),
        F.relu6: ("relu6", relu6),
        F.hardtanh: ("hardtanh", _hardtanh(False)), F.hardtanh_: ("hardtanh_", _hardtanh(True)),
        F.leaky_relu: ("leaky_relu", _leaky(False)), F.leaky_relu_: ("leaky_relu_", _leaky(True)),
        F.prelu: ("prelu", prelu),
        F.threshold: ("threshold", _threshold(False)), F.threshold_: ("threshold_", _threshold(True)),
        F.hardsigmoid: ("hardsigmoid", _hardsigmoid),
    }
    if options.smooth:
        for func, short, inplace in ((F.gelu, "gelu", False), (F.silu, "silu", None),
                                     (torch.tanh, "tanh", False), (torch.Tensor.tanh, "tanh", False),
                                     (torch.tanh_, "tanh_", True), (torch.Tensor.tanh_, "tanh_", True),
                                     (torch.sigmoid, "sigmoid", False), (torch.Tensor.sigmoid, "sigmoid", False),
                                     (torch.sigmoid_, "sigmoid_", True), (torch.Tensor.sigmoid_, "sigmoid_", True),
                                     (F.elu, "elu", None), (F.elu_, "elu_", True), (F.selu, "selu", None),
                                     (F.selu_, "selu_", True), (F.celu, "celu", None), (F.celu_, "celu_", True),
                                     (F.softplus, "softplus", False), (F.mish, "mish", None),
                                     (F.hardswish, "hardswish", None)):
            specs[func] = (short, _smooth(short.rstrip("_"), inplace, options.smooth_sign))
    if options.maxpool_argmax:
        specs.update({func: (name, _pool(name)) for func, name in _max_pools().items()})
    return specs


@functools.lru_cache(maxsize=None)
def _max_pools() -> dict:
    """Max-pooling functions -> short name (``_with_indices`` forms under their plain name)."""
    import torch.nn.functional as F

    return {getattr(F, f"{prefix}max_pool{d}d{suffix}"): f"{prefix}max_pool{d}d"
            for prefix in ("", "adaptive_") for d in (1, 2, 3) for suffix in ("", "_with_indices")}


@functools.lru_cache(maxsize=None)
def _untapped() -> dict:
    """Piecewise-linear functions that are not taps: calling them draws an UntappedWarning."""
    import torch

    T, F = torch.Tensor, torch.nn.functional
    return {torch.clamp: "clamp", torch.clip: "clamp", T.clamp: "clamp", T.clip: "clamp", T.clamp_: "clamp_",
            T.clip_: "clamp_", torch.clamp_min: "clamp_min", T.clamp_min: "clamp_min", T.clamp_min_: "clamp_min_",
            torch.clamp_max: "clamp_max", T.clamp_max: "clamp_max", T.clamp_max_: "clamp_max_",
            torch.maximum: "maximum", T.maximum: "maximum", torch.minimum: "minimum", T.minimum: "minimum",
            torch.fmax: "fmax", T.fmax: "fmax", torch.fmin: "fmin", T.fmin: "fmin",
            torch.threshold: "threshold", torch.abs: "abs", T.abs: "abs", T.abs_: "abs_",
            F.rrelu: "rrelu", F.hardshrink: "hardshrink", F.softshrink: "softshrink"}


@functools.lru_cache(maxsize=None)
def _elementwise_max() -> dict:
    """max/min, which are piecewise linear (untapped) in their two-tensor form ``max(a, b)``."""
    import torch

    return {torch.max: "max", torch.Tensor.max: "max", torch.min: "min", torch.Tensor.min: "min"}


def _untapped_name(func, args, kwargs) -> str | None:
    """The name an UntappedWarning gives this call, or None."""
    import torch

    name = _untapped().get(func)
    if name is None and func in _elementwise_max():
        other = args[1] if len(args) > 1 else kwargs.get("other")
        name = _elementwise_max()[func] if isinstance(other, torch.Tensor) else None
    return name


ACTIVATION_MODULES = ("ReLU", "ReLU6", "Hardtanh", "LeakyReLU", "PReLU", "Threshold", "Hardsigmoid", "GELU", "SiLU",
                      "Tanh", "Sigmoid", "ELU", "SELU", "CELU", "Softplus", "Mish", "Hardswish", "MaxPool1d", "MaxPool2d", "MaxPool3d", "AdaptiveMaxPool1d", "AdaptiveMaxPool2d",
                      "AdaptiveMaxPool3d")


def _tuple(value, dims: int):
    """A pooling argument as a ``dims``-tuple (an int repeated; None or () stays None)."""
    if value is None or (isinstance(value, (tuple, list)) and len(value) == 0):
        return None
    if isinstance(value, (tuple, list)):
        return tuple(value) * dims if len(value) == 1 else tuple(value)
    return (value,) * dims


def _max_pool(func, args, kwargs):
    """A max-pool call run as the model asked, with the indices: (what the caller gets, the pooled
    values, each output's argmax position in its window, row-major, int64). ValueError for a window
    of more than ARGMAX_CODES positions."""
    import torch
    import torch.nn.functional as F

    name = _max_pools()[func]
    dims, adaptive = int(name[-2]), name.startswith("adaptive_")
    if adaptive:
        b = _args(args, kwargs, ("input", "output_size", "return_indices"), {"return_indices": False})
        out, idx = getattr(F, f"{name}_with_indices")(b["input"], b["output_size"])
    else:
        b = _args(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"),
                  {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
        out, idx = getattr(F, f"{name}_with_indices")(*(b[k] for k in ("input", "kernel_size", "stride", "padding",
                                                                        "dilation", "ceil_mode")))
        kernel = _tuple(b["kernel_size"], dims)
        stride, padding, dilation = _tuple(b["stride"], dims) or kernel, _tuple(b["padding"], dims), _tuple(b["dilation"], dims)
    spatial, outs = b["input"].shape[-dims:], idx.shape[-dims:]
    codes, rest, positions = torch.zeros_like(idx), idx, 1
    for a in reversed(range(dims)):  # idx is flat over the input's spatial axes
        coord, rest = rest % spatial[a], rest // spatial[a]
        o = torch.arange(outs[a], device=idx.device).view(-1, *[1] * (dims - 1 - a))
        if adaptive:  # window [floor(o In / Out), ceil((o + 1) In / Out))
            start = o * spatial[a] // outs[a]
            offset, size = coord - start, int((((o + 1) * spatial[a] + outs[a] - 1) // outs[a] - start).max())
        else:
            offset, size = (coord - (o * stride[a] - padding[a])) // dilation[a], kernel[a]
        codes += offset * positions
        positions *= size
    if positions > ARGMAX_CODES:
        raise ValueError(f"{name}: a window of {positions} positions; maxpool_argmax codes take at most "
                         f"{ARGMAX_CODES} (fastexpr.taps.ARGMAX_CODES)")
    wants_indices = func.__name__.endswith("_with_indices") or b["return_indices"]
    return ((out, idx) if wants_indices else out), out, codes


@dataclass
class _Call:
    """What one tap produced in one forward pass."""

    name: str
    spec: TapSpec
    width: int
    reduced: tuple | None  # the backend's (transitions, pattern_changes, changed, hashes, length, nonfinite)


@functools.lru_cache(maxsize=None)
def _metadata() -> frozenset:
    """Calls that read a tensor's metadata only: not a use of the model's input."""
    import torch

    T = torch.Tensor
    return frozenset({T.shape.__get__, T.ndim.__get__, T.dtype.__get__, T.device.__get__, T.size, T.dim,
                      T.__len__, T.numel})


def _contains(obj, x) -> bool:
    """Whether tensor ``x`` is ``obj`` or inside the (nested) tuples, lists and dict values of ``obj``."""
    if obj is x:
        return True
    if isinstance(obj, (tuple, list)):
        return any(_contains(o, x) for o in obj)
    if isinstance(obj, dict):
        return any(_contains(o, x) for o in obj.values())
    return False


#: The attribute that marks a tensor computed from the model's input during a forward pass.
_DERIVED = "_fastexpr_from_input"


def _mark_derived(result):
    """``result`` with every tensor in it (nested tuples and lists) marked as computed from the input."""
    import torch

    if isinstance(result, torch.Tensor):
        setattr(result, _DERIVED, True)
    elif isinstance(result, (tuple, list)):
        for r in result:
            _mark_derived(r)
    return result


def _mentions_derived(obj) -> bool:
    """Whether a tensor computed from the input is in ``obj`` (nested tuples, lists and dict values)."""
    if isinstance(obj, (tuple, list)):
        return any(_mentions_derived(o) for o in obj)
    if isinstance(obj, dict):
        return any(_mentions_derived(o) for o in obj.values())
    return getattr(obj, _DERIVED, False) is True


def _tapper_class():
    from torch.overrides import TorchFunctionMode

    class Tapper(TorchFunctionMode):
        """Intercepts the taps of one forward pass and reduces each on the spot; records the calls
        that take the model's input ``x`` and, given a ``first`` layer's output, returns it for the
        one call that may take ``x``."""

        def __init__(self, paths: list, reduce, batch: int, options: TapOptions, x, first=None):
            super().__init__()
            self.paths = paths      # the module-path stack, kept by the forward pre-hooks
            self.reduce = reduce    # None: only record the taps (probe pass)
            self.batch = batch
            self.specs = _specs(options)
            self.x = _mark_derived(x)
            self.first = first      # (FirstLayer, its output for this chunk) or None
            self.calls: list[_Call] = []
            self.input_calls: list[tuple] = []  # (func, args, kwargs, module path) of every use of x
            self.seen: dict[str, int] = {}
            self.untapped: set[str] = set()

        def _name(self, short: str) -> str:
            path, module = self.paths[-1] if self.paths else ("", None)
            base = path if module is not None and type(module).__name__ in ACTIVATION_MODULES and \
                type(module).__module__.startswith("torch.nn") else ".".join(p for p in (path, f"F.{short}") if p)
            count = self.seen[base] = self.seen.get(base, 0) + 1
            return base if count == 1 else f"{base}#{count}"

        def _input(self, func, args, kwargs):
            """Record a use of the input; the first layer's output where it replaces the call."""
            self.input_calls.append((func, args, kwargs, self.paths[-1][0] if self.paths else ""))
            if self.first is None:
                return None
            layer, out = self.first
            if len(self.input_calls) > 1 or not layer.is_call(func, args, kwargs):
                raise ValueError("the model used its input differently in this forward pass than in the first "
                                 f"(data-dependent control flow?): {_describe(self.input_calls)}")
            return out

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in _metadata():
                return func(*args, **kwargs)
            if _contains((args, kwargs), self.x):
                replaced = self._input(func, args, kwargs)
                if replaced is not None:
                    return _mark_derived(replaced)
            derived = _mentions_derived((args, kwargs))
            entry = self.specs.get(func)
            if entry is None or not derived:  # not a tap, or computed from parameters alone (a constant gate)
                untapped = _untapped_name(func, args, kwargs) if derived else None
                if untapped is not None:
                    self.untapped.add(untapped)
                result = func(*args, **kwargs)
                return _mark_derived(result) if derived else result
            short, rule = entry
            spec = rule(args, kwargs)
            name = self._name(short)
            z = args[0] if args else kwargs["input"]
            if z.ndim == 0 or z.shape[0] != self.batch:
                raise ValueError(f"tap {name}: its input has shape {tuple(z.shape)}, whose first axis is not the "
                                 f"batch of {self.batch} trajectory samples; fastexpr taps activations of the data only")
            if spec.kind == ARGMAX:
                result, out, z = _max_pool(func, args, kwargs)
                z = z.to(out.dtype)
            else:
                if spec.inplace and not spec.from_output:
                    z = z.detach().clone()
                result = out = func(*args, **kwargs)
                if spec.from_output:
                    z = out
            width = int(np.prod(z.shape[1:], dtype=np.int64))
            reduced = None
            if self.reduce is not None:
                reduced = self.reduce(len(self.calls) + 1, spec, z, out)
            self.calls.append(_Call(name, spec, width, reduced))
            return _mark_derived(result)

    return Tapper


class _ModulePaths:
    """Forward pre-hooks and hooks on every submodule that keep the stack of (path, module) being run."""

    def __init__(self, model):
        self.stack: list = []
        self.handles = []
        for path, module in model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._enter(path, module)))
            self.handles.append(module.register_forward_hook(self._leave))

    def _enter(self, path, module):
        def hook(_module, _args):
            self.stack.append((path, module))
        return hook

    def _leave(self, _module, _args, _out):
        self.stack.pop()

    def close(self):
        for handle in self.handles:
            handle.remove()


def _backend(name: str, device: str):
    """The taps backend module for ``name`` ("auto": fastest available for ``device``)."""
    from . import backends

    return backends.resolve(name, device, op="taps")


@dataclass
class TapsResult(Result):
    """A :class:`~fastexpr.Result` whose layers are the taps of a torch model, named in ``taps``
    (``widths[d]`` is tap d's number of features per sample, ``widths[0]`` the input's).
    ``first_layer`` says how the model's first layer was evaluated: ``"projected: <path> (linear)"``
    or ``"... (conv2d)"`` from the trajectory's basis, or ``"direct: <why>"`` on the points."""

    taps: tuple[str, ...] = ()
    first_layer: str = ""

    def __getitem__(self, i) -> "TapsResult":
        return TapsResult(**{f.name: getattr(Result.__getitem__(self, i), f.name) for f in dataclasses.fields(Result)},
                          taps=self.taps, first_layer=self.first_layer)

    def to_dict(self) -> dict:
        return {**super().to_dict(), "taps": list(self.taps), "first_layer": self.first_layer}

    def table(self) -> str:
        if self.batched:
            return "\n\n".join(self[i].table() for i in range(len(self)))
        names = "\n".join(f"{d:>5} {name}" for d, name in enumerate(self.taps, start=1))
        return (super().table() + "\ntaps (layer: module path, #k for the k-th call in one forward pass):\n" + names
                + f"\nfirst layer: {self.first_layer}")


@functools.lru_cache(maxsize=None)
def _linear_layers() -> dict:
    """Linear ops a first layer may be: function -> (name, its argument names)."""
    import torch
    import torch.nn.functional as F

    return {F.linear: ("linear", ("input", "weight", "bias")),
            torch.conv2d: ("conv2d", ("input", "weight", "bias", "stride", "padding", "dilation", "groups"))}


def _describe(input_calls) -> str:
    """The uses of the input, for messages: ``name (in module path)``."""
    return ", ".join(f"{getattr(func, '__name__', str(func))}" + (f" (in {path})" if path else "")
                     for func, _a, _k, path in input_calls) or "none"


@dataclass
class FirstLayer:
    """The model's first layer, ``F.linear`` or ``F.conv2d`` on the input (the only use of it),
    evaluated on the trajectory's basis (module docstring)."""

    func: object
    name: str
    path: str
    weight: object
    bias: object
    rest: dict     # the call's other arguments (stride, padding, ...)
    offset: object  # the layer applied to a zero input (its bias, broadcast), float64, (1, *output shape)

    @classmethod
    def of(cls, input_calls: list, x) -> "FirstLayer | str":
        """The first layer of a forward pass whose uses of the input ``x`` were ``input_calls``, or
        why there is none (a sentence)."""
        import torch

        if len(input_calls) != 1:
            return f"the input is used by {len(input_calls)} ops: {_describe(input_calls)}"
        func, args, kwargs, path = input_calls[0]
        if func not in _linear_layers():
            return f"the first op on the input is {_describe(input_calls)}, not nn.Linear or nn.Conv2d"
        name, names = _linear_layers()[func]
        bound = _args(args, kwargs, names, {"bias": None})
        if bound["input"] is not x or _contains([v for k, v in bound.items() if k != "input"], x):
            return f"the input is not the first argument of its {name}"
        rest = {k: v for k, v in bound.items() if k not in ("input", "weight", "bias")}
        zero = torch.zeros((1, *x.shape[1:]), dtype=torch.float64, device=x.device)
        bias = None if bound["bias"] is None else bound["bias"].double()
        with torch.no_grad():
            offset = func(zero, bound["weight"].double(), bias, **rest)
        return cls(func, name, path, bound["weight"], bound["bias"], rest, offset)

    def __str__(self) -> str:
        return f"projected: {self.path or 'the model'} ({self.name})"

    def is_call(self, func, args, kwargs) -> bool:
        """Whether a call is this layer's: the same function and other arguments, and a weight and
        bias equal to the projected ones (a parametrized layer makes new tensors every pass)."""
        import torch

        if func is not self.func:
            return False
        bound = _args(args, kwargs, _linear_layers()[func][1], {"bias": None})
        same = [a is b or (a is not None and b is not None and torch.equal(a, b))
                for a, b in ((bound["weight"], self.weight), (bound["bias"], self.bias))]
        return all(same) and {k: v for k, v in bound.items() if k in self.rest} == self.rest

    def nbytes(self, trajectory) -> int:
        """Bytes of :meth:`project`'s result for ``trajectory``."""
        return trajectory.basis.shape[0] * self.offset.numel() * 8

    def project(self, trajectory, dtype):
        """The layer without its bias on every vector of ``trajectory.plan_basis``, computed in
        float64 and rounded once to ``dtype``: ``(K, output size)``."""
        import torch

        basis = torch.from_numpy(trajectory.plan_basis).reshape(-1, *trajectory.shape).to(self.offset.device)
        with torch.no_grad():
            return self.func(basis, self.weight.double(), None, **self.rest).reshape(len(basis), -1).to(dtype)

    def output(self, projection, trajectory, n_points: int, start: int, stop: int):
        """The layer's output at samples ``start .. stop-1`` in the projection's dtype: each sample's
        two-term combination of the projected basis plus the bias, one ``addmm`` per run of samples
        on the same two basis vectors (one run for a line, an arc or a circle)."""
        import torch

        rows, weights = trajectory.terms(n_points, start, stop)
        weights = torch.from_numpy(weights).to(device=projection.device, dtype=projection.dtype)
        offset = self.offset.reshape(1, -1).to(projection.dtype)
        out = torch.empty((stop - start, projection.shape[1]), dtype=projection.dtype, device=projection.device)
        bounds = [0, *(np.flatnonzero(np.any(rows[1:] != rows[:-1], axis=1)) + 1), stop - start]
        for a, b in zip(bounds[:-1], bounds[1:]):
            torch.addmm(offset, weights[a:b], projection[rows[a].tolist()], out=out[a:b])
        return out.reshape(stop - start, *self.offset.shape[1:])


@dataclass
class _TapPlan:
    """One trajectory through the model, and its first layer's projection (None: run on the points)."""

    trajectory: object
    n_points: int
    projection: object = None


class TapsEngine:
    """``measure``'s chunk loop calls ``run(plan, start, stop)``: a forward pass of samples
    ``start .. stop-1`` whose taps reduce into Partials."""

    def __init__(self, model, dtype, device, backend, taps: list[_Call], chunk: int, options: TapOptions,
                 first: FirstLayer | None, untapped: set[str]):
        self.model, self.dtype, self.device, self.backend = model, dtype, device, backend
        self.NAME = f"taps-{backend.NAME}"
        self.taps = taps
        self.CHUNK = chunk
        self.options = options
        self.first = first
        self.untapped = set(untapped)  # names already warned about

    def _reduce(self, layer: int, spec: TapSpec, z, out):
        z2 = z.detach().reshape(z.shape[0], -1).contiguous()
        h2 = z2 if out is z else out.detach().reshape(out.shape[0], -1).contiguous()
        return self.backend.reduce(z2, h2, spec.kind, spec.lo, spec.hi, layer)

    def run(self, plan: _TapPlan, start: int, stop: int) -> Partials:
        import torch

        traj = plan.trajectory
        points = traj.sample_range(plan.n_points, start, stop)
        if plan.projection is None:
            x, first = _input_tensor(points, traj.shape, self.dtype, self.device), None
        else:  # the input is never read: a zero-stride stand-in of its shape
            x = torch.zeros((), dtype=self.dtype, device=self.device).expand(stop - start, *traj.shape)
            first = (self.first, self.first.output(plan.projection, traj, plan.n_points, start, stop))
        tapper = _forward(self.model, x, self._reduce, self.options, first)
        calls = tapper.calls
        if [(c.name, c.width) for c in calls] != [(c.name, c.width) for c in self.taps]:
            raise ValueError("the model's taps changed between forward passes (data-dependent control flow?): "
                             f"first {[c.name for c in self.taps]}, now {[c.name for c in calls]}")
        _warn_untapped(tapper.untapped - self.untapped)
        self.untapped |= tapper.untapped
        any_change = np.zeros(stop - start - 1, dtype=bool)
        hashes = np.zeros(stop - start, dtype=np.uint64)
        transitions, pattern_changes, lengths = [], [], [float(np.sum(np.linalg.norm(np.diff(points, axis=0), axis=1)))]
        for call in calls:
            t, p, changed, h, length, nonfinite = call.reduced
            if nonfinite:
                raise OverflowInForwardPass(f"the pre-activations of tap {call.name} are inf or NaN along this "
                                            f"trajectory (in {str(self.dtype).replace('torch.', '')})")
            transitions.append(t)
            pattern_changes.append(p)
            lengths.append(length)
            any_change |= np.asarray(changed, dtype=bool)
            hashes += h  # wrapping uint64 sum over taps: the sample's whole-network hash
        run_hashes = np.concatenate([hashes[:1], hashes[1:][any_change]])
        return Partials(np.array(transitions, dtype=np.int64), np.array(pattern_changes, dtype=np.int64),
                        int(any_change.sum()), np.array(lengths), run_hashes)


def _input_tensor(points: np.ndarray, shape, dtype, device):
    """``points`` (float64, (B, prod(shape))) as the model's input batch (B, *shape)."""
    import torch

    return torch.from_numpy(points).reshape(points.shape[0], *shape).to(device=device, dtype=dtype)


def _forward(model, x, reduce, options: TapOptions, first=None):
    """Run ``model`` on ``x`` with every tap intercepted (``reduce(layer, spec, z, out)`` for each,
    when given) and, with ``first`` = (FirstLayer, its output), that output for the layer; the Tapper.
    On CUDA in full float32 (TF32 off: fastexpr._fp32)."""
    import torch

    from ._fp32 import full_fp32

    paths = _ModulePaths(model)
    tapper = _tapper_class()(paths.stack, reduce, x.shape[0], options, x, first)
    try:
        with torch.no_grad(), full_fp32(x.device), tapper:
            model(x)
    finally:
        paths.close()
    return tapper


def forward(model, points: np.ndarray, shape, dtype, device, reduce=None,
            options: TapOptions = TapOptions()) -> tuple[list[_Call], set[str]]:
    """Run ``model`` on ``points`` (float64, (B, prod(shape))) with every tap intercepted; each tap is
    passed to ``reduce(layer, spec, z, out)`` when given. Returns the taps in call order and the
    names of the untapped piecewise-linear functions the model called."""
    tapper = _forward(model, _input_tensor(points, shape, dtype, device), reduce, options)
    return tapper.calls, tapper.untapped


def check_batch_independent(model, points: np.ndarray, shape, dtype, device, options: TapOptions = TapOptions(),
                            first_rows: list | None = None) -> None:
    """ValueError when the model's taps of the first of ``points`` (float64, (B >= 2, prod(shape)))
    depend on the rest of the batch (see ``_check_batch_independent``). ``first_rows``: the
    ``(tap name, _first_row(...))`` pairs of a pass over ``points`` already made (else a pass over
    the first two points is made here)."""
    from types import SimpleNamespace

    x = _input_tensor(points[:2], shape, dtype, device)
    calls = (_forward(model, x, _first_row, options).calls if first_rows is None
             else [SimpleNamespace(name=name, reduced=row) for name, row in first_rows])
    _check_batch_independent(model, x, calls, options)


def _warn_untapped(names: set[str]) -> None:
    """One UntappedWarning naming ``names`` (none: no warning), attributed to the first caller
    outside fastexpr (the chunk loop's depth varies)."""
    import os
    import sys

    if not names:
        return
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    warnings.warn(f"the model calls {', '.join(sorted(names))}, which fastexpr does not tap: those piecewise-linear "
                  "operations are not part of the counted patterns", UntappedWarning, stacklevel=level)


def check_model(model) -> None:
    """ValueError for models whose function would depend on the batch or change their own state
    (instance norm without running statistics is per sample in either mode: accepted), and
    TypeError for anything but a torch module."""
    import torch.nn as nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    for path, module in model.named_modules():
        per_sample = isinstance(module, nn.modules.instancenorm._InstanceNorm) and not module.track_running_stats
        if module.training and not per_sample and \
                isinstance(module, (nn.modules.batchnorm._NormBase, nn.modules.dropout._DropoutNd)):
            raise ValueError(f"{path or 'the model'} ({type(module).__name__}) is in training mode, where its output "
                             "depends on the batch (or is random) and it updates its state; call model.eval() first")


def _model_dtype_device(model, dtype):
    """The torch dtype and device to run in, and the model in that dtype: the model itself, or when
    a floating-point parameter or buffer has another dtype a ``copy.deepcopy`` converted to it (the
    caller's model stays as it is; the copy costs the model's memory once more)."""
    import copy

    import torch

    from .measure import _dtype

    target = {"float32": torch.float32, "float64": torch.float64}[_dtype(dtype).name]
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]
    devices = {str(t.device) for t in tensors} or {"cpu"}
    if len(devices) > 1:
        raise ValueError(f"the model's parameters and buffers are on several devices: {sorted(devices)}")
    device = devices.pop()
    if device == "meta":
        raise ValueError("the model is on the meta device, which holds no values: load its weights (e.g. "
                         "torch.nn.Module.to_empty and load_state_dict) before measuring it")
    if any(t.dtype != target for t in tensors):
        model = copy.deepcopy(model).to(target)
    return model, target, device


def measure_model(model, trajectories, n_points, backend: str = "auto", dtype="float64", progress=None,
                  threads=None, chunk: int | None = None, smooth_sign: bool = False,
                  maxpool_argmax: bool = False) -> TapsResult:
    """``measure`` for any torch model (see README, Any PyTorch model): one layer per tap.

    ``trajectories`` is a list of Trajectory objects whose points have the model's input shape
    (``Trajectory.shape``). ``dtype``: the forward pass's precision; a model in another dtype is
    run as a converted copy (:func:`_model_dtype_device`). ``chunk``: samples per forward pass
    (None: about ``CHUNK_BYTES`` of tapped activations). ``smooth_sign``, ``maxpool_argmax``:
    :class:`TapOptions` (smooth activations are always taps, with lengths).
    """
    from .measure import FLOAT32_WARN_FROM, PrecisionWarning, _n_points, _run, result_of

    options = TapOptions(smooth=True, smooth_sign=flag(smooth_sign, "smooth_sign"),
                         maxpool_argmax=flag(maxpool_argmax, "maxpool_argmax"))
    check_model(model)
    model, torch_dtype, device = _model_dtype_device(model, dtype)
    counts = {_n_points(n_points, t) for t in trajectories}
    if len(counts) != 1:
        raise ValueError(f"a batch of explicit point sets must share one length, got {sorted(counts)}")
    n = counts.pop()
    shapes = {t.shape for t in trajectories}
    if len(shapes) != 1:
        raise ValueError(f"the trajectories of a batch must have points of one shape, got {sorted(shapes)}")
    shape = shapes.pop()
    taps, untapped, first = _probe(model, trajectories[0], n, shape, torch_dtype, device, options)
    if isinstance(first, FirstLayer) and max(first.nbytes(t) for t in trajectories) > PROJECT_BYTES:
        first = (f"direct: the first layer's output on the trajectory's {max(t.basis.shape[0] for t in trajectories)} "
                 f"basis vectors would take more than fastexpr.taps.PROJECT_BYTES = {PROJECT_BYTES >> 20} MiB")
    width = max(c.width for c in taps)
    if (n - 1) * 2 * width >= 2**63:
        raise ValueError(f"n_points={n:,} is too many for a tap of {width:,} features: its transitions could "
                         "exceed the int64 counters")
    if chunk is None:
        per_sample = sum(c.width for c in taps) * torch_dtype.itemsize
        chunk = int(min(MAX_CHUNK, max(2, CHUNK_BYTES // per_sample)))
    elif not is_integer(chunk) or chunk < 2:
        raise ValueError(f"chunk must be an integer of at least 2 samples, got {chunk!r}")
    if torch_dtype.itemsize == 4 and n >= FLOAT32_WARN_FROM:
        warnings.warn(f"float32 at {n:,} samples: neighbouring samples come within float32 rounding of each other, "
                      "which can overcount transitions and patterns and inflate lengths; use dtype='float64', the "
                      "default (README, Precision)", PrecisionWarning, stacklevel=3)
    threads = _threads.check(threads)
    projected = first if isinstance(first, FirstLayer) else None
    engine = TapsEngine(model, torch_dtype, device, _backend(backend, device), taps, int(chunk), options, projected,
                        untapped)
    plans = [_TapPlan(t, n, projected.project(t, torch_dtype) if projected else None) for t in trajectories]
    with _threads.using(threads):
        parts = _run(engine, plans, n, progress)
    return result_of(parts, n, (int(np.prod(shape)),) + tuple(c.width for c in taps),
                     tuple(_activation_label(c.spec) for c in taps), np.dtype(str(torch_dtype).replace("torch.", "")),
                     engine.NAME, trajectories, TapsResult, stacklevel=4, taps=tuple(c.name for c in taps),
                     first_layer=str(first))


def _activation_label(spec: TapSpec) -> str:
    """A tap's activation for the table: its name, with bounds where they are not the usual ones;
    ``sign(gelu)`` & co. for smooth taps with sign codes."""
    if spec.activation == "hardtanh" and (spec.lo, spec.hi) == (0.0, 6.0):  # nn.ReLU6 calls F.hardtanh(x, 0, 6)
        return "relu6"
    if spec.activation == "hardtanh" and (spec.lo, spec.hi) != (-1.0, 1.0):
        return f"ht({spec.lo:g},{spec.hi:g})"
    if spec.activation == "threshold":
        return f"thr({spec.lo:g})"
    if spec.activation in ("gelu", "silu", "tanh", "sigmoid") and spec.kind == STEP:
        return f"sign({spec.activation})"
    return spec.activation


def _probe(model, trajectory, n: int, shape, dtype, device, options: TapOptions):
    """The taps of one forward pass of the trajectory's first two samples (nothing reduced), the
    untapped functions it called (warned about here) and its :class:`FirstLayer` (or a sentence
    ``"direct: <why>"``); a clear error when the model does not take such points, has no tap, or
    changes its own state."""
    import torch

    before = {name: b.detach().clone() for name, b in model.named_buffers()}
    x = _input_tensor(trajectory.sample_range(n, 0, 2), shape, dtype, device)
    try:
        tapper = _forward(model, x, _first_row, options)
    except (RuntimeError, TypeError, IndexError) as exc:
        raise ValueError(f"the model cannot take trajectory points of shape {tuple(shape)} (a batch of shape "
                         f"(B, {', '.join(map(str, shape))})): {type(exc).__name__}: {exc}") from exc
    for name, b in model.named_buffers():
        if name not in before or not torch.equal(before[name], b):
            raise ValueError(f"the model changed its buffer {name!r} during a forward pass; fastexpr measures a fixed "
                             "function (put the model in eval mode, and remove state updates from forward)")
    _warn_untapped(tapper.untapped)
    if tapper.calls:
        _check_batch_independent(model, x, tapper.calls, options)
    if not tapper.calls:
        raise ValueError("the model calls no activation that fastexpr can tap on its input's data (nn.ReLU, ReLU6, "
                         "LeakyReLU, Hardtanh, Hardsigmoid, PReLU, Threshold, GELU, SiLU, Tanh, Sigmoid, ELU, SELU, "
                         "CELU, Softplus, Mish, Hardswish, or F.relu / torch.relu / Tensor.relu and the functional "
                         "forms of the others)")
    first = FirstLayer.of(tapper.input_calls, x)
    return tapper.calls, tapper.untapped, first if isinstance(first, FirstLayer) else f"direct: {first}"


def _first_row(_layer, _spec, z, _out):
    """A probe's reduction: the tap's pre-activation (codes' source) of the batch's first sample."""
    return z[:1].detach().clone()


def _check_batch_independent(model, x, calls, options: TapOptions) -> None:
    """ValueError when the taps of sample 0 differ between the batch ``x`` (``calls``, reduced by
    ``_first_row``) and sample 0 alone:
    the model's function depends on the batch (batch norm on batch statistics, e.g.
    ``track_running_stats=False`` or ``F.batch_norm(training=True)``, functional dropout, ...)."""
    import torch

    try:
        one = _forward(model, x[:1], _first_row, options).calls
    except (RuntimeError, ValueError) as exc:  # e.g. batch norm refusing a batch of one in training mode
        raise ValueError(f"the model cannot run on a single sample ({type(exc).__name__}: {exc}); fastexpr measures "
                         "a function of each sample alone (call model.eval(); batch statistics are not one)") from exc
    rtol = 1e-4 if x.dtype == torch.float32 else 1e-9
    for a, b in zip(calls, one):
        za, zb = a.reduced.double(), b.reduced.double()
        if not (bool(torch.isfinite(za).all()) and bool(torch.isfinite(zb).all())):
            continue  # inf or NaN: the measurement itself reports it (OverflowInForwardPass)
        scale = float(za.abs().max()) if za.numel() else 0.0
        if za.shape != zb.shape or not torch.allclose(za, zb, rtol=rtol, atol=rtol * scale):
            raise ValueError(f"tap {a.name} of a sample differs when the sample is run with another in its batch: the "
                             "model's function depends on the batch (batch norm on batch statistics, such as "
                             "track_running_stats=False or F.batch_norm(training=True), or functional dropout); "
                             "fastexpr measures a function of each sample alone")
    if [c.name for c in one] != [c.name for c in calls]:
        raise ValueError("the model calls different activations for a batch of one sample than for two "
                         f"({[c.name for c in one]} vs {[c.name for c in calls]}); fastexpr measures a function of "
                         "each sample alone")


def is_torch_module(obj) -> bool:
    """True for a ``torch.nn.Module`` (without importing torch when it was never imported)."""
    import sys

    nn = sys.modules.get("torch.nn")
    return nn is not None and isinstance(obj, nn.Module)


__all__ = ["TapOptions", "TapsResult", "UntappedWarning", "measure_model"]
