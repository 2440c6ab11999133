"""Primitive-skill environments: goal-conditioned, task-agnostic, goals as difference vectors.

Observation = ``[goal, proprioception]``. Rewards are ``exp(-k * |error|)`` plus regularisers
(smoothness, tilt, and keeping the joints the skill does not need still).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from envs.skillblend.base import ARM_DEFAULT, MobileManipulatorEnv, yaw_rotation


def wrap_angle(a: float) -> float:
    return float((a + np.pi) % (2 * np.pi) - np.pi)


class WalkEnv(MobileManipulatorEnv):
    """Base locomotion to a displacement goal ``(dx, dy, dyaw)``: target pose minus current pose,
    in the base frame. The arm should hold its default pose."""

    extra_dim = 3
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


class ReachEnv(MobileManipulatorEnv):
    """Arm reaching to an end-effector goal: hand position minus target position, in the base
    frame. Targets are sampled by forward kinematics of random arm poses, so all are reachable.
    The base should stay put."""

    extra_dim = 3
    low_pose_share = 0.35      # share of episodes whose pose has the shoulder pitched forward
    low_pose_min_pitch = 1.2   # rad; the pitch limit is 1.6
    goal_low = np.array([-1.2, -1.2, -1.0])
    goal_high = np.array([1.2, 1.2, 1.0])

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

    def goal(self) -> np.ndarray:
        return self.to_base_frame(self.ee_pos - self.target)

    def _extra_obs(self) -> np.ndarray:
        return self.goal()

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        error = float(np.linalg.norm(self.goal()))
        base_speed = float(np.square(self.data.qvel[self._act_v[:3]]).mean())
        reward = np.exp(-4.0 * error) - 0.2 * base_speed + self._regularisers(action)
        return reward, {"error": error, "success": error < 0.05}
