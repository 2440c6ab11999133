"""Tasks that need two or more skills (walk *and* reach), each with one or two reward terms.

Observation = ``[proprioception, task features]`` with task features in the base frame, so a
blender can turn them into skill goals. ``info["error"]`` is the task's error (the evaluation
reports it at the last step), ``info["success"]`` whether the task is done.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from streammoe_envs.skillblend.base import MobileManipulatorEnv


class FarReachEnv(MobileManipulatorEnv):
    """Touch a point in the air 1.5-3 m away: out of the arm's range from the start.
    Reward: ``exp(-|hand - target|)`` (one term). Success: within 5 cm."""

    xml_file = "far_reach.xml"
    extra_dim = 5
    goal_first = False
    task_state_attrs = ("target",)
    success_threshold = 0.05

    def _reset_task(self) -> None:
        dist = self.np_random.uniform(1.5, 3.0)
        angle = self.np_random.uniform(-np.pi, np.pi)
        self.target = np.array([*(self.base_xy + dist * np.array([np.cos(angle), np.sin(angle)])),
                                self.np_random.uniform(0.3, 1.0)])
        self.data.mocap_pos[0] = self.target

    def _extra_obs(self) -> np.ndarray:
        return self.point_features(self.target)

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        error = float(np.linalg.norm(self.ee_pos - self.target))
        return float(np.exp(-error)), {"error": error, "success": error < self.success_threshold}


class ButtonEnv(MobileManipulatorEnv):
    """Press a spring-loaded button on a wall 2-3 m ahead (the wall blocks the base).
    Reward: ``exp(-|hand - button face|) + pressed`` (two terms), ``pressed`` being 1 while the
    button is in by 1 cm or more (``press_reward="hold"``: it pays for holding the press).
    Success: pressed 1 cm in at any point of the episode (latched)."""

    xml_file = "button.xml"
    extra_dim = 6
    goal_first = False
    press_depth = 0.01
    press_reward = "hold"  # "hold": the press term pays while the button is in; "latched": from the first press on
    task_state_attrs = ("pressed", "button_pos")

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._button_body = self.model.body("button").id
        self._button_q = int(self.model.joint("button").qposadr[0])
        self._wall_half = float(self.model.geom("wall").size[0])
        self._button_half = float(self.model.geom("button").size[1])

    def _reset_task(self) -> None:
        # The base starts facing the wall (+x) give or take 45 degrees.
        q = self.data.qpos.copy()
        q[self._qpos_idx["base_yaw"]] = self.np_random.uniform(-np.pi / 4, np.pi / 4)
        self.set_state(q, self.data.qvel.copy())
        wall_x = self.np_random.uniform(2.0, 3.0)
        self.data.mocap_pos[0] = [wall_x, 0.0, 0.75]
        face_x = wall_x - self._wall_half
        self.button_pos = np.array([face_x - self._button_half, self.np_random.uniform(-1.0, 1.0),
                                    self.np_random.uniform(0.5, 0.9)])
        self.model.body_pos[self._button_body] = self.button_pos
        self.pressed = False

    def _after_task_state(self) -> None:
        self.model.body_pos[self._button_body] = self.button_pos  # the button moves with each episode

    @property
    def button_face(self) -> np.ndarray:
        return self.data.xpos[self._button_body] - np.array([self._button_half, 0.0, 0.0])

    def _extra_obs(self) -> np.ndarray:
        return np.concatenate([self.point_features(self.button_face), [self.data.qpos[self._button_q]]])

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        depth = float(self.data.qpos[self._button_q])
        self.pressed = self.pressed or depth > self.press_depth
        error = float(np.linalg.norm(self.ee_pos - self.button_face))
        pressed_term = float(self.pressed) if self.press_reward == "latched" else float(depth > self.press_depth)
        return float(np.exp(-error) + pressed_term), {"error": error, "success": self.pressed}


class ButtonLatchedEnv(ButtonEnv):
    """:class:`ButtonEnv` whose press term, once the button has been pressed, pays every step
    whether or not the button is still held in (``press_reward="latched"``): the same return for
    pressing and holding, nothing for pushing on after the press. Under the holding reward the
    learned blender kept driving the base into the wall after the press (docs/skillblender.md,
    Results: the button's tilt)."""

    press_reward = "latched"


class BoxPushEnv(MobileManipulatorEnv):
    """Push a low box 1-2 m away onto a goal patch 0.6-1 m beyond it. The chassis hovers over the
    box, so only the hand can push it (the box is tall enough for the lowest hand, 0.14 m, to hit
    its side; it slides on planar joints and cannot tip).

    Task features (11): box - hand (3), box - base (2), goal - box (2), the box's velocity (2) and
    its yaw relative to the base as ``sin, cos(4 yaw)`` (2; the box is square, so a quarter turn
    looks the same). Without the last four a memoryless policy cannot steer a box that slides
    along the contact normal and spins (``diagnose.py``'s box push probe).

    Reward: ``exp(-2|box - goal|) + 0.5 exp(-2|hand - push point|)`` (two terms), the push point
    being where the hand meets the box's side *away from the goal*
    (:meth:`push_point`): a hand on the wrong side earns less than one behind the box.
    Success: box centre within 10 cm of the goal."""

    xml_file = "box_push.xml"
    extra_dim = 11
    goal_first = False
    task_state_attrs = ("goal_xy",)
    success_threshold = 0.1
    push_standoff = 0.155  # box half width 0.12 + hand radius 0.035: the hand touching the box's back face

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._box_q = [int(self.model.joint(j).qposadr[0]) for j in ("box_x", "box_y", "box_yaw")]
        self._box_v = [int(self.model.joint(j).dofadr[0]) for j in ("box_x", "box_y", "box_yaw")]
        self._box_half_height = float(self.model.geom("box").size[2])

    def _reset_task(self) -> None:
        q, v = self.data.qpos.copy(), self.data.qvel.copy()
        angle = self.np_random.uniform(-np.pi, np.pi)
        box_xy = self.base_xy + self.np_random.uniform(1.0, 2.0) * np.array([np.cos(angle), np.sin(angle)])
        q[self._box_q] = [*box_xy, 0.0]
        v[self._box_v] = 0.0
        self.set_state(q, v)
        push = angle + self.np_random.uniform(-np.pi / 3, np.pi / 3)  # roughly away from the robot
        self.goal_xy = box_xy + self.np_random.uniform(0.6, 1.0) * np.array([np.cos(push), np.sin(push)])
        self.data.mocap_pos[0] = [*self.goal_xy, 0.005]

    @property
    def box_pos(self) -> np.ndarray:
        return np.array([*self.data.qpos[self._box_q[:2]], self._box_half_height])

    @property
    def push_point(self) -> np.ndarray:
        """Where the hand touches the box's side away from the goal, at the box's mid height:
        ``box - push_standoff * u`` with ``u = (goal - box) / max(|goal - box|, success_threshold)``,
        so it slides into the box's centre once the box is within the success radius (no
        direction to push any more)."""
        box = self.box_pos
        to_goal = self.goal_xy - box[:2]
        u = to_goal / max(float(np.linalg.norm(to_goal)), self.success_threshold)
        return np.array([*(box[:2] - self.push_standoff * u), box[2]])

    def _extra_obs(self) -> np.ndarray:
        box = self.box_pos
        box_yaw = float(self.data.qpos[self._box_q[2]]) - self.base_yaw
        return np.concatenate([self.point_features(box), self.to_base_frame(self.goal_xy - box[:2]),
                               self.to_base_frame(self.data.qvel[self._box_v[:2]]),
                               [np.sin(4.0 * box_yaw), np.cos(4.0 * box_yaw)]])

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        box = self.box_pos
        error = float(np.linalg.norm(box[:2] - self.goal_xy))
        reach = float(np.linalg.norm(self.ee_pos - self.push_point))
        reward = np.exp(-2.0 * error) + 0.5 * np.exp(-2.0 * reach)
        return float(reward), {"error": error, "success": error < self.success_threshold}
