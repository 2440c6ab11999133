"""One MergeVLA episode: a Meta-World v3 task in one variation, seen through a fixed camera.

:class:`MetaWorldTaskEnv` wraps Meta-World's own task env (``metaworld.MT1(task,
seed=VARIATION_SEED)``'s task objects, goals observable to the scripted expert) and returns the
observation dict every MergeVLA component uses, for data, training and evaluation alike:

``"image"``        uint8 ``(image_size, image_size, 3)``, when ``vision=True``: RGB from the fixed
                   camera ``camera`` (default ``"workspace"``, a free camera framing the region
                   of the objects and goal markers; :data:`FREE_CAMERAS`), rendered with
                   shadows, reflections, skybox and multisampling off (about 4x and 3x faster in
                   software rendering); with ``markers=True`` the goal is drawn with a line down
                   to the table and a disc at its foot, and the puck in yellow (:func:`draw_markers`)
``"state"``        float32 ``(STATE_DIM,)`` = 17, when ``vision=False`` (fast path): Meta-World's
                   object positions/quaternions (14, zero-padded) and the goal position (3), the
                   things the image shows; no hand part
``"proprio"``      float32 ``(PROPRIO_DIM,)`` = 4: hand x, y, z (m) and gripper opening (0..1)
``"instruction"``  int64 ``(INSTRUCTION_LEN,)``: the task's instruction as token ids, 0-padded

Actions are float32 ``(4,)`` in ``[-1, 1]``: hand displacement (x, y, z) and gripper effort, as
in Meta-World. A NaN/inf action or one of the wrong shape is rejected before the simulation
changes; finite values outside the box are clipped. ``info["success"]`` is Meta-World's success
flag; the episode terminates on success (``terminate_on_success``) and is truncated after the
task's ``max_steps``. :meth:`MetaWorldTaskEnv.expert_action` is Meta-World's scripted expert for
the current state. ``reset(options={"variation": k})`` switches the variation.

Rendering needs an OpenGL platform chosen before MuJoCo loads (``MUJOCO_GL=egl`` offscreen;
``import streammoe`` sets it when there is no display).

>>> import gymnasium as gym
>>> env = gym.make(ENV_ID, task="drawer-close-v3", variation=3, vision=False)
>>> obs, info = env.reset(seed=0)
>>> sorted(obs), obs["state"].shape, obs["proprio"].shape, obs["instruction"].shape
(['instruction', 'proprio', 'state'], (17,), (4,), (12,))
>>> info["instruction"], info["suite"]
('close the drawer', 'drawer')
>>> for _ in range(200):
...     obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
...     if terminated or truncated:
...         break
>>> info["success"], terminated
(True, True)
"""

from __future__ import annotations

import atexit
import warnings
import weakref
from functools import cache
from typing import Any

import gymnasium as gym
import metaworld
import mujoco
import numpy as np
from gymnasium import spaces
from metaworld.policies import ENV_POLICY_MAP
from streammoe_envs import METAWORLD_ID
from streammoe_envs.metaworld.suites import (
    INSTRUCTION_LEN,
    N_EXTRA_VARIATIONS,
    N_VARIATIONS,
    VARIATION_SEED,
    VOCAB,
    task_spec,
    tokenize,
)

__all__ = [
    "ACTION_DIM",
    "DEFAULT_CAMERA",
    "ENV_ID",
    "FREE_CAMERAS",
    "PROPRIO_DIM",
    "STATE_DIM",
    "MetaWorldTaskEnv",
    "variation_task",
]

ENV_ID = METAWORLD_ID
ACTION_DIM = 4
PROPRIO_DIM = 4  # hand xyz, gripper opening
OBJECT_DIM = 14  # Meta-World's padded object positions and quaternions
STATE_DIM = OBJECT_DIM + 3  # + goal position
DEFAULT_CAMERA = "workspace"
# Views of our own, as MuJoCo free cameras (look-at point (m), distance (m), azimuth and elevation
# (degrees)). "workspace" frames the region where every suite's objects and goals are placed, at
# about twice corner3's scale: at 64x64 corner3 (Meta-World's, and our default before) draws a goal
# marker as a pixel or less (it shows the whole table, the arm's base and the floor), this one as
# 2-4 pixels. Image experts, seed 0 (tuning): 53.1 % vs 47.9 % with corner3; on the reporting seeds
# 1 and 2 -2.9 and +9.4 points (docs/mergevla.md).
FREE_CAMERAS: dict[str, dict[str, Any]] = {
    "workspace": {"lookat": (0.0, 0.7, 0.1), "distance": 1.0, "azimuth": 135.0, "elevation": -35.0},
}
# Meta-World's raw observation (39): hand (3), gripper (1), objects (14), the same 18 of the
# previous step, goal (3).
_RAW_OBJECTS = slice(4, 4 + OBJECT_DIM)
_RAW_GOAL = slice(36, 39)
# Software rendering at 64x64 (one 2-core machine, loaded): Meta-World's default scene ~100-130
# ms/frame; shadows, reflections and skybox off ~25 ms; and no multisampling ~8 ms (objects and goal
# markers stay visible, edges are a little more jagged).
_FAST_RENDER_OFF = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                    mujoco.mjtRndFlag.mjRND_SKYBOX)
OFFSCREEN_SAMPLES = 0  # model.vis.quality.offsamples (MuJoCo's default 4: multisample anti-aliasing)
# markers=True (visual only; the physics and every state are Meta-World's). One camera fixes a ray
# through a floating goal (reach, pick-place: 5-30 cm above the table), not its depth along it; a
# line from the goal down to the table and a disc where it meets it show both (the disc the table
# position, the line the height). The puck, dark red on the brown table, is drawn yellow.
MARKER_FOOT_RADIUS = 0.03  # m: 3-4 pixels at 64x64 with the workspace camera
MARKER_LINE_RADIUS = 0.006  # m: a pixel wide
MARKER_PUCK_RGBA = (1.0, 1.0, 0.2, 1.0)
_PUCK_GEOM = "objGeom"  # the puck of reach-v3, push-v3 and pick-place-v3 (the object of others)
_GOAL_SITE = "goal"


@cache
def _benchmark(task: str, block: int = 0) -> metaworld.MT1:
    """Meta-World's 50 placements of ``task``: the benchmark's (block 0) or extra ones (block b >= 1,
    another seed of the same generator)."""
    return metaworld.MT1(task, seed=VARIATION_SEED + block)


def variation_task(task: str, variation: int) -> metaworld.Task:
    """Meta-World's task object (object and goal placement) of ``variation`` of ``task``:
    ``metaworld.MT1(task, seed=VARIATION_SEED).train_tasks[variation]`` below ``N_VARIATIONS``;
    an extra variation above it (see :data:`N_EXTRA_VARIATIONS`)."""
    task_spec(task)
    v = _check_variation(variation)
    if v < N_VARIATIONS:
        return _benchmark(task).train_tasks[v]
    block, index = divmod(v - N_VARIATIONS, N_VARIATIONS)
    return _benchmark(task, 1 + block).train_tasks[index]


def _check_variation(variation: Any) -> int:
    if isinstance(variation, bool) or not isinstance(variation, (int, np.integer)) \
            or not 0 <= int(variation) < N_VARIATIONS + N_EXTRA_VARIATIONS:
        raise ValueError(f"variation must be an integer in [0, {N_VARIATIONS}) (Meta-World's) or "
                         f"[{N_VARIATIONS}, {N_VARIATIONS + N_EXTRA_VARIATIONS}) (extra placements "
                         f"for training), got {variation!r}")
    return int(variation)


def check_markers(markers: Any) -> bool:
    """``markers`` as a bool; anything but a bool is refused naming it."""
    if not isinstance(markers, (bool, np.bool_)):
        raise TypeError(f"markers must be a bool, got {type(markers).__name__} {markers!r}")
    return bool(markers)


def draw_markers(scene: mujoco.MjvScene, model: mujoco.MjModel, data: mujoco.MjData) -> int:
    """Add the goal's markers to a scene made by ``mjv_updateScene``: a disc on the table under
    the goal site and, when the goal is above the table, a line from the disc up to it, in the
    goal's colour. Returns how many geoms were added (0 when the model has no goal site or the
    scene has no room)."""
    goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, _GOAL_SITE)
    if goal < 0 or scene.ngeom + 2 > scene.maxgeom:
        return 0
    top = data.site_xpos[goal].copy()
    rgba = model.site_rgba[goal].astype(np.float32)
    foot = np.array([top[0], top[1], 0.001])  # the table top is z = 0
    mujoco.mjv_initGeom(scene.geoms[scene.ngeom], mujoco.mjtGeom.mjGEOM_CYLINDER,
                        np.array([MARKER_FOOT_RADIUS, 0.001, 0.0]), foot, np.eye(3).ravel(), rgba)
    scene.ngeom += 1
    if top[2] - foot[2] <= 2 * MARKER_LINE_RADIUS:
        return 1
    line = scene.geoms[scene.ngeom]
    mujoco.mjv_initGeom(line, mujoco.mjtGeom.mjGEOM_CAPSULE, np.zeros(3), np.zeros(3),
                        np.eye(3).ravel(), rgba)
    mujoco.mjv_connector(line, mujoco.mjtGeom.mjGEOM_CAPSULE, MARKER_LINE_RADIUS, foot, top)
    scene.ngeom += 1
    return 2


class _Camera:
    """An offscreen MuJoCo renderer of one fixed camera, shadows/reflections/skybox and
    multisampling off, whose images are upright (Meta-World's corner cameras are mounted upside
    down: their images are rotated by 180 degrees, which keeps them unmirrored). ``camera``: a
    camera of the scene or a name in :data:`FREE_CAMERAS`; ``markers``: :func:`draw_markers`."""

    def __init__(self, model: mujoco.MjModel, camera: str, size: int, markers: bool = False) -> None:
        self.model = model
        self.markers = bool(markers)
        model.vis.quality.offsamples = OFFSCREEN_SAMPLES  # read when the context is made
        try:
            self.renderer = mujoco.Renderer(model, size, size)
        except mujoco.FatalError as e:
            raise RuntimeError(
                f"MuJoCo cannot render ({e}); set MUJOCO_GL=egl (or osmesa) before mujoco is "
                "imported (`import streammoe` does it when there is no display), or use "
                "vision=False") from e
        for flag in _FAST_RENDER_OFF:
            self.renderer.scene.flags[flag] = False
        self.camera: str | mujoco.MjvCamera = camera
        self._flip = camera not in FREE_CAMERAS
        if camera in FREE_CAMERAS:
            view = FREE_CAMERAS[camera]
            self.camera = mujoco.MjvCamera()
            self.camera.type = mujoco.mjtCamera.mjCAMERA_FREE
            self.camera.lookat[:] = view["lookat"]
            self.camera.distance = view["distance"]
            self.camera.azimuth = view["azimuth"]
            self.camera.elevation = view["elevation"]
        global _ATEXIT_REGISTERED
        if not _ATEXIT_REGISTERED:  # after MuJoCo's EGL registered eglTerminate: runs before it
            atexit.register(_close_open_cameras)
            _ATEXIT_REGISTERED = True
        _OPEN_CAMERAS.add(self)

    def render(self, data: mujoco.MjData) -> np.ndarray:
        self.renderer.update_scene(data, camera=self.camera)
        if self.markers:
            draw_markers(self.renderer.scene, self.model, data)
        image = self.renderer.render()
        return np.ascontiguousarray(image[::-1, ::-1] if self._flip else image)

    def close(self) -> None:
        self.renderer.close()
        _OPEN_CAMERAS.discard(self)


# Renderers still open at exit are closed before MuJoCo terminates EGL (closing them later, from
# the garbage collector, prints EGL errors).
_OPEN_CAMERAS: weakref.WeakSet[_Camera] = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_open_cameras() -> None:
    for cam in list(_OPEN_CAMERAS):
        cam.close()


class MetaWorldTaskEnv(gym.Env):
    """A MergeVLA task env (see the module docstring for the observation dict).

    Args:
        task: a Meta-World v3 task of a suite (``streammoe_envs.metaworld.TASK_NAMES``).
        variation: which of the task's ``N_VARIATIONS`` placements (0-based), or an extra one
            (``N_VARIATIONS`` and up, :data:`N_EXTRA_VARIATIONS`; more training data).
        vision: ``True``: ``obs["image"]``; ``False``: ``obs["state"]`` instead (no rendering).
        image_size: side of the square image in pixels.
        camera: a camera of Meta-World's scene (``corner``, ``corner2``, ``corner3``, ``corner4``,
            ``topview``, ``behindGripper``, ``gripperPOV``) or one of :data:`FREE_CAMERAS`
            (``workspace``: the objects' region, closer).
        markers: draw the goal with a line down to the table and a disc at its foot, and the puck
            in yellow (visual only; see :func:`draw_markers`). Ignored when ``vision=False``.
        terminate_on_success: end the episode (``terminated=True``) at the first success.
        render_mode: ``"rgb_array"``: :meth:`render` returns the camera image at ``render_size``.
        render_size: side of :meth:`render`'s images (default ``image_size``).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(self, task: str, variation: int = 0, vision: bool = True, image_size: int = 64,
                 camera: str = DEFAULT_CAMERA, terminate_on_success: bool = True,
                 render_mode: str | None = None, render_size: int | None = None,
                 markers: bool = False) -> None:
        check_markers(markers)
        self.task_spec = task_spec(task)
        self.task = task
        self.variation = _check_variation(variation)
        self.vision = bool(vision)
        self.image_size = int(image_size)
        self.render_size = self.image_size if render_size is None else int(render_size)
        self.camera = camera
        self.markers = bool(markers)
        self.terminate_on_success = bool(terminate_on_success)
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.render_mode = render_mode
        self.max_steps = self.task_spec.max_steps
        self.instruction = self.task_spec.instruction
        self._tokens = tokenize(self.instruction)

        self._mw = _benchmark(task).train_classes[task]()  # its own renderer stays unused
        model = self._mw.model
        cameras = [model.camera(i).name for i in range(model.ncam)] + list(FREE_CAMERAS)
        if camera not in cameras:
            raise ValueError(f"camera {camera!r} is neither in Meta-World's scene nor in FREE_CAMERAS; "
                             f"choose one of {cameras}")
        limit = min(model.vis.global_.offwidth, model.vis.global_.offheight)
        for name, size in (("image_size", self.image_size), ("render_size", self.render_size)):
            if not 8 <= size <= limit:
                raise ValueError(f"{name} must be in [8, {limit}] (the scene's offscreen buffer), got {size}")
        if self.markers:
            puck = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, _PUCK_GEOM)
            if puck >= 0:  # visual only: its material gave the colour, rgba now does
                model.geom_matid[puck] = -1
                model.geom_rgba[puck] = MARKER_PUCK_RGBA
        self._mw.set_task(variation_task(task, self.variation))
        self._policy = ENV_POLICY_MAP[task]()
        self._cam: _Camera | None = None
        self._render_cam: _Camera | None = None

        obs_spaces: dict[str, spaces.Space] = {}
        if self.vision:
            obs_spaces["image"] = spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8)
        else:
            obs_spaces["state"] = spaces.Box(-np.inf, np.inf, (STATE_DIM,), np.float32)
        hand = self._mw.sawyer_observation_space  # Meta-World clips the hand to these bounds
        obs_spaces["proprio"] = spaces.Box(np.array([*hand.low[:3], 0.0], np.float32),
                                           np.array([*hand.high[:3], 1.0], np.float32),
                                           dtype=np.float32)
        obs_spaces["instruction"] = spaces.MultiDiscrete(np.full(INSTRUCTION_LEN, len(VOCAB)),
                                                         dtype=np.int64)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (ACTION_DIM,), np.float32)
        self._raw: np.ndarray | None = None
        self._steps = 0
        self._done = True

    # ----------------------------------------------------------------- observations
    @property
    def raw_obs(self) -> np.ndarray:
        """Meta-World's last 39-number observation (what its scripted experts read)."""
        if self._raw is None:
            raise RuntimeError(f"{self.task}: call reset() before reading the observation")
        return self._raw.copy()

    def _observation(self) -> dict[str, np.ndarray]:
        raw = self._raw
        obs: dict[str, np.ndarray] = {}
        if self.vision:
            if self._cam is None:
                self._cam = _Camera(self._mw.model, self.camera, self.image_size, self.markers)
            obs["image"] = self._cam.render(self._mw.data)
        else:
            obs["state"] = self.object_state()
        obs["proprio"] = raw[:PROPRIO_DIM].astype(np.float32)
        obs["instruction"] = self._tokens.copy()
        return obs

    def object_state(self) -> np.ndarray:
        """float32 ``(STATE_DIM,)``: the object positions/quaternions and goal that ``vision=False``
        observes (with ``vision=True`` the demonstrations store it as the pre-training targets)."""
        raw = self.raw_obs
        return np.concatenate([raw[_RAW_OBJECTS], raw[_RAW_GOAL]]).astype(np.float32)

    def _info(self, success: bool) -> dict[str, Any]:
        return {"success": bool(success), "task": self.task, "suite": self.task_spec.suite,
                "variation": self.variation, "instruction": self.instruction}

    # ----------------------------------------------------------------- gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode. The start state is fixed by the variation (Meta-World has no other
        reset noise); ``options={"variation": k}`` switches to variation ``k`` first."""
        super().reset(seed=seed)
        unknown = set(options or {}) - {"variation"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; the only one is 'variation'")
        if options and "variation" in options:
            variation = _check_variation(options["variation"])
            if variation != self.variation:
                self._mw.set_task(variation_task(self.task, variation))
                self.variation = variation
        raw, _ = self._mw.reset()
        self._raw = np.asarray(raw, dtype=np.float64)
        self._steps = 0
        self._done = False
        return self._observation(), self._info(False)

    def step(self, action: Any) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        action = self._check_actions(action, (ACTION_DIM,), "action")
        reward, terminated, truncated, success = self._advance(action)
        return self._observation(), reward, terminated, truncated, self._info(success)

    def step_chunk(self, actions: Any) -> tuple[dict[str, np.ndarray], float, bool, bool,
                                                dict[str, Any], int]:
        """Execute an action chunk ``(k, 4)`` step by step, stopping early when the episode ends,
        and observe once, after the last step taken: the same final state, reward sum and flags
        as ``k`` calls of :meth:`step`, with one rendered image instead of ``k`` (a receding-horizon
        policy looks only at the chunk's last frame). Returns ``(obs, reward_sum, terminated,
        truncated, info, steps_taken)``. Every action is checked before the first step."""
        actions = self._check_actions(actions, None, "actions")
        if actions.ndim != 2 or actions.shape[1] != ACTION_DIM or len(actions) == 0:
            raise ValueError(f"actions must have shape (k, {ACTION_DIM}) with k >= 1 (a chunk of "
                             f"hand dx, dy, dz, gripper), got {actions.shape}")
        total, taken = 0.0, 0
        terminated = truncated = success = False
        for action in actions:
            reward, terminated, truncated, success = self._advance(action)
            total += reward
            taken += 1
            if terminated or truncated:
                break
        return self._observation(), total, terminated, truncated, self._info(success), taken

    def _check_actions(self, action: Any, shape: tuple[int, ...] | None, name: str) -> np.ndarray:
        action = np.asarray(action, dtype=np.float64)
        if shape is not None and action.shape != shape:
            raise ValueError(f"{name} must have shape {shape} (hand dx, dy, dz, gripper), "
                             f"got {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"{name} contains NaN or inf: {action.tolist()}")
        if self._done:
            raise RuntimeError(f"{self.task}: the episode has ended (or never started); call reset()")
        return np.clip(action, -1.0, 1.0)

    def _advance(self, action: np.ndarray) -> tuple[float, bool, bool, bool]:
        """One simulation step with a checked, clipped action; no observation is rendered."""
        raw, reward, _, _, mw_info = self._mw.step(action.astype(np.float32))
        self._raw = np.asarray(raw, dtype=np.float64)
        self._steps += 1
        success = bool(mw_info["success"])
        terminated = success and self.terminate_on_success
        truncated = self._steps >= self.max_steps and not terminated
        self._done = terminated or truncated
        return float(reward), terminated, truncated, success

    def expert_action(self) -> np.ndarray:
        """Meta-World's scripted expert's action (float32, in [-1, 1]) for the current state."""
        with warnings.catch_warnings():  # its gains trip "Constant(s) may be too high"
            warnings.simplefilter("ignore")
            action = self._policy.get_action(self.raw_obs)
        return np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        if self._render_cam is None:
            self._render_cam = _Camera(self._mw.model, self.camera, self.render_size, self.markers)
        return self._render_cam.render(self._mw.data)

    def close(self) -> None:
        for cam in (self._cam, self._render_cam):
            if cam is not None:
                cam.close()
        self._cam = self._render_cam = None
        self._mw.close()
