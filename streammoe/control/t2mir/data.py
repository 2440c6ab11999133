"""Learning histories for T2MIR: collection, files on disk, validation, and context sampling.

A *learning history* is one task's episodes in the order a learner produced them, so returns rise
along it; Algorithm Distillation learns to continue that improvement in context. Two collectors:

* ``expert_anneal`` (the default): a goal-conditioned expert with AD-epsilon noise annealing: in
  episode ``i`` each action is random with probability ``eps_i`` (linear from 1 to 0 over the
  first ``anneal_fraction`` of the history), otherwise the expert's action plus Gaussian noise
  ``action_noise``. Random actions are iid uniform or, with ``noise_correlation > 0``, a
  temporally correlated AR(1) process (exploration that travels). The expert is analytic on
  Point-Robot and a SAC actor trained once on all target velocities on Cheetah-Vel
  (:mod:`streammoe.control.t2mir.expert`); it sees the task, the logged observations never do.
* ``sb3``: a Stable-Baselines3 learner (PPO or SAC) trained from scratch on each task; every
  episode it plays while learning is logged in order (the AD recipe; at CPU budgets its Cheetah-Vel
  histories never got better than standing still).

A dataset is a folder with ``task_000.npz`` ... (``observations (E, H, obs_dim)``, ``actions
(E, H, act_dim)``, ``rewards (E, H)``, ``task``) and ``manifest.json`` (family, collector and its
settings, shapes, tasks, a SHA-256 per file). :func:`load_dataset` checks all of it and names the
problem. :func:`ensure_dataset` writes the dataset once per collection setting (the folder name
holds a hash of the settings) and reuses it across training runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from streammoe_envs.task_families import TaskFamily

from streammoe.runs import progress

__all__ = [
    "MANIFEST_FORMAT",
    "WINDOWS",
    "History",
    "ContextSampler",
    "collect_expert_anneal",
    "collect_sb3",
    "collector_function",
    "ensure_dataset",
    "load_dataset",
    "point_robot_expert",
    "write_dataset",
]

MANIFEST_FORMAT = "streammoe.t2mir.history/1"


@dataclass
class History:
    """One task's learning history: ``observations (E, H, obs_dim)`` (the state before each
    action), ``actions (E, H, act_dim)``, ``rewards (E, H)``; ``task`` is the hidden parameter."""

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    task: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        return self.rewards.sum(1)


def point_robot_expert(obs: np.ndarray, goal: np.ndarray, action_scale: float = 0.1) -> np.ndarray:
    """The action that moves straight to ``goal`` (clipped to the action box)."""
    return np.clip((goal - obs) / action_scale, -1.0, 1.0).astype(np.float32)


def _rollout(env: gym.Env, policy: Any, seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    obs, _ = env.reset(seed=seed)
    os_, as_, rs = [], [], []
    done = False
    while not done:
        a = np.asarray(policy(obs), np.float32)
        nxt, r, term, trunc, _ = env.step(a)
        os_.append(obs)
        as_.append(a)
        rs.append(r)
        obs, done = nxt, term or trunc
    return np.asarray(os_, np.float32), np.asarray(as_, np.float32), np.asarray(rs, np.float32)


def collect_expert_anneal(family: TaskFamily, task: np.ndarray, n_episodes: int, seed: int,
                          anneal_fraction: float = 0.75, action_noise: float = 0.1,
                          noise_correlation: float = 0.0, explore_std: float = 0.6,
                          expert: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> History:
    """Noise-annealed rollouts of a goal-conditioned expert: ``expert(obs, task) -> action``
    (default: the analytic Point-Robot expert; Cheetah-Vel needs a learned one, e.g.
    :meth:`~streammoe.control.t2mir.expert.CheetahExpert.act`).

    ``noise_correlation = 0``: the random actions are independent uniform draws (a diffusion that
    covers ~0.3 of the unit-distance task in 20 steps). ``> 0``: they follow a clipped AR(1)
    Gaussian process ``z_t = rho z_(t-1) + sqrt(1 - rho^2) xi_t``, action ``explore_std * z_t``
    (temporally correlated exploration, as DDPG's Ornstein-Uhlenbeck noise): the exploratory
    episode travels further, so its rewards say more about where the goal is.
    """
    if expert is None:
        if family.name != "point_robot":
            raise ValueError(f"collector expert_anneal has an analytic expert for point_robot only; "
                             f"{family.name!r} needs a learned expert (expert=...)")
        def expert(obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
            return point_robot_expert(obs, goal)
    if not 0.0 <= noise_correlation < 1.0:
        raise ValueError(f"noise_correlation must be in [0, 1), got {noise_correlation}")
    rng = np.random.default_rng(seed)
    env = family.make_env(task)
    act_dim = int(np.prod(env.action_space.shape))
    anneal_eps = max(1, round(anneal_fraction * n_episodes))
    rho = noise_correlation
    episodes = []
    for i in range(n_episodes):
        eps = max(0.0, 1.0 - i / anneal_eps)
        # AR(1) state, stationary N(0, 1) from the first step (drawn only when used, so the
        # uncorrelated default reproduces earlier datasets exactly)
        z = rng.standard_normal(act_dim) if rho > 0.0 else np.zeros(act_dim)

        def policy(obs: np.ndarray, eps: float = eps, z: np.ndarray = z) -> np.ndarray:
            if rng.random() < eps:
                if rho == 0.0:
                    return rng.uniform(-1.0, 1.0, act_dim)
                z[:] = rho * z + np.sqrt(1.0 - rho**2) * rng.standard_normal(act_dim)  # the episode's AR(1) state
                return np.clip(explore_std * z, -1.0, 1.0)
            a = np.asarray(expert(obs, task), np.float64).reshape(-1) + action_noise * rng.standard_normal(act_dim)
            return np.clip(a, -1.0, 1.0)

        episodes.append(_rollout(env, policy, seed=int(rng.integers(2**31)) if i == 0 else None))
    env.close()
    return _stack(episodes, task, family.horizon)


class _EpisodeLogger(gym.Wrapper):
    """Logs every (obs, action, reward) the learner's env sees, split into finished episodes."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._cur: list[tuple[np.ndarray, np.ndarray, float]] = []
        self._obs: np.ndarray | None = None

    def reset(self, **kwargs: Any) -> tuple[Any, dict[str, Any]]:
        self._cur = []
        self._obs, info = self.env.reset(**kwargs)
        return self._obs, info

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        a = np.clip(np.asarray(action, np.float32), self.action_space.low, self.action_space.high)
        nxt, r, term, trunc, info = self.env.step(a)
        self._cur.append((np.asarray(self._obs, np.float32), a, float(r)))
        self._obs = nxt
        if term or trunc:
            o, act, rew = zip(*self._cur)
            self.episodes.append((np.stack(o), np.stack(act), np.asarray(rew, np.float32)))
            self._cur = []
        return nxt, r, term, trunc, info


def collect_sb3(family: TaskFamily, task: np.ndarray, n_episodes: int, seed: int,
                algo: str = "ppo", algo_kwargs: Mapping[str, Any] | None = None,
                tensorboard_log: str | Path | None = None) -> History:
    """Train an SB3 learner from scratch on one task; its first ``n_episodes`` in order.
    ``tensorboard_log``: the learner's TensorBoard folder (SB3 adds ``PPO_1/``...; None: none)."""
    from stable_baselines3 import PPO, SAC

    algos = {"ppo": PPO, "sac": SAC}
    if algo not in algos:
        raise ValueError(f"unknown sb3 algo {algo!r}; choose ppo or sac")
    env = _EpisodeLogger(family.make_env(task))
    tb = None if tensorboard_log is None else str(tensorboard_log)
    model = algos[algo]("MlpPolicy", env, seed=seed, device="cpu", verbose=0, tensorboard_log=tb,
                        **dict(algo_kwargs or {}))
    chunk = family.horizon * 4
    while len(env.episodes) < n_episodes:  # learn in chunks so we stop soon after enough episodes
        model.learn(chunk, reset_num_timesteps=False)
    env.close()
    return _stack(env.episodes[:n_episodes], task, family.horizon)


def _stack(episodes: list[tuple[np.ndarray, np.ndarray, np.ndarray]], task: np.ndarray,
           horizon: int) -> History:
    bad = [len(e[2]) for e in episodes if len(e[2]) != horizon]
    if bad:
        raise ValueError(f"episodes must all last horizon={horizon} steps (no early termination), got {bad[:5]}")
    o, a, r = (np.stack([e[i] for e in episodes]) for i in range(3))
    return History(o.astype(np.float32), a.astype(np.float32), r.astype(np.float32),
                   np.asarray(task, np.float32))


# ----- files ------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(folder: Path, family: TaskFamily, histories: list[History],
                  collector: Mapping[str, Any]) -> Path:
    """One ``task_XXX.npz`` per task and a ``manifest.json`` describing them."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    h0 = histories[0]
    entries = []
    for i, h in enumerate(histories):
        path = folder / f"task_{i:03d}.npz"
        np.savez(path, observations=h.observations, actions=h.actions, rewards=h.rewards, task=h.task)
        entries.append({"file": path.name, "task": h.task.tolist(), "sha256": _sha256(path),
                        "first_return": float(h.returns[0]), "last_return": float(h.returns[-1])})
    manifest = {
        "format": MANIFEST_FORMAT, "family": family.name, "env_id": family.env_id,
        "horizon": family.horizon, "n_episodes": int(h0.rewards.shape[0]),
        "obs_dim": int(h0.observations.shape[-1]), "act_dim": int(h0.actions.shape[-1]),
        "collector": dict(collector), "tasks": entries,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return folder


def load_dataset(folder: str | Path, expect: Mapping[str, Any] | None = None
                 ) -> tuple[dict[str, Any], list[History]]:
    """Read and validate a dataset folder; ``expect`` lists manifest fields that must match."""
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise FileNotFoundError(f"no T2MIR dataset at {folder}: {mpath.name} is missing (collect it first)")
    try:
        manifest = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{mpath} is not valid JSON: {e}") from e
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{mpath} has format {manifest.get('format')!r}, expected {MANIFEST_FORMAT!r}")
    for key, value in (expect or {}).items():
        if manifest.get(key) != value:
            raise ValueError(f"dataset {folder} has {key}={manifest.get(key)!r} but the config asks for {value!r}")
    n_ep, horizon = manifest["n_episodes"], manifest["horizon"]
    histories = []
    for entry in manifest["tasks"]:
        path = folder / entry["file"]
        if not path.is_file():
            raise FileNotFoundError(f"dataset {folder} lists {entry['file']} but the file is missing")
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"{path} does not match its SHA-256 in the manifest (changed or corrupt)")
        with np.load(path) as z:
            h = History(z["observations"], z["actions"], z["rewards"], z["task"])
        shapes = {"observations": (n_ep, horizon, manifest["obs_dim"]),
                  "actions": (n_ep, horizon, manifest["act_dim"]), "rewards": (n_ep, horizon)}
        for name, shape in shapes.items():
            arr = getattr(h, name)
            if arr.shape != shape:
                raise ValueError(f"{path}: {name} has shape {arr.shape}, manifest says {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{path}: {name} contains NaN or inf")
        if not np.allclose(h.task, entry["task"]):
            raise ValueError(f"{path}: task {h.task.tolist()} differs from the manifest's {entry['task']}")
        histories.append(h)
    return manifest, histories


def collector_function(collector: Mapping[str, Any], data_dir: str | Path, family: TaskFamily, seed: int
                       ) -> tuple[Callable[..., History], dict[str, Any]]:
    """The collection function of ``collector`` (``{"name": ..., **settings}``) and its keyword
    arguments; a learned expert's settings (``"expert"``, Cheetah-Vel) become the expert's
    ``act``, trained once and cached in ``data_dir`` (:func:`~streammoe.control.t2mir.expert.ensure_expert`)."""
    fns = {"expert_anneal": collect_expert_anneal, "sb3": collect_sb3}
    if collector["name"] not in fns:
        raise ValueError(f"unknown collector {collector['name']!r}; choose {sorted(fns)}")
    kwargs = {k: v for k, v in collector.items() if k != "name"}
    if kwargs.get("expert") is not None:
        from streammoe.control.t2mir.expert import ensure_expert

        kwargs["expert"] = ensure_expert(data_dir, family, kwargs["expert"], seed)[1].act
    else:
        kwargs.pop("expert", None)
    return fns[collector["name"]], kwargs


def ensure_dataset(data_dir: str | Path, family: TaskFamily, n_episodes: int,
                   collector: Mapping[str, Any], seed: int, tensorboard_log: str | Path | None = None
                   ) -> tuple[Path, dict[str, Any], list[History]]:
    """Load the training-task histories for these settings, collecting them first if absent.
    ``tensorboard_log``: when an ``sb3`` collector runs, each task's learner writes its TensorBoard
    events into ``<tensorboard_log>/task_XXX`` (not part of the dataset's settings)."""
    collector = dict(collector)
    spec = {"family": family.name, "horizon": family.horizon, "n_episodes": n_episodes,
            "tasks": np.round(family.train_tasks, 6).tolist(), "collector": collector, "seed": seed}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = Path(data_dir) / f"{family.name}_{collector['name']}_{digest}"
    expect = {"family": family.name, "horizon": family.horizon, "n_episodes": n_episodes}
    if not (folder / "manifest.json").is_file():
        collect, kwargs = collector_function(collector, data_dir, family, seed)

        def tb(i: int) -> dict[str, Any]:
            if collector["name"] != "sb3" or tensorboard_log is None:
                return {}
            return {"tensorboard_log": Path(tensorboard_log) / f"task_{i:03d}"}

        histories = [collect(family, task, n_episodes, seed + 1000 * i, **kwargs, **tb(i))
                     for i, task in enumerate(progress(family.train_tasks, desc="collect histories"))]
        # Write to a private folder, then rename: a crash never leaves a half-written dataset,
        # and of two runs collecting the same data at once the first rename wins.
        tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        write_dataset(tmp, family, histories, collector)
        try:
            tmp.rename(folder)
        except OSError:
            if not (folder / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp)
    manifest, histories = load_dataset(folder, expect)
    return folder, manifest, histories


# ----- context sampling -------------------------------------------------------------------------

WINDOWS = ("random_sorted", "consecutive")


class ContextSampler:
    """Batches of contexts of ``context_episodes`` episodes from the learning histories.

    ``window`` picks the episodes of a context:

    * ``random_sorted`` (the reference's protocol, default): ``context_episodes`` distinct episodes
      drawn at random from the task's history and put in order of return, so every context shows
      improvement and spans much of the history's range;
    * ``consecutive``: a run of consecutive episodes of the history (AD's original protocol), in
      the learner's order or, with ``sort_by_return``, of the history sorted by return.

    Each batch holds ``batch_size / 2`` distinct tasks, each twice with independently drawn
    windows: the two views are the positives of the contrastive task-routing loss. The sampler's
    numpy generator state is part of a training checkpoint (``state`` / ``set_state``).
    """

    def __init__(self, histories: list[History], context_episodes: int, batch_size: int, seed: int,
                 sort_by_return: bool = False, window: str = "random_sorted") -> None:
        if batch_size < 2 or batch_size % 2:
            raise ValueError(f"batch_size must be even and >= 2 (two views per task), got {batch_size}")
        if window not in WINDOWS:
            raise ValueError(f"unknown context window {window!r}; choose one of {list(WINDOWS)}")
        n_ep = histories[0].rewards.shape[0]
        if not 1 <= context_episodes <= n_ep:
            raise ValueError(f"context_episodes must be in [1, {n_ep}], got {context_episodes}")
        self.window = window
        # sort_by_return: order each history by episode return (the reference's recipe), so every
        # window shows steady improvement rather than the learner's noisy ups and downs.
        order = [np.argsort(h.returns, kind="stable") if sort_by_return else np.arange(n_ep)
                 for h in histories]
        self.obs, self.act, self.rew = (np.stack([getattr(h, field)[o] for h, o in zip(histories, order)])
                                        for field in ("observations", "actions", "rewards"))
        self.returns = self.rew.sum(2)  # (tasks, episodes), in the stored order
        self.k, self.batch_size = context_episodes, batch_size
        self.rng = np.random.default_rng(seed)
        self.horizon = self.rew.shape[2]

    @cached_property
    def fingerprint(self) -> str:
        """SHA-256 prefix of the (ordered) histories: identifies the training data in a checkpoint
        (computed once: the arrays never change, and every checkpoint stores it)."""
        h = hashlib.sha256()
        for arr in (self.obs, self.act, self.rew):
            h.update(np.ascontiguousarray(arr).tobytes())
        return h.hexdigest()[:16]

    def sample(self) -> dict[str, np.ndarray]:
        n_tasks, n_ep = self.rew.shape[:2]
        half = self.batch_size // 2
        tasks = self.rng.choice(n_tasks, half, replace=n_tasks < half)
        ids = np.concatenate([tasks, tasks])
        b = len(ids)
        if self.window == "consecutive":
            starts = self.rng.integers(0, n_ep - self.k + 1, size=b)
            eps = starts[:, None] + np.arange(self.k)[None, :]  # (B, K)
        else:  # k distinct episodes per context (argsort of uniform keys), then in return order
            eps = np.argsort(self.rng.random((b, n_ep)), axis=1)[:, :self.k]
            ret = self.returns[ids[:, None], eps]
            eps = np.take_along_axis(eps, np.argsort(ret, axis=1, kind="stable"), axis=1)
        pick = (ids[:, None], eps)
        t = np.tile(np.arange(self.horizon), self.k)[None].repeat(b, 0)
        return {
            "obs": self.obs[pick].reshape(b, self.k * self.horizon, -1),
            "act": self.act[pick].reshape(b, self.k * self.horizon, -1),
            "rew": self.rew[pick].reshape(b, self.k * self.horizon),
            "t": t, "task_ids": ids,
        }

    def state(self) -> dict[str, Any]:
        return self.rng.bit_generator.state

    def set_state(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state
