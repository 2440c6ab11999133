"""Hydra entry of T2MIR (``experiment=t2mir_pointrobot`` / ``t2mir_cheetahvel`` / ``t2mir_smoke``).

Collect (or reuse) the training tasks' learning histories, then for every variant in
``t2mir.variants``: train (resuming from ``checkpoints/<variant>.safetensors`` when the run folder has one),
evaluate in context on the held-out tasks (resuming from ``eval/<variant>.safetensors``), and write
``metrics.json`` (``returns_per_episode`` per variant), ``returns.png`` and
``expert_assignment_<variant>.png``. Re-running with ``hydra.run.dir=<an earlier run folder>``
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
from streammoe.control.t2mir.data import History, ensure_dataset
from streammoe.control.t2mir.evaluate import EvalResult, evaluate_in_context
from streammoe.control.t2mir.model import ModelConfig, variant_flags
from streammoe.control.t2mir.train import TrainConfig, checkpoint_step, train_variant
from streammoe.devices import resolve_device
from streammoe.runs import RunRecorder, format_table, pyplot, save_figure

__all__ = ["build_configs", "collector_spec", "family_from_config", "run", "run_t2mir"]


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
    """``{"name": <collector>, **its settings}`` from ``t2mir.collector``."""
    name = c.collector.name
    if name not in c.collector:
        raise ValueError(f"t2mir.collector.name={name!r} has no settings block t2mir.collector.{name}")
    return {"name": name, **OmegaConf.to_container(c.collector[name], resolve=True)}


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
    results: dict[str, EvalResult] = {}
    train_info: dict[str, dict[str, float]] = {}
    for variant in c.variants:
        model, info = train_variant(variant, model_cfg, tcfg, histories, device, seed,
                                    ckpt_path=run_dir / "checkpoints" / f"{variant}.safetensors", log=rec.log)
        train_info[variant] = info
        results[variant] = evaluate_in_context(
            model, family, family.test_tasks, c.eval.n_episodes,
            c.eval.context_episodes or tcfg.context_episodes, seed=seed + 12345, sample=c.eval.sample,
            state_path=run_dir / "eval" / f"{variant}.safetensors",
            video_path=run_dir / f"rollout_{variant}.mp4" if c.eval.video else None)

    data_returns = np.stack([h.returns for h in histories])  # (tasks, episodes)
    metrics: dict[str, Any] = {}
    rows = []
    for v, r in results.items():
        curve = r.returns.mean(0)
        first, last = float(curve[0]), float(curve[-1])
        metrics[f"{v}/first_return"] = first
        metrics[f"{v}/last_return"] = last
        metrics[f"{v}/improvement"] = last - first
        metrics[f"{v}/ms_per_step"] = train_info[v]["ms_per_step"]
        rows.append({"variant": v, "first_return": first, "last_return": last,
                     "best_return": float(curve.max()), "ms_per_step": train_info[v]["ms_per_step"]})
    metrics["data_first_return"] = float(data_returns[:, 0].mean())
    metrics["data_last_return"] = float(data_returns[:, -1].mean())
    metrics["returns_per_episode"] = {v: r.returns.mean(0).tolist() for v, r in results.items()}
    metrics["returns_per_task"] = {v: r.returns.tolist() for v, r in results.items()}
    metrics["test_tasks"] = family.test_tasks.tolist()
    metrics["dataset"] = str(folder)
    metrics["device"] = str(device)

    _plot_returns(results, run_dir / "returns.png", c.family)
    for v, r in results.items():
        if r.task_expert_counts is not None:
            _plot_assignment(r.task_expert_counts, family.test_tasks, run_dir / f"expert_assignment_{v}.png", v)
    if echo:
        print(format_table(rows, title=f"T2MIR {c.family}: in-context return on held-out tasks (seed {seed})"))
    return rec.finish(metrics, echo=False)


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Hydra entry: ``cfg.t2mir`` holds the system's config."""
    validated(cfg)  # every key's type and range, device (t2mir/config.py)
    return run_t2mir(cfg.t2mir, run_dir, seed=int(cfg.seed), device_name=cfg.device, tensorboard=cfg.tensorboard)


def _plot_returns(results: dict[str, EvalResult], path: Path, family: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for v, r in results.items():
        mean = r.returns.mean(0)
        sem = r.returns.std(0) / np.sqrt(r.returns.shape[0])
        x = np.arange(1, len(mean) + 1)
        ax.plot(x, mean, label=v)
        ax.fill_between(x, mean - sem, mean + sem, alpha=0.2)
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (mean over held-out tasks)")
    ax.set_title(f"{family}: in-context improvement")
    ax.legend(fontsize=8)
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
