"""A goal-conditioned expert for Cheetah-Vel: one SAC actor that runs at any commanded velocity.

Learning histories need competent behaviour in them (AD distils the *improvement* from poor to
good episodes). Training an RL learner per task at CPU scale never got past standing still, so
the histories anneal noise on one shared expert instead (the AD-epsilon recipe the design note
allows): :func:`train_expert` trains SB3's SAC on ``observation + target velocity`` with the
target resampled at every episode (:class:`TargetInObservation`), then :func:`score_expert`
measures, on given target velocities, the mean ``|v - v*|`` after the first ``settle_steps``
steps. An expert is used only when that error is below ``max_error`` (the acceptance test).

The expert is saved as a streammoe checkpoint (safetensors: the actor's weights, nothing
unpickled on load) and rebuilt by :class:`CheetahExpert`, a plain torch MLP with SAC's actor
layout, acting deterministically (``tanh`` of the mean). The target velocity is an input of the
expert only; the histories it produces record the environment's observation, which never holds it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from streammoe_envs.task_families import TaskFamily
from torch import nn

from streammoe import checkpoint as ckpt
from streammoe.runs import progress

__all__ = ["EXPERT_KIND", "CheetahExpert", "TargetInObservation", "ensure_expert", "score_expert",
           "train_expert"]

EXPERT_KIND = "streammoe.t2mir.expert"
EXPERT_VERSION = 1
EXPERT_LABEL = "T2MIR Cheetah-Vel expert"


class TargetInObservation(gym.Wrapper):
    """A task-family env whose target is drawn from ``U[low, high]`` at every reset and appended to
    the observation (what a goal-conditioned learner sees; the histories never do)."""

    def __init__(self, env: gym.Env, low: float, high: float) -> None:
        super().__init__(env)
        if not low < high:
            raise ValueError(f"target range must have low < high, got [{low}, {high}]")
        self.low, self.high = float(low), float(high)
        box = env.observation_space
        assert isinstance(box, spaces.Box)
        self.observation_space = spaces.Box(-np.inf, np.inf, (box.shape[0] + 1,), np.float32)
        self._rng = np.random.default_rng()
        self._target = 0.0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        self._target = float(self._rng.uniform(self.low, self.high))
        obs, info = self.env.reset(seed=seed, options={**(options or {}), "task": [self._target]})
        return self._augment(obs), info

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        obs, r, term, trunc, info = self.env.step(action)
        return self._augment(obs), r, term, trunc, info

    def _augment(self, obs: np.ndarray) -> np.ndarray:
        return np.append(np.asarray(obs, np.float32), np.float32(self._target))


class CheetahExpert(nn.Module):
    """SAC's actor (``latent_pi`` MLP with ReLU, ``mu`` head) without SB3: ``act(obs, targets)``
    gives the deterministic action ``tanh(mu)`` for a batch of observations and target velocities."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim + 1
        for h in hidden:
            layers += [nn.Linear(d, int(h)), nn.ReLU()]
            d = int(h)
        self.latent_pi = nn.Sequential(*layers)
        self.mu = nn.Linear(d, act_dim)
        self.obs_dim, self.act_dim, self.hidden = obs_dim, act_dim, [int(h) for h in hidden]

    @torch.no_grad()
    def act(self, obs: np.ndarray, targets: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32).reshape(-1, self.obs_dim)
        targets = np.asarray(targets, np.float32).reshape(-1, 1)
        x = torch.as_tensor(np.concatenate([obs, targets], 1))
        return torch.tanh(self.mu(self.latent_pi(x))).numpy()

    def save(self, path: Path, settings: Mapping[str, Any], score: Mapping[str, Any]) -> Path:
        state = {"weights": self.state_dict(), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                 "hidden": self.hidden, "score": dict(score)}
        return ckpt.save(path, state, kind=EXPERT_KIND, version=EXPERT_VERSION,
                         config={"settings": dict(settings)})

    @classmethod
    def load(cls, path: str | Path, settings: Mapping[str, Any] | None = None
             ) -> tuple[CheetahExpert, dict[str, Any]]:
        """The expert in ``path`` and its acceptance score; ``settings``: what it must be trained with."""
        ck = ckpt.load(path, kind=EXPERT_KIND, version=EXPERT_VERSION, label=EXPERT_LABEL,
                       match=None if settings is None else {"settings": dict(settings)},
                       hints={"settings": "Delete the file to train an expert with these settings."})
        st = ck.state
        expert = cls(int(st["obs_dim"]), int(st["act_dim"]), st["hidden"])
        expert.load_state_dict(st["weights"])
        return expert.eval(), dict(st["score"])


def score_expert(expert: CheetahExpert, family: TaskFamily, velocities: np.ndarray, seed: int,
                 settle_steps: int = 20) -> dict[str, Any]:
    """Run the expert once per target velocity; the mean ``|v - v*|`` after ``settle_steps``."""
    velocities = np.asarray(velocities, np.float32).reshape(-1)
    envs = [family.make_env(np.array([v])) for v in velocities]
    obs = np.stack([env.reset(seed=seed + i)[0] for i, env in enumerate(envs)])
    errors = np.zeros((len(envs), family.horizon))
    for t in range(family.horizon):
        acts = expert.act(obs, velocities)
        steps = [env.step(a) for env, a in zip(envs, acts)]
        obs = np.stack([s[0] for s in steps])
        errors[:, t] = [abs(s[4]["x_velocity"] - v) for s, v in zip(steps, velocities)]
    for env in envs:
        env.close()
    per_target = errors[:, settle_steps:].mean(1)
    return {"velocities": velocities.tolist(), "mean_abs_error": per_target.tolist(),
            "mean_abs_error_all": float(per_target.mean()), "settle_steps": int(settle_steps)}


def train_expert(family: TaskFamily, settings: Mapping[str, Any], seed: int,
                 tensorboard_log: str | Path | None = None) -> CheetahExpert:
    """SAC on the goal-conditioned family (target resampled per episode) for ``settings["steps"]``
    env steps; returns the actor as a :class:`CheetahExpert`."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    low, high = settings["target_range"]
    env = TargetInObservation(family.make_env(family.train_tasks[0]), low, high)
    env.reset(seed=seed)
    hidden = list(settings["hidden"])
    model = SAC("MlpPolicy", env, seed=seed, device="cpu", verbose=0, learning_rate=settings["lr"],
                batch_size=settings["batch_size"], learning_starts=settings["learning_starts"],
                policy_kwargs={"net_arch": hidden},
                tensorboard_log=None if tensorboard_log is None else str(tensorboard_log))
    bar = progress(total=int(settings["steps"]), desc="train Cheetah-Vel expert (SAC)")

    class _Bar(BaseCallback):
        def _on_step(self) -> bool:
            bar.update(1)
            return True

    model.learn(int(settings["steps"]), callback=_Bar())
    bar.close()
    obs_dim = int(env.observation_space.shape[0]) - 1
    expert = CheetahExpert(obs_dim, int(env.action_space.shape[0]), hidden)
    actor = model.policy.actor
    expert.latent_pi.load_state_dict(actor.latent_pi.state_dict())
    expert.mu.load_state_dict(actor.mu.state_dict())
    env.close()
    return expert.eval()


def ensure_expert(data_dir: str | Path, family: TaskFamily, settings: Mapping[str, Any], seed: int,
                  tensorboard_log: str | Path | None = None) -> tuple[Path, CheetahExpert, dict[str, Any]]:
    """The expert for these settings, trained and scored on the family's test velocities first if
    ``data_dir`` has none. Raises when its error exceeds ``settings["max_error"]`` (a rejected
    expert is kept, with its score, so the failure is not paid for twice)."""
    settings = dict(settings)
    spec = {"family": family.name, "horizon": family.horizon, "settings": settings, "seed": seed}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(data_dir) / f"{family.name}_expert_{digest}.safetensors"
    if path.is_file():
        expert, score = CheetahExpert.load(path, settings)
    else:
        expert = train_expert(family, settings, seed, tensorboard_log)
        score = score_expert(expert, family, family.test_tasks, seed + 1, settings["settle_steps"])
        expert.save(path, settings, score)
        path.with_suffix(".json").write_text(json.dumps({"settings": settings, "score": score}, indent=2) + "\n")
    if score["mean_abs_error_all"] > settings["max_error"]:
        raise ValueError(
            f"the Cheetah-Vel expert {path} misses its acceptance test: mean |v - v*| after "
            f"{score['settle_steps']} steps is {score['mean_abs_error_all']:.3f} on the test velocities "
            f"(max_error {settings['max_error']}); train it longer (expert.steps) and delete the file")
    return path, expert, score
