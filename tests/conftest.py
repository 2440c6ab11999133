"""Shared test helpers: compose a Hydra config exactly as ``scripts/run.py`` would."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from streammoe.cli import CONF_DIR

# Tests share 2 cores with each other (pytest -n 2): one torch thread per worker.
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``scripts/run.py`` would build from these command-line overrides."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture
def make_config():
    return compose_config
