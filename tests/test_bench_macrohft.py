"""scripts/bench_macrohft.py: aggregation of fake walk-forward job folders, and the job pool."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from streammoe.control.macrohft.metrics import trading_metrics

ROOT = Path(__file__).resolve().parents[1]
BARS, BPY = 150, 8760.0
SUBAGENTS = ("trend_bear", "trend_flat", "trend_bull", "vol_low", "vol_mid", "vol_high")


@pytest.fixture(scope="module")
def bench() -> dict:
    return runpy.run_path(str(ROOT / "scripts" / "bench_macrohft.py"), run_name="bench")


def fake_job(job_dir: Path, series: str, mode: str, fold: int, seed: int, edge: float,
             regimes: bool) -> dict[str, np.ndarray]:
    """A finished job's ``metrics.json`` and ``test_returns.csv`` as the run entry writes them."""
    market = np.random.default_rng([sum(map(ord, series)), fold])  # seed-independent market
    noise = np.random.default_rng([sum(map(ord, series)), fold, seed, mode == "faithful"])
    r_bh = market.normal(0, 0.003, BARS)
    returns = {"r_macrohft": 0.5 * r_bh + edge + noise.normal(0, 0.001, BARS),
               "r_buy_and_hold": r_bh, "r_macd": np.sign(np.roll(r_bh, 1)) * r_bh * 0.5,
               "r_uniform": 0.3 * r_bh + noise.normal(0, 0.001, BARS)}
    if mode == "improved":
        returns["r_ddqn"] = noise.normal(0, 0.002, BARS)
    time = pd.date_range("2020-01-01", periods=BARS, freq="h") + pd.Timedelta(hours=BARS * fold)
    df = pd.DataFrame({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "close": 100 * np.cumprod(1 + r_bh),
                       **returns})
    w = noise.dirichlet(np.ones(6), BARS)
    for i, name in enumerate(SUBAGENTS):
        df[f"w_{name}"] = w[:, i]
    if regimes:
        df["regime_trend"] = np.repeat(market.integers(0, 5, BARS // 10 + 1), 10)[:BARS]
        df["regime_volatility"] = np.repeat(market.integers(0, 5, BARS // 10 + 1), 10)[:BARS]
    metrics: dict[str, object] = {}
    prefixes = {"r_macrohft": "", "r_buy_and_hold": "baseline_", "r_macd": "macd_",
                "r_ddqn": "ddqn_", "r_uniform": "uniform_"}
    for col, prefix in prefixes.items():
        if col in returns:
            m = trading_metrics(np.r_[1.0, np.cumprod(1 + returns[col])], BPY)
            m.update(n_trades=float(10 + fold), turnover=2.0 + fold)
            metrics.update({f"{prefix}{k}": v for k, v in m.items()})
    metrics.update(val_sharpe=0.5, n_test_bars=BARS, bars_per_year=BPY, test_start=df["time"].iloc[0],
                   test_end=df["time"].iloc[-1], fold=fold, faithful=mode == "faithful", wall_seconds=10.0)
    job_dir.mkdir(parents=True)
    df.to_csv(job_dir / "test_returns.csv", index=False)
    (job_dir / "metrics.json").write_text(json.dumps(metrics))
    return returns


def make_bench_dir(out: Path) -> dict:
    """2 series x 1 fee x 2 modes x 2 folds x 2 seeds; ``good`` has a large per-bar edge."""
    kept = {}
    for series, edge, regimes in (("good", 5e-4, True), ("flat", 0.0, False)):
        for mode in ("improved", "faithful"):
            for fold in range(2):
                for seed in range(2):
                    job_dir = out / "runs" / series / "fee0.0002" / mode / f"fold{fold}_seed{seed}"
                    kept[(series, mode, fold, seed)] = fake_job(job_dir, series, mode, fold, seed,
                                                                edge, regimes)
    return kept


def test_aggregation_of_fake_jobs(bench: dict, tmp_path: Path, capsys) -> None:
    returns = make_bench_dir(tmp_path)
    assert bench["main"](["--out", str(tmp_path), "--aggregate-only", "--folds", "2",
                          "--n-boot", "300"]) == 0
    printed = capsys.readouterr().out
    assert "| strategy |" in printed and "### good, fee 0.0002" in printed
    report = json.loads((tmp_path / "bench_macrohft.json").read_text())
    assert report["n_finished_jobs"] == 16 and report["jobs_wall_seconds"] == pytest.approx(160.0)
    assert report["run"] is None and report["aggregate_seconds"] > 0  # no earlier run recorded
    groups = {g["series"]: g for g in report["groups"]}
    assert set(groups) == {"good", "flat"}
    for g in groups.values():
        assert g["fee"] == pytest.approx(2e-4) and g["folds"] == [0, 1] and g["n_test_bars"] == 2 * BARS
        st = g["strategies"]
        assert list(st) == ["improved", "faithful", "ddqn", "uniform", "buy_and_hold", "macd"]
        assert st["ddqn"]["mode"] == "improved" and st["faithful"]["mode"] == "faithful"
        assert all(s["seeds"] == [0, 1] for s in st.values())
        # the Sharpe of seed 0's test bars of both folds joined, by hand
        r = np.concatenate([returns[(g["series"], "improved", k, 0)]["r_macrohft"] for k in (0, 1)])
        assert st["improved"]["sharpe_per_seed"][0] == pytest.approx(r.mean() / r.std(ddof=1) * np.sqrt(BPY))
        assert st["buy_and_hold"]["sharpe_std"] == pytest.approx(0.0, abs=1e-12)
        assert st["improved"]["n_trades_per_fold_mean"] == pytest.approx(10.5)
        assert st["improved"]["turnover_per_fold_mean"] == pytest.approx(2.5)
        assert len(st["improved"]["per_fold"]["sharpe_mean"]) == 2
        assert set(g["bootstrap"]) == {"improved", "faithful"}
        assert set(g["bootstrap"]["improved"]) == {"ddqn", "buy_and_hold", "uniform"}
        boot = g["bootstrap"]["improved"]["ddqn"]
        seed_mean = {col: np.concatenate([np.mean([returns[(g["series"], "improved", k, s)][col]
                                                   for s in (0, 1)], axis=0) for k in (0, 1)])
                     for col in ("r_macrohft", "r_ddqn")}
        diff = seed_mean["r_macrohft"] - seed_mean["r_ddqn"]
        assert boot["mean_diff"] == pytest.approx(diff.mean()) and boot["n"] == 2 * BARS
        assert boot["low"] <= boot["mean_diff"] <= boot["high"]
    assert groups["good"]["bootstrap"]["improved"]["ddqn"]["excludes_zero"]
    t = report["targets"]
    assert t["series"] == ["flat", "good"] and t["above_ddqn_significant"] == ["good"]
    assert "good" in t["above_buy_and_hold"] and t["above_buy_and_hold_holds"]
    for series in ("good", "flat"):
        for kind in ("equity", "weights"):
            assert (tmp_path / f"{kind}_{series}_fee0.0002.png").stat().st_size > 1000


FAKE_ENTRY = """
import json, pathlib, sys
job_dir, fold, seed = pathlib.Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if fold == 1 and seed == 1:
    sys.exit(3)
rows = ["time,close,r_macrohft,r_buy_and_hold,r_macd,r_uniform,r_ddqn"]
rows += [f"2020-01-{1 + i + 10 * fold:02d},1,{0.001 * (i % 3)},0.001,0,0,{0.0005 * (i % 2)}" for i in range(8)]
(job_dir / "test_returns.csv").write_text("\\n".join(rows) + "\\n")
keys = ["sharpe", "total_return", "max_drawdown", "n_trades", "turnover"]
m = {p + k: 0.0 for p in ["", "baseline_", "macd_", "uniform_", "ddqn_"] for k in keys}
m.update(bars_per_year=252, wall_seconds=1.0, fold=fold)
(job_dir / "metrics.json").write_text(json.dumps(m))
print("fake job done")
"""


def test_job_pool_skips_finished_reruns_interrupted_and_reports_failures(
        bench: dict, tmp_path: Path, monkeypatch, capsys) -> None:
    def command(self, out, experiment, folds, overrides):
        return [sys.executable, "-c", FAKE_ENTRY, str(self.dir(out)), str(self.fold), str(self.seed)]

    real = bench["Job"]("s", 2e-4, "faithful", 1, 2).command(tmp_path, "macrohft_smoke", 2, ["a=1"])
    assert real[2:] == ["experiment=macrohft_smoke", "data=s", "seed=2", "macrohft.splits.folds=2",
                        "macrohft.splits.fold=1", "macrohft.faithful=true",
                        "macrohft.single_ddqn=false",  # the baseline comes from the improved jobs
                        "macrohft.env.commission=0.0002",
                        f"hydra.run.dir={tmp_path / 'runs/s/fee0.0002/faithful/fold1_seed2'}",
                        "tensorboard=false", "a=1"]
    monkeypatch.setattr(bench["Job"], "command", command)
    finished = tmp_path / "runs/s/fee0.0002/improved/fold0_seed0"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")  # finished earlier: must be kept
    interrupted = tmp_path / "runs/s/fee0.0002/improved/fold1_seed0"
    interrupted.mkdir(parents=True)
    (interrupted / "stale.txt").write_text("x")  # no metrics.json: rerun from scratch
    jobs = bench["plan_jobs"](["s"], [2e-4], ["improved"], 2, [0, 1])
    ran = bench["run_jobs"](jobs, tmp_path, "macrohft", 2, [], 2)
    assert (ran["n_jobs"], ran["n_run"], ran["n_skipped"]) == (4, 3, 1)
    assert [f["rc"] for f in ran["failures"]] == [3] and "fold=1 seed=1" in ran["failures"][0]["job"]
    assert (finished / "metrics.json").read_text() == "{}"
    assert not (interrupted / "stale.txt").exists() and (interrupted / "metrics.json").is_file()
    assert "fake job done" in (interrupted / "log.txt").read_text()
    assert "[3/3]" in capsys.readouterr().out
    # the whole bench: the failed job is reported (exit code 1); seed 1 lacks fold 1
    (finished / "metrics.json").unlink()
    rc = bench["main"](["--series", "s", "--folds", "2", "--seeds", "0", "1", "--modes", "improved",
                        "--out", str(tmp_path), "--no-plots", "--n-boot", "100"])
    assert rc == 1
    report = json.loads((tmp_path / "bench_macrohft.json").read_text())
    assert report["run"]["n_skipped"] == 2 and len(report["run"]["failures"]) == 1
    improved = report["groups"][0]["strategies"]["improved"]
    assert improved["seeds"] == [0] and improved["incomplete_seeds"] == [1]
    assert "faithful" not in report["groups"][0]["strategies"]
    assert "1 jobs FAILED" in capsys.readouterr().out
    assert report["bench_elapsed_seconds"] > 0 and report["plan"]["seeds"] == [0, 1]
    # re-aggregating keeps the run's record
    assert bench["main"](["--out", str(tmp_path), "--aggregate-only", "--folds", "2", "--no-plots"]) == 0
    again = json.loads((tmp_path / "bench_macrohft.json").read_text())
    assert again["run"] == report["run"] and again["plan"] == report["plan"]
