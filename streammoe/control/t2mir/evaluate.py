"""In-context evaluation on held-out tasks: no weight updates, N consecutive episodes per task.

All test tasks run side by side as one batch. At the start of each episode the KV cache is rebuilt
from ``context_episodes - 1`` finished episodes (one pass over the prefix, exactly what a
whole-sequence forward would compute), chosen by ``context``:

* ``best_sorted`` (the reference's protocol, default): the best ``context_episodes - 1`` previous
  episodes of the task, in order of return, then the episode being played: the order training's
  ``random_sorted`` windows have (the newest, best-so-far episode last);
* ``recent``: the ``context_episodes - 1`` most recent episodes in the order they were played
  (AD's original protocol, for ``consecutive`` training windows).

Within the episode every env step costs one cached pass over the new tokens
``(a_{t-1}, r_{t-1}, s_t)``. Actions are the predicted Gaussian's mean (``sample=False``,
deterministic, the reference's evaluation) or drawn from it (``sample=True``, the exploration AD
learned from noisy early history). What the envs return is checked in numpy as it arrives; the
model's own input checks (a host sync each on a GPU) run once per prefill, not per token.

Progress is saved after every episode when ``state_path`` is given (``eval/<variant>.safetensors``
in a run folder, :mod:`streammoe.checkpoint`'s format: nothing in it is unpickled); calling again
with the same path continues where it stopped and gives the same returns as an uninterrupted
evaluation. The file records the evaluation's settings (tasks, episodes, context, seed, sampling),
which the continuing call must share.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streammoe_envs.task_families import TaskFamily

from streammoe import checkpoint as ckpt
from streammoe.control.t2mir.model import ICRLTransformer, KVCache
from streammoe.runs import progress
from streammoe.video import write_mp4

__all__ = ["ACTION_MODES", "CONTEXTS", "EvalResult", "baseline_returns", "context_episodes_for",
           "evaluate_in_context", "play_episode", "prefill_context", "read_eval_state"]

EVAL_KIND = "streammoe.t2mir.eval"
EVAL_VERSION = 2  # 1: a torch.save pickle (eval/<variant>.pt), no longer read
EVAL_LABEL = "T2MIR evaluation state"


CONTEXTS = ("best_sorted", "recent")
ACTION_MODES = {"mean": False, "sample": True}  # t2mir.eval.actions -> evaluate_in_context's sample


@dataclass
class EvalResult:
    returns: np.ndarray  # (n_tasks, n_episodes)
    rewards: np.ndarray  # (n_tasks, n_episodes, horizon) every step's reward
    task_expert_counts: np.ndarray | None  # (n_tasks, n_episodes, n_task_experts) top-k picks
    token_expert_counts: np.ndarray | None  # (n_tasks, n_episodes, n_token_experts)


def _count(counts: np.ndarray | None, routed: Any, ep: int) -> None:
    if counts is None or routed is None:
        return
    idx = routed.indices.reshape(routed.indices.shape[0], -1).cpu().numpy()  # (B, T*k)
    for b in range(idx.shape[0]):
        counts[b, ep] += np.bincount(idx[b], minlength=counts.shape[-1])



def prefill_context(model: ICRLTransformer, cache: KVCache, obs: np.ndarray, act: np.ndarray,
                    rew: np.ndarray, horizon: int) -> None:
    """Put whole finished episodes into ``cache`` in one pass: ``obs (n, S, obs_dim)``,
    ``act (n, S, act_dim)``, ``rew (n, S)`` with ``S`` a multiple of ``horizon``."""
    device = next(model.parameters()).device
    n, s = rew.shape
    t_idx = np.tile(np.arange(horizon), s // horizon)[None].repeat(n, 0)
    steps = [torch.as_tensor(np.asarray(a), device=device) for a in (obs, act, rew, t_idx)]
    model.check_inputs(*steps)  # once per prefill (one host sync), not per token
    model.run_tokens(model.embed_steps(*steps), cache)


@torch.no_grad()
def play_episode(model: ICRLTransformer, envs: list[Any], cache: KVCache, horizon: int,
                 gen: torch.Generator, sample: bool, reset_seeds: list[int | None],
                 on_forward: Callable[[Any], None] | None = None,
                 frames: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One episode on every env side by side, after whatever ``cache`` holds (the context); every
    step costs one cached pass over its new tokens ``(a_{t-1}, r_{t-1}, s_t)``.

    Returns ``obs (n, horizon, obs_dim)`` (the state before each action), ``act (n, horizon,
    act_dim)``, ``rew (n, horizon)``. ``on_forward`` sees each pass's routing features;
    ``frames`` collects ``envs[0]``'s renders (reset frame, then one per step)."""
    device = next(model.parameters()).device
    n = len(envs)

    def tt(x: Any) -> torch.Tensor:
        return torch.as_tensor(np.asarray(x), device=device)

    obs_hist = np.zeros((n, horizon, model.cfg.obs_dim), np.float32)
    act_hist = np.zeros((n, horizon, model.cfg.act_dim), np.float32)
    rew_hist = np.zeros((n, horizon), np.float32)
    obs = np.stack([env.reset(seed=sd)[0] for env, sd in zip(envs, reset_seeds)]).astype(np.float32)
    pending = model.embed_state(tt(obs)[:, None], tt(np.zeros((n, 1), np.int64)))
    if frames is not None:
        frames.append(envs[0].render())
    for t in range(horizon):
        hidden, f = model.run_tokens(pending, cache)
        if on_forward is not None:
            on_forward(f)
        mean, log_std = model.action_dist(hidden[:, -1])
        act = mean
        if sample:
            act = mean + log_std.exp() * torch.randn(mean.shape, generator=gen).to(device)
        act_np = act.clamp(-1.0, 1.0).cpu().numpy().astype(np.float32)
        steps = [env.step(a) for env, a in zip(envs, act_np)]
        rew = np.array([s[1] for s in steps], np.float32)
        obs_hist[:, t], act_hist[:, t], rew_hist[:, t] = obs, act_np, rew
        obs = np.stack([s[0] for s in steps]).astype(np.float32)
        if frames is not None:
            frames.append(envs[0].render())
        if t + 1 < horizon:
            if not (np.isfinite(rew).all() and np.isfinite(obs).all()):
                bad = [i for i in range(n) if not (np.isfinite(rew[i]) and np.isfinite(obs[i]).all())]
                raise ValueError(f"env(s) {bad} returned a NaN or inf observation or reward at step {t}")
            ti = tt(np.full((n, 1), t, np.int64))
            pending = torch.cat([model.embed_action(tt(act_np)[:, None], ti),
                                 model.embed_reward(tt(rew)[:, None], ti),
                                 model.embed_state(tt(obs)[:, None], ti + 1)], dim=1)
    return obs_hist, act_hist, rew_hist


def context_episodes_for(returns: np.ndarray, m: int, context: str) -> np.ndarray:
    """Indices ``(n_tasks, min(m, done))`` of the finished episodes (``returns (n_tasks, done)``)
    that form the context: the ``m`` best in increasing order of return (``best_sorted``; of two
    equal returns the earlier episode ranks higher) or the ``m`` most recent in play order (``recent``).

    >>> context_episodes_for(np.array([[-5.0, -1.0, -3.0, -2.0]]), 2, "best_sorted").tolist()
    [[3, 1]]
    >>> context_episodes_for(np.array([[-5.0, -1.0, -3.0, -2.0]]), 2, "recent").tolist()
    [[2, 3]]
    """
    n, done = returns.shape
    m = min(m, done)
    if m <= 0:
        return np.zeros((n, 0), np.int64)
    if context == "recent":
        return np.tile(np.arange(done - m, done), (n, 1))
    order = np.argsort(-returns, axis=1, kind="stable")[:, :m]  # the best m, best first
    return np.ascontiguousarray(order[:, ::-1])  # worst of them first, best last


@torch.no_grad()
def evaluate_in_context(model: ICRLTransformer, family: TaskFamily, tasks: np.ndarray,
                        n_episodes: int, context_episodes: int, seed: int, sample: bool = True,
                        state_path: Path | None = None, stop_after: int | None = None,
                        video_path: Path | None = None, context: str = "best_sorted") -> EvalResult:
    """Play ``n_episodes`` in context on every task of ``tasks``; ``context`` picks the previous
    episodes kept as context (module docstring); ``stop_after`` stops early (the saved state lets
    a later call finish the evaluation). ``video_path``: an MP4 of the first task's episodes played
    in this call (``horizon + 1`` frames per episode)."""
    if context_episodes < 1:
        raise ValueError(f"context_episodes must be >= 1, got {context_episodes}")
    if context not in CONTEXTS:
        raise ValueError(f"unknown evaluation context {context!r}; choose one of {list(CONTEXTS)}")
    model.eval()
    n, horizon = len(tasks), family.horizon
    if horizon > model.cfg.horizon:
        raise ValueError(f"episodes last {horizon} steps but the model knows {model.cfg.horizon} timesteps")
    envs = [family.make_env(task, render_mode="rgb_array" if video_path is not None and i == 0 else None)
            for i, task in enumerate(tasks)]
    frames: list[np.ndarray] = []
    n_task_e = model.cfg.n_task_experts if model.cfg.task_moe else None
    n_token_e = model.cfg.n_token_experts if model.cfg.token_moe else None
    returns = np.zeros((n, n_episodes))
    task_counts = None if n_task_e is None else np.zeros((n, n_episodes, n_task_e))
    token_counts = None if n_token_e is None else np.zeros((n, n_episodes, n_token_e))
    obs_dim, act_dim = model.cfg.obs_dim, model.cfg.act_dim
    hist_obs = np.zeros((n, n_episodes, horizon, obs_dim), np.float32)
    hist_act = np.zeros((n, n_episodes, horizon, act_dim), np.float32)
    hist_rew = np.zeros((n, n_episodes, horizon), np.float32)
    gen = torch.Generator().manual_seed(seed)
    start = 0
    settings = {"tasks": np.asarray(tasks).tolist(), "n_episodes": int(n_episodes),
                "context_episodes": int(context_episodes), "seed": int(seed), "sample": bool(sample),
                "context": context}
    if state_path is not None:
        ckpt.refuse_legacy(state_path, state_path.with_suffix(".pt"), EVAL_LABEL)
    if state_path is not None and state_path.is_file():
        st = read_eval_state(state_path, settings)
        if st["returns"].shape != returns.shape or len(st["env_rng"]) != n:
            raise ckpt.CheckpointError(f"{state_path} belongs to a different evaluation (array shapes differ)")
        start = int(st["done"])
        returns, hist_obs, hist_act, hist_rew = st["returns"], st["obs"], st["act"], st["rew"]
        task_counts, token_counts = st["task_counts"], st["token_counts"]
        gen.set_state(st["gen"])
        for env, rng_state in zip(envs, st["env_rng"]):
            env.unwrapped.np_random.bit_generator.state = rng_state

    def count(f: Any) -> None:
        _count(task_counts, f.task, ep)
        _count(token_counts, f.token, ep)

    end = n_episodes if stop_after is None else min(n_episodes, stop_after)
    for ep in progress(range(start, end), desc="in-context eval"):
        cache: KVCache = model.new_cache()
        keep = context_episodes_for(returns[:, :ep], context_episodes - 1, context)  # (n, m)
        if keep.shape[1]:  # rebuild the cache from the previous episodes kept as context
            s = keep.shape[1] * horizon
            rows = np.arange(n)[:, None]
            prefill_context(model, cache, hist_obs[rows, keep].reshape(n, s, obs_dim),
                            hist_act[rows, keep].reshape(n, s, act_dim), hist_rew[rows, keep].reshape(n, s),
                            horizon)
        seeds = [seed + i if ep == 0 else None for i in range(n)]
        hist_obs[:, ep], hist_act[:, ep], hist_rew[:, ep] = play_episode(
            model, envs, cache, horizon, gen, sample, seeds, on_forward=count,
            frames=frames if video_path is not None else None)
        returns[:, ep] = hist_rew[:, ep].sum(1)
        if state_path is not None:
            ckpt.save(state_path, {"done": ep + 1, "returns": returns, "obs": hist_obs, "act": hist_act,
                                   "rew": hist_rew, "task_counts": task_counts, "token_counts": token_counts,
                                   "gen": gen.get_state(),
                                   "env_rng": [env.unwrapped.np_random.bit_generator.state for env in envs]},
                      kind=EVAL_KIND, version=EVAL_VERSION, config={"evaluation": settings})
    for env in envs:
        env.close()
    if video_path is not None and frames:
        write_mp4(frames, video_path, fps=family.metadata_fps)
    return EvalResult(returns, hist_rew, task_counts, token_counts)


def read_eval_state(path: str | Path, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The saved progress of an evaluation (``done`` episodes, ``returns``, ``obs`` / ``act`` /
    ``rew`` histories, expert counts, RNG states); ``settings``: the evaluation's (tasks, episodes,
    context episodes, seed, sampling), which the file's must equal."""
    return ckpt.load(path, kind=EVAL_KIND, version=EVAL_VERSION, label=EVAL_LABEL,
                     match=None if settings is None else {"evaluation": settings},
                     hints={"evaluation": "It belongs to a different evaluation (tasks or episode count "
                                          "differ): delete it, or use another run folder."}).state


def baseline_returns(family: TaskFamily, tasks: np.ndarray, policy: Callable[[np.ndarray, int], np.ndarray],
                     n_episodes: int, seed: int) -> np.ndarray:
    """Returns ``(n_tasks, n_episodes)`` of a policy that needs no context: ``policy(obs, task_index)``
    (do nothing, random actions, or the expert that is told the task)."""
    out = np.zeros((len(tasks), n_episodes))
    for i, task in enumerate(tasks):
        env = family.make_env(task)
        for ep in range(n_episodes):
            obs, _ = env.reset(seed=seed + 1000 * i + ep)
            done = False
            while not done:
                obs, r, term, trunc, _ = env.step(policy(obs, i))
                out[i, ep] += float(r)
                done = term or trunc
        env.close()
    return out

