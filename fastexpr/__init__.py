"""fastexpr: fast expressivity measures of neural networks (Raghu et al., ICML 2017).

Push a densely sampled trajectory x(t) through a network and count neuron transitions,
activation-pattern changes, distinct patterns (linear regions) and the trajectory's length
at every layer, with fused C++/CUDA kernels. Importing is cheap: backends load on first use.
"""
from .backends import available_backends, missing_backends
from .dichotomies import Dichotomies, dichotomies
from .exact import crossings
from .measure import PrecisionWarning, SaturationWarning, make_plan, measure
from .network import Network, from_arrays, from_torch, random_mlp
from .plan import OverflowInForwardPass
from .regions import RegionMap, region_map
from .result import Result
from .sweep import load_sweep, measure_sharded, sweep
from .trajectory import Trajectory, arc, great_circle, line, points, polyline

__version__ = "0.1.0"


def __getattr__(name):
    """Lazy attributes that need torch: ``trajectory_length`` (see fastexpr.autograd)."""
    if name == "trajectory_length":
        from .autograd import trajectory_length

        return trajectory_length
    raise AttributeError(f"module 'fastexpr' has no attribute {name!r}")


__all__ = [
    "Dichotomies", "Network", "OverflowInForwardPass", "PrecisionWarning", "RegionMap", "Result", "SaturationWarning",
    "Trajectory", "arc", "available_backends", "crossings", "dichotomies", "from_arrays", "from_torch", "great_circle",
    "line", "load_sweep", "make_plan", "measure", "measure_sharded", "missing_backends", "points", "polyline",
    "random_mlp", "region_map", "sweep", "trajectory_length",
]
