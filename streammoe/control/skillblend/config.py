"""Schemas of ``experiment=skillblend`` / ``skillblend_smoke`` (:class:`SkillBlendExperiment`) and
``experiment=skillblend_skills`` (:class:`SkillTrainingExperiment`), see :mod:`streammoe.config`
for how schemas are registered and checked.

The PPO blocks (``skillblend.ppo``, ``skillblend.skills.ppo``; ``conf/skillblend/ppo/``) are typed
with the SB3 PPO arguments the configs set; another SB3 argument is a new field here (composition
rejects an unknown key, and :func:`streammoe.config.validate` a ``+key``).
``skillblend.skills.env_kwargs.<skill>`` stays free-form: the skill env's constructor arguments.

``device`` places the SB3 models (skills, blender, flat PPO): ``auto`` takes CUDA when torch sees
a GPU, ``cuda`` without one is an error.
"""

from __future__ import annotations

import math
import multiprocessing
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING, DictConfig

from streammoe.config import (
    ConfigError,
    RootConfig,
    at_least,
    greater_than,
    in_range,
    non_empty,
    one_of,
    validate,
)

__all__ = ["METHODS", "VEC_ENVS", "PPOSettings", "SkillBlendConfig", "SkillBlendExperiment",
           "SkillTrainingConfig", "SkillTrainingExperiment", "SkillsConfig", "goal_gain_for", "validated",
           "validated_skills"]

METHODS = ("blend", "hard", "flat")
VEC_ENVS = ("dummy", "subproc")  # SB3 DummyVecEnv (one process) | SubprocVecEnv (one process per env)


@dataclass
class PPOSettings:
    """``conf/skillblend/ppo/*.yaml`` and ``skills.ppo``: SB3 PPO arguments (``net_arch`` and
    ``log_std_init`` go to the policy)."""

    n_steps: int = MISSING          # per env
    batch_size: int = MISSING
    n_epochs: int = MISSING
    learning_rate: float = MISSING
    gamma: float = MISSING
    gae_lambda: float = MISSING
    clip_range: float = MISSING
    ent_coef: float = MISSING
    max_grad_norm: float = MISSING
    net_arch: list[int] = MISSING
    log_std_init: float = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}n_steps", self.n_steps, 1)
        at_least(f"{at}batch_size", self.batch_size, 1)
        at_least(f"{at}n_epochs", self.n_epochs, 1)
        greater_than(f"{at}learning_rate", self.learning_rate, 0.0)
        in_range(f"{at}gamma", self.gamma, 0.0, 1.0)
        in_range(f"{at}gae_lambda", self.gae_lambda, 0.0, 1.0)
        greater_than(f"{at}clip_range", self.clip_range, 0.0)
        at_least(f"{at}ent_coef", self.ent_coef, 0.0)
        greater_than(f"{at}max_grad_norm", self.max_grad_norm, 0.0)
        for i, width in enumerate(self.net_arch):
            at_least(f"{at}net_arch[{i}]", width, 1)


def _check_run_sizes(obj: Any, at: str) -> None:
    """Keys a skill run and a task run share (n_envs, episode_steps, evaluation, checkpoints)."""
    at_least(f"{at}n_envs", obj.n_envs, 1)
    if obj.episode_steps is not None:
        at_least(f"{at}episode_steps", obj.episode_steps, 1)
    at_least(f"{at}eval_episodes", obj.eval_episodes, 1)
    at_least(f"{at}checkpoint_every", obj.checkpoint_every, 0)
    at_least(f"{at}video_episodes", obj.video_episodes, 0)
    if obj.n_envs * obj.ppo.n_steps < 2:
        raise ConfigError(f"{at}n_envs * {at}ppo.n_steps must be > 1 (SB3 PPO), got "
                          f"{obj.n_envs} * {obj.ppo.n_steps}")


@dataclass
class SkillsConfig:
    """``conf/skillblend/skills/*.yaml``: which skills, and how to train the missing ones."""

    names: list[str] = MISSING                   # in the blender's order
    timesteps: dict[str, int] = MISSING          # per skill
    env_kwargs: dict[str, dict[str, Any]] = MISSING  # per skill: its env's constructor arguments
    n_envs: int = MISSING
    episode_steps: int | None = MISSING          # None: the env's registered length
    eval_episodes: int = MISSING
    checkpoint_every: int = MISSING              # rollouts between PPO checkpoints (0: off)
    resume: str | None = MISSING                 # None | auto | a run or checkpoints dir
    video_episodes: int = MISSING                # 0: no MP4
    ppo: PPOSettings = MISSING

    def check(self, at: str) -> None:
        from streammoe_envs.skillblend import (
            SKILL_ENVS,  # MuJoCo: imported at check time, not at CLI start
        )

        non_empty(f"{at}names", self.names)
        for i, name in enumerate(self.names):
            one_of(f"{at}names[{i}]", name, SKILL_ENVS)
            if name not in self.timesteps:
                raise ConfigError(f"{at}timesteps.{name} is missing: every skill in {at}names needs "
                                  "its training budget")
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"{at}names must not repeat a skill, got {self.names}")
        for node in ("timesteps", "env_kwargs"):
            for name in getattr(self, node):
                if name not in SKILL_ENVS:
                    raise ConfigError(f"{at}{node}.{name}: no skill is named {name!r}; skills: "
                                      f"{', '.join(SKILL_ENVS)}")
        for name, steps in self.timesteps.items():
            at_least(f"{at}timesteps.{name}", steps, 1)
        _check_run_sizes(self, at)


@dataclass
class SkillBlendConfig:
    """``cfg.skillblend`` of ``experiment=skillblend``: one policy on one task."""

    task: str = MISSING
    method: str = MISSING              # blend | hard | flat
    skills_dir: str | None = MISSING   # None: train the skills into <run dir>/skills
    timesteps: int = MISSING
    n_envs: int = MISSING
    threads: int = MISSING
    episode_steps: int | None = MISSING
    gate_temperature: float = MISSING
    blender_sees_rates: bool = MISSING
    goal_gain: float | None = MISSING  # None: goal_gain_by_task[task]
    goal_gain_by_task: dict[str, float] = MISSING
    eval_episodes: int = MISSING
    curve_at: list[int] = MISSING      # env steps of the learning curve's evaluations (before timesteps)
    vec_env: str = MISSING             # dummy | subproc
    tilt_limit: float = MISSING        # rad; an episode tilting more is infeasible (feasible_rate)
    checkpoint_every: int = MISSING
    resume: str | None = MISSING
    video_episodes: int = MISSING
    skills: SkillsConfig = MISSING
    ppo: PPOSettings = MISSING

    def check(self, at: str) -> None:
        from streammoe_envs.skillblend import (
            TASK_ENVS,  # MuJoCo: imported at check time, not at CLI start
        )

        one_of(f"{at}task", self.task, TASK_ENVS)
        one_of(f"{at}method", self.method, METHODS)
        at_least(f"{at}timesteps", self.timesteps, 1)
        at_least(f"{at}threads", self.threads, 1)
        greater_than(f"{at}gate_temperature", self.gate_temperature, 0.0)
        if self.goal_gain is not None:
            greater_than(f"{at}goal_gain", self.goal_gain, 0.0)
        for name, gain in self.goal_gain_by_task.items():
            one_of(f"{at}goal_gain_by_task key", name, TASK_ENVS)
            greater_than(f"{at}goal_gain_by_task.{name}", gain, 0.0)
        if self.goal_gain is None and self.task not in self.goal_gain_by_task:
            raise ConfigError(f"{at}goal_gain is null but {at}goal_gain_by_task has no entry for task "
                              f"{self.task!r}; add {at}goal_gain_by_task.{self.task}=<gain> or set {at}goal_gain")
        one_of(f"{at}vec_env", self.vec_env, VEC_ENVS)
        if self.vec_env == "subproc" and "fork" not in multiprocessing.get_all_start_methods():
            raise ConfigError(f"{at}vec_env=subproc needs the fork start method (Linux, macOS); "
                              f"use {at}vec_env=dummy")
        in_range(f"{at}tilt_limit", self.tilt_limit, 0.0, math.pi / 2, low_open=True)
        for i, steps in enumerate(self.curve_at):
            if not 1 <= steps < self.timesteps:
                raise ConfigError(f"{at}curve_at[{i}] must be in [1, {at}timesteps={self.timesteps}), got "
                                  f"{steps}: the final evaluation covers the budget itself; drop the point "
                                  f"or raise {at}timesteps")
            if i and steps <= self.curve_at[i - 1]:
                raise ConfigError(f"{at}curve_at must increase, got {list(self.curve_at)}")
        _check_run_sizes(self, at)


def goal_gain_for(c: Any) -> float:
    """The goal squash's slope for ``c.task`` (``c``: a checked ``cfg.skillblend``):
    ``c.goal_gain`` when set, else ``c.goal_gain_by_task[c.task]``."""
    return float(c.goal_gain if c.goal_gain is not None else c.goal_gain_by_task[c.task])


@dataclass
class SkillBlendExperiment(RootConfig):
    """Schema ``schema/skillblend``."""

    skillblend: SkillBlendConfig = MISSING


@dataclass
class SkillTrainingConfig:
    """``cfg.skillblend`` of ``experiment=skillblend_skills``: the skills alone."""

    threads: int = MISSING
    skills: SkillsConfig = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}threads", self.threads, 1)


@dataclass
class SkillTrainingExperiment(RootConfig):
    """Schema ``schema/skillblend_skills``."""

    skillblend: SkillTrainingConfig = MISSING


def validated(cfg: DictConfig) -> SkillBlendExperiment:
    """``cfg`` checked against :class:`SkillBlendExperiment` (first line of ``run``)."""
    return validate(cfg, SkillBlendExperiment)


def validated_skills(cfg: DictConfig) -> SkillTrainingExperiment:
    """``cfg`` checked against :class:`SkillTrainingExperiment` (first line of ``train_skills``)."""
    return validate(cfg, SkillTrainingExperiment)
