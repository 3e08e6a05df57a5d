"""The result of a measurement: per-layer counts and lengths as NumPy arrays, a table and a dict."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ._checks import is_integer


@dataclass
class Result:
    """Expressivity measures of one trajectory (or a batch: a leading trajectory axis on every field).

    ``transitions[d-1]``: neuron transitions in layer d; ``pattern_changes[d-1]``: consecutive
    pairs whose layer-d pattern differs; ``network_changes``: pairs whose whole-network pattern
    differs; ``distinct_patterns``: distinct whole-network patterns among the samples (the
    paper's linear-region count along the trajectory); ``lengths[d]``: length of the image at
    layer d (``lengths[0]`` is the input trajectory); ``saturation``: the fraction of
    consecutive pairs whose whole-network pattern differs (near 0 for converged counts).
    """

    transitions: np.ndarray
    pattern_changes: np.ndarray
    network_changes: np.ndarray | int
    distinct_patterns: np.ndarray | int
    lengths: np.ndarray
    n_points: int | None  # None for exact results
    widths: tuple[int, ...]
    activations: tuple[str, ...]
    dtype: str
    backend: str
    trajectories: tuple[str, ...] = field(default=())
    exact: bool = False  # counted in the continuum (measure(..., exact=True)), not on samples

    @property
    def batched(self) -> bool:
        return np.ndim(self.network_changes) == 1

    def __len__(self) -> int:
        if not self.batched:
            raise TypeError("a single-trajectory Result has no length; index a batched Result")
        return len(self.network_changes)

    def __getitem__(self, i) -> "Result":
        """The result of trajectory ``i`` of a batch; a slice gives a batched Result."""
        if not self.batched:
            raise TypeError("a single-trajectory Result cannot be indexed")
        if isinstance(i, slice):
            return dataclasses.replace(
                self, transitions=self.transitions[i], pattern_changes=self.pattern_changes[i],
                network_changes=self.network_changes[i], distinct_patterns=self.distinct_patterns[i],
                lengths=self.lengths[i], trajectories=self.trajectories[i])
        if not is_integer(i):
            raise TypeError(f"a batched Result is indexed by an integer or a slice, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"trajectory {i} is out of range for a batch of {len(self)}")
        return Result(
            self.transitions[i], self.pattern_changes[i], int(self.network_changes[i]),
            int(self.distinct_patterns[i]), self.lengths[i], self.n_points, self.widths,
            self.activations, self.dtype, self.backend, (self.trajectories[i],), self.exact,
        )

    @property
    def saturation(self) -> np.ndarray:
        """``network_changes / (n_points - 1)``: the fraction of consecutive sample pairs that change
        whole-network pattern. Sampled counts are far from converged when it is not small
        (``measure`` warns above 0.05). Zero for exact results, which are converged by construction."""
        if self.exact:
            return np.zeros(np.shape(self.network_changes))
        return np.asarray(self.network_changes) / (self.n_points - 1)

    @property
    def length_ratios(self) -> np.ndarray:
        """``lengths[..., d] / lengths[..., 0]``: growth of the trajectory's length with depth
        (NaN throughout for a trajectory of zero length, such as a line from a point to itself)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.lengths / self.lengths[..., :1]

    def to_dict(self) -> dict:
        """Plain Python types only (lists, ints, floats, strings): ready for ``json.dump``."""
        out = {}
        for name in ("transitions", "pattern_changes", "network_changes", "distinct_patterns", "lengths", "saturation"):
            out[name] = np.asarray(getattr(self, name)).tolist()
        out.update(n_points=self.n_points, widths=list(self.widths), activations=list(self.activations),
                   dtype=self.dtype, backend=self.backend, trajectories=list(self.trajectories), exact=self.exact)
        return out

    def table(self) -> str:
        """A readable per-layer table (one block per trajectory of a batch)."""
        if self.batched:
            return "\n\n".join(self[i].table() for i in range(len(self)))
        sampling = "exact (continuum)" if self.exact else f"{self.n_points:,} points"
        head = f"{', '.join(self.trajectories) or 'trajectory'}: {sampling}, {self.dtype}, backend {self.backend}\n"
        rows = [f"{'layer':>5} {'width':>6} {'activation':>10} {'transitions':>14} {'pattern chg':>12} "
                f"{'length':>14} {'len/len0':>10}"]
        ratios = self.length_ratios
        rows.append(f"{0:>5} {self.widths[0]:>6} {'input':>10} {'':>14} {'':>12} {self.lengths[0]:>14.6g} "
                    f"{ratios[0]:>10.4g}")
        for d in range(1, len(self.widths)):
            rows.append(f"{d:>5} {self.widths[d]:>6} {self.activations[d - 1]:>10} {self.transitions[d - 1]:>14,} "
                        f"{self.pattern_changes[d - 1]:>12,} {self.lengths[d]:>14.6g} {ratios[d]:>10.4g}")
        tail = f"whole network: {self.network_changes:,} pattern changes, {self.distinct_patterns:,} distinct patterns"
        if not self.exact:
            tail += f", saturation {self.saturation:.3g} (pattern changes per sample pair)"
        return head + "\n".join(rows) + "\n" + tail

    def __str__(self) -> str:
        return self.table()
