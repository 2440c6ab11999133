"""``experiment=driftmoe`` (and ``driftmoe_smoke``): a learner and its baselines, prequential on one
drifting stream, side by side; a comparison table, ``metrics.csv`` (accuracy per window, expert
shares), ``metrics.json`` and two plots (accuracy over time with the drifts marked; which expert
the router chose over time).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from streammoe.runs import RunRecorder, format_table, pyplot, save_figure
from streammoe.stream.config import validated
from streammoe.stream.driftmoe import warm_up_torch
from streammoe.stream.evaluation import PrequentialResult, prequential
from streammoe.stream.learners import make_learner
from streammoe.stream.streams import DriftStream, iter_file, make_stream

__all__ = ["build_stream", "comparison_rows", "run"]


def build_stream(c: DictConfig, seed: int) -> tuple[Any, list[int], int | None]:
    """(iterable of (x, y), drift positions, length or None) from a ``conf/stream`` node."""
    if c.name == "file":
        return iter_file(c.path, target=c.target, n_instances=c.n_instances), [], c.n_instances
    s: DriftStream = make_stream(c.name, scale=c.scale, seed=seed, n_instances=c.n_instances)
    return s, s.drifts, s.n_instances


def comparison_rows(results: dict[str, PrequentialResult], reference: str = "arf"
                    ) -> list[dict[str, Any]]:
    """One row per learner; ``speed_vs_<reference>`` is the instances/s ratio."""
    ref = results.get(reference)
    rows = []
    for name, r in results.items():
        row = {"learner": name, **{k: v for k, v in r.summary().items() if k != "n"}}
        if ref is not None:
            row[f"speed_vs_{reference}"] = r.inst_per_s / ref.inst_per_s
        rows.append(row)
    return rows


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Hydra entry: the model and its baselines, prequentially on one stream; table and plots."""
    validated(cfg)  # every key's type and range; device: CPU only (stream/config.py)
    c = cfg.driftmoe
    torch.set_num_threads(1)  # one-row routers: threads only add contention
    warm_up_torch()  # torch's one-time lazy imports stay out of the timed part
    stream, drifts, n = build_stream(c.stream, cfg.seed)
    params = OmegaConf.to_container(c.model.params, resolve=True)
    if "hidden_sizes" in params:
        params["hidden_sizes"] = tuple(params["hidden_sizes"])
    models = {c.model.kind: make_learner(c.model.kind, seed=cfg.seed, **params)}
    for name in c.baselines:
        if name not in models:
            models[name] = make_learner(name, seed=cfg.seed)
    results = prequential(models, stream, window=c.window, n_instances=n,
                          memory_checkpoints=c.memory_checkpoints, desc=c.stream.name)

    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    first = next(iter(results.values()))
    shares = {name: r.expert_share for name, r in results.items() if r.expert_share}
    n_exp = max((len(s) for sh in shares.values() for s in sh), default=0)
    for w, end in enumerate(first.window_ends):
        row: dict[str, Any] = {"instance": end}
        row.update({f"acc_{name}": r.window_accuracy[w] for name, r in results.items()})
        for name, sh in shares.items():
            padded = list(sh[w]) + [0.0] * (n_exp - len(sh[w]))
            row.update({f"share_{name}_{i}": s for i, s in enumerate(padded)})
        rec.log(**row)
    if c.plots:
        _plot_accuracy(results, drifts, run_dir / "accuracy_over_time.png", c.stream.name)
        for name, sh in shares.items():
            _plot_experts(first.window_ends, sh, drifts, run_dir / f"experts_{name}.png", name)

    rows = comparison_rows(results)
    title = f"{c.stream.name}, {first.n} instances, seed {cfg.seed} (accuracy/kappas in %)"
    print(format_table(rows, title=title, floatfmt=".4g"))
    metrics: dict[str, Any] = {"stream": c.stream.name, "n": first.n, "drifts": drifts}
    main = c.model.kind
    metrics.update({"accuracy": results[main].accuracy * 100, "inst_per_s": results[main].inst_per_s})
    for row in rows:
        name = row["learner"]
        metrics.update({f"{name}/{k}": v for k, v in row.items() if k != "learner"})
    return rec.finish(metrics, echo=False)


def _plot_accuracy(results: dict[str, PrequentialResult], drifts: list[int], path: Path,
                   stream: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(8, 3.5))
    for name, r in results.items():
        ax.plot(r.window_ends, np.asarray(r.window_accuracy) * 100,
                label=f"{name} ({r.accuracy * 100:.2f}%)", lw=1.2)
    for i, d in enumerate(drifts):
        ax.axvline(d, color="k", ls="--", lw=0.8, label="drift" if i == 0 else None)
    ax.set_xlabel("instance")
    ax.set_ylabel("accuracy in window (%)")
    ax.set_title(f"{stream}: prequential accuracy over time")
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)


def _plot_experts(ends: list[int], shares: list[list[float]], drifts: list[int], path: Path,
                  name: str) -> None:
    plt = pyplot()

    width = max(len(s) for s in shares)
    mat = np.array([list(s) + [0.0] * (width - len(s)) for s in shares]).T  # experts x windows
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.stackplot(ends, mat, labels=[f"expert {i}" for i in range(width)],
                 colors=plt.cm.tab20(np.linspace(0, 1, max(width, 2))))
    for d in drifts:
        ax.axvline(d, color="k", ls="--", lw=0.8)
    ax.set_xlabel("instance")
    ax.set_ylabel("share of top-1 choices")
    ax.set_ylim(0, 1)
    ax.set_title(f"{name}: which expert the router chose (per window)")
    ax.legend(fontsize=6, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, path)
