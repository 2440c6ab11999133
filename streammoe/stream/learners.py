"""Learners by name, for configs and the benchmark: DriftMoE variants and River's baselines.

>>> make_learner("arf", seed=1).n_models
10
"""

from __future__ import annotations

from typing import Any

from river import base, ensemble, forest, tree

from streammoe.stream.driftmoe import DriftMoEClassifier

__all__ = ["LEARNERS", "make_learner"]

# The settings of a DriftMoE expert (the paper's), also used for the single-tree baseline.
TREE_PARAMS: dict[str, Any] = dict(grace_period=50, delta=1e-7, tau=0.05, leaf_prediction="nba",
                                   nb_threshold=0)

LEARNERS = ("driftmoe", "driftmoe_faithful", "driftmoe_task", "driftmoe_task_faithful", "arf",
            "srp", "levbag", "ht")


def make_learner(kind: str, seed: int = 0, **params: Any) -> base.Classifier:
    """``driftmoe*`` (params go to ``DriftMoEClassifier``), ``arf``/``srp``/``levbag`` (River
    defaults with ``n_models=10`` unless given) or ``ht`` (one tree, the experts' settings)."""
    if kind.startswith("driftmoe"):
        preset: dict[str, Any] = {
            "driftmoe": {"mode": "data", "faithful": False},
            "driftmoe_faithful": {"mode": "data", "faithful": True},
            # Task mode tuned on seed 1 of the 100k streams' first 40k rows (docs/driftmoe.md):
            # a router step every 4 rows without dropout, majority-class leaves (LED speed), no
            # drift reset (the setting of the 100k benchmark; see the doc for the reset's effect).
            "driftmoe_task": {"mode": "task", "faithful": False, "batch_size": 4, "dropout": 0.0,
                              "leaf_prediction": "mc", "drift_reset": False},
            "driftmoe_task_faithful": {"mode": "task", "faithful": True},
        }.get(kind)
        if preset is None:
            raise ValueError(f"unknown learner {kind!r}; choose one of {LEARNERS}")
        return DriftMoEClassifier(**{**preset, **params}, seed=seed)
    if kind == "arf":
        return forest.ARFClassifier(**{"n_models": 10, **params}, seed=seed)
    if kind == "srp":
        return ensemble.SRPClassifier(**{"n_models": 10, **params}, seed=seed)
    if kind == "levbag":
        return ensemble.LeveragingBaggingClassifier(
            model=tree.HoeffdingTreeClassifier(), **{"n_models": 10, **params}, seed=seed)
    if kind == "ht":
        return tree.HoeffdingTreeClassifier(**{**TREE_PARAMS, **params})
    raise ValueError(f"unknown learner {kind!r}; choose one of {LEARNERS}")
