"""Primitive-skill environments: goal-conditioned, task-agnostic; goals are difference vectors,
except the velocity walker's, which is a velocity command (as the paper's walking skill).

Observation = ``[goal, proprioception]``. Rewards are ``exp(-k * |error|)`` plus regularisers
(smoothness, tilt, and keeping the joints the skill does not need still).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np
from streammoe_envs.skillblend.base import ARM_DEFAULT, MobileManipulatorEnv, yaw_rotation


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class WalkEnv(MobileManipulatorEnv):
    """Base locomotion to a displacement goal ``(dx, dy, dyaw)``: target pose minus current pose,
    in the base frame. The arm should hold its default pose."""

    extra_dim = 3
    task_state_attrs = ("target_xy", "target_yaw")
    goal_low = np.array([-2.5, -2.5, -np.pi])
    goal_high = np.array([2.5, 2.5, np.pi])

    def _reset_task(self) -> None:
        radius = 2.5 * np.sqrt(self.np_random.uniform())
        angle = self.np_random.uniform(-np.pi, np.pi)
        self.target_xy = self.base_xy + radius * np.array([np.cos(angle), np.sin(angle)])
        self.target_yaw = wrap_angle(self.base_yaw + self.np_random.uniform(-np.pi, np.pi))
        self.data.mocap_pos[0] = [*self.target_xy, 0.05]

    def goal(self) -> np.ndarray:
        dxy = yaw_rotation(self.base_yaw).T @ (self.target_xy - self.base_xy)
        return np.array([*dxy, wrap_angle(self.target_yaw - self.base_yaw)])

    def _extra_obs(self) -> np.ndarray:
        return self.goal()

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        g = self.goal()
        error = float(np.linalg.norm(g[:2]) + 0.3 * abs(g[2]))
        arm_dev = float(np.square(self.data.qpos[self._arm_q] - ARM_DEFAULT).mean())
        reward = np.exp(-2.0 * error) - 0.2 * arm_dev + self._regularisers(action)
        return reward, {"error": error, "success": error < 0.1}


class WalkVelocityEnv(MobileManipulatorEnv):
    """Base locomotion to a velocity command ``(vx, vy, yaw rate)`` in the base frame (the
    paper's walking goal). The command changes once or twice per episode and is zero in a
    quarter of the segments, so the skill learns to start, change pace and stop. The arm should
    hold its default pose."""

    extra_dim = 3
    task_state_attrs = ("_switch_at", "_steps", "command")
    goal_low = np.array([-1.0, -1.0, -1.5])
    goal_high = np.array([1.0, 1.0, 1.5])
    zero_share = 0.25  # share of command segments that ask the base to stand still

    def _reset_task(self) -> None:
        # Steps at which the command changes; beyond the episode length means never.
        self._switch_at = sorted(self.np_random.integers(20, 140, size=2).tolist())
        self._steps = 0
        self._new_command()

    def _new_command(self) -> None:
        if self.np_random.uniform() < self.zero_share:
            self.command = np.zeros(3)
        else:
            self.command = self.np_random.uniform(self.goal_low, self.goal_high)
        self.data.mocap_pos[0] = [*self.base_xy, -1.0]  # no marker: the goal is not a place

    def goal(self) -> np.ndarray:
        """The current velocity command (vx, vy, yaw rate), base frame."""
        return self.command.copy()

    def _extra_obs(self) -> np.ndarray:
        return self.goal()

    def velocity_error(self) -> float:
        """|base velocity - command| + 0.3 |yaw rate - commanded yaw rate|."""
        diff = self.base_velocity - self.command
        return float(np.linalg.norm(diff[:2]) + 0.3 * abs(diff[2]))

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        error = self.velocity_error()
        arm_dev = float(np.square(self.data.qpos[self._arm_q] - ARM_DEFAULT).mean())
        reward = np.exp(-2.0 * error) - 0.2 * arm_dev + self._regularisers(action)
        self._steps += 1
        if self._switch_at and self._steps >= self._switch_at[0]:
            self._switch_at.pop(0)
            self._new_command()
        return reward, {"error": error, "success": error < 0.1}


class ReachEnv(MobileManipulatorEnv):
    """Arm reaching to an end-effector goal: hand position minus target position, in the base
    frame. Targets are sampled by forward kinematics of random arm poses, so all are reachable.
    The base should stay put."""

    extra_dim = 3
    task_state_attrs = ("target", "goal_distortion_matrix")
    low_pose_share = 0.35      # share of episodes whose pose has the shoulder pitched forward
    low_pose_min_pitch = 1.2   # rad; the pitch limit is 1.6
    goal_low = np.array([-1.2, -1.2, -1.0])
    goal_high = np.array([1.2, 1.2, 1.0])

    def __init__(self, goal_distortion_gain: float = 1.0, goal_distortion_cross: float = 0.3,
                 **kwargs: Any) -> None:
        """``goal_distortion_gain`` > 1 trains on distorted goals (:meth:`_sample_goal_distortion`)."""
        if not goal_distortion_gain >= 1.0 or not goal_distortion_cross >= 0.0:
            raise ValueError("goal_distortion_gain must be >= 1 and goal_distortion_cross >= 0, got "
                             f"{goal_distortion_gain} / {goal_distortion_cross}")
        self.goal_distortion_gain = float(goal_distortion_gain)
        self.goal_distortion_cross = float(goal_distortion_cross)
        self.goal_distortion_matrix = np.eye(3)
        super().__init__(**kwargs)

    def _reset_task(self) -> None:
        q = self.data.qpos.copy()
        # Poses from the arm's whole joint range; in a `low_pose_share` of the episodes the
        # shoulder is pitched forward (>= `low_pose_min_pitch`), which puts the hand low. The box
        # push needs the hand low ahead of the base: uniform poses put it below 0.3 m in 2.6 % of
        # episodes, this mix in ~9 %.
        lo, hi = self._arm_range.T.copy()
        if self.np_random.uniform() < self.low_pose_share:
            lo[1] = self.low_pose_min_pitch
        for _ in range(100):  # rejection-sample a pose whose hand clears the floor and chassis
            self.data.qpos[self._arm_q] = self.np_random.uniform(lo, hi)
            mujoco.mj_kinematics(self.model, self.data)
            local = self.to_base_frame(self.ee_pos - np.array([*self.base_xy, 0.0]))
            inside_chassis = abs(local[0]) < 0.32 and abs(local[1]) < 0.27 and local[2] < 0.5
            if local[2] > 0.12 and not inside_chassis:
                break
        self.target = self.ee_pos
        self.data.qpos[:] = q
        self.data.mocap_pos[0] = self.target
        self.goal_distortion_matrix = self._sample_goal_distortion()

    def _sample_goal_distortion(self) -> np.ndarray:
        """The skill sees ``M @ goal``: per-axis gains log-uniform in [1/g, g] plus cross-terms
        up to ``goal_distortion_cross`` (``goal_distortion_gain`` = 1: the identity, cross-terms
        ignored). A blender's goal is a learned, slightly wrong function of the state; a skill
        trained only on exact difference vectors can be driven into a limit cycle by it
        (docs/skillblender.md). M only changes how the goal approaches 0, not where: the skill
        still stops at the target."""
        g = self.goal_distortion_gain
        if g == 1.0:  # off, and no random draws: default episodes are unchanged
            return np.eye(3)
        m = self.np_random.uniform(-self.goal_distortion_cross, self.goal_distortion_cross, size=(3, 3))
        np.fill_diagonal(m, np.exp(self.np_random.uniform(-np.log(g), np.log(g), size=3)))
        return m

    def goal(self) -> np.ndarray:
        """The true difference vector, hand minus target, in the base frame."""
        return self.to_base_frame(self.ee_pos - self.target)

    def _extra_obs(self) -> np.ndarray:
        return self.goal_distortion_matrix @ self.goal()

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        error = float(np.linalg.norm(self.goal()))
        base_speed = float(np.square(self.data.qvel[self._act_v[:3]]).mean())
        reward = np.exp(-4.0 * error) - 0.2 * base_speed + self._regularisers(action)
        return reward, {"error": error, "success": error < 0.05}
