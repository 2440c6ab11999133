"""MergeVLA's Meta-World environments: suites of Meta-World v3 tasks with templated instructions
(:mod:`.suites`, no simulator needed) and the task env that returns MergeVLA's observation dict
(:mod:`.env`, imported on first use of its names: it loads Meta-World and MuJoCo).

``import streammoe_envs`` registers :data:`ENV_ID` (``streammoe/MetaWorldTask-v0``); make it
with ``task=`` (one of :data:`TASK_NAMES`) and optionally ``variation=``, ``vision=``,
``image_size=``, ``camera=``.

>>> sorted(SUITES)
['button', 'door_window', 'drawer', 'reach_push']
>>> all(len(tasks) >= 2 for tasks in SUITES.values())
True
>>> ENV_ID
'streammoe/MetaWorldTask-v0'
"""

from __future__ import annotations

import importlib
from typing import Any

from streammoe_envs import METAWORLD_ID
from streammoe_envs.metaworld.suites import (
    ALL_TASK_NAMES,
    DROPPED_TASKS,
    INSTRUCTION_LEN,
    INSTRUCTION_TEMPLATE,
    N_EXTRA_VARIATIONS,
    N_VARIATIONS,
    PAD_ID,
    PRETRAIN_SUITE,
    PRETRAIN_TASKS,
    SUITES,
    TASK_GROUPS,
    TASK_NAMES,
    TASKS,
    VARIATION_SEED,
    VOCAB,
    TaskSpec,
    detokenize,
    split_variations,
    task_spec,
    tokenize,
)

ENV_ID = METAWORLD_ID
# Defined in .env (imports metaworld and mujoco): loaded on first access.
_LAZY = ("ACTION_DIM", "DEFAULT_CAMERA", "PROPRIO_DIM", "STATE_DIM", "MetaWorldTaskEnv", "variation_task")

__all__ = [
    "ALL_TASK_NAMES",
    "DROPPED_TASKS",
    "ENV_ID",
    "INSTRUCTION_LEN",
    "INSTRUCTION_TEMPLATE",
    "N_EXTRA_VARIATIONS",
    "N_VARIATIONS",
    "PAD_ID",
    "PRETRAIN_SUITE",
    "PRETRAIN_TASKS",
    "SUITES",
    "TASKS",
    "TASK_GROUPS",
    "TASK_NAMES",
    "VARIATION_SEED",
    "VOCAB",
    "TaskSpec",
    "detokenize",
    "split_variations",
    "task_spec",
    "tokenize",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module("streammoe_envs.metaworld.env"), name)
    raise AttributeError(f"module 'streammoe_envs.metaworld' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
