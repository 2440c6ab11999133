"""MacroHFT walk-forward benchmark: folds x seeds x fees x modes per series, and the memory query speed.

1. Runs one ``scripts/run.py experiment=macrohft`` job per (series, fee, mode, fold, seed) in a
   pool of ``--jobs`` subprocesses::

       python scripts/run.py experiment=macrohft data=SERIES seed=S macrohft.splits.folds=F \\
           macrohft.splits.fold=K macrohft.faithful=true|false macrohft.env.commission=FEE \\
           hydra.run.dir=OUT/runs/SERIES/feeFEE/MODE/foldK_seedS [extra overrides]

   A job whose ``metrics.json`` exists is skipped (resumable); a folder without one (an
   interrupted job) is deleted and rerun. Each job's output goes to ``log.txt`` in its folder. A
   failed job does not stop the others; failures are listed at the end (exit code 1).
2. Aggregates every job under ``OUT/runs`` into ``OUT/bench_macrohft.json`` and prints, per
   (series, fee), a markdown table: improved and faithful MacroHFT, single DDQN, uniform mixing
   (both from the improved jobs), buy-and-hold and MACD. Sharpe, total return and max drawdown
   are mean ± std over seeds of the seed's test bars of all folds joined (only seeds with every
   one of the ``--folds`` folds count); turnover and trades are per-fold means. For the
   MacroHFT rows, a paired circular block bootstrap interval (95 %) of the mean per-bar return
   difference vs single DDQN, buy-and-hold and uniform mixing, on the seed-mean return series
   joined over folds (in basis points per bar; ``*``: excludes 0).
   Then the Sharpe per fold, and whether the targets hold at ``--target-fee``: improved above
   the single DDQN with the interval excluding 0 (series count), above buy-and-hold on >= 1
   series.
3. Plots ``OUT/equity_SERIES_feeFEE.png`` (equity per fold) and ``OUT/weights_SERIES_feeFEE.png``
   (the hyper-agent's weights of the first improved seed per fold; a band above shows the bars'
   trend regime when ``test_returns.csv`` has ``regime_trend``).
4. With ``--memory`` (or only that: ``--memory-only``), times the episodic-memory query at
   capacity 4320: the vectorised query against a plain Python loop over the same buffer,
   measured side by side in this process (a ratio, so other load on the machine affects both).

    python scripts/bench_macrohft.py --series eurusd_1h sp500_1d --folds 4 --seeds 0 1 2 \\
        --fees 2e-4 --modes improved faithful --jobs 2 --out results/macrohft/walkforward
    python scripts/bench_macrohft.py --out results/macrohft/walkforward --aggregate-only
    # smoke test: 8 jobs, about 2.5 minutes on 2 cores
    python scripts/bench_macrohft.py --experiment macrohft_smoke --series synthetic --folds 2 \\
        --seeds 0 1 --out /tmp/macrohft_smoke_bench
    python scripts/bench_macrohft.py --memory-only --out results/macrohft/walkforward

Extra Hydra overrides for every job go after ``--``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from streammoe.control.macrohft.metrics import paired_block_bootstrap, trading_metrics  # noqa: E402
from streammoe.jobs import Job as PoolJob  # noqa: E402
from streammoe.jobs import run_jobs as pool_run  # noqa: E402
from streammoe.runs import format_table, to_jsonable  # noqa: E402

MODES = ("improved", "faithful")


@dataclass(frozen=True)
class Strategy:
    label: str
    modes: tuple[str, ...]  # job modes whose files hold it, first present wins
    prefix: str  # its keys in metrics.json
    column: str  # its per-bar returns in test_returns.csv


#: Table rows, in order. Buy-and-hold and MACD do not depend on the seed or the mode.
STRATEGIES: dict[str, Strategy] = {
    "improved": Strategy("MacroHFT (improved)", ("improved",), "", "r_macrohft"),
    "faithful": Strategy("MacroHFT (faithful)", ("faithful",), "", "r_macrohft"),
    "ddqn": Strategy("single DDQN", ("improved",), "ddqn_", "r_ddqn"),
    "uniform": Strategy("uniform mixing", ("improved",), "uniform_", "r_uniform"),
    "buy_and_hold": Strategy("buy-and-hold", ("improved", "faithful"), "baseline_", "r_buy_and_hold"),
    "macd": Strategy("MACD", ("improved", "faithful"), "macd_", "r_macd"),
}
#: MacroHFT rows get bootstrap intervals against these.
COMPARED = ("improved", "faithful")
REFERENCES = ("ddqn", "buy_and_hold", "uniform")
SUBAGENTS = ("trend_bear", "trend_flat", "trend_bull", "vol_low", "vol_mid", "vol_high")
TREND_COLOURS = ("#d62728", "#ff9896", "#cccccc", "#98df8a", "#2ca02c")  # labels 0 (bear) .. 4 (bull)
TREND_NAMES = ("trend 0 (bear)", "trend 1", "trend 2", "trend 3", "trend 4 (bull)")
PLOTTED = ("improved", "faithful", "ddqn", "buy_and_hold", "macd")


# --------------------------------------------------------------------------------------- jobs


def fee_name(fee: float) -> str:
    """Folder name of a commission: ``fee0.0002`` for 2e-4 however it was written."""
    return f"fee{float(fee):g}"


@dataclass(frozen=True)
class Job:
    series: str
    fee: float
    mode: str
    fold: int
    seed: int

    def dir(self, out: Path) -> Path:
        return out / "runs" / self.series / fee_name(self.fee) / self.mode / f"fold{self.fold}_seed{self.seed}"

    def name(self) -> str:
        return f"{self.series} fee={self.fee:g} {self.mode} fold={self.fold} seed={self.seed}"

    def command(self, out: Path, experiment: str, folds: int, overrides: Sequence[str]) -> list[str]:
        return [sys.executable, str(ROOT / "scripts" / "run.py"), f"experiment={experiment}",
                f"data={self.series}", f"seed={self.seed}", f"macrohft.splits.folds={folds}",
                f"macrohft.splits.fold={self.fold}",
                f"macrohft.faithful={'true' if self.mode == 'faithful' else 'false'}",
                # the single DDQN baseline comes from the improved jobs (same budget and selection)
                *(["macrohft.single_ddqn=false"] if self.mode == "faithful" else []),
                f"macrohft.env.commission={self.fee:g}", f"hydra.run.dir={self.dir(out)}",
                "tensorboard=false", *overrides]


def plan_jobs(series: Sequence[str], fees: Sequence[float], modes: Sequence[str], folds: int,
              seeds: Sequence[int]) -> list[Job]:
    return [Job(s, float(f), m, k, seed) for s in series for f in fees for m in modes
            for k in range(folds) for seed in seeds]


def run_jobs(jobs: Sequence[Job], out: Path, experiment: str, folds: int, overrides: Sequence[str],
             n_workers: int) -> dict[str, Any]:
    """Run the unfinished ``jobs`` in a pool of ``n_workers`` subprocesses (:mod:`streammoe.jobs`;
    an interrupted job starts over); never raises on a failed job. Returns counts, the failures
    and the seconds spent."""
    return pool_run([PoolJob(j.name(), j.dir(out), j.command(out, experiment, folds, overrides)) for j in jobs],
                    n_workers, cwd=ROOT, resume=False)


# -------------------------------------------------------------------------------- aggregation


@dataclass
class JobResult:
    metrics: dict[str, Any]
    returns: Any  # pandas DataFrame indexed by the bar's time (as written)


def load_runs(out: Path) -> dict[tuple[str, float], dict[tuple[str, int, int], JobResult]]:
    """Every finished job under ``OUT/runs``: ``{(series, fee): {(mode, fold, seed): result}}``.
    A job with ``metrics.json`` but no ``test_returns.csv`` is left out with a warning."""
    import pandas as pd

    found: dict[tuple[str, float], dict[tuple[str, int, int], JobResult]] = {}
    for metrics_file in sorted((out / "runs").glob("*/fee*/*/fold*_seed*/metrics.json")):
        job_dir = metrics_file.parent
        mode, fee_dir, series = job_dir.parent.name, job_dir.parent.parent.name, job_dir.parents[2].name
        fold_s, seed_s = job_dir.name[len("fold"):].split("_seed")
        returns_file = job_dir / "test_returns.csv"
        if not returns_file.is_file():
            print(f"warning: {job_dir} has metrics.json but no test_returns.csv; left out", flush=True)
            continue
        returns = pd.read_csv(returns_file)
        returns = returns.set_index(returns["time"].astype(str)) if "time" in returns else returns
        found.setdefault((series, float(fee_dir[len("fee"):])), {})[(mode, int(fold_s), int(seed_s))] = \
            JobResult(json.loads(metrics_file.read_text()), returns)
    return found


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    x = np.array([np.nan if v is None else v for v in values], np.float64)
    if not np.isfinite(x).any():
        return float("nan"), float("nan")
    x = x[np.isfinite(x)]
    return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def _seed_mean_returns(jobs: dict[tuple[str, int, int], JobResult], strategy: Strategy, mode: str,
                       fold: int, seeds: Sequence[int]) -> Any:
    """The strategy's per-bar returns in ``fold``, mean over ``seeds`` (bars common to all)."""
    import pandas as pd

    cols = [jobs[(mode, fold, s)].returns[strategy.column].rename(s) for s in seeds]
    return pd.concat(cols, axis=1, join="inner").mean(axis=1)


def summarise_group(jobs: dict[tuple[str, int, int], JobResult], folds: Sequence[int],
                    block: int, n_boot: int, level: float) -> dict[str, Any]:
    """Per-strategy statistics and bootstrap comparisons for one (series, fee)."""
    import pandas as pd

    strategies: dict[str, Any] = {}
    seed_mean: dict[str, dict[int, Any]] = {}  # strategy -> fold -> seed-mean returns (Series)
    bars_per_year = None
    for name, strategy in STRATEGIES.items():
        for mode in strategy.modes:
            seeds_all = sorted({s for (m, _, s), r in jobs.items()
                                if m == mode and strategy.column in r.returns})
            complete = [s for s in seeds_all if all((mode, k, s) in jobs for k in folds)]
            if complete:
                break
        else:
            continue
        incomplete = sorted(set(seeds_all) - set(complete))
        per_seed: dict[str, list[float]] = {"sharpe": [], "total_return": [], "max_drawdown": []}
        for s in complete:
            fold_jobs = [jobs[(mode, k, s)] for k in folds]
            bpy = {float(j.metrics["bars_per_year"]) for j in fold_jobs}
            if len(bpy) > 1:
                raise ValueError(f"folds of {name} disagree on bars_per_year: {sorted(bpy)}")
            bars_per_year = bpy.pop()
            r = np.concatenate([j.returns[strategy.column].to_numpy(np.float64) for j in fold_jobs])
            m = trading_metrics(np.concatenate([[1.0], np.cumprod(1.0 + r)]), bars_per_year)
            for key in per_seed:
                per_seed[key].append(m[key])
        row: dict[str, Any] = {"label": strategy.label, "mode": mode, "seeds": complete,
                               "incomplete_seeds": incomplete}
        for key, vals in per_seed.items():
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(vals)
            row[f"{key}_per_seed"] = vals
        for key in ("turnover", "n_trades"):  # per-fold figures from metrics.json
            row[f"{key}_per_fold_mean"] = _mean_std(
                [jobs[(mode, k, s)].metrics.get(f"{strategy.prefix}{key}") for k in folds for s in complete])[0]
        per_fold: dict[str, list[float]] = {"sharpe_mean": [], "sharpe_std": []}
        if strategy.prefix == "":
            per_fold.update({"val_sharpe_mean": []})
        for k in folds:
            mean, std = _mean_std([jobs[(mode, k, s)].metrics.get(f"{strategy.prefix}sharpe") for s in complete])
            per_fold["sharpe_mean"].append(mean)
            per_fold["sharpe_std"].append(std)
            if "val_sharpe_mean" in per_fold:
                per_fold["val_sharpe_mean"].append(
                    _mean_std([jobs[(mode, k, s)].metrics.get("val_sharpe") for s in complete])[0])
        row["per_fold"] = per_fold
        row["test_period"] = [jobs[(mode, folds[0], complete[0])].metrics.get("test_start"),
                              jobs[(mode, folds[-1], complete[0])].metrics.get("test_end")]
        strategies[name] = row
        seed_mean[name] = {k: _seed_mean_returns(jobs, strategy, mode, k, complete) for k in folds}

    bootstrap: dict[str, dict[str, Any]] = {}
    for name in COMPARED:
        for ref in REFERENCES:
            if name not in seed_mean or ref not in seed_mean:
                continue
            pairs = [pd.concat([seed_mean[name][k].rename("a"), seed_mean[ref][k].rename("b")],
                               axis=1, join="inner") for k in folds]
            joined = pd.concat(pairs)
            a, b = joined["a"].to_numpy(np.float64), joined["b"].to_numpy(np.float64)
            if len(a) < 2:
                continue
            result = paired_block_bootstrap(a, b, block=min(block, len(a)), n_boot=n_boot, level=level)
            bootstrap.setdefault(name, {})[ref] = result
    return {"folds": list(folds), "bars_per_year": bars_per_year,
            "n_test_bars": int(sum(len(v) for v in next(iter(seed_mean.values())).values()))
            if seed_mean else 0,
            "strategies": strategies, "bootstrap": bootstrap, "_seed_mean": seed_mean}


def check_targets(groups: Sequence[dict[str, Any]], target_fee: float) -> dict[str, Any]:
    """Improved MacroHFT above the single DDQN with the bootstrap interval excluding 0 (which
    series), and above buy-and-hold on at least one series, at ``target_fee``."""
    beats_ddqn, beats_bh, considered = [], [], []
    for g in groups:
        if not math.isclose(g["fee"], target_fee, rel_tol=1e-9) or "improved" not in g["strategies"]:
            continue
        considered.append(g["series"])
        st, boot = g["strategies"], g["bootstrap"].get("improved", {})
        sharpe = st["improved"]["sharpe_mean"]
        if "ddqn" in st and sharpe > st["ddqn"]["sharpe_mean"] and boot.get("ddqn", {}).get("low", -1) > 0:
            beats_ddqn.append(g["series"])
        if "buy_and_hold" in st and sharpe > st["buy_and_hold"]["sharpe_mean"]:
            beats_bh.append(g["series"])
    return {"fee": target_fee, "series": considered,
            "above_ddqn_significant": beats_ddqn, "n_above_ddqn_significant": len(beats_ddqn),
            "above_ddqn_all_series": bool(considered) and len(beats_ddqn) == len(considered),
            "above_buy_and_hold": beats_bh, "above_buy_and_hold_holds": len(beats_bh) >= 1}


def aggregate(out: Path, folds: int | None = None, block: int = 20, n_boot: int = 2000,
              level: float = 0.95, target_fee: float = 2e-4, plots: bool = True) -> dict[str, Any]:
    """Statistics of every finished job under ``OUT/runs`` (``folds``: the expected fold count;
    None: the folds found per series and fee). Writes plots; returns the report (not written)."""
    groups = []
    wall = 0.0
    n_jobs = 0
    for (series, fee), jobs in sorted(load_runs(out).items()):
        fold_ids = list(range(folds)) if folds is not None else sorted({k for _, k, _ in jobs})
        n_jobs += len(jobs)
        wall += sum(float(j.metrics.get("wall_seconds") or 0.0) for j in jobs.values())
        group = {"series": series, "fee": fee, **summarise_group(jobs, fold_ids, block, n_boot, level)}
        if plots and group["strategies"]:
            plot_equity(group, out / f"equity_{series}_{fee_name(fee)}.png")
            plot_weights(jobs, group, out / f"weights_{series}_{fee_name(fee)}.png")
        groups.append(group)
    report = {"out": str(out), "level": level, "block": block, "n_boot": n_boot,
              "n_finished_jobs": n_jobs, "jobs_wall_seconds": wall,
              "groups": [{k: v for k, v in g.items() if not k.startswith("_")} for g in groups],
              "targets": check_targets(groups, target_fee)}
    return report


# ------------------------------------------------------------------------------------ printing


def markdown_table(rows: Sequence[dict[str, Any]], title: str = "") -> str:
    if not rows:
        return title
    cols = list(dict.fromkeys(c for r in rows for c in r))
    lines = [f"| {' | '.join(cols)} |", f"|{'|'.join('---' for _ in cols)}|"]
    lines += [f"| {' | '.join(str(r.get(c, '')) for c in cols)} |" for r in rows]
    return "\n".join(([title, ""] if title else []) + lines)


def _pm(mean: float, std: float, fmt: str = ".3f") -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:{fmt}} ± {std:{fmt}}"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None or not math.isfinite(x) else format(x, fmt)


def _interval(r: dict[str, Any] | None) -> str:
    if not r:
        return ""
    bp = 1e4  # basis points per bar
    star = "*" if r["excludes_zero"] else ""
    return f"{r['mean_diff'] * bp:+.3f} [{r['low'] * bp:+.3f}, {r['high'] * bp:+.3f}]{star}"


def render(report: dict[str, Any]) -> str:
    out = []
    pct = int(round(100 * report["level"]))
    for g in report["groups"]:
        rows = []
        for name, st in g["strategies"].items():
            row = {"strategy": st["label"], "seeds": len(st["seeds"]),
                   "Sharpe": _pm(st["sharpe_mean"], st["sharpe_std"]),
                   "total return": _pm(st["total_return_mean"], st["total_return_std"]),
                   "max drawdown": _pm(st["max_drawdown_mean"], st["max_drawdown_std"]),
                   "turnover/fold": _num(st["turnover_per_fold_mean"], ".3g"),
                   "trades/fold": _num(st["n_trades_per_fold_mean"], ".1f")}
            boot = g["bootstrap"].get(name, {})
            for ref in REFERENCES:
                row[f"Δ vs {STRATEGIES[ref].label} (bp/bar, {pct} %)"] = _interval(boot.get(ref))
            rows.append(row)
        title = (f"### {g['series']}, fee {g['fee']:g}: {len(g['folds'])} folds joined, "
                 f"{g['n_test_bars']} test bars")
        out.append(markdown_table(rows, title))
        fold_rows = [{"strategy": st["label"],
                      **{f"fold {k}": _pm(m, s, ".2f") for k, m, s in
                         zip(g["folds"], st["per_fold"]["sharpe_mean"], st["per_fold"]["sharpe_std"])}}
                     for st in g["strategies"].values()]
        out.append(markdown_table(fold_rows, f"Sharpe per fold ({g['series']}, fee {g['fee']:g})"))
    t = report["targets"]
    head = f"target (fee {t['fee']:g})"
    out.append(markdown_table([
        {head: "improved > single DDQN, interval excludes 0",
         "holds on": ", ".join(t["above_ddqn_significant"]) or "none",
         "count": f"{t['n_above_ddqn_significant']}/{len(t['series'])}"},
        {head: "improved > buy-and-hold on >= 1 series",
         "holds on": ", ".join(t["above_buy_and_hold"]) or "none",
         "count": f"{len(t['above_buy_and_hold'])}/{len(t['series'])}"}], "### Targets"))
    return "\n\n".join(out)


# --------------------------------------------------------------------------------------- plots


def _x(index: Any) -> Any:
    """Bar times as datetimes where they parse, else the bar number."""
    import pandas as pd

    t = pd.to_datetime(pd.Index(index), errors="coerce")
    return np.arange(len(index)) if t.isna().any() else t


def plot_equity(group: dict[str, Any], path: Path) -> Path:
    from streammoe.runs import pyplot, save_figure

    plt = pyplot()
    folds = group["folds"]
    fig, axes = plt.subplots(len(folds), 1, figsize=(10, 2.6 * len(folds)), squeeze=False)
    for ax, k in zip(axes[:, 0], folds):
        for name in PLOTTED:
            if name in group["_seed_mean"]:
                r = group["_seed_mean"][name][k]
                ax.plot(_x(r.index), np.cumprod(1.0 + r.to_numpy(np.float64)), lw=1,
                        label=STRATEGIES[name].label)
        ax.set_title(f"fold {k}", fontsize=9)
        ax.set_ylabel("equity")
        ax.grid(alpha=0.3)
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    axes[0, 0].legend(fontsize=7, ncol=len(PLOTTED))
    fig.suptitle(f"{group['series']}, fee {group['fee']:g}: test equity (seed mean returns)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_weights(jobs: dict[tuple[str, int, int], JobResult], group: dict[str, Any], path: Path) -> Path | None:
    """Hyper-agent weights of the first improved seed per fold as a stackplot; the bars' trend
    regime (when ``regime_trend`` is there) as a shaded band above it (the weights sum to 1, so
    a background would be hidden)."""
    from streammoe.runs import pyplot, save_figure

    picked = {}
    for k in group["folds"]:
        seeds = sorted(s for (m, kk, s) in jobs if m == "improved" and kk == k)
        if seeds:
            picked[k] = (seeds[0], jobs[("improved", k, seeds[0])].returns)
    if not picked:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(len(picked), 1, figsize=(10, 2.4 * len(picked)), squeeze=False)
    for ax, (k, (seed, df)) in zip(axes[:, 0], picked.items()):
        x = _x(df.index)
        names = [n for n in SUBAGENTS if f"w_{n}" in df] or [c[2:] for c in df.columns if c.startswith("w_")]
        if names:
            ax.stackplot(x, *[df[f"w_{n}"].to_numpy(np.float64) for n in names], labels=names, alpha=0.85)
        top = 1.0
        if "regime_trend" in df:
            top = 1.1
            trend = df["regime_trend"].to_numpy()
            for label, colour in enumerate(TREND_COLOURS):
                on = trend == label
                on[1:] |= on[:-1]  # a step to the next bar's time, so adjacent chunks meet
                ax.fill_between(x, 1.02, top, where=on, step="post", color=colour, lw=0,
                                label=TREND_NAMES[label])
        ax.set_ylim(0, top)
        ax.set_title(f"fold {k} (seed {seed})", fontsize=9)
        ax.set_ylabel("weight")
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, ncol=6, loc="lower center", bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(f"{group['series']}, fee {group['fee']:g}: improved hyper-agent weights"
                 + (" (band: trend regime)" if top > 1 else ""))
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return save_figure(fig, path)


# -------------------------------------------------------------------------------------- memory


def time_memory(capacity: int = 4320, key_dim: int = 64, n_queries: int = 32, k: int = 5,
                repeats: int = 5) -> dict[str, float]:
    """Seconds per query: vectorised vs Python loop over the same full buffer."""
    import torch

    from streammoe.control.macrohft.memory import EpisodicMemory

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


# ---------------------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", nargs="+", default=["eurusd_1h", "sp500_1d"])
    parser.add_argument("--folds", type=int, default=4, help="walk-forward folds (macrohft.splits.folds)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--fees", nargs="+", type=float, default=[2e-4], help="commissions per trade")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--jobs", type=int, default=2, help="subprocesses at a time")
    parser.add_argument("--experiment", default="macrohft")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "macrohft" / "walkforward")
    parser.add_argument("--aggregate-only", action="store_true", help="run nothing, aggregate OUT/runs")
    parser.add_argument("--block", type=int, default=20, help="bootstrap block length in bars")
    parser.add_argument("--n-boot", type=int, default=2000)
    parser.add_argument("--level", type=float, default=0.95)
    parser.add_argument("--target-fee", type=float, default=2e-4)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--memory", action="store_true", help="also time the episodic-memory query")
    parser.add_argument("--memory-only", action="store_true", help="only time the episodic-memory query")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every job (after --)")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    if args.memory_only:
        mem = time_memory()
        print(format_table([mem], title="Episodic memory query at capacity 4320 (seconds per query)",
                           floatfmt=".3g"))
        path = out / "bench_macrohft_memory.json"
        path.write_text(json.dumps(to_jsonable(mem), indent=2) + "\n")
        print(f"wrote {path}")
        return 0

    ran: dict[str, Any] = {"n_jobs": 0, "n_run": 0, "n_skipped": 0, "failures": [], "job_seconds_sum": 0.0,
                           "run_seconds": 0.0}
    if not args.aggregate_only:
        jobs = plan_jobs(args.series, args.fees, args.modes, args.folds, args.seeds)
        ran = run_jobs(jobs, out, args.experiment, args.folds, args.overrides, args.jobs)
    report = aggregate(out, folds=args.folds, block=args.block, n_boot=args.n_boot, level=args.level,
                       target_fee=args.target_fee, plots=not args.no_plots)
    print(render(report))
    if args.memory:
        report["memory"] = time_memory()
        print(format_table([report["memory"]], floatfmt=".3g",
                           title="\nEpisodic memory query at capacity 4320 (seconds per query)"))
    path = out / "bench_macrohft.json"
    run_info = {"experiment": args.experiment, "overrides": args.overrides,
                "plan": {"series": args.series, "folds": args.folds, "seeds": args.seeds,
                         "fees": args.fees, "modes": args.modes},
                "run": ran, "bench_elapsed_seconds": time.perf_counter() - t0}
    if args.aggregate_only:  # keep what the last run recorded (its plan and elapsed time)
        previous = json.loads(path.read_text()) if path.is_file() else {}
        run_info = {k: previous.get(k) for k in run_info}
        run_info["aggregate_seconds"] = time.perf_counter() - t0
    report.update(run_info)
    path.write_text(json.dumps(to_jsonable(report), indent=2) + "\n")
    bench_seconds = report["bench_elapsed_seconds"] or 0.0
    print(f"\nwrote {path} (jobs' wall time {report['jobs_wall_seconds']:.0f}s, "
          f"bench {bench_seconds:.0f}s)")
    if ran["failures"]:
        print(f"\n{len(ran['failures'])} jobs FAILED:")
        for f in ran["failures"]:
            print(f"  {f['job']} (rc {f['rc']}): see {f['log']}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
