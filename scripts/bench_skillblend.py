"""Benchmark SkillBlender against flat PPO and hard skill selection: learning curves up to 1M env
steps, success first; and two speed measurements.

1. One ``scripts/run.py experiment=skillblend`` job per (task, method, seed), all with the same
   env-step budget (``--timesteps``) and PPO settings (``conf/skillblend/ppo/default.yaml``), in
   a pool of ``--jobs`` subprocesses (:mod:`streammoe.jobs`), each in
   ``OUT/runs/<task>/<method>/seed_<s>`` with its output in ``log.txt``. Every job evaluates its
   deterministic policy on ``--eval-episodes`` episodes at each of ``--curve-at`` (the first
   rollout boundary at or after it; ``skillblend.curve_at``) and at the end of training. A
   finished job (``metrics.json`` present) is skipped; an interrupted one resumes from its PPO
   checkpoints (``skillblend.resume=auto``, every ``skillblend.checkpoint_every`` rollouts) with
   the curve points it had already evaluated, so the bench can run in parts.
2. Aggregates every finished job into ``OUT/bench.json`` and ``OUT/bench.md``: per budget point,
   task and method, the success rate with its 95 % Wilson interval over episodes x seeds, then
   the final error (mean over seeds ± their std), energy, tilt, the feasibility rate and the
   other feasibility measures; the targets; learning curves ``OUT/curves.png``.

    python scripts/bench_skillblend.py --skills-dir results/skillblend/skills --out outputs/bench_skillblend_1m
    python scripts/bench_skillblend.py --out outputs/bench_skillblend_1m --aggregate-only
    python scripts/bench_skillblend.py --skills-dir results/skillblend/skills --timesteps 61440 \\
        --curve-at 20480 40960 --eval-episodes 20 --out outputs/bench_61k     # the 61,440-step bench

Speed (in one process, nothing else written):

* ``--throughput-only``: blender vs plain SB3 PPO training speed on the same env, interleaved
  ``learn`` calls (load from other processes hits both alike); JSON to ``--out``.
* ``--vec-env-speed``: ``skillblend.vec_env=dummy`` vs ``subproc`` (SB3 ``DummyVecEnv`` vs
  ``SubprocVecEnv``), interleaved ``learn`` calls of the blender; wall-clock steps/s and CPU
  seconds per 1,000 env steps of all the processes involved (Linux ``/proc``); JSON to ``--out``.

Extra Hydra overrides for every job: ``--override key=value ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streammoe.runs import format_table, pyplot, save_figure, to_jsonable  # noqa: E402

METHOD_ORDER = ("blend", "hard", "flat")
#: Targets of issue 15 (at the largest budget, <= 1M env steps): the blender's success rate.
SUCCESS_TARGETS = {"far_reach": 0.8, "button": 0.8, "box_push": 0.5}
AVERAGED = ("final_error_mean", "energy", "joint_velocity", "torque", "tilt", "roll", "pitch", "feasible_rate",
            "env_steps")


# -------------------------------------------------------------------------------- jobs
def plan(out: Path, skills_dir: Path, tasks: Sequence[str], methods: Sequence[str], seeds: Sequence[int],
         timesteps: int, curve_at: Sequence[int], eval_episodes: int, vec_env: str, video_episodes: int,
         overrides: Sequence[str], experiment: str = "skillblend") -> list[Any]:
    """One :class:`streammoe.jobs.Job` per (task, method, seed); the first seed's jobs record
    ``video_episodes`` episodes as MP4 at the final budget, the others none."""
    from streammoe.jobs import Job

    jobs = []
    for task in tasks:
        for method in methods:
            for seed in seeds:
                run_dir = out / "runs" / task / method / f"seed_{seed}"
                cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), f"experiment={experiment}", f"seed={seed}",
                       f"skillblend.task={task}", f"skillblend.method={method}",
                       f"skillblend.skills_dir={skills_dir.resolve()}", f"skillblend.timesteps={timesteps}",
                       f"skillblend.curve_at=[{','.join(str(int(p)) for p in curve_at)}]",
                       f"skillblend.eval_episodes={eval_episodes}", f"skillblend.vec_env={vec_env}",
                       f"skillblend.video_episodes={video_episodes if seed == seeds[0] else 0}",
                       "skillblend.resume=auto", "skillblend.threads=1", f"hydra.run.dir={run_dir}",
                       "tensorboard=false", *overrides]
                jobs.append(Job(f"{task} {method} seed={seed}", run_dir, cmd))
    return jobs


def load_runs(out: Path) -> list[dict[str, Any]]:
    """``metrics.json`` of every finished job under ``OUT/runs``."""
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/seed_*/metrics.json"))]


# -------------------------------------------------------------------------------- aggregation
def summarise(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (budget point, task, method): success pooled over episodes x seeds with its
    Wilson interval, the other measures averaged over seeds (``final_error_seed_std``: their
    spread), ``tilt_max`` the largest seen."""
    from streammoe.control.skillblend.evaluate import wilson_interval

    groups: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        for point in run["curve"]:
            groups.setdefault((int(point["at"]), run["task"], run["method"]), []).append({**point, "seed": run["seed"]})
    rows = []
    for (at, task, method), points in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                              METHOD_ORDER.index(kv[0][2]))):
        k, n = sum(int(p["successes"]) for p in points), sum(int(p["eval_episodes"]) for p in points)
        low, high = wilson_interval(k, n)
        row: dict[str, Any] = {"budget": at, "task": task, "method": method, "seeds": sorted(p["seed"] for p in points),
                               "success_rate": k / n, "success_ci_low": low, "success_ci_high": high,
                               "successes": k, "episodes": n}
        for key in AVERAGED:
            vals = [p[key] for p in points if key in p]
            row[key] = float(np.mean(vals)) if vals else None
        row["final_error_seed_std"] = float(np.std([p["final_error_mean"] for p in points]))
        row["tilt_max"] = float(max(p["tilt_max"] for p in points))
        rows.append(row)
    return rows


def targets(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Issue 15's targets, judged on the rows: the blender's success at the largest budget, and
    at every budget point its success >= flat PPO's and its feasibility no worse than flat's."""
    by = {(r["budget"], r["task"], r["method"]): r for r in rows}
    budgets = sorted({r["budget"] for r in rows})
    out: dict[str, Any] = {"per_budget": [], "final_budget": budgets[-1] if budgets else None}
    for budget in budgets:
        for task in sorted({r["task"] for r in rows if r["budget"] == budget}):
            b, f = by.get((budget, task, "blend")), by.get((budget, task, "flat"))
            if b is None or f is None:
                continue
            out["per_budget"].append({
                "budget": budget, "task": task,
                "blend_success_ge_flat": b["success_rate"] >= f["success_rate"],
                "blend_error_lt_flat": b["final_error_mean"] < f["final_error_mean"],
                "blend_energy_le_flat": b["energy"] <= f["energy"], "blend_tilt_le_flat": b["tilt"] <= f["tilt"],
                "blend_feasible_ge_flat": (b["feasible_rate"] or 0.0) >= (f["feasible_rate"] or 0.0)})
    final = [r for r in rows if r["budget"] == out["final_budget"] and r["method"] == "blend"]
    out["blend_success_at_final_budget"] = {
        r["task"]: {"success_rate": r["success_rate"], "target": SUCCESS_TARGETS.get(r["task"]),
                    "met": r["success_rate"] >= SUCCESS_TARGETS.get(r["task"], 1.0)} for r in final}
    pb = out["per_budget"]
    out["success_ge_flat_everywhere"] = bool(pb) and all(t["blend_success_ge_flat"] for t in pb)
    out["feasibility_no_worse_than_flat_everywhere"] = bool(pb) and all(
        t["blend_energy_le_flat"] and t["blend_tilt_le_flat"] and t["blend_feasible_ge_flat"] for t in pb)
    return out


def render(rows: Sequence[dict[str, Any]], tgt: dict[str, Any], title: str) -> str:
    """Markdown: one table per budget point, success first."""
    lines = [f"# {title}", ""]
    for budget in sorted({r["budget"] for r in rows}):
        sel = [r for r in rows if r["budget"] == budget]
        steps = np.mean([r["env_steps"] for r in sel])
        lines += [f"## {budget:,} env steps (evaluated at {steps:,.0f} on average)", "",
                  "| task | method | success (95 % CI) | final error (± seed std) | energy | tilt (rad) | "
                  "feasible | roll | pitch | joint vel. | torque | seeds |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sel:
            feas = "n/a" if r["feasible_rate"] is None else f"{r['feasible_rate']:.2f}"
            lines.append(
                f"| {r['task']} | {r['method']} | {r['success_rate']:.2f} [{r['success_ci_low']:.2f}, "
                f"{r['success_ci_high']:.2f}] ({r['successes']}/{r['episodes']}) | {r['final_error_mean']:.3f} ± "
                f"{r['final_error_seed_std']:.3f} | {r['energy']:.2f} | {r['tilt']:.4f} | {feas} | {r['roll']:.4f} | "
                f"{r['pitch']:.4f} | {r['joint_velocity']:.3f} | {r['torque']:.2f} | {len(r['seeds'])} |")
        lines.append("")
    lines += ["## Targets", "", "```json", json.dumps(to_jsonable(tgt), indent=2), "```"]
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]], path: Path) -> Path:
    """Success rate (pooled, 95 % Wilson band) and final error (mean over seeds, band min-max)
    against env steps; one column per task."""
    plt = pyplot()
    tasks = sorted({r["task"] for r in rows})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 6.4), squeeze=False)
    for j, task in enumerate(tasks):
        for method in METHOD_ORDER:
            sel = sorted((r for r in rows if r["task"] == task and r["method"] == method), key=lambda r: r["env_steps"])
            if not sel:
                continue
            x = [r["env_steps"] for r in sel]
            line, = axes[0, j].plot(x, [r["success_rate"] for r in sel], marker="o", label=method)
            axes[0, j].fill_between(x, [r["success_ci_low"] for r in sel], [r["success_ci_high"] for r in sel],
                                    alpha=0.15, color=line.get_color())
            per_seed = [[p["final_error_mean"] for p in sorted(run["curve"], key=lambda p: p["env_steps"])]
                        for run in runs if run["task"] == task and run["method"] == method]
            n = min(len(s) for s in per_seed)
            err = np.array([s[:n] for s in per_seed])
            axes[1, j].plot(x[:n], err.mean(0), marker="o", color=line.get_color(), label=method)
            axes[1, j].fill_between(x[:n], err.min(0), err.max(0), alpha=0.15, color=line.get_color())
        axes[0, j].set_title(task)
        axes[0, j].set_ylim(-0.02, 1.02)
        axes[0, j].set_ylabel("success rate")
        axes[1, j].set_ylabel("final error (noise off)")
        axes[1, j].set_xlabel("env steps")
        axes[0, j].legend(fontsize=8)
    fig.suptitle("learning curves: success (band: 95 % Wilson, episodes x seeds), final error (band: min-max over seeds)")
    return save_figure(fig, path)


def aggregate(out: Path, ran: dict[str, Any] | None = None) -> dict[str, Any]:
    """``bench.json``, ``bench.md`` and ``curves.png`` from every finished job under ``OUT``."""
    runs = load_runs(out)
    if not runs:
        raise SystemExit(f"no finished runs under {out / 'runs'} (metrics.json): run the bench first")
    rows = summarise(runs)
    tgt = targets(rows)
    plan_file = out / "plan.json"
    saved = json.loads(plan_file.read_text()) if plan_file.is_file() else {}
    old = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
    history = [*old.get("sessions", []), ran] if ran is not None else old.get("sessions", [])
    report = {"plan": saved, "sessions": history, "summary": rows, "targets": tgt,
              "train_steps_per_s": _throughput(runs), "runs": [{k: r[k] for k in ("task", "method", "seed")}
                                                                | {"curve": r["curve"]} for r in runs]}
    text = render(rows, tgt, f"SkillBlender bench ({len(runs)} runs, {out})")
    print(text)
    (out / "bench.json").write_text(json.dumps(to_jsonable(report), indent=2) + "\n")
    (out / "bench.md").write_text(text + "\n")
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}, {plot(rows, runs, out / 'curves.png')}")
    return report


def _throughput(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Training steps/s per (task, method), mean over seeds (a resumed run: its part after the resume)."""
    out = []
    for task in sorted({r["task"] for r in runs}):
        for method in METHOD_ORDER:
            vals = [r["train_steps_per_s"] for r in runs if r["task"] == task and r["method"] == method
                    and r.get("train_steps_per_s") == r.get("train_steps_per_s")]  # NaN: resumed after training
            if vals:
                out.append({"task": task, "method": method, "train_steps_per_s": float(np.mean(vals))})
    return out


# -------------------------------------------------------------------------------- speed
def throughput_one(task: str, skills_dir: str, chunk: int, rounds: int, n_envs: int, seed: int,
                   device: str, overrides: list[str]) -> dict[str, Any]:
    """Blender vs plain SB3 PPO training speed on one env, interleaved in one process: the two
    models alternate ``learn(chunk)`` calls for ``rounds`` rounds, so load from other processes
    hits both alike. Returns env steps/s of each and their ratio."""
    import torch

    torch.set_num_threads(1)
    from streammoe_envs.skillblend import ENV_IDS

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
    for model in models.values():
        model.get_env().close()
    sps = {m: models[m].num_timesteps / seconds[m] for m in models}
    return {"task": task, "blend_steps_per_s": sps["blend"], "flat_steps_per_s": sps["flat"],
            "ratio_blend_over_flat": sps["blend"] / sps["flat"], "steps_each": models["blend"].num_timesteps}


def _cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds the processes ``pids`` have used so far (Linux ``/proc``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15)
    return total


def vec_env_speed(task: str, method: str, skills_dir: str, chunk: int, rounds: int, n_envs: int, seed: int,
                  overrides: list[str]) -> dict[str, Any]:
    """``DummyVecEnv`` vs ``SubprocVecEnv`` for one (task, method): the two models alternate
    ``learn(chunk)`` calls for ``rounds`` rounds in this process (one torch thread). Per kind:
    wall-clock env steps/s, and CPU seconds per 1,000 env steps of this process plus the env
    workers (what two jobs side by side on two saturated cores are limited by)."""
    import torch

    torch.set_num_threads(1)
    from streammoe_envs.skillblend import ENV_IDS

    from streammoe.control.skillblend.experiment import make_model, make_vec
    from streammoe.control.skillblend.skills import load_skill, skill_path

    if not Path("/proc/self/stat").is_file():
        raise SystemExit("--vec-env-speed reads CPU times from /proc (Linux only)")
    c = _compose(overrides).skillblend
    skills = [load_skill(skill_path(skills_dir, n)) for n in c.skills.names] if method != "flat" else []
    models = {kind: make_model(method, make_vec(ENV_IDS[task], n_envs, seed, vec_env=kind), skills, c, seed, "cpu")
              for kind in ("dummy", "subproc")}
    pids = {"dummy": [os.getpid()],
            "subproc": [os.getpid(), *(p.pid for p in models["subproc"].get_env().processes)]}
    wall, cpu = dict.fromkeys(models, 0.0), dict.fromkeys(models, 0.0)
    per_round: list[dict[str, float]] = []
    for _ in range(rounds):
        row = {}
        for kind, model in models.items():
            c0, t0 = _cpu_seconds(pids[kind]), time.perf_counter()
            model.learn(total_timesteps=chunk, reset_num_timesteps=False)
            dt, dc = time.perf_counter() - t0, _cpu_seconds(pids[kind]) - c0
            wall[kind] += dt
            cpu[kind] += dc
            row[f"{kind}_steps_per_s"] = chunk / dt
        per_round.append(row)
    steps = {k: m.num_timesteps for k, m in models.items()}
    for model in models.values():
        model.get_env().close()
    out: dict[str, Any] = {"task": task, "method": method, "n_envs": n_envs, "chunk": chunk, "rounds": rounds}
    for kind in models:
        out[f"{kind}_steps_per_s"] = steps[kind] / wall[kind]
        out[f"{kind}_cpu_s_per_1k_steps"] = 1000 * cpu[kind] / steps[kind]
    out["subproc_over_dummy_wall"] = out["subproc_steps_per_s"] / out["dummy_steps_per_s"]
    out["subproc_over_dummy_cpu"] = out["subproc_cpu_s_per_1k_steps"] / out["dummy_cpu_s_per_1k_steps"]
    out["per_round"] = per_round
    return out


def _compose(overrides: Sequence[str] = (), experiment: str = "skillblend") -> Any:
    from streammoe.cli import compose_config

    return compose_config([f"experiment={experiment}", *overrides])


def _write(path: Path, report: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(report), indent=2) + "\n")
    print(f"wrote {path}")


def _load_average() -> list[float] | None:
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# -------------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skills-dir", default=None,
                   help="folder with <skill>.safetensors for every skill in skillblend.skills.names "
                        "(experiment=skillblend_skills; results/skillblend/skills ships them)")
    p.add_argument("--out", default="outputs/bench_skillblend",
                   help="bench: output folder (runs/, bench.json, bench.md, curves.png); speed modes: a JSON file")
    p.add_argument("--experiment", default="skillblend",
                   help="the jobs' experiment (skillblend_smoke: seconds, for tests)")
    p.add_argument("--tasks", nargs="+", default=["far_reach", "button", "box_push"])
    p.add_argument("--methods", nargs="+", default=list(METHOD_ORDER), choices=METHOD_ORDER)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--timesteps", type=int, default=1_000_000, help="env steps per run (same for every method)")
    p.add_argument("--curve-at", nargs="*", type=int, default=[61_440, 250_000, 500_000],
                   help="also evaluate at these env steps (skillblend.curve_at; each < --timesteps)")
    p.add_argument("--eval-episodes", type=int, default=50, help="noise-off episodes per seed at every point")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side (one process each, one thread each)")
    p.add_argument("--vec-env", default="dummy", choices=["dummy", "subproc"], help="skillblend.vec_env")
    p.add_argument("--video-episodes", type=int, default=1,
                   help="episodes in the MP4 of each (task, method) at the final budget (first seed only; 0: none)")
    p.add_argument("--override", nargs="*", default=[],
                   help="Hydra overrides of experiment=skillblend for every job, e.g. skillblend.gate_temperature=0.3")
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the finished runs under --out")
    p.add_argument("--throughput-only", action="store_true",
                   help="only the interleaved blender-vs-PPO speed measurement (JSON to --out)")
    p.add_argument("--vec-env-speed", action="store_true",
                   help="only the interleaved DummyVecEnv-vs-SubprocVecEnv measurement (JSON to --out)")
    p.add_argument("--speed-chunk", type=int, default=4096, help="env steps per learn call in the speed modes")
    p.add_argument("--speed-rounds", type=int, default=4, help="interleaved rounds in the speed modes")
    p.add_argument("--n-envs", type=int, default=8, help="envs per model in the speed modes")
    p.add_argument("--note", default="", help="speed modes: a remark stored in the JSON (e.g. what else ran)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.aggregate_only:
        aggregate(out)
        return 0
    if args.skills_dir is None:
        p.error("--skills-dir is required (except with --aggregate-only)")
    names = list(_compose(args.override, args.experiment).skillblend.skills.names)
    missing = [f"{n}.safetensors" for n in names if not (Path(args.skills_dir) / f"{n}.safetensors").is_file()]
    if missing:
        raise SystemExit(f"{args.skills_dir} lacks {', '.join(missing)}: run "
                         "`python scripts/run.py experiment=skillblend_skills` first")
    bad = [s for s in args.curve_at if not 1 <= s < args.timesteps]
    if bad or sorted(set(args.curve_at)) != list(args.curve_at):
        raise SystemExit(f"--curve-at must increase and lie in [1, --timesteps={args.timesteps}), got {args.curve_at}")
    if args.eval_episodes < 1:
        raise SystemExit(f"--eval-episodes must be >= 1, got {args.eval_episodes}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    meta = {"args": vars(args), "load_average_start": _load_average()}
    if args.throughput_only:
        speed = [throughput_one(task, args.skills_dir, args.speed_chunk, args.speed_rounds, args.n_envs,
                                args.seeds[0], "cpu", args.override) for task in args.tasks]
        print(format_table(speed, title="training throughput, interleaved in one process per task"))
        ratio = min(r["ratio_blend_over_flat"] for r in speed)
        _write(out, {**meta, "load_average_end": _load_average(), "throughput": speed, "min_ratio": ratio,
                     "throughput_target_met": ratio >= 0.7})
        return 0
    if args.vec_env_speed:
        rows = [vec_env_speed(task, method, args.skills_dir, args.speed_chunk, args.speed_rounds, args.n_envs,
                              args.seeds[0], args.override) for task in args.tasks for method in args.methods]
        print(format_table([{k: v for k, v in r.items() if k != "per_round"} for r in rows],
                           title="DummyVecEnv vs SubprocVecEnv, interleaved in one process"))
        _write(out, {**meta, "load_average_end": _load_average(), "cpu_count": os.cpu_count(), "speed": rows})
        return 0
    from streammoe.jobs import run_jobs

    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(to_jsonable(meta), indent=2) + "\n")
    jobs = plan(out, Path(args.skills_dir), args.tasks, args.methods, args.seeds, args.timesteps, args.curve_at,
                args.eval_episodes, args.vec_env, args.video_episodes, args.override, args.experiment)
    ran = run_jobs(jobs, args.jobs, cwd=ROOT, resume=True, threads=1)
    aggregate(out, {**ran, "load_average_end": _load_average()})
    if ran["failures"]:
        print(f"{len(ran['failures'])} jobs FAILED: " + ", ".join(f["log"] for f in ran["failures"]))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
