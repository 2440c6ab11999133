"""Evaluation of any policy on a SkillBlender env: task error, success and feasibility over
episodes with noise off; per-joint blend weights over an episode (plot); rollout video."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import streammoe_envs.skillblend  # noqa: F401  (registers the ids)
from streammoe_envs.skillblend.base import ACTUATED_JOINTS

from streammoe.runs import pyplot, save_figure
from streammoe.video import record_episodes

__all__ = ["evaluate", "plot_blend_weights", "record_rollout", "rollout_blend_weights"]

PolicyFn = Callable[[np.ndarray], np.ndarray]


def evaluate(policy: PolicyFn, env_id: str, n_episodes: int, seed: int, **make_kwargs: Any
             ) -> dict[str, float]:
    """Run ``n_episodes`` (seeds ``seed, seed+1, ...``); the task error is read at the last step.
    ``make_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``).

    Feasibility: ``joint_velocity`` = mean |actuated joint velocity|, ``torque`` = mean |actuator
    force|, ``energy`` = per-episode mean |qvel| x mean |torque| averaged over episodes, ``tilt`` =
    mean chassis tilt (rad), ``tilt_max`` = largest tilt seen.
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    env = gym.make(env_id, **make_kwargs)
    errors, successes, qvel, torque, energy, tilt, tilt_max, returns = ([] for _ in range(8))
    try:
        for ep in range(n_episodes):
            obs, _ = env.reset(seed=seed + ep)
            done, ep_return, steps = False, 0.0, []
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy(obs))
                ep_return += reward
                steps.append((info["joint_velocity"], info["torque"], info["tilt"]))
                done = terminated or truncated
            v, t, tl = np.array(steps).T
            errors.append(info["error"])
            successes.append(float(info["success"]))
            qvel.append(v.mean())
            torque.append(t.mean())
            energy.append(v.mean() * t.mean())
            tilt.append(tl.mean())
            tilt_max.append(tl.max())
            returns.append(ep_return)
    finally:
        env.close()
    return {"final_error_mean": float(np.mean(errors)), "final_error_std": float(np.std(errors)),
            "success_rate": float(np.mean(successes)), "energy": float(np.mean(energy)),
            "joint_velocity": float(np.mean(qvel)), "torque": float(np.mean(torque)),
            "tilt": float(np.mean(tilt)), "tilt_max": float(np.max(tilt_max)),
            "episode_return": float(np.mean(returns)), "eval_episodes": n_episodes}


def record_rollout(policy: PolicyFn, env_id: str, path: Path, n_episodes: int, seed: int,
                   **make_kwargs: Any) -> tuple[Path, int]:
    """MP4 of ``n_episodes`` deterministic episodes (offscreen rendering)."""
    env = gym.make(env_id, render_mode="rgb_array", **make_kwargs)
    try:
        return record_episodes(env, policy, path, n_episodes=n_episodes, seed=seed)
    finally:
        env.close()


def rollout_blend_weights(model: Any, env_id: str, seed: int, **make_kwargs: Any) -> dict[str, np.ndarray]:
    """Blend weights ``(T, K, A)``, goals ``(T, G)`` and errors ``(T,)`` over one deterministic
    episode of a PPO model whose policy is a :class:`SkillBlendPolicy`."""
    env = gym.make(env_id, **make_kwargs)
    weights, goals, errors = [], [], []
    try:
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            details = model.policy.blend_details(obs)
            weights.append(details["weights"][0])
            goals.append(details["goals"][0])
            action, _ = model.predict(obs, deterministic=True)
            obs, _, terminated, truncated, info = env.step(action)
            errors.append(info["error"])
            done = terminated or truncated
    finally:
        env.close()
    return {"weights": np.array(weights), "goals": np.array(goals), "error": np.array(errors)}


def plot_blend_weights(weights: np.ndarray, skill_names: list[str], path: Path, dt: float = 0.04,
                       error: np.ndarray | None = None, title: str = "") -> Path:
    """One panel per joint: the weight of each skill over the episode (stacked, sums to 1)."""
    plt = pyplot()

    steps, n_skills, n_joints = weights.shape
    t = np.arange(steps) * dt
    rows = n_joints + (error is not None)
    fig, axes = plt.subplots(rows, 1, figsize=(7, 1.3 * rows + 0.6), sharex=True)
    for j in range(n_joints):
        ax = axes[j]
        ax.stackplot(t, weights[:, :, j].T, labels=skill_names, alpha=0.85)
        ax.set_ylim(0, 1)
        ax.set_ylabel(ACTUATED_JOINTS[j] if n_joints == len(ACTUATED_JOINTS) else f"joint {j}",
                      rotation=0, ha="right", fontsize=8)
    axes[0].legend(loc="upper right", fontsize=7, ncol=n_skills)
    if error is not None:
        axes[-1].plot(t, error, color="k")
        axes[-1].set_ylabel("task error", rotation=0, ha="right", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    fig.suptitle(title or "per-joint skill weights over an episode")
    return save_figure(fig, path)
