"""Benchmark SkillBlender against flat PPO and hard skill selection, and its training throughput.

Per task and seed, the three methods train back to back in one process with the same env-step
budget and PPO settings (``conf/skillblend/ppo/default.yaml``); each is then evaluated over
``--eval-episodes`` noise-off episodes. Throughput (env steps/s of ``model.learn``) of the blender
is reported as a ratio to plain SB3 PPO (``flat``) trained in the same worker on the same env
(blend, hard, flat one after another; curve evaluations are not counted), so load drift between
them still shows; ``--throughput-only`` is the more robust measurement.

    python scripts/bench_skillblend.py --skills-dir outputs/skillblend_skills/<run>/skills \\
        --timesteps 61440 --seeds 0 1 2 --jobs 2 --curve-every 20480 --curve-episodes 20 \\
        --also-at 40960 --out outputs/bench_skillblend_v2.json

Prints a table and writes JSON (per-run rows, per task/method aggregates, and the targets).
``--curve-every`` adds noise-off evaluations during training (learning curves, JSON + PNG);
``--also-at`` summarises the runs at an earlier curve point as if that were the budget.
``--throughput-only`` measures speed alone, interleaving blender and PPO training in one process
(more robust to other load than the back-to-back figures of the accuracy runs):

    python scripts/bench_skillblend.py --skills-dir ... --throughput-only --jobs 1
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np


def bench_one(task: str, seed: int, skills_dir: str, timesteps: int, n_envs: int, eval_episodes: int,
              methods: list[str], device: str, overrides: list[str], curve_every: int = 0,
              curve_episodes: int = 10) -> list[dict[str, Any]]:
    """Train and evaluate every method on one (task, seed); runs in a joblib worker. With
    ``curve_every``, the deterministic policy is also evaluated every ``curve_every`` env steps on
    ``curve_episodes`` episodes (a learning curve; it draws no random numbers, so training is
    unchanged)."""
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    torch.set_num_threads(1)
    from streammoe_envs.skillblend import ENV_IDS

    import streammoe  # noqa: F401  (MUJOCO_GL)
    from streammoe.control.skillblend.evaluate import evaluate
    from streammoe.control.skillblend.experiment import make_model, make_vec, model_policy_fn
    from streammoe.control.skillblend.skills import load_skill, skill_path
    from streammoe.devices import seed_everything

    c = _compose(overrides).skillblend
    names = list(c.skills.names)
    skills = [load_skill(skill_path(skills_dir, n)) for n in names]
    class Curve(BaseCallback):
        """Noise-off evaluation every ``curve_every`` env steps, at rollout boundaries."""

        def __init__(self) -> None:
            super().__init__()
            self.points: list[dict[str, float]] = []
            self.seconds = 0.0  # evaluation time, left out of the throughput figure

        def _on_step(self) -> bool:
            return True

        def _on_rollout_start(self) -> None:
            if curve_every and self.num_timesteps >= curve_every * (len(self.points) + 1):
                start = time.perf_counter()
                m = evaluate(model_policy_fn(self.model), ENV_IDS[task], curve_episodes, seed=10_000 + seed)
                self.points.append({"env_steps": self.num_timesteps, **m})
                self.seconds += time.perf_counter() - start

    rows = []
    for method in methods:
        seed_everything(seed)
        vec = make_vec(ENV_IDS[task], n_envs, seed)
        model = make_model(method, vec, skills, c, seed, device)
        curve = Curve()
        start = time.perf_counter()
        model.learn(total_timesteps=timesteps, callback=curve)
        seconds = time.perf_counter() - start - curve.seconds
        vec.close()
        m = evaluate(model_policy_fn(model), ENV_IDS[task], eval_episodes, seed=10_000 + seed)
        curve.points.append({"env_steps": model.num_timesteps, **m})
        rows.append({"task": task, "method": method, "seed": seed, **m, "train_steps": model.num_timesteps,
                     "train_seconds": seconds, "train_steps_per_s": model.num_timesteps / seconds,
                     "curve": curve.points})
        print(f"[bench] {task} {method} seed={seed}: error {m['final_error_mean']:.3f} "
              f"success {m['success_rate']:.2f} {model.num_timesteps / seconds:.0f} steps/s", flush=True)
    return rows


def throughput_one(task: str, skills_dir: str, chunk: int, rounds: int, n_envs: int, seed: int,
                   device: str, overrides: list[str]) -> dict[str, Any]:
    """Blender vs plain SB3 PPO training speed on one env, interleaved in one process: the two
    models alternate ``learn(chunk)`` calls for ``rounds`` rounds, so load from other processes
    hits both alike. Returns env steps/s of each and their ratio."""
    import torch

    torch.set_num_threads(1)
    from streammoe_envs.skillblend import ENV_IDS

    import streammoe  # noqa: F401
    from streammoe.control.skillblend.experiment import make_model, make_vec
    from streammoe.control.skillblend.skills import load_skill, skill_path

    c = _compose(overrides).skillblend
    skills = [load_skill(skill_path(skills_dir, n)) for n in c.skills.names]
    models = {m: make_model(m, make_vec(ENV_IDS[task], n_envs, seed), skills, c, seed, device)
              for m in ("blend", "flat")}
    seconds = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for method, model in models.items():
            start = time.perf_counter()
            model.learn(total_timesteps=chunk, reset_num_timesteps=False)
            seconds[method] += time.perf_counter() - start
    sps = {m: models[m].num_timesteps / seconds[m] for m in models}
    return {"task": task, "blend_steps_per_s": sps["blend"], "flat_steps_per_s": sps["flat"],
            "ratio_blend_over_flat": sps["blend"] / sps["flat"], "steps_each": models["blend"].num_timesteps}


def _compose(overrides: list[str] | tuple[str, ...] = ()) -> Any:
    from hydra import compose, initialize_config_dir

    from streammoe.cli import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=["experiment=skillblend", *overrides])


def aggregate(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    keys = ("final_error_mean", "success_rate", "energy", "joint_velocity", "tilt", "tilt_max",
            "train_steps_per_s")
    table, targets = [], {"tasks": {}}
    tasks = sorted({r["task"] for r in rows})
    for task in tasks:
        by_method = {}
        for method in ("blend", "hard", "flat"):
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not rs:
                continue
            agg = {"task": task, "method": method, "seeds": len(rs)}
            for k in keys:
                vals = np.array([r[k] for r in rs], dtype=float)
                agg[k] = float(vals.mean())
                if k == "final_error_mean":
                    agg["final_error_seed_std"] = float(vals.std())
            by_method[method] = agg
            table.append(agg)
        if "blend" in by_method and "flat" in by_method:
            b, f = by_method["blend"], by_method["flat"]
            # per-seed ratios: blend and flat of one seed ran back to back in one process
            ratios = [rb["train_steps_per_s"] / rf["train_steps_per_s"]
                      for rb in rows if rb["task"] == task and rb["method"] == "blend"
                      for rf in rows if rf["task"] == task and rf["method"] == "flat" and rf["seed"] == rb["seed"]]
            targets["tasks"][task] = {
                "blend_error_lower_than_flat": b["final_error_mean"] < f["final_error_mean"],
                "blend_energy_le_flat": b["energy"] <= f["energy"],
                "blend_tilt_le_flat": b["tilt"] <= f["tilt"],
                "throughput_ratio_blend_over_flat": float(np.mean(ratios)),
            }
    t = targets["tasks"]
    if t:
        targets["tasks_blend_beats_flat"] = int(sum(v["blend_error_lower_than_flat"] for v in t.values()))
        targets["accuracy_target_met"] = targets["tasks_blend_beats_flat"] >= 2
        targets["feasibility_target_met"] = all(v["blend_energy_le_flat"] and v["blend_tilt_le_flat"] for v in t.values())
        targets["min_throughput_ratio"] = min(v["throughput_ratio_blend_over_flat"] for v in t.values())
        targets["throughput_target_met"] = targets["min_throughput_ratio"] >= 0.7
    return table, targets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skills-dir", required=True, help="folder with <skill>.safetensors for every skill in skillblend.skills.names (experiment=skillblend_skills)")
    p.add_argument("--tasks", nargs="+", default=["far_reach", "button", "box_push"])
    p.add_argument("--methods", nargs="+", default=["blend", "hard", "flat"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--timesteps", type=int, default=50_000, help="env steps per method (same for all)")
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--eval-episodes", type=int, default=20)
    p.add_argument("--jobs", type=int, default=1, help="(task, seed) pairs trained in parallel (joblib)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="outputs/bench_skillblend.json")
    p.add_argument("--override", nargs="*", default=[],
                   help="Hydra overrides of experiment=skillblend, e.g. skillblend.gate_temperature=0.3")
    p.add_argument("--curve-every", type=int, default=0,
                   help="also evaluate every N env steps (learning curves in the JSON and a PNG; 0: off)")
    p.add_argument("--curve-episodes", type=int, default=10)
    p.add_argument("--also-at", type=int, nargs="*", default=[],
                   help="also summarise the curve points at these env steps (a learning curve point is "
                        "exactly the model a run with that budget would end with: PPO's schedules are constant)")
    p.add_argument("--throughput-only", action="store_true",
                   help="only the interleaved blender-vs-PPO speed measurement (no accuracy runs)")
    p.add_argument("--throughput-chunk", type=int, default=4096)
    p.add_argument("--throughput-rounds", type=int, default=4)
    args = p.parse_args()
    names = list(_compose(args.override).skillblend.skills.names)
    missing = [f"{n}.safetensors" for n in names if not (Path(args.skills_dir) / f"{n}.safetensors").is_file()]
    if missing:
        raise SystemExit(f"{args.skills_dir} lacks {', '.join(missing)}: run "
                         "`python scripts/run.py experiment=skillblend_skills` first")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from joblib import Parallel, delayed

    from streammoe.runs import format_table

    start = time.perf_counter()
    if args.throughput_only:
        speed = Parallel(n_jobs=args.jobs, backend="loky")(
            delayed(throughput_one)(task, args.skills_dir, args.throughput_chunk, args.throughput_rounds,
                                    args.n_envs, args.seeds[0], args.device, args.override)
            for task in args.tasks)
        print(format_table(speed, title="training throughput, interleaved in one process per task"))
        ratio = min(r["ratio_blend_over_flat"] for r in speed)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"args": vars(args), "throughput": speed, "min_ratio": ratio,
                                   "throughput_target_met": ratio >= 0.7}, indent=2) + "\n")
        print(f"min ratio {ratio:.3f} (target >= 0.7); wrote {out}")
        return
    jobs = [(task, seed) for task in args.tasks for seed in args.seeds]
    results = Parallel(n_jobs=args.jobs, backend="loky")(
        delayed(bench_one)(task, seed, args.skills_dir, args.timesteps, args.n_envs, args.eval_episodes,
                           args.methods, args.device, args.override, args.curve_every, args.curve_episodes)
        for task, seed in jobs)
    rows = [r for rs in results for r in rs]
    table, targets = aggregate(rows)
    print(format_table(table, title=f"SkillBlender bench: {args.timesteps} env steps per method, "
                                    f"mean over seeds {args.seeds}, {args.eval_episodes} eval episodes each"))
    print(json.dumps(targets, indent=2))
    at_budget = {}
    for steps in args.also_at:
        at_rows = [{**r, **p} for r in rows for p in r["curve"] if p["env_steps"] == steps]
        if len({(r["task"], r["method"], r["seed"]) for r in at_rows}) < len(rows):
            print(f"--also-at {steps}: not every run has a curve point there (use a multiple of --curve-every)")
            continue
        at_table, at_targets = aggregate(at_rows)
        print(format_table(at_table, title=f"the same runs at {steps} env steps ({args.curve_episodes} eval episodes)"))
        print(json.dumps(at_targets, indent=2))
        at_budget[str(steps)] = {"summary": at_table, "targets": at_targets}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "wall_seconds": time.perf_counter() - start,
                               "summary": table, "targets": targets, "at_budget": at_budget, "runs": rows},
                              indent=2) + "\n")
    print(f"wrote {out}")
    if args.curve_every:
        print(f"wrote {plot_curves(rows, out.with_suffix('.png'))}")


def plot_curves(rows: list[dict[str, Any]], path: Path) -> Path:
    """Noise-off final error vs env steps, mean over seeds, one panel per task."""
    from streammoe.runs import pyplot, save_figure

    plt = pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method in ("blend", "hard", "flat"):
            rs = [r for r in rows if r["task"] == task and r["method"] == method]
            if not rs:
                continue
            n = min(len(r["curve"]) for r in rs)
            steps = np.mean([[p["env_steps"] for p in r["curve"][:n]] for r in rs], axis=0)
            err = np.array([[p["final_error_mean"] for p in r["curve"][:n]] for r in rs])
            ax.plot(steps, err.mean(0), marker="o", label=method)
            ax.fill_between(steps, err.min(0), err.max(0), alpha=0.15)
        ax.set_title(task)
        ax.set_xlabel("env steps")
        ax.set_ylabel("final error (noise off)")
        ax.legend(fontsize=8)
    fig.suptitle("learning curves: mean over seeds (band: min-max)")
    return save_figure(fig, path)


if __name__ == "__main__":
    main()
