"""Shared test helpers: compose a Hydra config exactly as ``scripts/run.py`` would."""

from __future__ import annotations

import os

import pytest
import torch

from streammoe.cli import compose_config  # also imported from here by tests

# Tests share 2 cores with each other (pytest -n 2): one torch thread per worker.
torch.set_num_threads(1)
os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def make_config():
    return compose_config
