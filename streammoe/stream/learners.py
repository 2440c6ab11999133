"""Learners by name, for configs and the benchmark: DriftMoE presets and River's baselines.

The DriftMoE presets live in one place, ``conf/model/<name>.yaml`` (``mode``, ``faithful`` and
any setting that differs from the classes' tuned defaults); :func:`make_learner` reads them, so
the benchmark and ``experiment=driftmoe`` build the same models.

>>> make_learner("arf", seed=1).n_models
10
>>> type(make_learner("driftmoe_faithful", seed=1)).__name__
'DriftMoEData'
"""

from __future__ import annotations

from typing import Any

from river import base, ensemble, forest, tree

__all__ = ["LEARNERS", "driftmoe_preset", "make_learner"]

# The settings of a DriftMoE expert (the paper's), also used for the single-tree baseline.
TREE_PARAMS: dict[str, Any] = dict(grace_period=50, delta=1e-7, tau=0.05, leaf_prediction="nba",
                                   nb_threshold=0)

LEARNERS = ("driftmoe", "driftmoe_faithful", "driftmoe_task", "driftmoe_task_faithful", "arf",
            "srp", "levbag", "ht")


def driftmoe_preset(kind: str) -> dict[str, Any]:
    """The keyword arguments of the DriftMoE preset ``kind`` (``conf/model/<kind>.yaml``)."""
    from omegaconf import OmegaConf

    from streammoe.config import config_dir

    if not kind.startswith("driftmoe") or kind not in LEARNERS:
        raise ValueError(f"unknown DriftMoE preset {kind!r}; choose one of "
                         f"{[k for k in LEARNERS if k.startswith('driftmoe')]}")
    node = OmegaConf.load(config_dir() / "model" / f"{kind}.yaml")
    params = OmegaConf.to_container(node.params, resolve=True)
    if "hidden_sizes" in params:
        params["hidden_sizes"] = tuple(params["hidden_sizes"])
    return params


def make_learner(kind: str, seed: int = 0, **params: Any) -> base.Classifier:
    """``driftmoe*`` (its preset, overridden by ``params``), ``arf``/``srp``/``levbag`` (River
    defaults with ``n_models=10`` unless given) or ``ht`` (one tree, the experts' settings)."""
    if kind.startswith("driftmoe"):
        from streammoe.stream.driftmoe import DriftMoEClassifier

        return DriftMoEClassifier(**{**driftmoe_preset(kind), **params, "seed": seed})
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
