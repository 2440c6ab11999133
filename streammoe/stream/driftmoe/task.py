"""DriftMoE, task mode (MoE-Task): one one-vs-rest Hoeffding tree per class, experts appearing as
classes appear; the router learns a one-hot target on the class."""

from __future__ import annotations

from typing import Any

import numpy as np
from river import base

from streammoe.stream.driftmoe.base import BaseDriftMoE

__all__ = ["DriftMoETask"]


class DriftMoETask(BaseDriftMoE):
    """Online mixture of one-vs-rest Hoeffding trees, one per class, routed by an MLP (MoE-Task).

    Every expert learns every row (``[y == its class]``); the router learns one-hot(y).

    ``faithful=True``: the paper's reference code (the router's argmax is the class; the trees
    never affect the prediction; raw router inputs; a router step every row).
    ``faithful=False``: class score = router softmax x each expert's P(its class), so the
    experts matter; standardised router inputs; a drift detector on the 0/1 error that restarts
    every tree on a rise (the router carries the prediction while they regrow).

    Parameters
    ----------
    hidden_sizes, lr
        Router hidden layer sizes and Adam learning rate.
    dropout
        Router dropout in training (``None``: the paper's 0.2 when ``faithful``, else 0).
    batch_size
        Rows per router step (``None``: the paper's 1 when ``faithful``, else 4).
    grace_period, delta, tau, leaf_prediction
        Hoeffding-tree settings (``None``: the paper's when ``faithful`` (delta 1e-7, ``nba``
        leaves), else delta 0.01 and majority-class leaves).
    max_features, memory_budget_mb, memory_estimate_period, drift_detector, faithful, seed
        As in :class:`~streammoe.stream.DriftMoEData` (``drift_detector=None``: ADWIN).

    Examples
    --------
    >>> from river import datasets, evaluate, metrics
    >>> from streammoe.stream import DriftMoETask
    >>> model = DriftMoETask(seed=1)
    >>> metric = evaluate.progressive_val_score(datasets.Phishing().take(300), model,
    ...                                         metrics.Accuracy())
    >>> metric.get() > 0.75
    True
    """

    _PAPER = {**BaseDriftMoE._PAPER, "batch_size": 1}
    _TUNED = {**BaseDriftMoE._TUNED, "batch_size": 4, "dropout": 0.0, "leaf_prediction": "mc"}

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (256, 128),
        dropout: float | None = None,
        lr: float = 2e-3,
        batch_size: int | None = None,
        grace_period: int = 50,
        delta: float | None = None,
        tau: float = 0.05,
        leaf_prediction: str | None = None,
        max_features: int | float | str | None = None,
        memory_budget_mb: float | None = None,
        memory_estimate_period: int | None = None,
        drift_detector: base.DriftDetector | None = None,
        faithful: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(hidden_sizes=hidden_sizes, dropout=dropout, lr=lr, batch_size=batch_size,
                         grace_period=grace_period, delta=delta, tau=tau,
                         leaf_prediction=leaf_prediction, max_features=max_features,
                         memory_budget_mb=memory_budget_mb,
                         memory_estimate_period=memory_estimate_period,
                         drift_detector=drift_detector, faithful=faithful, seed=seed)

    @classmethod
    def _unit_test_params(cls):
        small = {"hidden_sizes": (8,), "batch_size": 16, "grace_period": 20}
        yield {**small}
        yield {**small, "max_features": "sqrt"}
        yield {**small, "faithful": True, "leaf_prediction": "mc"}

    @property
    def _n_out(self) -> int:
        return len(self._classes)

    def _on_new_class(self, y: Any) -> None:
        self._experts.append(self._new_tree())
        for expert in self._experts:  # the budget is shared by one more tree now
            expert.max_size = self._tree_max_size
        if self._router is not None:
            self._router.grow_outputs(len(self._classes))

    def _class_scores(self, x: dict, logits: np.ndarray) -> np.ndarray:
        """Router softmax (x each expert's P(its class) when not faithful: the experts matter)."""
        scores = np.exp(logits - logits.max())
        if not self.faithful:
            for i in range(len(self._classes)):
                p = self._expert_proba(i, x)
                total = sum(p.values())
                scores[i] *= (p.get(True, 0.0) / total) if total > 0 else 0.5
        return scores

    def _combine(self, x: dict, logits: np.ndarray) -> dict:
        return dict(zip(self._classes, self._class_scores(x, logits).tolist()))

    def _learn(self, x: dict, y: Any, logits: np.ndarray, v: np.ndarray) -> None:
        if self._detects and logits.shape[0] == len(self._classes):
            error = float(self._classes[int(np.argmax(self._class_scores(x, logits)))] != y)
            if self._error_rose(error):
                self._experts = [self._new_tree() for _ in self._experts]
                self._n_resets += 1
        target = np.zeros(len(self._classes))
        target[self._class_index[y]] = 1.0
        self._push(v, target)
        for c, expert in zip(self._classes, self._experts):
            expert.learn_one(x, c == y)
