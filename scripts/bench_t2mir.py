"""Benchmark T2MIR: AD vs T2MIR-AD vs the ablations, several seeds, same data and step budget.

For every seed the experiment's whole pipeline runs (``run_t2mir``: the learning histories are
collected once and shared by every seed and variant; each variant trains with the same number of
steps and is evaluated in context on the held-out tasks). Then the training step time of every
variant is measured side by side (round-robin, so load from other processes hits all variants
alike) and reported as ms/step and as a ratio to AD.

    python scripts/bench_t2mir.py --experiment t2mir_pointrobot --seeds 0 1 2
    python scripts/bench_t2mir.py --experiment t2mir_cheetahvel --seeds 0 1 2
    python scripts/bench_t2mir.py --experiment t2mir_smoke --seeds 0 --out /tmp/b  # seconds
    python scripts/bench_t2mir.py --experiment t2mir_cheetahvel_full --timing-only --device cuda
    python scripts/bench_t2mir.py --experiment t2mir_pointrobot --probe outputs/bench_t2mir/t2mir_pointrobot/seed_0

``--probe RUN_DIR`` diagnoses goal inference: every checkpoint in ``RUN_DIR/checkpoints`` plays one
episode on the held-out tasks after a context of one episode taken from a fresh learning history
of that task (no context; the history's first, exploratory episode; its middle; its last, expert
episode). If the model plays well after an expert episode but not after the exploratory one, what
it lacks is inferring the task from exploration, not generalising to new tasks.

Prints a table and writes ``bench.json``, ``bench.md`` and ``returns.png`` into ``--out``
(default ``outputs/bench_t2mir/<experiment>``). Re-running with the same ``--out`` resumes the
per-seed runs from their checkpoints. Extra Hydra overrides go after ``--``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from streammoe.cli import CONF_DIR
from streammoe.control.t2mir.data import (
    ContextSampler,
    History,
    collect_expert_anneal,
    collect_sb3,
    ensure_dataset,
)
from streammoe.control.t2mir.evaluate import play_episode, prefill_context
from streammoe.control.t2mir.experiment import (
    build_configs,
    collector_spec,
    family_from_config,
    run_t2mir,
)
from streammoe.control.t2mir.model import ICRLTransformer
from streammoe.control.t2mir.train import Trainer, load_checkpoint
from streammoe.devices import resolve_device, seed_everything
from streammoe.runs import format_table, pyplot, save_figure, to_jsonable


def synthetic_histories(c: Any, obs_dim: int, act_dim: int) -> list[History]:
    """Random histories of the experiment's shapes: a step's cost does not depend on the values,
    so timing needs no (possibly hours-long) collection."""
    rng = np.random.default_rng(0)
    shape = (c.n_episodes, c.horizon)
    return [History(rng.standard_normal((*shape, obs_dim)).astype(np.float32),
                    rng.uniform(-1, 1, (*shape, act_dim)).astype(np.float32),
                    -rng.random(shape).astype(np.float32), np.zeros(1, np.float32))
            for _ in range(c.n_train_tasks)]


def step_times(c: Any, device: torch.device, rounds: int, warmup: int = 3,
               synthetic: bool = False) -> dict[str, float]:
    """Median ms per training step of every variant, measured round-robin in one process."""
    fam = family_from_config(c)
    if synthetic:
        env = fam.make_env(fam.train_tasks[0])
        hist = synthetic_histories(c, env.observation_space.shape[0], env.action_space.shape[0])
        env.close()
    else:
        _, _, hist = ensure_dataset(c.data_dir, fam, c.n_episodes, collector_spec(c), c.data_seed)
    mcfg, tcfg = build_configs(c, fam, hist)
    trainers = {v: Trainer(v, mcfg, tcfg, device,
                            ContextSampler(hist, tcfg.context_episodes, tcfg.batch_size, 0, tcfg.sort_by_return), 0)
                for v in c.variants}
    times: dict[str, list[float]] = {v: [] for v in c.variants}
    for r in range(warmup + rounds):
        for v, tr in trainers.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            tr.train_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r >= warmup:
                times[v].append(1000 * (time.perf_counter() - t0))
    return {v: float(np.median(t)) for v, t in times.items()}


def play_after_context(model: ICRLTransformer, fam: Any, tasks: np.ndarray, context: History | None,
                       sample: bool, seed: int) -> np.ndarray:
    """Return of one episode per task played after ``context`` (one episode per task, stacked
    along the first axis of its arrays) is put in the KV cache."""
    model.eval()
    cache = model.new_cache()
    if context is not None:
        prefill_context(model, cache, context.observations, context.actions, context.rewards, fam.horizon)
    envs = [fam.make_env(task) for task in tasks]
    _, _, rew = play_episode(model, envs, cache, fam.horizon, torch.Generator().manual_seed(seed), sample,
                             [seed + i for i in range(len(tasks))])
    for env in envs:
        env.close()
    return rew.sum(1)


def probe(c: Any, run_dir: Path, repeats: int = 4) -> list[dict[str, Any]]:
    """Held-out return after no context / the first / middle / last episode of a fresh history."""
    fam = family_from_config(c)
    spec = collector_spec(c)
    collect = {"expert_anneal": collect_expert_anneal, "sb3": collect_sb3}[spec["name"]]
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    hists = [collect(fam, task, c.n_episodes, 999 + i, **kwargs) for i, task in enumerate(fam.test_tasks)]
    picks = {"none": None, "first (exploration)": 0, "middle": c.n_episodes // 2, "last": c.n_episodes - 1}
    rows = []
    for ck in sorted((run_dir / "checkpoints").glob("*.safetensors")):
        model, _ = load_checkpoint(ck)
        for label, ep in picks.items():
            ctx = None if ep is None else History(
                np.stack([h.observations[ep] for h in hists]), np.stack([h.actions[ep] for h in hists]),
                np.stack([h.rewards[ep] for h in hists]), np.zeros(0))
            row: dict[str, Any] = {"variant": ck.stem, "context episode": label,
                                   "context return": None if ep is None else float(np.mean([h.returns[ep] for h in hists]))}
            for sample in (True, False):
                played = [play_after_context(model, fam, fam.test_tasks, ctx, sample, seed=r) for r in range(repeats)]
                row["sampled" if sample else "mean action"] = float(np.mean(played))
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="t2mir_pointrobot")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timing-rounds", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the side-by-side step timing, on synthetic data of the right shapes "
                         "(e.g. the full Cheetah-Vel config on a GPU vs the CPU)")
    ap.add_argument("--probe", type=Path, default=None, metavar="RUN_DIR",
                    help="diagnose goal inference of the checkpoints in RUN_DIR/checkpoints (see above)")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. t2mir.train.steps=500")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = args.out or Path("outputs/bench_t2mir") / args.experiment
    out.mkdir(parents=True, exist_ok=True)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"experiment={args.experiment}", *args.overrides])
    c = cfg.t2mir
    device = resolve_device(args.device)

    if args.probe is not None:
        rows = probe(c, args.probe)
        print(format_table(rows, title=f"T2MIR probe: {args.probe}, one episode on {c.n_test_tasks} held-out "
                                       "tasks after a one-episode context (mean of 4 repeats)"))
        (out / "probe.json").write_text(json.dumps({"run_dir": str(args.probe), "rows": rows}, indent=2) + "\n")
        return

    if args.timing_only:
        timing = step_times(c, device, args.timing_rounds, synthetic=True)
        rows = [{"variant": v, "train_ms_per_step": t, "time_vs_ad": t / timing.get("ad", t)}
                for v, t in timing.items()]
        title = (f"T2MIR step time: {args.experiment} (batch {c.train.batch_size}, "
                 f"{3 * c.horizon * c.train.context_episodes} tokens), device {device}, "
                 f"{args.threads} thread(s)")
        print(format_table(rows, title=title))
        (out / f"timing_{device.type}.json").write_text(json.dumps(
            {"experiment": args.experiment, "device": str(device), "threads": args.threads,
             "rows": rows}, indent=2) + "\n")
        return

    per_seed: dict[int, dict[str, Any]] = {}
    for seed in args.seeds:
        seed_everything(seed)
        print(f"== seed {seed} ==", flush=True)
        per_seed[seed] = run_t2mir(c, out / f"seed_{seed}", seed=seed, device_name=args.device)

    timing = step_times(c, device, args.timing_rounds)
    rows = []
    curves = {}
    for v in c.variants:
        cur = np.array([per_seed[s]["returns_per_episode"][v] for s in args.seeds])  # (seeds, episodes)
        curves[v] = cur
        first, last = cur[:, 0], cur[:, -1]
        rows.append({
            "variant": v, "first_return": float(first.mean()), "first_std": float(first.std()),
            "last_return": float(last.mean()), "last_std": float(last.std()),
            "improvement": float((last - first).mean()),
            "train_ms_per_step": timing[v], "time_vs_ad": timing[v] / timing.get("ad", timing[v]),
        })
    data_first = float(np.mean([per_seed[s]["data_first_return"] for s in args.seeds]))
    data_last = float(np.mean([per_seed[s]["data_last_return"] for s in args.seeds]))
    title = (f"T2MIR bench: {args.experiment}, seeds {args.seeds}, {c.train.steps} steps, "
             f"{c.eval.n_episodes} in-context episodes on {c.n_test_tasks} held-out tasks, device {device}")
    table = format_table(rows, title=title)
    print(table)
    print(f"learning histories (train tasks): first episode {data_first:.2f}, last {data_last:.2f}")
    result = {"experiment": args.experiment, "seeds": args.seeds, "device": str(device),
              "threads": args.threads, "config": OmegaConf.to_container(c, resolve=True), "rows": rows,
              "returns_per_episode": {v: cur.mean(0).tolist() for v, cur in curves.items()},
              "returns_per_episode_per_seed": {v: cur.tolist() for v, cur in curves.items()},
              "data_first_return": data_first, "data_last_return": data_last}
    (out / "bench.json").write_text(json.dumps(to_jsonable(result), indent=2) + "\n")
    (out / "bench.md").write_text(f"```\n{table}\n```\n")
    _plot(curves, out / "returns.png", args.experiment)
    print(f"wrote {out / 'bench.json'}")


def _plot(curves: dict[str, np.ndarray], path: Path, name: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for v, cur in curves.items():
        x = np.arange(1, cur.shape[1] + 1)
        m, s = cur.mean(0), cur.std(0)
        ax.plot(x, m, label=v)
        ax.fill_between(x, m - s, m + s, alpha=0.15)
    ax.set_xlabel("in-context episode")
    ax.set_ylabel("return (held-out tasks, mean over seeds)")
    ax.set_title(name)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
