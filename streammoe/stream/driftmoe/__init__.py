"""DriftMoE: an online mixture of Hoeffding-tree experts with a neural router (River API).

One estimator per module, as River's forests: :class:`BaseDriftMoE` (``base.py``) holds what
both modes share and calls hooks that :class:`DriftMoEData` (``data.py``, MoE-Data: multi-class
experts that specialise on regimes) and :class:`DriftMoETask` (``task.py``, MoE-Task: one
one-vs-rest expert per class) fill in. :func:`DriftMoEClassifier` is the public entry that picks
the mode. See ``docs/driftmoe.md``.

>>> from river import datasets, evaluate, metrics
>>> model = DriftMoEClassifier(seed=1)
>>> metric = evaluate.progressive_val_score(datasets.Phishing().take(300), model,
...                                         metrics.Accuracy())
>>> metric.get() > 0.75
True
"""

from __future__ import annotations

from typing import Any

import torch

from streammoe.stream.driftmoe.base import (
    DRIFT_DETECTORS,
    MAX_ABS_FEATURE,
    BaseDriftMoE,
    make_drift_detector,
)
from streammoe.stream.driftmoe.data import DriftMoEData
from streammoe.stream.driftmoe.task import DriftMoETask

__all__ = ["DRIFT_DETECTORS", "MAX_ABS_FEATURE", "MODES", "BaseDriftMoE", "DriftMoEClassifier",
           "DriftMoEData", "DriftMoETask", "make_drift_detector", "warm_up_torch"]

MODES: dict[str, type[BaseDriftMoE]] = {"data": DriftMoEData, "task": DriftMoETask}
DEFAULT_MODE = "task"


def DriftMoEClassifier(mode: str = DEFAULT_MODE, **params: Any) -> BaseDriftMoE:  # noqa: N802
    """A DriftMoE classifier: ``mode="task"`` (the default: the best improved configuration on
    the tuning seeds, ``docs/driftmoe.md``) builds :class:`DriftMoETask`, ``mode="data"``
    :class:`DriftMoEData`; ``params`` go to that class (its defaults are the tuned settings,
    ``faithful=True`` the paper's algorithm).

    >>> type(DriftMoEClassifier()).__name__, type(DriftMoEClassifier("data", n_experts=4)).__name__
    ('DriftMoETask', 'DriftMoEData')
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {sorted(MODES)}, got {mode!r}")
    return MODES[mode](**params)


def warm_up_torch() -> None:
    """Pay torch's one-time lazy imports (the first ``torch.optim.Adam`` pulls in
    ``torch._dynamo``, seconds) now, e.g. before a timed benchmark."""
    torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
