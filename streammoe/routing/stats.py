"""Routing statistics, updated online in bounded memory.

>>> import torch
>>> s = RoutingStats(n_experts=3, window=4)
>>> s.update(torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]))
>>> s.to_dict()["switch_rate"], s.to_dict()["utilisation_1"]
(1.0, 0.5)
"""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch

__all__ = ["RoutingStats"]


class RoutingStats:
    """Per-expert utilisation, mean routing entropy and top-1 switch rate over a window.

    ``update`` takes weights ``(n, n_experts)`` (any gate's output, or one-hot choices) or a 1-D
    tensor of chosen expert indices. Utilisation is the share of top-1 choices per expert (and
    ``weight_share_i`` the share of total weight); the switch rate is the fraction of consecutive
    rows, within the last ``window`` rows, whose top-1 expert differs. Memory is O(window).
    """

    def __init__(self, n_experts: int, window: int = 1000) -> None:
        if n_experts < 1 or window < 2:
            raise ValueError(f"n_experts must be >= 1 and window >= 2, got {n_experts}, {window}")
        self.n_experts, self.window = n_experts, window
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.n_rows = 0
        self.top1_counts = np.zeros(self.n_experts, dtype=np.int64)
        self.weight_sums = np.zeros(self.n_experts, dtype=np.float64)
        self.entropy_sum = 0.0
        self._recent: deque[int] = deque(maxlen=self.window)

    def update(self, routing: torch.Tensor | np.ndarray) -> None:
        """Add rows of routing weights ``(n, n_experts)`` or chosen expert indices ``(n,)``."""
        if isinstance(routing, torch.Tensor):
            routing = routing.detach().cpu()
            arr = (routing if not torch.is_floating_point(routing) else routing.double()).numpy()
        else:
            arr = np.asarray(routing)
        if arr.ndim == 1 and np.issubdtype(arr.dtype, np.integer):
            if arr.size and (arr.min() < 0 or arr.max() >= self.n_experts):
                raise ValueError(f"expert indices must be in [0, {self.n_experts}), got {arr.min()}..{arr.max()}")
            weights = np.eye(self.n_experts)[arr]
        else:
            weights = arr.reshape(-1, arr.shape[-1]) if arr.ndim >= 1 else arr
            if weights.ndim != 2 or weights.shape[1] != self.n_experts:
                raise ValueError(f"routing weights must be (n, {self.n_experts}), got {arr.shape}")
        if not np.isfinite(weights).all():
            raise ValueError("routing weights contain NaN or inf")
        top1 = weights.argmax(axis=1)
        self.n_rows += len(top1)
        self.top1_counts += np.bincount(top1, minlength=self.n_experts)
        self.weight_sums += weights.sum(axis=0)
        totals = weights.sum(axis=1, keepdims=True)
        p = np.clip(weights / np.where(totals > 0, totals, 1.0), 1e-12, None)
        self.entropy_sum += float(-(p * np.log(p)).sum())
        self._recent.extend(int(i) for i in top1)

    @property
    def utilisation(self) -> np.ndarray:
        """Share of rows whose top-1 expert was each expert."""
        return self.top1_counts / max(self.n_rows, 1)

    @property
    def mean_entropy(self) -> float:
        """Mean entropy (nats) of the rows' routing distributions."""
        return self.entropy_sum / max(self.n_rows, 1)

    @property
    def switch_rate(self) -> float:
        """Fraction of consecutive rows in the window whose top-1 expert differs."""
        recent = np.fromiter(self._recent, dtype=np.int64)
        if len(recent) < 2:
            return 0.0
        return float((recent[1:] != recent[:-1]).mean())

    def to_dict(self) -> dict[str, Any]:
        """Flat dict (``utilisation_i``, ``weight_share_i``, ``mean_entropy``, ``switch_rate``)."""
        share = self.weight_sums / max(self.weight_sums.sum(), 1e-12)
        out: dict[str, Any] = {"n_rows": self.n_rows, "mean_entropy": self.mean_entropy,
                               "switch_rate": self.switch_rate}
        for i in range(self.n_experts):
            out[f"utilisation_{i}"] = float(self.utilisation[i])
        for i in range(self.n_experts):
            out[f"weight_share_{i}"] = float(share[i])
        return out

    def to_dataframe(self) -> Any:
        """One row per expert (``expert``, ``utilisation``, ``weight_share``) as a DataFrame."""
        import pandas as pd

        share = self.weight_sums / max(self.weight_sums.sum(), 1e-12)
        return pd.DataFrame(
            {"expert": np.arange(self.n_experts), "utilisation": self.utilisation, "weight_share": share}
        )
