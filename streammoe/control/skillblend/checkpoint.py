"""SkillBlender's resume logic, all of it: periodic PPO checkpoints that continue training exactly
where it stopped, and nothing in them is ever unpickled.

A checkpoint (``checkpoints/<phase>_<env steps>.safetensors``, :mod:`streammoe.checkpoint`'s
format) is written at a *rollout boundary*: after one PPO update, before the next rollout draws
anything. It holds everything the rest of the run depends on, as tensors and JSON:

* the policy's ``state_dict`` and its optimiser's (Adam moments, step counts, learning rate);
* SB3's loop state: ``num_timesteps``, ``_n_updates``, ``_episode_num``,
  ``_current_progress_remaining`` (the learning-rate / clip schedules' position), ``_last_obs``,
  ``_last_episode_starts`` and the episode-statistics buffers;
* every env of the vectorised env, mid-episode: the env's own state (``env.state_dict()``: MuJoCo
  integration state, task targets, its RNG; taken and restored through ``VecEnv.env_method``) and
  its wrappers' counters (``TimeLimit`` elapsed steps, ``Monitor`` statistics, Gymnasium's
  order/passive checkers);
* the global RNGs PPO draws from (torch: action noise; numpy: minibatch order; python).

Resuming (:func:`resume_or_build`) builds the model from the run's config as a fresh run would
(SB3's ``PPO.load`` is not used: it unpickles parts of its zip), then :func:`restore_checkpoint`
checks the file against the run (the ``run`` section: phase, env id, number of envs, seed; the
``model`` section: algorithm, policy class and settings, hyperparameters, parameter shapes, env
spec) and only then restores the state above, global RNGs last. ``learn`` then continues
bit-identically: a run stopped and resumed ends with the same parameters as one that never stopped
(``tests/test_skillblend_resume.py``).
"""

from __future__ import annotations

import re
import shutil
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

from streammoe import checkpoint as ckpt

__all__ = ["CHECKPOINT_DIR", "PeriodicCheckpoint", "checkpoint_path", "find_checkpoint_dir",
           "keep_earlier_curve", "latest_checkpoint", "learn_resumable", "model_config",
           "restore_checkpoint", "resume_or_build", "save_checkpoint"]

KIND = "streammoe.skillblend.ppo"
VERSION = 2  # 1: a pickle with an SB3 zip and a cloudpickled VecEnv (no longer read)
LABEL = "skillblend PPO checkpoint"
CHECKPOINT_DIR = "checkpoints"
SUFFIX = ".safetensors"
LEGACY_SUFFIX = ".ckpt"
HINTS = {"run": "Resume with the settings of the run that wrote it, or start in a fresh run folder.",
         "model": "The model this run builds differs from the checkpoint's: resume with the same "
                  "skillblend settings (ppo, method, episode_steps, skills), or start in a fresh run folder."}
# Wrapper attributes (Monitor; TimeLimit; OrderEnforcing; PassiveEnvChecker) a resumed env needs.
WRAPPER_STATE = ("t_start", "rewards", "needs_reset", "episode_returns", "episode_lengths",
                 "episode_times", "total_steps", "_elapsed_steps", "_has_reset", "checked_reset",
                 "checked_step")
PPO_SETTINGS = ("n_steps", "batch_size", "n_epochs", "gamma", "gae_lambda", "ent_coef", "vf_coef",
                "max_grad_norm", "normalize_advantage", "target_kl", "use_sde", "sde_sample_freq",
                "_stats_window_size")


def _describe(value: Any) -> Any:
    """Plain data describing a setting: numbers / strings as they are, classes and functions by
    name, other objects (modules such as the skills, whose weights the parameter shapes cover) by
    type."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _describe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    return f"<{type(value).__name__}>"


def model_config(model: PPO) -> dict[str, Any]:
    """What a checkpoint's model must share with the model it is restored into (its ``model``
    section): algorithm, policy class and settings, PPO hyperparameters, parameter shapes, env."""
    vec = model.get_env()
    assert vec is not None
    spec = vec.get_attr("spec", indices=0)[0]
    clip_vf = model.clip_range_vf
    return {
        "algorithm": type(model).__name__,
        "policy": _describe(type(model.policy)),
        "policy_kwargs": _describe(model.policy_kwargs),
        "hyperparameters": {
            **{k.lstrip("_"): _describe(getattr(model, k)) for k in PPO_SETTINGS},
            "learning_rate": _describe(model.learning_rate),
            "clip_range": float(model.clip_range(1.0)),
            "clip_range_vf": None if clip_vf is None else float(clip_vf(1.0)),
        },
        "parameters": {k: list(v.shape) for k, v in model.policy.state_dict().items()},
        "env": {"id": None if spec is None else spec.id,
                "kwargs": None if spec is None else _describe(spec.kwargs),
                "max_episode_steps": None if spec is None else spec.max_episode_steps,
                "n_envs": vec.num_envs},
    }


def _env_states(vec: VecEnv) -> list[dict[str, Any]]:
    states = []
    for i, env_state in enumerate(vec.env_method("state_dict")):
        wrappers = {}
        for name in WRAPPER_STATE:
            try:
                wrappers[name] = vec.get_attr(name, indices=i)[0]
            except AttributeError:
                continue
        states.append({"env": env_state, "wrappers": wrappers})
    return states


def checkpoint_path(directory: Path, phase: str, num_timesteps: int) -> Path:
    return Path(directory) / f"{phase}_{num_timesteps:010d}{SUFFIX}"


def save_checkpoint(model: PPO, path: Path, meta: dict[str, Any]) -> Path:
    """Write a resumable checkpoint of ``model`` (call at a rollout boundary). ``meta``: the run's
    phase, env id, number of envs and seed (the ``run`` section a resuming run must match)."""
    vec = model.get_env()
    assert vec is not None
    state = {
        "policy": model.policy.state_dict(),
        "optimizer": model.policy.optimizer.state_dict(),
        "loop": {"num_timesteps": int(model.num_timesteps), "n_updates": int(model._n_updates),
                 "episode_num": int(model._episode_num),
                 "current_progress_remaining": float(model._current_progress_remaining),
                 "last_obs": model._last_obs, "last_episode_starts": model._last_episode_starts,
                 "ep_info_buffer": list(model.ep_info_buffer or []),
                 "ep_success_buffer": list(model.ep_success_buffer or [])},
        "envs": _env_states(vec),
        "rng": ckpt.rng_state(),
    }
    return ckpt.save(path, state, kind=KIND, version=VERSION,
                     config={"run": dict(meta), "model": model_config(model)})


def restore_checkpoint(model: PPO, path: Path, expect: dict[str, Any] | None = None) -> PPO:
    """Continue ``model`` (built from the run's config, not trained yet) from the checkpoint at
    ``path``. The file is checked first (format, integrity, ``model`` section, and ``run`` section
    against ``expect`` when given); a mismatch raises :class:`~streammoe.checkpoint.CheckpointError`
    (a ``ValueError``) before ``model`` changes."""
    match = {"model": model_config(model)}
    if expect is not None:
        match["run"] = dict(expect)
    state = ckpt.load(path, kind=KIND, version=VERSION, label=LABEL, match=match, hints=HINTS).state
    vec = model.get_env()
    assert vec is not None
    if len(state["envs"]) != vec.num_envs:
        raise ckpt.CheckpointError(f"{path} holds {len(state['envs'])} envs, this run has {vec.num_envs}")
    loop = state["loop"]
    model.policy.load_state_dict(state["policy"])
    model.policy.optimizer.load_state_dict(state["optimizer"])
    model.num_timesteps = int(loop["num_timesteps"])
    model._n_updates = int(loop["n_updates"])
    model._episode_num = int(loop["episode_num"])
    model._current_progress_remaining = float(loop["current_progress_remaining"])
    model._last_obs = loop["last_obs"]
    model._last_episode_starts = loop["last_episode_starts"]
    model.ep_info_buffer = deque(loop["ep_info_buffer"], maxlen=model._stats_window_size)
    model.ep_success_buffer = deque(loop["ep_success_buffer"], maxlen=model._stats_window_size)
    for i, env in enumerate(state["envs"]):
        vec.env_method("load_state_dict", env["env"], indices=i)
        for name, value in env["wrappers"].items():
            vec.env_method("set_wrapper_attr", name, value, indices=i)
        # Gymnasium's passive checker compares the first two steps' data (a warning only); it
        # did so before the checkpoint was written.
        vec.env_method("set_wrapper_attr", "checked_data_reuse", True, force=False, indices=i)
    vec._reset_seeds()  # PPO(seed=...) queued seeds for a first reset that a resumed run never does
    vec._reset_options()
    ckpt.set_rng_state(state["rng"])  # last: building the model reseeded the global RNGs
    return model


def latest_checkpoint(directory: Path | None, phase: str) -> Path | None:
    """The checkpoint of ``phase`` with the most env steps in ``directory`` (None if none). A
    folder that holds only an older streammoe's pickle checkpoints of ``phase`` is an error."""
    if directory is None or not Path(directory).is_dir():
        return None
    found = _numbered(Path(directory), phase, SUFFIX)
    if found:
        return max(found)[1]
    legacy = _numbered(Path(directory), phase, LEGACY_SUFFIX)
    if legacy:
        ckpt.refuse_legacy(checkpoint_path(directory, phase, max(legacy)[0]), max(legacy)[1], LABEL)
    return None


def _numbered(directory: Path, phase: str, suffix: str) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^{re.escape(phase)}_(\d+){re.escape(suffix)}$")
    return [(int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name))]


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
    if not path.is_dir() or not any(path.glob(f"*{SUFFIX}")):
        legacy = sorted(path.glob(f"*{LEGACY_SUFFIX}")) if path.is_dir() else []
        if legacy:
            ckpt.refuse_legacy(legacy[-1].with_suffix(SUFFIX), legacy[-1], LABEL)
        raise FileNotFoundError(f"resume={resume!r}: no checkpoints (*{SUFFIX}) in {path}")
    return path


def resume_or_build(resume_dir: Path | None, meta: dict[str, Any], build: Callable[[], PPO]) -> PPO:
    """``build()`` the run's model; continue it from the latest checkpoint of ``meta["phase"]`` in
    ``resume_dir`` if there is one."""
    path = latest_checkpoint(resume_dir, meta["phase"])
    model = build()
    if path is None:
        if resume_dir is not None:
            print(f"[skillblend] no {meta['phase']} checkpoint in {resume_dir}: starting from scratch", flush=True)
        return model
    try:
        restore_checkpoint(model, path, expect=meta)
    except Exception:
        model.get_env().close()
        raise
    print(f"[skillblend] resuming {meta['phase']} from {path} ({model.num_timesteps} env steps done)", flush=True)
    return model


def keep_earlier_curve(run_dir: Path, resume: Any) -> None:
    """A run resumed in its own directory would rewrite metrics.csv: keep the earlier rows."""
    csv_path = Path(run_dir) / "metrics.csv"
    if resume is not None and csv_path.is_file():
        n = len(list(Path(run_dir).glob("metrics_before_resume*.csv")))
        shutil.copy2(csv_path, Path(run_dir) / f"metrics_before_resume{n or ''}.csv")


class PeriodicCheckpoint(BaseCallback):
    """Save a checkpoint after every ``every``-th rollout of the run (at the start of the next
    one, when the update is done and nothing new has been drawn) and at the end of training; keep
    the last ``keep``. Rollouts are counted from the start of the run, so a resumed run saves at
    the same env steps as an uninterrupted one. (Not SB3's ``CheckpointCallback``, which saves
    model zips only.)"""

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
        phase = self.meta["phase"]
        path = save_checkpoint(self.model, checkpoint_path(self.directory, phase, self.model.num_timesteps),
                               self.meta)
        for _, stale in sorted(_numbered(self.directory, phase, SUFFIX))[:-self.keep]:
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
