"""Are the frozen skills good enough for a task? A *scripted* blender answers it.

It composes the frozen skills the way a blender would, with hand-written goals from the task
features and fixed per-joint weights (walk drives the base joints, reach the arm joints), and is
evaluated like any policy. If it solves a task, the skills cover what the task needs and a
learned blender that fails is a learning problem (budget, exploration, what it observes), not a
skill problem.

    python -m streammoe.control.skillblend.diagnose --skills-dir results/skillblend/skills \
        --episodes 100 --out results/skillblend/scripted_v5.json

It is a diagnostic and an upper-bound reference, not a method: the goals encode task knowledge
(stand ``standoff`` metres short of the target, face it, put the hand on it; for the box push a
staged pusher with feedback, :class:`ScriptedPusher`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
import streammoe_envs.skillblend  # noqa: F401  (registers the ids)
import torch
from streammoe_envs.skillblend import ENV_IDS, PROPRIO_DIM

from streammoe.control.skillblend.evaluate import evaluate
from streammoe.control.skillblend.skills import MLPSkill, load_skill
from streammoe.runs import format_table

__all__ = ["PusherSettings", "ScriptedPusher", "box_push_probe", "reach_error_by_height", "scripted_blender"]

P = PROPRIO_DIM
BOX_CENTRE_HEIGHT = 0.13  # m: the box is 0.26 m tall (envs/skillblend/assets/box_push.xml)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def _clip(skill: MLPSkill, goal: np.ndarray) -> torch.Tensor:
    """The goal itself, clipped into the skill's range (no squash: goals here are literal)."""
    return torch.clamp(torch.as_tensor(goal, dtype=torch.float32), skill.goal_low, skill.goal_high)


def _blend(walk: MLPSkill, reach: MLPSkill, walk_goal: np.ndarray, reach_goal: np.ndarray,
           proprio: np.ndarray) -> np.ndarray:
    """Walk's action on the base joints, reach's on the arm joints."""
    with torch.no_grad():
        p = torch.as_tensor(proprio, dtype=torch.float32)
        a_walk = walk(_clip(walk, walk_goal), p).numpy()
        a_reach = reach(_clip(reach, reach_goal), p).numpy()
    return np.concatenate([a_walk[:3], a_reach[3:]])


def scripted_blender(task: str, walk: MLPSkill, reach: MLPSkill, standoff: float
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> action: walk's action on the base joints, reach's on the arm joints, goals set from
    the task features (all in the base frame; see ``envs/skillblend/tasks.py`` for the layout).
    ``box_push`` here is the first, crude pusher (drive behind the box, hand low, drive on; kept
    as the probe's baseline); :class:`ScriptedPusher` is the one that works."""

    def act(walk_goal: np.ndarray, reach_goal: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        return _blend(walk, reach, walk_goal, reach_goal, proprio)

    def approach(point_minus_base: np.ndarray) -> np.ndarray:
        """Walk goal: stop ``standoff`` short of a point, facing it."""
        d = point_minus_base
        return np.array([*(d - standoff * _unit(d)), np.arctan2(d[1], d[0])])

    def far_reach(obs: np.ndarray) -> np.ndarray:
        target_minus_hand, target_minus_base = obs[P:P + 3], obs[P + 3:P + 5]
        return act(approach(target_minus_base), -target_minus_hand, obs[:P])

    def button(obs: np.ndarray) -> np.ndarray:
        button_minus_hand, button_minus_base = obs[P:P + 3], obs[P + 3:P + 5]
        press = np.array([*(0.04 * _unit(button_minus_base)), 0.0])  # aim 4 cm behind the face
        return act(approach(button_minus_base), -(button_minus_hand + press), obs[:P])

    def box_push(obs: np.ndarray) -> np.ndarray:
        box_minus_hand, box_minus_base, goal_minus_box = obs[P:P + 3], obs[P + 3:P + 5], obs[P + 5:P + 7]
        u = _unit(goal_minus_box)
        hand_target = np.array([*(-0.18 * u), 0.07])  # behind the box (w.r.t. the goal), hand at ~0.2 m
        hand_minus_box = -box_minus_hand
        behind = hand_minus_box[:2] - hand_target[:2]
        lined_up = np.linalg.norm(behind) < 0.07
        base_target = (box_minus_base + goal_minus_box if lined_up else box_minus_base + hand_target[:2]) \
            - standoff * u
        walk_goal = np.array([*base_target, np.arctan2(u[1], u[0])])
        return act(walk_goal, hand_minus_box - hand_target, obs[:P])

    policies = {"far_reach": far_reach, "button": button, "box_push": box_push}
    if task not in policies:
        raise ValueError(f"unknown task {task!r}; available: {sorted(policies)}")
    return policies[task]


@dataclass(frozen=True)
class PusherSettings:
    """:class:`ScriptedPusher`'s constants (m, rad; per control step where a rate). Chosen by hand
    on episodes with seeds 50000+ (``steer_gain``, ``freeze_within``, ``stop_within`` on a grid;
    the proportional gain 1 of 0.3 / 1 / 2), never on the evaluation seeds 10000+;
    ``steer_gain=0``, ``steer="proportional"``, ``ready_pose=False`` and ``stop=False`` are the
    probe's variants."""

    contact_offset: float = 0.155   # box centre -> hand centre behind it: half width 0.12 + hand radius 0.035
    hand_height: float = 0.18       # hand centre while pushing (box top 0.26; the hand reaches down to ~0.14)
    ready_height: float = 0.36      # hand height while the base drives: clears the box top
    ready_ahead: float = 0.5        # hand ahead of the base centre while it drives
    arm_reach: float = 0.55         # base centre -> hand, horizontally, with the hand low in front
    backoff: float = 0.1            # staging point: this far behind the contact pose
    near: float = 0.1               # base within this of the staging point (and heading within
    heading_tolerance: float = 0.3  # this) -> lower the hand
    hand_tolerance: float = 0.06    # hand within this of the low staging point -> push
    press: float = 0.05             # the hand target lies this far inside the box while pushing
    push_step: float = 0.2          # walk goal ahead of the contact pose while pushing (sets the speed)
    slow_within: float = 0.3        # ... scaled down linearly within this of the goal
    lateral_gain: float = 2.0       # base shifts sideways by this x the hand's lateral error
    steer_gain: float = 0.1         # contact angle += gain x (push direction - box velocity direction)
    steer: str = "integral"         # "proportional": contact angle = gain x (...), no memory of it
    steer_limit: float = 0.8        # |contact angle| <= this (rad)
    steer_min_motion: float = 0.004  # box moved at least this per step: its direction is measured
    freeze_within: float = 0.3      # closer than this to the goal: keep the push direction
    stop_within: float = 0.05       # box this close to the goal (or past it): stop; it glides on a little
    lose_contact: float = 0.15      # hand this far off the push line: start over
    ready_pose: bool = True         # False: the hand heads for the low staging point at once
    stop: bool = True               # False: never stop pushing


class ScriptedPusher:
    """A scripted blender for ``box_push`` from the frozen walk and reach skills, reading only the
    task's observation (two consecutive ones: it remembers the last box-to-goal vector).

    Phases: ``approach`` (walk to a staging point behind the box on the goal's line, facing the
    goal, the hand held high in front), ``lower`` (the hand to just behind the box, 0.18 m high),
    ``push`` (walk towards the goal with the hand pressed against the box; the contact point is
    turned around the box, integrating the angle between the push direction and the box's
    measured velocity, since at a corner or a turned face the box does not move along the push),
    ``done`` (stop and hold when the box is within ``stop_within`` of the goal or past it). Losing contact
    starts over. ``log`` holds the phase of every step of the current episode."""

    PHASES = ("approach", "lower", "push", "done")

    def __init__(self, walk: MLPSkill, reach: MLPSkill, settings: PusherSettings | None = None) -> None:
        self.walk, self.reach, self.s = walk, reach, settings or PusherSettings()
        if self.s.steer not in ("integral", "proportional"):
            raise ValueError(f"PusherSettings.steer must be 'integral' or 'proportional', got {self.s.steer!r}")
        self.reset()

    def reset(self) -> None:
        """Start an episode (:func:`~streammoe.control.skillblend.evaluate.evaluate` calls it);
        the finished episode's phases go to ``history``."""
        if getattr(self, "log", None):
            self.history.append(self.log)
        elif not hasattr(self, "history"):
            self.history: list[list[str]] = []
            self.goal_extent = {"walk": np.zeros(3), "reach": np.zeros(3)}  # largest |goal| / half range
        self.phase, self.u, self.angle = "approach", None, 0.0
        self.prev_goal_minus_box: np.ndarray | None = None
        self.log: list[str] = []

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        s = self.s
        box_minus_hand, box_minus_base, goal_minus_box = obs[P:P + 3], obs[P + 3:P + 5], obs[P + 5:P + 7]
        dist = float(np.linalg.norm(goal_minus_box))
        if self.phase != "done" and (self.phase != "push" or dist > s.freeze_within or self.u is None):
            self.u = _unit(goal_minus_box)
        u = self.u
        hand_minus_box = -box_minus_hand
        contact = np.array([*(-s.contact_offset * u), s.hand_height - BOX_CENTRE_HEIGHT])  # rel. box centre
        base_at_contact = box_minus_base + contact[:2] - s.arm_reach * u
        staging = base_at_contact - s.backoff * u
        yaw = float(np.arctan2(u[1], u[0]))
        along = float(hand_minus_box[:2] @ u)
        off_line = float(np.linalg.norm(hand_minus_box[:2] - along * u))
        remaining = float(goal_minus_box @ u)
        low_staging = np.array([*(contact[:2] - s.backoff * u), contact[2]])
        base_t, hand_t = staging, low_staging
        if self.phase == "approach":
            if s.ready_pose:
                hand_t = np.array([*(-box_minus_base + np.array([s.ready_ahead, 0.0])),
                                   s.ready_height - BOX_CENTRE_HEIGHT])
            if np.linalg.norm(staging) < s.near and abs(yaw) < s.heading_tolerance:
                self.phase = "lower"
        if self.phase == "lower":
            base_t, hand_t = staging, low_staging
            if np.linalg.norm(hand_minus_box - hand_t) < s.hand_tolerance:
                self.phase = "push"
            elif np.linalg.norm(staging) > 2.5 * s.near:
                self.phase = "approach"
        if self.phase == "push":
            if s.stop and (dist < s.stop_within or remaining < 0.0):  # there, or pushed past it
                self.phase = "done"
            else:
                base_t, hand_t = self._push(u, contact, base_at_contact, hand_minus_box, goal_minus_box, remaining)
                if off_line > s.lose_contact or along > -0.05 or hand_minus_box[2] - contact[2] > 0.08:
                    self.phase = "approach"
        if self.phase == "done":
            if dist > s.stop_within + 0.1:
                self.phase = "approach"
            base_t, yaw, hand_t = np.zeros(2), 0.0, hand_minus_box.copy()
        self.prev_goal_minus_box = goal_minus_box.copy() if self.phase == "push" else None
        if self.phase != "push":
            self.angle = 0.0
        self.log.append(self.phase)
        walk_goal, reach_goal = np.array([*base_t, yaw]), hand_minus_box - hand_t
        for name, skill, goal in (("walk", self.walk, walk_goal), ("reach", self.reach, reach_goal)):
            half = (skill.goal_high - skill.goal_low).numpy() / 2
            self.goal_extent[name] = np.maximum(self.goal_extent[name], np.abs(goal) / half)
        return _blend(self.walk, self.reach, walk_goal, reach_goal, obs[:P])

    def phase_summary(self) -> dict[str, float]:
        """Over the episodes so far: steps to the first push, share of episodes that lost
        contact and started over, share of steps per phase."""
        episodes = [*self.history, self.log] if self.log else list(self.history)
        first = [ep.index("push") for ep in episodes if "push" in ep]
        restarts = [any(a == "push" and b == "approach" for a, b in zip(ep, ep[1:])) for ep in episodes]
        steps = [p for ep in episodes for p in ep]
        return {"episodes": len(episodes), "first_push_step_mean": float(np.mean(first)) if first else None,
                "episodes_pushed": len(first), "episodes_restarted": int(sum(restarts)),
                **{f"share_{ph}": steps.count(ph) / len(steps) for ph in self.PHASES}}

    def _push(self, u: np.ndarray, contact: np.ndarray, base_at_contact: np.ndarray, hand_minus_box: np.ndarray,
              goal_minus_box: np.ndarray, remaining: float) -> tuple[np.ndarray, np.ndarray]:
        s = self.s
        step = min(remaining, s.push_step) * (1.0 if remaining > s.slow_within else remaining / s.slow_within)
        base_t = base_at_contact + step * u
        if self.prev_goal_minus_box is not None:  # the box's velocity: the goal is fixed
            v = self.prev_goal_minus_box - goal_minus_box
            if np.linalg.norm(v) > s.steer_min_motion:
                error = np.arctan2(u[0] * v[1] - u[1] * v[0], u @ v)  # angle from u to v
                integral = self.angle if s.steer == "integral" else 0.0
                self.angle = float(np.clip(integral - s.steer_gain * error, -s.steer_limit, s.steer_limit))
        c, sn = np.cos(self.angle), np.sin(self.angle)
        turned = np.array([[c, -sn], [sn, c]]) @ contact[:2]
        hand_t = np.array([*(turned + s.press * u), contact[2]])
        e = hand_minus_box[:2] - hand_t[:2]
        base_t = base_t - s.lateral_gain * (e - (e @ u) * u)
        return base_t, hand_t


def reach_error_by_height(reach: MLPSkill, heights: list[float], distances: list[float], steps: int = 75,
                          seed: int = 0) -> list[dict[str, float]]:
    """Final error of the frozen reach skill for targets straight ahead of the base at a given
    height and horizontal distance: which part of the workspace does the skill cover?"""
    import gymnasium as gym

    env = gym.make(ENV_IDS["reach"]).unwrapped
    rows = []
    for height in heights:
        for dist in distances:
            env.reset(seed=seed)
            heading = np.array([np.cos(env.base_yaw), np.sin(env.base_yaw)])
            env.target = np.array([*(env.base_xy + dist * heading), height])
            obs = env._get_obs()
            for _ in range(steps):
                with torch.no_grad():
                    x = torch.as_tensor(obs, dtype=torch.float32)
                    obs, _, _, _, info = env.step(reach(x[:3], x[3:]).numpy())
            rows.append({"target_height": height, "distance_ahead": dist, "final_error": info["error"],
                         "hand_height": float(env.ee_pos[2])})
    env.close()
    return rows


def box_push_probe(walk: MLPSkill, reach: MLPSkill, episodes: int, seed: int = 10_000,
                   tilt_limit: float | None = None) -> dict[str, Any]:
    """What stops the box push? The scripted pusher and its ablations on ``episodes`` episodes
    (seeds ``seed``+), what they command (largest |goal| / half range of each skill goal: within
    what a blender can command?), the episode return of pushing vs holding the hand behind the box
    (the reward's terms), and two physical figures (the lowest the hand can reach; how far the box
    glides when let go at 0.5 m/s)."""
    import gymnasium as gym

    base = PusherSettings()
    variants = {"scripted pusher": base,
                "no steering (steer_gain=0)": replace(base, steer_gain=0.0),
                "proportional steering on the box velocity (gain 1)": replace(base, steer="proportional",
                                                                              steer_gain=1.0),
                "no ready pose (hand low while the base drives)": replace(base, ready_pose=False),
                "no stop (keeps pushing)": replace(base, stop=False),
                "approach and hold behind the box, never push": replace(base, hand_tolerance=0.0)}
    rows = []
    for name, settings in variants.items():
        pusher = ScriptedPusher(walk, reach, settings)
        m = evaluate(pusher, ENV_IDS["box_push"], episodes, seed=seed, tilt_limit=tilt_limit)
        rows.append({"variant": name, **{k: m[k] for k in (
            "success_rate", "success_ci_low", "success_ci_high", "final_error_mean", "final_error_std",
            "episode_return", "energy", "tilt", "tilt_max")}, **pusher.phase_summary(),
            "walk_goal_max_fraction_of_range": pusher.goal_extent["walk"].round(3).tolist(),
            "reach_goal_max_fraction_of_range": pusher.goal_extent["reach"].round(3).tolist()})
    idle = evaluate(lambda obs: np.zeros(6), ENV_IDS["box_push"], episodes, seed=seed)
    rows.append({"variant": "idle (zero action)", "success_rate": idle["success_rate"],
                 "final_error_mean": idle["final_error_mean"], "episode_return": idle["episode_return"]})
    env = gym.make(ENV_IDS["box_push"]).unwrapped
    env.reset(seed=seed)
    hand_z = []  # the lowest hand over the arm's joint ranges, hand ahead of the chassis
    for pitch in np.linspace(*env._arm_range[1], 33):
        for elbow in np.linspace(*env._arm_range[2], 53):
            env.data.qpos[env._arm_q] = [0.0, pitch, elbow]
            mujoco.mj_kinematics(env.model, env.data)
            ahead = env.to_base_frame(env.ee_pos - np.array([*env.base_xy, 0.0]))[0]
            if ahead > 0.32:
                hand_z.append(float(env.ee_pos[2]))
    env.reset(seed=seed)
    env.data.qvel[env._box_v[0]] = 0.5
    start = env.box_pos[:2].copy()
    for _ in range(50):
        env.step(np.zeros(6))
    glide = float(np.linalg.norm(env.box_pos[:2] - start))
    env.close()
    return {"episodes": episodes, "seeds_from": seed, "settings": asdict(base), "variants": rows,
            "lowest_hand_height_ahead_of_chassis": min(hand_z), "box_glide_from_0.5_m_per_s": glide}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skills-dir", required=True)
    p.add_argument("--tasks", nargs="+", default=["far_reach", "button", "box_push"])
    p.add_argument("--standoffs", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--episodes", type=int, default=50, help="episodes per row (seeds 10000+)")
    p.add_argument("--tilt-limit", type=float, default=0.1,
                   help="rad, for the feasibility rate (skillblend.tilt_limit's default)")
    p.add_argument("--out", default=None, help="optional JSON file for the tables")
    p.add_argument("--reach-heights", nargs="*", type=float, default=[0.07, 0.12, 0.2, 0.4, 0.8],
                   help="also: the reach skill's final error for targets ahead at these heights (m)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    walk, reach = (load_skill(Path(args.skills_dir) / f"{n}.safetensors") for n in ("walk", "reach"))
    rows = []
    for task in args.tasks:
        for standoff in args.standoffs:
            m = evaluate(scripted_blender(task, walk, reach, standoff), ENV_IDS[task], args.episodes, seed=10_000,
                         tilt_limit=args.tilt_limit)
            rows.append({"task": task, "standoff": standoff, **{k: m[k] for k in (
                "success_rate", "success_ci_low", "success_ci_high", "final_error_mean", "final_error_std",
                "energy", "tilt", "tilt_max", "feasible_rate")}})
    print(format_table(rows, title=f"scripted blender of the frozen skills ({args.episodes} episodes, seeds 10000+; "
                                    "box_push: the crude pusher)"))
    probe = box_push_probe(walk, reach, args.episodes, tilt_limit=args.tilt_limit) if "box_push" in args.tasks else {}
    if probe:
        print(format_table([{k: v for k, v in r.items() if not k.endswith("range")} for r in probe["variants"]],
                           title="box push probe: the scripted pusher and its ablations"))
        print({k: v for k, v in probe.items() if k not in ("variants", "settings")})
    heights = reach_error_by_height(reach, args.reach_heights, [0.4, 0.55, 0.7]) if args.reach_heights else []
    if heights:
        print(format_table(heights, title="reach skill: targets straight ahead of the base (75 steps)"))
    if args.out:
        command = "python -m streammoe.control.skillblend.diagnose " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(json.dumps({"command": command, "scripted_blender": rows, "box_push_probe": probe,
                                              "reach_by_height": heights}, indent=2) + "\n")


if __name__ == "__main__":
    main()
