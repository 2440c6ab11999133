"""The SkillBlender embodiment: a hovering holonomic base with passive roll/pitch suspension and a
3-DoF arm (``assets/robot.xml``), and the base class every skill and task env derives from.

Actions (6, in [-1, 1]) are velocity targets for every actuated joint: base forward/sideways
velocity *in the base frame* and yaw rate, then shoulder yaw, shoulder pitch and elbow rates. Every
skill and task shares this action space, so skills can be blended joint by joint.

Observations start with the same proprioception block (``PROPRIO_DIM`` numbers, see
:meth:`MobileManipulatorEnv.proprioception`): a skill env puts its goal *before* it, a task env its
task features *after* it. The blender policy relies on that layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco.mujoco_env import MujocoEnv

ASSETS = Path(__file__).resolve().parent / "assets"
ACTUATED_JOINTS = ("base_x", "base_y", "base_yaw", "shoulder_yaw", "shoulder_pitch", "elbow")
ARM_JOINTS = ACTUATED_JOINTS[3:]
ACTION_DIM = len(ACTUATED_JOINTS)
# Normalised action -> joint velocity target (m/s for the base, rad/s for the rest).
ACTION_SCALE = np.array([1.0, 1.0, 1.5, 2.0, 2.0, 2.0])
ARM_DEFAULT = np.zeros(3)  # upper arm up, forearm forward: hand 0.47 m ahead, 0.85 m high
# arm q - default (3), base velocity in base frame (vx, vy, yaw rate), arm qvel (3),
# chassis pitch/roll (2) and their rates (2), last action (6)
PROPRIO_DIM = 3 + 3 + 3 + 4 + ACTION_DIM
# Proprioception entries that change within a control step (velocities, rates, last action), as
# opposed to poses: base velocity and yaw rate, arm joint velocities, chassis rates, last action.
PROPRIO_RATES = (*range(3, 9), 11, 12, *range(13, PROPRIO_DIM))
DEFAULT_CAMERA = {"type": 1, "trackbodyid": 1, "distance": 5.0, "elevation": -35.0, "azimuth": 135.0}  # tracks the base


def yaw_rotation(yaw: float) -> np.ndarray:
    """2-D rotation matrix base frame -> world frame."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


class MobileManipulatorEnv(MujocoEnv):
    """Shared simulation, action mapping, proprioception and feasibility figures.

    Subclasses implement ``_reset_task()``, ``_extra_obs()`` (goal or task features) and
    ``_evaluate(action) -> (reward, info)`` where ``info`` holds ``error`` and ``success``.
    """

    metadata = {"render_modes": ["human", "rgb_array", "depth_array", "rgbd_tuple"], "render_fps": 25}
    xml_file = "skills.xml"
    extra_dim = 0
    goal_first = True  # skills: [goal, proprio]; tasks: [proprio, features]

    def __init__(self, render_mode: str | None = None, width: int = 320, height: int = 240,
                 frame_skip: int = 4) -> None:
        dim = PROPRIO_DIM + self.extra_dim
        obs_space = spaces.Box(-np.inf, np.inf, shape=(dim,), dtype=np.float64)
        super().__init__(str(ASSETS / self.xml_file), frame_skip, obs_space, render_mode=render_mode,
                         width=width, height=height, default_camera_config=DEFAULT_CAMERA)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        m = self.model
        self._qpos_idx = {j: int(m.joint(j).qposadr[0]) for j in (*ACTUATED_JOINTS, "chassis_pitch", "chassis_roll")}
        self._dof_idx = {j: int(m.joint(j).dofadr[0]) for j in (*ACTUATED_JOINTS, "chassis_pitch", "chassis_roll")}
        self._arm_q = [self._qpos_idx[j] for j in ARM_JOINTS]
        self._arm_v = [self._dof_idx[j] for j in ARM_JOINTS]
        self._act_v = [self._dof_idx[j] for j in ACTUATED_JOINTS]
        self._chassis = m.body("chassis").id
        self._ee = m.site("ee").id
        self._force_limit = m.actuator_forcerange[:, 1].copy()
        self._arm_range = np.array([m.joint(j).range for j in ARM_JOINTS])
        self.last_action = np.zeros(ACTION_DIM)

    # ----------------------------------------------------------------- state helpers
    @property
    def base_xy(self) -> np.ndarray:
        return self.data.qpos[[self._qpos_idx["base_x"], self._qpos_idx["base_y"]]].copy()

    @property
    def base_yaw(self) -> float:
        return float(self.data.qpos[self._qpos_idx["base_yaw"]])

    @property
    def ee_pos(self) -> np.ndarray:
        return self.data.site_xpos[self._ee].copy()

    def to_base_frame(self, world_vec: np.ndarray) -> np.ndarray:
        """Rotate a world-frame vector (2-D or 3-D) into the base's heading frame."""
        out = np.array(world_vec, dtype=np.float64)
        out[:2] = yaw_rotation(self.base_yaw).T @ out[:2]
        return out

    def point_features(self, point: np.ndarray) -> np.ndarray:
        """Hand-to-point (3-D) and base-to-point (2-D) vectors of a world point, in the base frame."""
        return np.concatenate([self.to_base_frame(point - self.ee_pos),
                               self.to_base_frame(point[:2] - self.base_xy)])

    @property
    def tilt(self) -> float:
        """Angle (rad) between the chassis' up axis and the world's."""
        return float(np.arccos(np.clip(self.data.xmat[self._chassis][8], -1.0, 1.0)))

    @property
    def base_velocity(self) -> np.ndarray:
        """(vx, vy) in the base frame and the yaw rate."""
        v = self.data.qvel
        vxy = self.to_base_frame(v[[self._dof_idx["base_x"], self._dof_idx["base_y"]]])
        return np.array([*vxy, v[self._dof_idx["base_yaw"]]])

    def proprioception(self) -> np.ndarray:
        q, v = self.data.qpos, self.data.qvel
        return np.concatenate([
            q[self._arm_q] - ARM_DEFAULT,
            self.base_velocity,
            v[self._arm_v],
            q[[self._qpos_idx["chassis_pitch"], self._qpos_idx["chassis_roll"]]],
            v[[self._dof_idx["chassis_pitch"], self._dof_idx["chassis_roll"]]],
            self.last_action,
        ])

    @property
    def effort(self) -> float:
        """Mean |actuator force| as a fraction of each actuator's force limit (0..1)."""
        return float(np.mean(np.abs(self.data.actuator_force) / self._force_limit))

    def feasibility(self) -> dict[str, float]:
        """Per-step figures the evaluation averages: |joint velocity|, |torque|, tilt, and the
        chassis' roll and pitch (signed, rad: the passive suspension's joint angles). The root
        height is not among them: the base hovers at a fixed height (no vertical joint), so it
        is constant and the body cannot fall."""
        q = self.data.qpos
        return {"joint_velocity": float(np.abs(self.data.qvel[self._act_v]).mean()),
                "torque": float(np.abs(self.data.actuator_force).mean()), "tilt": self.tilt,
                "roll": float(q[self._qpos_idx["chassis_roll"]]), "pitch": float(q[self._qpos_idx["chassis_pitch"]])}

    # ----------------------------------------------------------------- gymnasium API
    def _ctrl(self, action: np.ndarray) -> np.ndarray:
        target = action * ACTION_SCALE
        ctrl = target.copy()
        ctrl[:2] = yaw_rotation(self.base_yaw) @ target[:2]  # base-frame command -> world slides
        return ctrl

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (ACTION_DIM,):
            raise ValueError(f"action must have {ACTION_DIM} entries (one per actuated joint), got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action contains NaN or inf: {action}")
        action = np.clip(action, -1.0, 1.0)
        self.do_simulation(self._ctrl(action), self.frame_skip)
        reward, info = self._evaluate(action)
        self.last_action = action
        info.update(self.feasibility())
        if self.render_mode == "human":
            self.render()
        return self._get_obs(), float(reward), False, False, info

    def reset_model(self) -> np.ndarray:
        qpos, qvel = self.init_qpos.copy(), self.init_qvel.copy()
        qpos[self._arm_q] = ARM_DEFAULT + self.np_random.uniform(-0.1, 0.1, size=3)
        qpos[self._qpos_idx["base_yaw"]] = self.np_random.uniform(-np.pi, np.pi)
        self.set_state(qpos, qvel)
        self.last_action = np.zeros(ACTION_DIM)
        self._reset_task()
        mujoco.mj_forward(self.model, self.data)
        return self._get_obs()

    def _get_obs(self) -> np.ndarray:
        parts = [self._extra_obs(), self.proprioception()]
        return np.concatenate(parts if self.goal_first else parts[::-1])

    # ----------------------------------------------------------------- checkpoint state
    # Task variables (set by ``_reset_task``) that the rest of an episode depends on.
    task_state_attrs: tuple[str, ...] = ()
    _SIM_STATE = mujoco.mjtState.mjSTATE_INTEGRATION  # everything mj_step reads: bit-exact continuation

    def state_dict(self) -> dict[str, Any]:
        """Everything the env's next steps depend on, as numbers and numpy arrays (a checkpoint stores
        it without pickling): MuJoCo's integration state (time, qpos, qvel, act, solver warm start,
        ctrl, applied forces, mocap poses), the env's RNG, the last action and the task variables.
        Named after torch's pair because Gymnasium's ``MujocoEnv.set_state(qpos, qvel)`` exists."""
        missing = [a for a in self.task_state_attrs if not hasattr(self, a)]
        if missing:
            raise RuntimeError(f"{type(self).__name__}: reset the env before taking its state (no {missing})")
        sim = np.empty(mujoco.mj_stateSize(self.model, self._SIM_STATE))
        mujoco.mj_getState(self.model, self.data, sim, self._SIM_STATE)
        task = {a: _copy(getattr(self, a)) for a in self.task_state_attrs}
        return {"sim": sim, "np_random": self.np_random.bit_generator.state,
                "last_action": self.last_action.copy(), "task": task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the next step equals the one the saved env
        would have taken, bit for bit. Checks everything before changing the env."""
        sim = np.asarray(state["sim"], dtype=np.float64)
        size = mujoco.mj_stateSize(self.model, self._SIM_STATE)
        if sim.shape != (size,):
            raise ValueError(f"{type(self).__name__}: simulation state of shape {sim.shape}, expected ({size},)")
        missing = set(self.task_state_attrs) - set(state["task"])
        if missing:
            raise ValueError(f"{type(self).__name__}: state lacks the task variables {sorted(missing)}")
        last_action = np.asarray(state["last_action"], dtype=np.float64)
        if last_action.shape != (ACTION_DIM,):
            raise ValueError(f"{type(self).__name__}: last_action of shape {last_action.shape}, expected ({ACTION_DIM},)")
        self.np_random.bit_generator.state = state["np_random"]
        for a in self.task_state_attrs:
            setattr(self, a, _copy(state["task"][a]))
        self.last_action = last_action.copy()
        self._after_task_state()
        mujoco.mj_setState(self.model, self.data, sim, self._SIM_STATE)
        mujoco.mj_forward(self.model, self.data)  # derived quantities (positions, sites) for readers
        mujoco.mj_setState(self.model, self.data, sim, self._SIM_STATE)  # and the warm start, untouched

    def _after_task_state(self) -> None:
        """Subclass hook: apply restored task variables that live in the MuJoCo model."""

    # ----------------------------------------------------------------- subclass hooks
    def _reset_task(self) -> None:
        raise NotImplementedError

    def _extra_obs(self) -> np.ndarray:
        raise NotImplementedError

    def _evaluate(self, action: np.ndarray) -> tuple[float, dict[str, Any]]:
        raise NotImplementedError

    # Weights of the skills' regularisers. Energy: a velocity servo's force is
    # kv * (command - velocity), so `effort` charges every jerk of the command and every push
    # against an obstacle. Smoothness: mean squared action change (1.0 instead of 0.05 was tried
    # and did not lower the blender's energy; docs/skillblender.md).
    energy_weight = 1.0
    smooth_weight = 0.05

    def _regularisers(self, action: np.ndarray) -> float:
        """Smoothness, energy and tilt penalties shared by the skills (tasks use none)."""
        smooth = float(np.square(action - self.last_action).mean())
        return -self.smooth_weight * smooth - self.energy_weight * self.effort - 0.5 * self.tilt


def _copy(value: Any) -> Any:
    """A copy of a task variable (arrays and lists are copied, scalars kept)."""
    if isinstance(value, np.ndarray):
        return value.copy()
    if isinstance(value, list):
        return list(value)
    return value
