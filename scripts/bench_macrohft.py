"""MacroHFT benchmark: test-split metrics on real series over seeds, and the memory query speed.

1. Runs ``experiment=macrohft`` for every (series, seed) as one Hydra multirun (joblib launcher),
   or reads the runs of an earlier sweep (``--from-sweep DIR``). Each run already evaluates
   MacroHFT, buy-and-hold, the MACD rule, the single DDQN and every sub-agent on its test split.
2. Prints a table of mean and std over seeds of every metric, per series and strategy, and
   whether MacroHFT's mean Sharpe beats the single DDQN's and buy-and-hold's.
3. Times the episodic-memory query at capacity 4320: the vectorised query against a plain
   Python loop over the same buffer, measured side by side in this process (a ratio, so other
   load on the machine affects both alike).

    python scripts/bench_macrohft.py --series eurusd_1h sp500_1d --seeds 0 1 2 --jobs 2
    python scripts/bench_macrohft.py --from-sweep multirun/macrohft_bench  # re-aggregate only
    python scripts/bench_macrohft.py --memory-only

Extra Hydra overrides go after ``--`` (e.g. ``-- macrohft.subagent.epochs=8``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streammoe.control.macrohft.memory import EpisodicMemory  # noqa: E402
from streammoe.control.macrohft.metrics import METRIC_KEYS  # noqa: E402
from streammoe.runs import format_table, to_jsonable  # noqa: E402

STRATEGIES = ("macrohft", "buy_and_hold", "macd", "ddqn")
# hyper-agent ablations, run on top of each sweep run's sub-agents (``macrohft.resume_from``)
ABLATIONS = {"uniform": "macrohft.mixing=uniform", "no_memory": "macrohft.hyper.use_memory=false",
             "no_adapter": "macrohft.hyper.use_adapter=false"}


def run_sweep(series: list[str], seeds: list[int], jobs: int, sweep_dir: Path,
              overrides: list[str]) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), "-m", "hydra/launcher=joblib",
           f"hydra.launcher.n_jobs={jobs}", f"hydra.sweep.dir={sweep_dir}",
           "experiment=macrohft", f"data={','.join(series)}", f"seed={','.join(map(str, seeds))}",
           *overrides]
    print("running:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)


def collect(sweep_dir: Path) -> dict[str, dict[str, list[dict[str, float]]]]:
    """``{series: {strategy: [metrics per seed]}}`` from the sweep's run folders."""
    import yaml

    out: dict[str, dict[str, list[dict[str, float]]]] = {}
    for metrics_file in sorted(sweep_dir.glob("*/metrics.json")):
        cfg = yaml.safe_load((metrics_file.parent / "config_resolved.yaml").read_text())
        series = cfg["data"]["path"] or cfg["data"]["name"]
        m = json.loads(metrics_file.read_text())
        prefixes = {"macrohft": "", "buy_and_hold": "baseline_", "macd": "macd_", "ddqn": "ddqn_"}
        prefixes.update({k[: -len("_sharpe")]: k[: -len("sharpe")] for k in m
                         if k.startswith("subagent_") and k.endswith("_sharpe")})
        for strategy, prefix in prefixes.items():
            if f"{prefix}sharpe" in m:
                row = {k: m[f"{prefix}{k}"] for k in METRIC_KEYS}
                row["seed"] = cfg["seed"]
                out.setdefault(series, {}).setdefault(strategy, []).append(row)
    return out


def run_ablations(sweep_dir: Path, ablation_dir: Path, overrides: list[str]) -> dict[str, dict[str, list[dict]]]:
    """Each ablation of :data:`ABLATIONS` per sweep run (skipping finished ones); returns
    ``{series: {"macrohft_<ablation>": [metrics per seed]}}``."""
    import yaml

    out: dict[str, dict[str, list[dict]]] = {}
    for run in sorted(p.parent for p in sweep_dir.glob("*/macrohft.safetensors")):
        cfg = yaml.safe_load((run / "config_resolved.yaml").read_text())
        series, seed = cfg["data"]["path"] or cfg["data"]["name"], cfg["seed"]
        for name, override in ABLATIONS.items():
            target = ablation_dir / f"{series}_seed{seed}_{name}"
            if not (target / "metrics.json").is_file():
                cmd = [sys.executable, str(ROOT / "scripts" / "run.py"), "experiment=macrohft",
                       f"data={series}", f"seed={seed}", f"macrohft.resume_from='{run / 'macrohft.safetensors'}'",
                       override, f"hydra.run.dir={target}", *overrides]
                print("running:", " ".join(cmd), flush=True)
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
            m = json.loads((target / "metrics.json").read_text())
            out.setdefault(series, {}).setdefault(f"macrohft_{name}", []).append(
                {**{k: m[k] for k in METRIC_KEYS}, "seed": seed})
    return out


def summarise(results: dict[str, dict[str, list[dict[str, float]]]]) -> tuple[list[dict], list[dict]]:
    rows, verdicts = [], []
    for series, by_strategy in results.items():
        for strategy, runs in by_strategy.items():
            row: dict[str, object] = {"series": series, "strategy": strategy, "seeds": len(runs)}
            for key in METRIC_KEYS:
                vals = np.array([np.nan if r[key] is None else r[key] for r in runs], float)
                row[key] = f"{np.nanmean(vals):.3f} ± {np.nanstd(vals, ddof=1) if len(vals) > 1 else 0.0:.3f}"
                row[f"_{key}_mean"] = float(np.nanmean(vals))
            rows.append(row)
        mean_sharpe = {r["strategy"]: r["_sharpe_mean"] for r in rows if r["series"] == series}
        if "macrohft" in mean_sharpe:
            verdicts.append({
                "series": series, "macrohft_sharpe": mean_sharpe["macrohft"],
                "ddqn_sharpe": mean_sharpe.get("ddqn"), "buy_and_hold_sharpe": mean_sharpe.get("buy_and_hold"),
                "beats_both": bool(mean_sharpe["macrohft"] > max(mean_sharpe.get("ddqn", -np.inf),
                                                                 mean_sharpe.get("buy_and_hold", -np.inf)))})
    return rows, verdicts


def time_memory(capacity: int = 4320, key_dim: int = 64, n_queries: int = 32, k: int = 5,
                repeats: int = 5) -> dict[str, float]:
    """Seconds per query: vectorised vs Python loop over the same full buffer."""
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    mem = EpisodicMemory(capacity, key_dim, obs_dim=key_dim, k=k)
    keys = torch.randn(capacity, key_dim, generator=g)
    mem.add(keys, keys, torch.randint(0, 2, (capacity,), generator=g), torch.randn(capacity, generator=g))
    queries = torch.randn(n_queries, key_dim, generator=g)
    actions = torch.randint(0, 2, (n_queries,), generator=g)
    fast, _ = mem.query(queries, actions)
    slow, _ = mem.query_loop(queries[:4], actions[:4])
    assert torch.allclose(fast[:4], slow, rtol=1e-4, atol=1e-5), "vectorised and loop answers differ"

    def best_of(fn, reps: int) -> float:
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    vec = best_of(lambda: mem.query(queries, actions), repeats * 20) / n_queries
    vec_512 = best_of(lambda: mem.query(torch.randn(512, key_dim), torch.randint(0, 2, (512,))),
                      repeats) / 512
    loop = best_of(lambda: mem.query_loop(queries, actions), repeats) / n_queries
    return {"capacity": capacity, "key_dim": key_dim, "k": k, "n_queries": n_queries,
            "vectorised_s_per_query": vec, "vectorised_batch512_s_per_query": vec_512,
            "python_loop_s_per_query": loop, "speedup": loop / vec, "speedup_batch512": loop / vec_512}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", default=["eurusd_1h", "sp500_1d"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--sweep-dir", type=Path, default=ROOT / "multirun" / "macrohft_bench")
    parser.add_argument("--from-sweep", type=Path, help="aggregate an earlier sweep, run nothing")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--ablations", action="store_true",
                        help="also run the hyper-agent ablations on each run's sub-agents")
    parser.add_argument("--ablation-dir", type=Path, default=ROOT / "multirun" / "macrohft_ablation")
    parser.add_argument("--out", type=Path, help="JSON report (default: SWEEP_DIR/bench_macrohft.json)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run (after --)")
    args = parser.parse_args()
    if args.out is None:
        args.out = (args.from_sweep or args.sweep_dir) / "bench_macrohft.json"
        args.out.parent.mkdir(parents=True, exist_ok=True)

    report: dict[str, object] = {}
    if not args.memory_only:
        sweep_dir = args.from_sweep or args.sweep_dir
        if args.from_sweep is None:
            run_sweep(args.series, args.seeds, args.jobs, sweep_dir, args.overrides)
        results = collect(sweep_dir)
        if args.ablations:
            for series, by_variant in run_ablations(sweep_dir, args.ablation_dir, args.overrides).items():
                results.setdefault(series, {}).update(by_variant)
        rows, verdicts = summarise(results)
        print(format_table([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows],
                           title=f"MacroHFT test split, mean ± std over seeds ({sweep_dir})"))
        print(format_table(verdicts, title="\nMacroHFT mean Sharpe vs single DDQN and buy-and-hold"))
        report.update({"sweep_dir": str(sweep_dir), "overrides": args.overrides, "runs": results,
                       "summary": rows, "verdicts": verdicts})
    mem = time_memory()
    print(format_table([mem], title="\nEpisodic memory query at capacity 4320 (seconds per query)",
                       floatfmt=".3g"))
    report["memory"] = mem
    args.out.write_text(json.dumps(to_jsonable(report), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
