"""MergeVLA evaluation: closed-loop rollouts of a policy on held-out variations, routed or not.

A :class:`SuitePolicy` holds one :class:`TinyVLA` per suite (the individual experts, or the merged
model under each suite's mask with that suite's head) or a single model for every suite (the
naive full average, the base), and says how an episode's model is chosen:

* ``"oracle"``: the episode's true suite;
* ``"router"``: the training-free :class:`~streammoe.control.mergevla.router.TestTimeTaskRouter`
  on the episode's first observation (under each suite's model, the hidden states feeding the
  last shared block, or with ``router_layer`` those feeding that backbone layer's projections),
  then that suite's model for the whole episode;
* ``"single"``: the one model.

:func:`evaluate` runs ``episodes_per_task`` episodes per task, one per held-out variation, in
lockstep (the episodes of a task step together and share each forward pass; a finished episode
drops out), executing each predicted chunk whole (receding horizon, one forward pass per
``chunk`` steps, the image rendered once per chunk: ``MetaWorldTaskEnv.step_chunk``). It returns
per-episode records (task, suite, variation, success, steps, the routed suite and its
confidence) and the wall time split into policy, routing and simulation, and optionally writes
one MP4 per suite (:mod:`streammoe.video`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from streammoe_envs.metaworld import SUITES
from streammoe_envs.metaworld.env import DEFAULT_CAMERA, MetaWorldTaskEnv

from streammoe.control.mergevla.model import TinyVLA
from streammoe.control.mergevla.router import Route, TestTimeTaskRouter, confusion_matrix
from streammoe.runs import progress, pyplot, save_figure
from streammoe.video import write_mp4

__all__ = ["EpisodeRecord", "EvalResult", "ROUTES", "SuitePolicy", "evaluate", "plot_confusion",
           "plot_success", "summarise"]

ROUTES = ("oracle", "router", "single")


@dataclass
class SuitePolicy:
    """``models[s]`` serves suite ``suites[s]`` (one model for ``route="single"``)."""

    models: list[TinyVLA]
    suites: tuple[str, ...]
    route: str = "oracle"
    router: TestTimeTaskRouter | None = None
    # where the router reads the hidden states: None = the last shared action-expert block (the
    # reference), an int = that backbone layer's q/k/v input (``router.source=lora_task_vector``)
    router_layer: int | None = None
    # the tokens whose scores the router averages: "all" real tokens, or the "instruction"'s words
    router_tokens: str = "all"

    def __post_init__(self) -> None:
        if self.route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.route == "single" and len(self.models) != 1:
            raise ValueError(f"route='single' runs one model, got {len(self.models)}")
        if self.route != "single" and len(self.models) != len(self.suites):
            raise ValueError(f"{len(self.models)} models for {len(self.suites)} suites: one per suite")
        if self.route == "router":
            if self.router is None or self.router.n_tasks != len(self.suites):
                raise ValueError("route='router' needs a TestTimeTaskRouter with one basis per suite")
        if self.router_tokens not in ("all", "instruction"):
            raise ValueError(f"router_tokens must be 'all' or 'instruction', got {self.router_tokens!r}")

    def model_index(self, suite: str) -> int:
        return 0 if self.route == "single" else self.suites.index(suite)

    def route_batch(self, batch: Mapping[str, torch.Tensor]) -> Route:
        """The router's decision on a batch of first observations (each suite's model reads it)."""
        if self.router is None:
            raise ValueError(f"route={self.route!r} has no router")
        layer, model = self.router_layer, self.models[0]
        tokens = (model.instruction_token_mask(batch) if self.router_tokens == "instruction"
                  else model.token_valid_mask(batch))
        if layer is None:
            def hidden(t: int) -> torch.Tensor:
                return self.models[t].hidden_into_last_shared_block(batch)
            # + the expert's proprio row, which that block's memory appends (one of "all" tokens)
            valid = torch.cat([tokens, tokens.new_full((tokens.shape[0], 1), self.router_tokens == "all")], 1)
        else:
            def hidden(t: int) -> torch.Tensor:
                return self.models[t].hidden_into_backbone_layer(batch, int(layer))
            valid = tokens
        return self.router.route(hidden, valid=valid)


@dataclass
class EpisodeRecord:
    task: str
    suite: str
    variation: int
    success: bool
    steps: int
    routed_suite: str | None = None
    confidence: float | None = None


@dataclass
class EvalResult:
    episodes: list[EpisodeRecord]
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"episodes": [vars(e) for e in self.episodes], "seconds": dict(self.seconds)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalResult:
        return cls([EpisodeRecord(**e) for e in d["episodes"]], dict(d["seconds"]))


def _stack(obs: Sequence[Mapping[str, np.ndarray]], keys: Sequence[str], device: torch.device
           ) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.stack([o[k] for o in obs])).to(device) for k in keys}


def evaluate(policy: SuitePolicy, tasks: Sequence[str], variations: Sequence[int], *, vision: bool,
             image_size: int = 64, camera: str = DEFAULT_CAMERA, device: torch.device | None = None,
             video_dir: str | Path | None = None, video_size: int = 128, desc: str = "evaluate",
             markers: bool = False) -> EvalResult:
    """One episode per task and variation (see the module docstring). ``video_dir``: one MP4 of
    the first episode of each suite's first task, ``<video_dir>/<suite>.mp4``. ``markers``: as
    the demonstrations' (``MetaWorldTaskEnv(markers=...)``)."""
    device = device or torch.device("cpu")
    first = "image" if vision else "state"
    keys = (first, "proprio", "instruction")
    chunk = policy.models[0].cfg.chunk
    records: list[EpisodeRecord] = []
    t_policy = t_route = t_sim = 0.0
    filmed: set[str] = set()
    for task in progress(tasks, desc=desc):
        suite = next(s for s, ts in SUITES.items() if task in ts)
        film = video_dir is not None and suite not in filmed
        envs = [MetaWorldTaskEnv(task, int(v), vision=vision, image_size=image_size, camera=camera,
                                 render_mode="rgb_array" if film and i == 0 else None,
                                 render_size=video_size, markers=markers)
                for i, v in enumerate(variations)]
        frames: list[np.ndarray] = []
        try:
            t0 = time.perf_counter()
            obs = [env.reset()[0] for env in envs]
            if film:
                frames.append(envs[0].render())
            t_sim += time.perf_counter() - t0
            n = len(envs)
            which = np.full(n, policy.model_index(suite) if policy.route != "router" else -1)
            conf: list[float | None] = [None] * n
            if policy.route == "router":
                t0 = time.perf_counter()
                batch = _stack(obs, keys, device)
                route = policy.route_batch(batch)
                which = route.tasks.reshape(-1).cpu().numpy()
                conf = [float(c) for c in route.confidences.reshape(-1)]
                t_route += time.perf_counter() - t0
            active = np.ones(n, bool)
            success = np.zeros(n, bool)
            steps = np.zeros(n, int)
            while active.any():
                t0 = time.perf_counter()
                plans = np.zeros((n, chunk, 4), np.float32)
                for m in np.unique(which[active]):
                    rows = np.flatnonzero(active & (which == m))
                    batch = _stack([obs[i] for i in rows], keys, device)
                    plans[rows] = policy.models[int(m)].act(batch).cpu().numpy()
                t_policy += time.perf_counter() - t0
                t0 = time.perf_counter()
                for i in np.flatnonzero(active):
                    if film and i == 0:  # step by step, filming every frame
                        for j in range(chunk):
                            obs[i], _, terminated, truncated, info = envs[i].step(plans[i, j])
                            steps[i] += 1
                            frames.append(envs[i].render())
                            if terminated or truncated:
                                break
                    else:  # observed (rendered) once, after the chunk
                        obs[i], _, terminated, truncated, info, taken = envs[i].step_chunk(plans[i])
                        steps[i] += taken
                    if terminated or truncated:
                        success[i] = bool(info["success"])
                        active[i] = False
                t_sim += time.perf_counter() - t0
            for i, v in enumerate(variations):
                routed = policy.suites[int(which[i])] if policy.route == "router" else None
                records.append(EpisodeRecord(task, suite, int(v), bool(success[i]), int(steps[i]),
                                             routed, conf[i]))
            if film:
                path = Path(video_dir) / f"{suite}.mp4"
                write_mp4(frames, path, fps=40)
                filmed.add(suite)
        finally:
            for env in envs:
                env.close()
    total = t_policy + t_route + t_sim
    return EvalResult(records, {"policy": t_policy, "route": t_route, "simulation": t_sim,
                                "total": total})


def summarise(result: EvalResult, suites: Sequence[str]) -> dict[str, Any]:
    """Success per suite (mean over its tasks' episodes), per task, the mean over suites; when
    routed, the router's accuracy, mean confidence and confusion matrix (rows the true suite,
    columns the routed one, in ``suites`` order); routing overhead as a share of the episodes'
    wall time."""
    eps = result.episodes
    per_task: dict[str, float] = {}
    for task in dict.fromkeys(e.task for e in eps):
        per_task[task] = float(np.mean([e.success for e in eps if e.task == task]))
    per_suite = {s: float(np.mean([per_task[t] for t in SUITES[s] if t in per_task]))
                 for s in suites if any(t in per_task for t in SUITES[s])}
    out: dict[str, Any] = {"success": float(np.mean(list(per_suite.values()))),
                           "success_per_suite": per_suite, "success_per_task": per_task,
                           "episodes": len(eps)}
    routed = [e for e in eps if e.routed_suite is not None]
    if routed:
        out["router_accuracy"] = float(np.mean([e.routed_suite == e.suite for e in routed]))
        out["router_confidence_mean"] = float(np.mean([e.confidence for e in routed]))
        out["router_confusion"] = confusion_matrix([list(suites).index(e.suite) for e in routed],
                                                   [list(suites).index(e.routed_suite) for e in routed],
                                                   len(suites)).tolist()
    if result.seconds.get("total"):
        out["route_overhead"] = result.seconds["route"] / result.seconds["total"]
    return out


def plot_success(variants: Mapping[str, Mapping[str, Any]], suites: Sequence[str], path: str | Path,
                 title: str = "MergeVLA: success per suite (held-out variations)") -> Path:
    """Bars of success per suite for each variant (``summarise``'s dicts by variant name)."""
    plt = pyplot()
    names = list(variants)
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names) + 2), 3.8))
    width = 0.8 / len(suites)
    for j, suite in enumerate(suites):
        ax.bar(np.arange(len(names)) + j * width,
               [100 * variants[n]["success_per_suite"].get(suite, 0) for n in names], width, label=suite)
    ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("success %")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=7, ncol=len(suites))
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_confusion(variants: Mapping[str, Mapping[str, Any]], suites: Sequence[str], path: str | Path
                   ) -> Path | None:
    """One confusion matrix per routed variant (counts, shaded by row share); None if none."""
    routed = [n for n in variants if "router_confusion" in variants[n]]
    if not routed:
        return None
    plt = pyplot()
    cols = min(4, len(routed))
    rows_n = -(-len(routed) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.9 * cols, 3.9 * rows_n), squeeze=False)
    fig.subplots_adjust(wspace=0.45, hspace=0.6)
    for ax in axes.flat[len(routed):]:
        ax.axis("off")
    for ax, n in zip(axes.flat, routed):
        cm = np.asarray(variants[n]["router_confusion"], float)
        share = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
        for (i, j), v in np.ndenumerate(cm):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(suites)), suites, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(suites)), suites, fontsize=7)
        ax.set_xlabel("routed to", fontsize=7)
        ax.set_ylabel("true suite", fontsize=7)
        acc = np.trace(cm) / max(cm.sum(), 1)
        ax.set_title(f"{n}\naccuracy {100 * acc:.1f} %", fontsize=8)
    return save_figure(fig, path)
