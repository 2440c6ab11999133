"""Are the frozen skills good enough for a task? A *scripted* blender answers it.

It composes the frozen skills the way a blender would, with hand-written goals from the task
features and fixed per-joint weights (walk drives the base joints, reach the arm joints), and is
evaluated like any policy. If it solves a task, the skills cover what the task needs and a
learned blender that fails is a learning problem (budget, exploration), not a skill problem.

    python -m streammoe.control.skillblend.diagnose --skills-dir outputs/skillblend_skills/skills

It is a diagnostic and an upper-bound reference, not a method: the goals encode task knowledge
(stand ``standoff`` metres short of the target, face it, put the hand on it).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streammoe_envs.skillblend  # noqa: F401  (registers the ids)
import torch
from streammoe_envs.skillblend import ENV_IDS, PROPRIO_DIM

from streammoe.control.skillblend.evaluate import evaluate
from streammoe.control.skillblend.skills import MLPSkill, load_skill
from streammoe.runs import format_table

__all__ = ["reach_error_by_height", "scripted_blender"]

P = PROPRIO_DIM


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-9)


def _clip(skill: MLPSkill, goal: np.ndarray) -> torch.Tensor:
    """The goal itself, clipped into the skill's range (no squash: goals here are literal)."""
    return torch.clamp(torch.as_tensor(goal, dtype=torch.float32), skill.goal_low, skill.goal_high)


def scripted_blender(task: str, walk: MLPSkill, reach: MLPSkill, standoff: float
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """obs -> action: walk's action on the base joints, reach's on the arm joints, goals set from
    the task features (all in the base frame; see ``envs/skillblend/tasks.py`` for the layout)."""

    def act(walk_goal: np.ndarray, reach_goal: np.ndarray, proprio: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            p = torch.as_tensor(proprio, dtype=torch.float32)
            a_walk = walk(_clip(walk, walk_goal), p).numpy()
            a_reach = reach(_clip(reach, reach_goal), p).numpy()
        return np.concatenate([a_walk[:3], a_reach[3:]])

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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skills-dir", required=True)
    p.add_argument("--tasks", nargs="+", default=["far_reach", "button", "box_push"])
    p.add_argument("--standoffs", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--out", default=None, help="optional JSON file for the table")
    p.add_argument("--reach-heights", nargs="*", type=float, default=[0.07, 0.12, 0.2, 0.4, 0.8],
                   help="also: the reach skill's final error for targets ahead at these heights (m)")
    args = p.parse_args()
    torch.set_num_threads(1)
    walk, reach = (load_skill(Path(args.skills_dir) / f"{n}.safetensors") for n in ("walk", "reach"))
    rows = []
    for task in args.tasks:
        for standoff in args.standoffs:
            m = evaluate(scripted_blender(task, walk, reach, standoff), ENV_IDS[task], args.episodes, seed=10_000)
            rows.append({"task": task, "standoff": standoff, **{k: m[k] for k in (
                "final_error_mean", "final_error_std", "success_rate", "energy", "tilt")}})
    print(format_table(rows, title=f"scripted blender of the frozen skills ({args.episodes} episodes, seeds 10000+)"))
    heights = reach_error_by_height(reach, args.reach_heights, [0.4, 0.55, 0.7]) if args.reach_heights else []
    if heights:
        print(format_table(heights, title="reach skill: targets straight ahead of the base (75 steps)"))
    if args.out:
        Path(args.out).write_text(json.dumps({"scripted_blender": rows, "reach_by_height": heights}, indent=2) + "\n")


if __name__ == "__main__":
    main()
