"""Evaluation of any policy on a SkillBlender env: task success (with its 95 % Wilson interval),
task error and feasibility over episodes with noise off; per-joint blend weights over an episode
(plot); rollout video."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import streammoe_envs.skillblend  # noqa: F401  (registers the ids)
from streammoe_envs.skillblend.base import ACTUATED_JOINTS

from streammoe.runs import pyplot, save_figure
from streammoe.video import record_episodes

__all__ = ["FEASIBILITY_KEYS", "episode_feasibility", "evaluate", "plot_blend_weights", "record_rollout",
           "rollout_blend_weights", "wilson_interval"]

PolicyFn = Callable[[np.ndarray], np.ndarray]
Z95 = 1.959963984540054  # two-sided 95 % normal quantile
#: Per-episode feasibility figures :func:`evaluate` averages (what the paper's logger computes
#: and this body has; see ``docs/skillblender.md`` for the ones it lacks).
FEASIBILITY_KEYS = ("energy", "joint_velocity", "torque", "tilt", "tilt_max", "roll", "pitch")


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a success rate (``successes`` of ``n`` Bernoulli trials); 95 %
    by default. Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 %
    or 100 % (0 of 50: [0, 0.071])."""
    if isinstance(n, bool) or int(n) != n or n < 1:
        raise ValueError(f"n must be a positive whole number of trials, got {n!r}")
    if not 0 <= successes <= n or int(successes) != successes:
        raise ValueError(f"successes must be a whole number in [0, n={n}], got {successes!r}")
    p, z2 = successes / n, z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact ends (rounding gives 1e-17)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def evaluate(policy: PolicyFn, env_id: str, n_episodes: int, seed: int, tilt_limit: float | None = None,
             **make_kwargs: Any) -> dict[str, float]:
    """Run ``n_episodes`` (seeds ``seed, seed+1, ...``); the task error is read at the last step.
    ``make_kwargs`` go to ``gym.make`` (e.g. ``max_episode_steps``). A policy with memory (e.g.
    the scripted box pusher of ``diagnose.py``) has a ``reset()`` method, called before each
    episode.

    Success: ``success_rate`` (share of episodes whose ``info["success"]`` holds at the last
    step), ``successes`` and its 95 % Wilson interval ``success_ci_low`` / ``success_ci_high``.

    Feasibility (the paper's logger's measures this body has): ``joint_velocity`` = mean
    |actuated joint velocity|, ``torque`` = mean |actuator force|, ``energy`` = per-episode mean
    |qvel| x mean |torque| averaged over episodes, ``tilt`` = mean chassis tilt (rad, the angle
    between the chassis' up axis and the world's), ``tilt_max`` = largest tilt seen, ``roll`` /
    ``pitch`` = mean |chassis roll| / |pitch| (the passive suspension's angles). With
    ``tilt_limit``: ``feasible_rate`` = share of episodes whose tilt never exceeds it (the body
    cannot fall: its base hovers at a fixed height).
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if tilt_limit is not None and not tilt_limit > 0:
        raise ValueError(f"tilt_limit must be > 0 rad (or None), got {tilt_limit!r}")
    env = gym.make(env_id, **make_kwargs)
    reset_policy = getattr(policy, "reset", None)
    errors, successes, returns = [], [], []
    per_episode: dict[str, list[float]] = {k: [] for k in FEASIBILITY_KEYS}
    try:
        for ep in range(n_episodes):
            if reset_policy is not None:
                reset_policy()
            obs, _ = env.reset(seed=seed + ep)
            done, ep_return, steps = False, 0.0, []
            while not done:
                obs, reward, terminated, truncated, info = env.step(policy(obs))
                ep_return += reward
                steps.append((info["joint_velocity"], info["torque"], info["tilt"], abs(info["roll"]),
                              abs(info["pitch"])))
                done = terminated or truncated
            errors.append(info["error"])
            successes.append(bool(info["success"]))
            returns.append(ep_return)
            for key, value in episode_feasibility(np.array(steps)).items():
                per_episode[key].append(value)
    finally:
        env.close()
    k = int(sum(successes))
    low, high = wilson_interval(k, n_episodes)
    out = {"final_error_mean": float(np.mean(errors)), "final_error_std": float(np.std(errors)),
           "success_rate": k / n_episodes, "successes": k, "success_ci_low": low, "success_ci_high": high}
    out.update({key: float(np.max(v) if key == "tilt_max" else np.mean(v)) for key, v in per_episode.items()})
    if tilt_limit is not None:
        out["feasible_rate"] = float(np.mean(np.array(per_episode["tilt_max"]) <= tilt_limit))
        out["tilt_limit"] = float(tilt_limit)
    out.update(episode_return=float(np.mean(returns)), eval_episodes=n_episodes)
    return out


def episode_feasibility(steps: np.ndarray) -> dict[str, float]:
    """One episode's feasibility figures from its per-step rows (|joint velocity|, |torque|,
    tilt, |roll|, |pitch|): means, ``energy`` = mean |qvel| x mean |torque|, ``tilt_max``."""
    v, t, tilt, roll, pitch = np.asarray(steps, dtype=float).T
    return {"energy": float(v.mean() * t.mean()), "joint_velocity": float(v.mean()), "torque": float(t.mean()),
            "tilt": float(tilt.mean()), "tilt_max": float(tilt.max()), "roll": float(roll.mean()),
            "pitch": float(pitch.mean())}


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
