"""Task families for in-context RL (T2MIR): Point-Robot and Cheetah-Vel.

A *task family* is one environment whose reward depends on a hidden task parameter (a goal or a
target velocity). The agent never observes the task; it has to infer it from rewards.

* ``streammoe/PointRobot-v0``: a 2-D point starting at the origin; action in ``[-1, 1]^2`` is
  scaled by 0.1 and added to the position; reward ``-||s - g||``; 20 steps. Goals lie on the upper
  unit semicircle.
* ``streammoe/CheetahVel-v0``: Gymnasium's ``HalfCheetah-v5`` with reward
  ``-|v - v*| - 0.05 ||a||^2`` for a target forward velocity ``v*`` in ``[0, 3]``; 200 steps.

The task is set either on construction (``gym.make(id, goal=(x, y))`` /
``gym.make(id, target_velocity=1.5)``) or at reset (``env.reset(options={"task": value})``); a
task given at reset stays until another one is given. ``task_family(name, ...)`` returns
train and held-out test task sets drawn from one ``task_seed``, independent of the run seed.

>>> import gymnasium as gym
>>> env = gym.make("streammoe/PointRobot-v0", goal=(0.0, 1.0))
>>> obs, _ = env.reset(seed=0)
>>> obs.tolist()
[0.0, 0.0]
>>> round(float(env.step([0.0, 1.0])[1]), 3)  # moved 0.1 towards the goal
-0.9
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
from streammoe_envs import CHEETAH_VEL_ID, POINT_ROBOT_ID

__all__ = [
    "CHEETAH_VEL_ID",
    "POINT_ROBOT_ID",
    "CheetahVelEnv",
    "PointRobotEnv",
    "TaskFamily",
    "make_task_env",
    "task_family",
]



class PointRobotEnv(gym.Env):
    """2-D point robot navigating to a hidden goal; see the module docstring."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, goal: tuple[float, float] | np.ndarray = (1.0, 0.0), horizon: int = 20,
                 action_scale: float = 0.1, render_mode: str | None = None) -> None:
        self.horizon, self.action_scale, self.render_mode = int(horizon), float(action_scale), render_mode
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.set_task(goal)
        self._pos = np.zeros(2, np.float32)
        self._t = 0

    @property
    def task(self) -> np.ndarray:
        return self._goal.copy()

    def set_task(self, goal: Any) -> None:
        goal = np.asarray(goal, dtype=np.float32).reshape(-1)
        if goal.shape != (2,) or not np.all(np.isfinite(goal)):
            raise ValueError(f"PointRobot goal must be 2 finite numbers, got {goal!r}")
        self._goal = goal

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if options and "task" in options:
            self.set_task(options["task"])
        self._pos = np.zeros(2, np.float32)
        self._t = 0
        return self._pos.copy(), {"task": self.task}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (2,) or not np.all(np.isfinite(a)):
            raise ValueError(f"PointRobot action must be 2 finite numbers, got {action!r}")
        self._pos = (self._pos + self.action_scale * np.clip(a, -1.0, 1.0)).astype(np.float32)
        self._t += 1
        reward = -float(np.linalg.norm(self._pos - self._goal))
        return self._pos.copy(), reward, False, self._t >= self.horizon, {"task": self.task}

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        size = 128
        img = np.full((size, size, 3), 255, np.uint8)

        def px(p: np.ndarray) -> tuple[int, int]:  # world [-1.5, 1.5]^2 -> pixels, y up
            c = np.clip(((p + 1.5) / 3.0 * (size - 1)).astype(int), 0, size - 1)
            return size - 1 - c[1], c[0]

        for p, colour in ((self._goal, (0, 160, 0)), (self._pos, (200, 0, 0))):
            r, c = px(p)
            img[max(r - 3, 0): r + 4, max(c - 3, 0): c + 4] = colour
        return img


class CheetahVelEnv(HalfCheetahEnv):
    """HalfCheetah-v5 rewarded for running at a hidden target velocity; see the module docstring."""

    def __init__(self, target_velocity: float = 1.0, ctrl_cost_weight: float = 0.05,
                 **kwargs: Any) -> None:
        super().__init__(ctrl_cost_weight=ctrl_cost_weight, **kwargs)
        self.set_task(target_velocity)

    @property
    def task(self) -> np.ndarray:
        return np.array([self._target_velocity], np.float32)

    def set_task(self, target_velocity: Any) -> None:
        v = np.asarray(target_velocity, dtype=np.float64).reshape(-1)
        if v.shape != (1,) or not np.isfinite(v[0]):
            raise ValueError(f"CheetahVel target velocity must be one finite number, got {target_velocity!r}")
        self._target_velocity = float(v[0])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if options and "task" in options:
            self.set_task(options["task"])
        obs, info = super().reset(seed=seed, options=options)
        return obs, {**info, "task": self.task}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        shape = self.action_space.shape
        if action.size != int(np.prod(shape)):
            raise ValueError(f"CheetahVel action must have {int(np.prod(shape))} entries (one per joint), "
                             f"got shape {action.shape}")
        action = action.reshape(shape)
        if not np.all(np.isfinite(action)):  # would poison the physics state and give a NaN reward
            raise ValueError(f"CheetahVel action contains NaN or inf: {action.tolist()}")
        obs, _, terminated, truncated, info = super().step(action)
        velocity = float(info["x_velocity"])
        ctrl = self._ctrl_cost_weight * float(np.square(action).sum())
        reward = -abs(velocity - self._target_velocity) - ctrl
        info.update(reward_velocity=-abs(velocity - self._target_velocity), reward_ctrl=-ctrl,
                    task=self.task)
        return obs, reward, terminated, truncated, info


@dataclass
class TaskFamily:
    """A registered env id, its episode length, and train / held-out test task parameters."""

    name: str
    env_id: str
    horizon: int
    train_tasks: np.ndarray  # (n_train, task_dim)
    test_tasks: np.ndarray  # (n_test, task_dim)
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def metadata_fps(self) -> int:
        """Frames per second for videos: 10 for Point-Robot, HalfCheetah's simulation rate."""
        return 10 if self.env_id == POINT_ROBOT_ID else 20

    def make_env(self, task: np.ndarray, render_mode: str | None = None) -> gym.Env:
        kwargs = dict(self.env_kwargs)
        if render_mode is not None:
            kwargs["render_mode"] = render_mode
        return make_task_env(self.env_id, task, self.horizon, **kwargs)


def make_task_env(env_id: str, task: np.ndarray, horizon: int, **kwargs: Any) -> gym.Env:
    """``gym.make`` one env of a family with its task set and episode length ``horizon``."""
    task = np.asarray(task, np.float32)
    if env_id == POINT_ROBOT_ID:
        return gym.make(env_id, goal=task, horizon=horizon, max_episode_steps=horizon, **kwargs)
    if env_id == CHEETAH_VEL_ID:
        return gym.make(env_id, target_velocity=float(task[0]), max_episode_steps=horizon, **kwargs)
    raise ValueError(f"unknown task-family env {env_id!r}; use {POINT_ROBOT_ID} or {CHEETAH_VEL_ID}")


def task_family(name: str, n_train: int, n_test: int, task_seed: int = 0,
                horizon: int | None = None) -> TaskFamily:
    """Train and held-out test tasks of ``point_robot`` or ``cheetah_vel``.

    Point-Robot goals are at angles drawn uniformly in ``[0, pi]`` on the unit circle; Cheetah-Vel
    training targets uniformly in ``[0, 3]`` and test targets one per equal stratum of ``[0, 3]``
    (spread over the range). The test tasks are the first ``n_test`` draws, so they never
    coincide with a training task, and growing ``n_train`` keeps the test set fixed.
    """
    if n_train < 1 or n_test < 1:
        raise ValueError(f"need at least one train and one test task, got {n_train}, {n_test}")
    rng = np.random.default_rng(task_seed)
    if name == "point_robot":
        test_angles = rng.uniform(0.0, np.pi, n_test)
        train_angles = rng.uniform(0.0, np.pi, n_train)
        def goals(a: np.ndarray) -> np.ndarray:
            return np.stack([np.cos(a), np.sin(a)], 1).astype(np.float32)
        return TaskFamily(name, POINT_ROBOT_ID, horizon or 20, goals(train_angles), goals(test_angles))
    if name == "cheetah_vel":
        # one test velocity per equal stratum of [0, 3], so the held-out set spans the range
        test_v = ((np.arange(n_test) + rng.uniform(0.0, 1.0, n_test)) * 3.0 / n_test).reshape(-1, 1)
        test_v = test_v.astype(np.float32)
        train_v = rng.uniform(0.0, 3.0, (n_train, 1)).astype(np.float32)
        return TaskFamily(name, CHEETAH_VEL_ID, horizon or 200, train_v, test_v)
    raise ValueError(f"unknown task family {name!r}; choose point_robot or cheetah_vel")
