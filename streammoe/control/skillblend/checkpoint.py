"""Periodic PPO checkpoints that resume training exactly where it stopped.

A checkpoint is written at a *rollout boundary*: after one PPO update, before the next rollout
draws anything. It holds everything the rest of the run depends on:

* the SB3 model (policy, optimiser state, hyperparameters) as ``model.save`` writes it;
* the whole vectorised env, pickled mid-episode: MuJoCo state, task targets, every env's RNG,
  ``TimeLimit`` counters and ``Monitor`` statistics;
* SB3's loop state (``_last_obs``, ``_last_episode_starts``, ``num_timesteps``, episode buffers);
* the global RNGs PPO draws from (torch: action noise; numpy: minibatch order; python).

:func:`load_checkpoint` rebuilds the model with that env and restores the RNGs *after*
``PPO.load`` (which reseeds them), so ``learn`` continues bit-identically: a run stopped and resumed
ends with the same parameters as one that never stopped (``tests/test_skillblend_resume.py``).
Files are written atomically (temp file + rename), so a run killed while saving leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
from collections import deque
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback

__all__ = ["CheckpointCallback", "find_checkpoint_dir", "latest_checkpoint", "learn_resumable",
           "load_checkpoint", "save_checkpoint"]

FORMAT = "streammoe.skillblend.ppo_checkpoint/1"
CHECKPOINT_DIR = "checkpoints"
# Metadata that must match between the checkpoint and the run that resumes from it.
MATCHED_KEYS = ("phase", "env_id", "n_envs", "seed")


def _rng_state() -> dict[str, Any]:
    # SB3 draws minibatch order from numpy's legacy global RNG, so that is the state to keep
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),  # noqa: NPY002
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_path(directory: Path, phase: str, num_timesteps: int) -> Path:
    return Path(directory) / f"{phase}_{num_timesteps:010d}.ckpt"


def save_checkpoint(model: PPO, path: Path, meta: dict[str, Any]) -> Path:
    """Write a resumable checkpoint of ``model`` (call at a rollout boundary)."""
    buf = io.BytesIO()
    model.save(buf)
    state = {
        "format": FORMAT,
        "meta": dict(meta),
        "model_zip": buf.getvalue(),
        "vec_env": cloudpickle.dumps(model.get_env()),
        "last_obs": model._last_obs,
        "last_episode_starts": model._last_episode_starts,
        "num_timesteps": model.num_timesteps,
        "n_updates": model._n_updates,
        "episode_num": model._episode_num,
        "ep_info_buffer": list(model.ep_info_buffer or []),
        "ep_success_buffer": list(model.ep_success_buffer or []),
        "rng": _rng_state(),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as f:
        pickle.dump(state, f, protocol=pickle.HIGHEST_PROTOCOL)
    os.replace(tmp, path)
    return path


def load_checkpoint(path: Path, device: str = "auto", expect: dict[str, Any] | None = None) -> PPO:
    """Rebuild the PPO model, its envs and the RNGs from ``path``. ``expect``: metadata the run
    needs (phase, env id, number of envs, seed); a mismatch raises ``ValueError``."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            state = pickle.load(f)
    except FileNotFoundError:
        raise
    except Exception as exc:  # truncated or foreign file
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is not a skillblend PPO checkpoint (format {FORMAT!r} expected)")
    meta = state["meta"]
    for key in MATCHED_KEYS:
        if expect is not None and key in expect and meta.get(key) != expect[key]:
            raise ValueError(f"checkpoint {path} was written with {key}={meta.get(key)!r}, "
                             f"this run has {key}={expect[key]!r}: refusing to resume from it")
    vec = pickle.loads(state["vec_env"])
    model = PPO.load(io.BytesIO(state["model_zip"]), env=vec, device=device)
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    model.num_timesteps = int(state["num_timesteps"])
    model._n_updates = int(state["n_updates"])
    model._episode_num = int(state["episode_num"])
    model.ep_info_buffer = deque(state["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(state["ep_success_buffer"], maxlen=model._stats_window_size)
    _set_rng_state(state["rng"])  # last: PPO.load reseeded the global RNGs
    return model


def latest_checkpoint(directory: Path | None, phase: str) -> Path | None:
    """The checkpoint of ``phase`` with the most env steps in ``directory`` (None if none)."""
    if directory is None or not Path(directory).is_dir():
        return None
    pattern = re.compile(rf"^{re.escape(phase)}_(\d+)\.ckpt$")
    found = [(int(m.group(1)), p) for p in Path(directory).iterdir() if (m := pattern.match(p.name))]
    return max(found)[1] if found else None


def find_checkpoint_dir(resume: str | None, run_dir: Path) -> Path | None:
    """Where to resume from: ``None`` (off), ``"auto"`` (this run's ``checkpoints/``, fine if
    empty) or a path to a run directory or its ``checkpoints/`` folder (must hold checkpoints)."""
    if resume is None or str(resume) in ("", "null", "none"):
        return None
    if str(resume) == "auto":
        return Path(run_dir) / CHECKPOINT_DIR
    path = Path(resume)
    if (path / CHECKPOINT_DIR).is_dir():
        path = path / CHECKPOINT_DIR
    if not path.is_dir() or not any(path.glob("*.ckpt")):
        raise FileNotFoundError(f"resume={resume!r}: no checkpoints (*.ckpt) in {path}")
    return path


class CheckpointCallback(BaseCallback):
    """Save a checkpoint after every ``every``-th rollout of the run (at the start of the next
    one, when the update is done and nothing new has been drawn) and at the end of training; keep
    the last ``keep``. Rollouts are counted from the start of the run, so a resumed run saves at
    the same env steps as an uninterrupted one."""

    def __init__(self, directory: Path, meta: dict[str, Any], every: int, keep: int = 2) -> None:
        super().__init__()
        if every < 0 or keep < 1:
            raise ValueError(f"checkpoint every={every} must be >= 0 (0: off) and keep={keep} >= 1")
        self.directory, self.meta, self.every, self.keep = Path(directory), dict(meta), int(every), int(keep)
        self.start_steps = 0

    def _on_training_start(self) -> None:
        self.start_steps = self.model.num_timesteps

    def _on_step(self) -> bool:
        return True

    def _on_rollout_start(self) -> None:
        steps = self.model.num_timesteps
        rollout = steps // (self.model.n_steps * self.model.n_envs)
        if self.every and steps > self.start_steps and rollout % self.every == 0:
            self.save()

    def _on_training_end(self) -> None:
        if self.every and self.model.num_timesteps > self.start_steps:
            self.save()

    def save(self) -> Path:
        path = save_checkpoint(self.model, checkpoint_path(self.directory, self.meta["phase"],
                                                           self.model.num_timesteps), self.meta)
        pattern = re.compile(rf"^{re.escape(self.meta['phase'])}_(\d+)\.ckpt$")
        old = sorted((int(m.group(1)), p) for p in self.directory.iterdir() if (m := pattern.match(p.name)))
        for _, stale in old[:-self.keep]:
            stale.unlink()
        return path


def learn_resumable(model: PPO, total_timesteps: int, callbacks: list[BaseCallback]) -> PPO:
    """``model.learn`` up to ``total_timesteps`` env steps in all, counting steps a resumed
    model has already taken (a fresh model starts from zero, exactly as ``learn`` would)."""
    if model.num_timesteps == 0:
        return model.learn(total_timesteps=total_timesteps, callback=callbacks, progress_bar=False)
    remaining = total_timesteps - model.num_timesteps
    if remaining <= 0:  # stopped after training had finished (e.g. during evaluation)
        return model
    return model.learn(total_timesteps=remaining, callback=callbacks, reset_num_timesteps=False,
                       progress_bar=False)
