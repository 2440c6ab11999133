"""Market decomposition: cut a price series into chunks and label each chunk's trend and
volatility regime. The labels look ahead inside a chunk, so they only partition training data.

- trend: slope of a linear fit to the chunk's close after a zero-phase Butterworth low-pass
  (order 1, cutoff 0.05, forward-backward), divided by the chunk's mean close so slopes compare
  across price levels;
- volatility: standard deviation of the chunk's log returns.

Each label is binned at quantiles (5/35/65/95 %) of the training chunks and the three middle
bins are kept: trend bear/flat/bull, volatility low/mid/high (six sub-agents). Chunks in the
outer 5 % tails belong to no sub-agent.

>>> close = np.exp(np.linspace(0, 1, 400))
>>> starts, labels = chunk_labels(close, chunk_length=50)
>>> starts.tolist()[:3], labels["trend"] > 0
([0, 50, 100], array([ True,  True,  True,  True,  True,  True,  True,  True]))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import butter, filtfilt

__all__ = ["REGIMES", "RegimeThresholds", "assign_regimes", "chunk_labels", "plot_regimes"]

# (label kind, bin) for each sub-agent; bins 1..3 are the middle classes of 5 quantile bins
REGIMES: dict[str, tuple[str, int]] = {
    "trend_bear": ("trend", 1), "trend_flat": ("trend", 2), "trend_bull": ("trend", 3),
    "vol_low": ("volatility", 1), "vol_mid": ("volatility", 2), "vol_high": ("volatility", 3),
}


def chunk_labels(close: np.ndarray, chunk_length: int, filter_order: int = 1,
                 cutoff: float = 0.05, normalise_slope: bool = True
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Start index of every full, non-overlapping chunk and its raw trend / volatility labels.
    ``normalise_slope=False``: the slope in price units (the reference's), not divided by the
    chunk's mean close."""
    n_chunks = len(close) // chunk_length
    if n_chunks < 1:
        raise ValueError(f"series of {len(close)} bars is shorter than one chunk ({chunk_length})")
    if chunk_length < 8:
        raise ValueError(f"chunk_length must be >= 8 for the filter, got {chunk_length}")
    starts = np.arange(n_chunks) * chunk_length
    chunks = np.asarray(close[: n_chunks * chunk_length], np.float64).reshape(n_chunks, chunk_length)
    b, a = butter(filter_order, cutoff)
    smooth = filtfilt(b, a, chunks, axis=1)  # zero phase: forward then backward
    x = np.arange(chunk_length) - (chunk_length - 1) / 2
    slope = (smooth * x).sum(1) / (x**2).sum()
    if normalise_slope:
        slope = slope / chunks.mean(1)
    vol = np.diff(np.log(chunks), axis=1).std(1)
    return starts, {"trend": slope, "volatility": vol}


@dataclass
class RegimeThresholds:
    """Quantile edges (4 each) of the training chunks' labels."""

    trend: np.ndarray
    volatility: np.ndarray

    @classmethod
    def fit(cls, labels: dict[str, np.ndarray],
            quantiles: Sequence[float] = (0.05, 0.35, 0.65, 0.95)) -> RegimeThresholds:
        q = np.asarray(quantiles)
        if q.shape != (4,) or not (np.all(np.diff(q) > 0) and 0 < q[0] and q[-1] < 1):
            raise ValueError(f"quantiles must be 4 increasing numbers in (0, 1), got {quantiles}")
        return cls(np.quantile(labels["trend"], q), np.quantile(labels["volatility"], q))

    def bins(self, labels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Bin 0..4 per chunk and label kind (1..3 are the kept middle classes)."""
        return {kind: np.searchsorted(getattr(self, kind), labels[kind], side="right")
                for kind in ("trend", "volatility")}

    def state_dict(self) -> dict[str, list[float]]:
        return {"trend": self.trend.tolist(), "volatility": self.volatility.tolist()}


def assign_regimes(starts: np.ndarray, labels: dict[str, np.ndarray],
                   thresholds: RegimeThresholds, fold_tails: bool = False) -> dict[str, np.ndarray]:
    """Chunk start indices belonging to each of the six sub-agents in :data:`REGIMES`.
    ``fold_tails``: chunks in the outer bins (0, 4) join the nearest kept class (1, 3), as the
    reference does for validation and test chunks; otherwise they belong to no sub-agent.

    >>> t = RegimeThresholds(np.array([-2., -1, 1, 2]), np.array([1., 2, 3, 4]))
    >>> labels = {"trend": np.array([-3., 0, 3]), "volatility": np.array([2.5, 2.5, 2.5])}
    >>> assign_regimes(np.array([0, 10, 20]), labels, t)["trend_bull"].tolist()
    []
    >>> assign_regimes(np.array([0, 10, 20]), labels, t, fold_tails=True)["trend_bull"].tolist()
    [20]
    """
    bins = thresholds.bins(labels)
    if fold_tails:
        bins = {kind: np.clip(b, 1, 3) for kind, b in bins.items()}
    return {name: starts[bins[kind] == b] for name, (kind, b) in REGIMES.items()}


def plot_regimes(close: np.ndarray, starts: np.ndarray, chunk_length: int,
                 bins: dict[str, np.ndarray], path: str | Path) -> Path:
    """Price coloured by each chunk's trend class (top) and volatility class (bottom)."""
    from streammoe.runs import pyplot, save_figure

    plt = pyplot()
    colours = {0: "lightgrey", 1: "tab:red", 2: "tab:grey", 3: "tab:green", 4: "lightgrey"}
    names = {"trend": ("bear", "flat", "bull"), "volatility": ("low", "mid", "high")}
    vol_colours = {0: "lightgrey", 1: "tab:blue", 2: "tab:orange", 3: "tab:purple", 4: "lightgrey"}
    fig, axes = plt.subplots(2, 1, figsize=(10, 5), sharex=True)
    for ax, kind, cmap in zip(axes, ("trend", "volatility"), (colours, vol_colours)):
        for s, b in zip(starts, bins[kind]):
            seg = slice(s, s + chunk_length + 1)
            ax.plot(np.arange(len(close))[seg], close[seg], color=cmap[int(b)], lw=0.8)
        for b, label in zip((1, 2, 3), names[kind]):
            ax.plot([], [], color=cmap[b], label=label)
        ax.plot([], [], color="lightgrey", label="tails (unused)")
        ax.set_ylabel("close")
        ax.set_title(f"{kind} regimes of the training chunks")
        ax.legend(loc="upper left", fontsize=7, ncol=4)
    axes[-1].set_xlabel("bar")
    return save_figure(fig, path)
