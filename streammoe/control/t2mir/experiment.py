"""Hydra entry of T2MIR (``experiment=t2mir_pointrobot`` / ``t2mir_cheetahvel`` / ``t2mir_smoke``).

Collect (or reuse) the training tasks' learning histories, then for every variant in
``t2mir.variants``: train (resuming from ``checkpoints/<variant>.safetensors`` when the run folder has one),
evaluate in context on the held-out tasks once per action mode in ``t2mir.eval.actions`` (resuming
from ``eval/<variant>_<mode>.safetensors``), play the context-free baselines (do nothing, random, the
expert told the task), and write ``metrics.json`` (``<variant>/<mode>/...`` summaries,
``returns_per_episode``, ``first_episode_step_rewards``), ``returns.png``,
``first_episode_rewards.png`` and ``expert_assignment_<variant>.png``. Re-running with ``hydra.run.dir=<an earlier run folder>``
resumes that run.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from streammoe_envs.task_families import TaskFamily, task_family

from streammoe.control.t2mir.config import validated
from streammoe.control.t2mir.data import History, ensure_dataset, point_robot_expert
from streammoe.control.t2mir.evaluate import (
    ACTION_MODES,
    EvalResult,
    baseline_returns,
    evaluate_in_context,
)
from streammoe.control.t2mir.expert import ensure_expert
from streammoe.control.t2mir.model import ModelConfig, variant_flags
from streammoe.control.t2mir.train import TrainConfig, checkpoint_step, train_variant
from streammoe.devices import resolve_device
from streammoe.runs import RunRecorder, format_table, pyplot, save_figure

__all__ = ["baselines", "build_configs", "collector_spec", "curve_summary", "family_from_config", "run",
           "run_t2mir"]


def family_from_config(c: DictConfig) -> TaskFamily:
    """The task family a ``t2mir`` config block describes."""
    return task_family(c.family, c.n_train_tasks, c.n_test_tasks, c.task_seed, c.horizon)


def build_configs(c: DictConfig, family: TaskFamily, histories: list[History]) -> tuple[ModelConfig, TrainConfig]:
    """The model config (shapes from the histories, the rest from ``t2mir.model``) and ``t2mir.train``."""
    h0 = histories[0]
    model_cfg = ModelConfig(obs_dim=h0.observations.shape[-1], act_dim=h0.actions.shape[-1],
                            horizon=family.horizon, **OmegaConf.to_container(c.model, resolve=True))
    return model_cfg, TrainConfig.from_mapping(OmegaConf.to_container(c.train, resolve=True))


def collector_spec(c: DictConfig) -> dict[str, Any]:
    """``{"name": <collector>, **its settings}`` from ``t2mir.collector``; ``expert_anneal`` on a
    family without an analytic expert (Cheetah-Vel) also carries ``expert``: the learned expert's
    settings (``t2mir.expert``), so they are part of the dataset's identity."""
    name = c.collector.name
    if name not in c.collector:
        raise ValueError(f"t2mir.collector.name={name!r} has no settings block t2mir.collector.{name}")
    spec = {"name": name, **OmegaConf.to_container(c.collector[name], resolve=True)}
    if name == "expert_anneal" and c.family != "point_robot":
        spec["expert"] = OmegaConf.to_container(c.expert, resolve=True)
    return spec


def baselines(c: DictConfig, family: TaskFamily, n_episodes: int, seed: int) -> dict[str, np.ndarray]:
    """Held-out returns ``(n_tasks, n_episodes)`` of policies that need no context: doing nothing
    (zero action), uniform random actions, and the expert that is told the task (the ceiling)."""
    env = family.make_env(family.test_tasks[0])
    space = env.action_space
    env.close()
    rng = np.random.default_rng(seed)
    tasks = family.test_tasks
    if c.family == "point_robot":
        def expert(obs: np.ndarray, i: int) -> np.ndarray:
            return point_robot_expert(obs, tasks[i])
    else:
        _, learned, _ = ensure_expert(c.data_dir, family, OmegaConf.to_container(c.expert, resolve=True),
                                      c.data_seed)

        def expert(obs: np.ndarray, i: int) -> np.ndarray:
            return learned.act(obs, tasks[i])[0]
    policies = {"zero": lambda obs, i: np.zeros(space.shape, np.float32),
                "random": lambda obs, i: rng.uniform(space.low, space.high).astype(np.float32),
                "expert": expert}
    return {name: baseline_returns(family, tasks, policy, n_episodes, seed) for name, policy in policies.items()}


def curve_summary(returns: np.ndarray, last: int = 5) -> dict[str, float]:
    """First / last / best episode of the mean in-context curve and the improvement: the mean of the
    last ``last`` episodes minus the first (``returns (n_tasks, n_episodes)``)."""
    curve = returns.mean(0)
    tail = curve[-min(last, len(curve)):]
    return {"first_return": float(curve[0]), "last_return": float(curve[-1]),
            "best_return": float(curve.max()), "last5_return": float(tail.mean()),
            "improvement": float(tail.mean() - curve[0])}


def _recorder(run_dir: Path, tensorboard: bool = False) -> RunRecorder:
    """A RunRecorder that keeps the rows of an earlier (interrupted) run in the same folder, up to
    each variant's checkpoint (later rows will be logged again by the resumed training); the kept
    rows go to metrics.csv only (their TensorBoard events are in the earlier run's event file)."""
    old: list[dict[str, str]] = []
    path = run_dir / "metrics.csv"
    if path.is_file():
        with path.open() as f:
            old = list(csv.DictReader(f))
    saved_step = {}
    for row in old:
        v = row["variant"]
        if v not in saved_step:
            ck = run_dir / "checkpoints" / f"{v}.safetensors"
            saved_step[v] = checkpoint_step(ck) if ck.is_file() else 0
    rec = RunRecorder(run_dir, tensorboard=tensorboard)
    for row in old:
        if float(row["step"]) > saved_step[row["variant"]]:
            continue
        rec.log_row({k: _parse(v) if k != "variant" else v for k, v in row.items()}, tensorboard=False)
    return rec


def _parse(v: str | None) -> int | float | None:
    if v in ("", None):
        return None
    try:
        return int(v)
    except ValueError:
        return float(v)


def run_t2mir(c: DictConfig, run_dir: Path, seed: int, device_name: str = "auto",
              echo: bool = True, tensorboard: bool = False) -> dict[str, Any]:
    """Collect/reuse data, train and evaluate every variant; write figures and metrics (and, with
    ``tensorboard``, TensorBoard events in ``<run_dir>/tensorboard``, SB3 collectors' included)."""
    device = resolve_device(device_name)
    run_dir = Path(run_dir)
    for v in c.variants:
        variant_flags(v)  # fail on a typo before any work
    family = family_from_config(c)
    rec = _recorder(run_dir, tensorboard)
    folder, manifest, histories = ensure_dataset(c.data_dir, family, c.n_episodes, collector_spec(c), c.data_seed,
                                                 tensorboard_log=rec.sb3_tensorboard_log("collect"))
    model_cfg, tcfg = build_configs(c, family, histories)
    context_episodes = c.eval.context_episodes or tcfg.context_episodes
    results: dict[str, dict[str, EvalResult]] = {}
    train_info: dict[str, dict[str, float]] = {}
    for variant in c.variants:
        model, info = train_variant(variant, model_cfg, tcfg, histories, device, seed,
                                    ckpt_path=run_dir / "checkpoints" / f"{variant}.safetensors", log=rec.log)
        train_info[variant] = info
        results[variant] = {}
        for mode in c.eval.actions:
            results[variant][mode] = evaluate_in_context(
                model, family, family.test_tasks, c.eval.n_episodes, context_episodes, seed=seed + 12345,
                sample=ACTION_MODES[mode], context=c.eval.context,
                state_path=run_dir / "eval" / f"{variant}_{mode}.safetensors",
                video_path=run_dir / f"rollout_{variant}_{mode}.mp4" if c.eval.video else None)
    base = baselines(c, family, min(5, c.eval.n_episodes), seed + 54321)

    data_returns = np.stack([h.returns for h in histories])  # (tasks, episodes)
    metrics: dict[str, Any] = {}
    rows = []
    for v, by_mode in results.items():
        metrics[f"{v}/ms_per_step"] = train_info[v]["ms_per_step"]
        for mode, r in by_mode.items():
            summary = curve_summary(r.returns)
            metrics.update({f"{v}/{mode}/{k}": x for k, x in summary.items()})
            rows.append({"variant": v, "actions": mode, **summary, "ms_per_step": train_info[v]["ms_per_step"]})
    for name, ret in base.items():
        metrics[f"baseline/{name}_return"] = float(ret.mean())
        rows.append({"variant": f"baseline: {name}", "actions": "-", "first_return": float(ret.mean()),
                     "last_return": float(ret.mean())})
    metrics["data_first_return"] = float(data_returns[:, 0].mean())
    metrics["data_last_return"] = float(data_returns[:, -1].mean())
    metrics["returns_per_episode"] = {v: {m: r.returns.mean(0).tolist() for m, r in bm.items()}
                                      for v, bm in results.items()}
    metrics["returns_per_task"] = {v: {m: r.returns.tolist() for m, r in bm.items()} for v, bm in results.items()}
    # within the first episode (no context yet) the model can still adapt: mean reward per step
    metrics["first_episode_step_rewards"] = {v: {m: r.rewards[:, 0].mean(0).tolist() for m, r in bm.items()}
                                             for v, bm in results.items()}
    metrics["baseline_returns_per_task"] = {name: ret.mean(1).tolist() for name, ret in base.items()}
    metrics["test_tasks"] = family.test_tasks.tolist()
    metrics["eval_protocol"] = {"context": c.eval.context, "context_episodes": int(context_episodes),
                                "window": tcfg.window, "n_episodes": int(c.eval.n_episodes)}
    metrics["dataset"] = str(folder)
    metrics["device"] = str(device)

    _plot_returns(results, base, run_dir / "returns.png", c.family)
    _plot_first_episode(results, base, run_dir / "first_episode_rewards.png", c.family, family.horizon)
    for v, by_mode in results.items():
        r = next(iter(by_mode.values()))
        if r.task_expert_counts is not None:
            _plot_assignment(r.task_expert_counts, family.test_tasks, run_dir / f"expert_assignment_{v}.png", v)
    if echo:
        print(format_table(rows, title=f"T2MIR {c.family}: in-context return on held-out tasks (seed {seed})"))
    return rec.finish(metrics, echo=False)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Hydra entry: ``cfg.t2mir`` holds the system's config."""
    validated(cfg)  # every key's type and range, device (t2mir/config.py)
    return run_t2mir(cfg.t2mir, run_dir, seed=int(cfg.seed), device_name=cfg.device, tensorboard=cfg.tensorboard)


def _plot_returns(results: dict[str, dict[str, EvalResult]], base: dict[str, np.ndarray], path: Path,
                  family: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for v, by_mode in results.items():
        for mode, r in by_mode.items():
            mean = r.returns.mean(0)
            sem = r.returns.std(0) / np.sqrt(r.returns.shape[0])
            x = np.arange(1, len(mean) + 1)
            line, = ax.plot(x, mean, label=f"{v} ({mode})", linestyle="-" if mode == "mean" else "--")
            ax.fill_between(x, mean - sem, mean + sem, alpha=0.15, color=line.get_color())
    for name, ret in base.items():
        ax.axhline(float(ret.mean()), color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(name, (1, float(ret.mean())), fontsize=7, color="grey", va="bottom")
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (mean over held-out tasks)")
    ax.set_title(f"{family}: in-context improvement")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _plot_first_episode(results: dict[str, dict[str, EvalResult]], base: dict[str, np.ndarray], path: Path,
                        family: str, horizon: int) -> None:
    """Reward per step within the first in-context episode (no context yet)."""
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    for v, by_mode in results.items():
        for mode, r in by_mode.items():
            ax.plot(np.arange(horizon), r.rewards[:, 0].mean(0), label=f"{v} ({mode})",
                    linestyle="-" if mode == "mean" else "--")
    for name, ret in base.items():
        ax.axhline(float(ret.mean()) / horizon, color="grey", linewidth=0.8, linestyle=":")
        ax.annotate(f"{name} (mean per step)", (0, float(ret.mean()) / horizon), fontsize=7, color="grey",
                    va="bottom")
    ax.set_xlabel("step of the first episode")
    ax.set_ylabel("reward (mean over held-out tasks)")
    ax.set_title(f"{family}: adaptation within the first episode")
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _plot_assignment(counts: np.ndarray, tasks: np.ndarray, path: Path, variant: str) -> None:
    """One panel per test task: share of tokens routed to each task expert, per episode."""
    plt = pyplot()

    n = counts.shape[0]
    fig, axes = plt.subplots(1, n, figsize=(2.2 * n + 1, 3), squeeze=False, sharey=True)
    share = counts / counts.sum(-1, keepdims=True).clip(min=1)
    for i, ax in enumerate(axes[0]):
        im = ax.imshow(share[i].T, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="lower")
        ax.set_title("task " + ", ".join(f"{x:.2f}" for x in np.ravel(tasks[i])), fontsize=8)
        ax.set_xlabel("episode")
    axes[0][0].set_ylabel("task expert")
    fig.suptitle(f"{variant}: task-wise expert assignment on held-out tasks", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    save_figure(fig, path)
