"""End-to-end MacroHFT runs through the Hydra config (``experiment=macrohft_smoke``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from streammoe_envs.trading import TradingEnv
from streammoe_envs.trading.data import load_data, synthetic_market
from streammoe_envs.trading.features import build_features

from streammoe.cli import compose_config, run_experiment
from streammoe.control.macrohft.config import REFERENCE_ALPHAS
from streammoe.control.macrohft.metrics import METRIC_KEYS, trading_metrics
from streammoe.control.macrohft.model import load_checkpoint
from streammoe.control.macrohft.regimes import REGIMES
from streammoe.control.macrohft.train import q_table, table_rollout

SMOKE = ["experiment=macrohft_smoke"]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("smoke")
    return run_dir, run_experiment(compose_config(SMOKE), run_dir)


def test_smoke_run_writes_every_artefact(smoke_run: tuple[Path, dict]) -> None:
    run_dir, metrics = smoke_run
    for name in ("metrics.json", "metrics.csv", "equity.png", "weights.png", "regimes.png",
                 "test_weights.csv", "test_returns.csv", "macrohft.safetensors",
                 "config_resolved.yaml", "config_effective.yaml"):
        assert (run_dir / name).is_file(), name
    saved = json.loads((run_dir / "metrics.json").read_text())
    for key in METRIC_KEYS:
        assert key in saved and f"baseline_{key}" in saved and f"ddqn_{key}" in saved
        assert f"macd_{key}" in saved
        for regime in REGIMES:
            assert f"subagent_{regime}_{key}" in saved
    assert saved["baseline_n_trades"] == 1  # buy-and-hold enters once
    weights = pd.read_csv(run_dir / "test_weights.csv")
    w = weights[[f"w_{r}" for r in REGIMES]].to_numpy()
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-5)
    assert len(weights) == metrics["n_test_bars"]
    returns = pd.read_csv(run_dir / "test_returns.csv")
    values = np.cumprod(np.concatenate([[1.0], 1 + returns["r_macrohft"].to_numpy()]))
    assert values[-1] - 1 == pytest.approx(saved["total_return"], rel=1e-9, abs=1e-12)
    assert {"r_buy_and_hold", "r_macd", "r_uniform", "r_ddqn", "regime_trend"} <= set(returns)
    for key in ("val_sharpe", "val_shrinkage", "val_margin", "val_ddqn_margin", "val_uniform_margin"):
        assert np.isfinite(saved[key]), key
    assert saved["val_shrinkage"] in (0.0, 1.0) and saved["fold"] == 3  # the last of 4 folds
    log = pd.read_csv(run_dir / "metrics.csv")
    assert set(log.stage) == {"subagent", "validation", "hyper"}
    assert {a for a in log.agent} == {*REGIMES, "single_ddqn", "hyper"}


def test_checkpoint_reloads_and_reproduces_the_test_metrics(smoke_run: tuple[Path, dict]) -> None:
    run_dir, metrics = smoke_run
    model = load_checkpoint(run_dir / "macrohft.safetensors")
    cfg = compose_config(SMOKE)
    c = cfg.macrohft
    fs = build_features(load_data(dict(cfg.data)), c.splits.train, c.splits.val,
                        c.features.context_window, c.features.market_window, c.features.clip,
                        folds=c.splits.folds, fold=metrics["fold"])
    np.testing.assert_allclose(fs.scalers["state"].mean, model.meta["scalers"]["state"]["mean"])
    test = TradingEnv(fs.split("test"), tuple(c.env.position_levels), c.env.max_holding,
                      c.env.commission, c.subagent.gamma)
    assert metrics["val_margin"] == model.margin and metrics["val_shrinkage"] == model.shrinkage
    rollout = table_rollout(test, q_table(test, model.q_values), model.margin)
    again = trading_metrics(rollout.values, metrics["bars_per_year"], rollout.positions)
    for key in METRIC_KEYS:
        assert again[key] == pytest.approx(metrics[key], rel=1e-9, abs=1e-12), key
    assert set(model.subagents) == set(REGIMES) and model.single_ddqn is not None
    assert isinstance(model.memory.keys, torch.Tensor)


def test_resume_from_checkpoint_gives_the_same_result(smoke_run: tuple[Path, dict],
                                                      tmp_path: Path) -> None:
    run_dir, metrics = smoke_run
    resumed = run_experiment(compose_config([*SMOKE, f"macrohft.resume_from={run_dir / 'macrohft.safetensors'}"]),
                             tmp_path)
    for key, value in metrics.items():
        if key == "wall_seconds":
            continue
        if isinstance(value, str) or value is None:
            assert resumed[key] == value, key
        else:
            assert resumed[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    log = pd.read_csv(tmp_path / "metrics.csv")
    assert set(log.stage) == {"hyper"}  # the sub-agents were not retrained


@pytest.mark.parametrize("overrides", [
    ["macrohft.mixing=uniform", "macrohft.single_ddqn=false"],
    ["macrohft.hyper.use_memory=false", "macrohft.hyper.use_adapter=false",
     "macrohft.subagent.use_adapter=false", "macrohft.alphas=[1.0]", "macrohft.single_ddqn=false"],
])
def test_ablation_switches_run(tmp_path: Path, overrides: list[str]) -> None:
    metrics = run_experiment(compose_config([*SMOKE, *overrides]), tmp_path)
    assert np.isfinite(metrics["sharpe"]) and "ddqn_sharpe" not in metrics
    if "macrohft.mixing=uniform" in overrides:
        w = pd.read_csv(tmp_path / "test_weights.csv").filter(like="w_").to_numpy()
        np.testing.assert_allclose(w, 1 / 6)
        assert load_checkpoint(tmp_path / "macrohft.safetensors").memory is None


def test_sweeps_optimise_a_validation_metric(smoke_run: tuple[Path, dict]) -> None:
    cfg = compose_config(["experiment=macrohft"])
    assert cfg.objective == "val_sharpe" and np.isfinite(smoke_run[1][cfg.objective])


def test_faithful_mode_runs_the_reference_settings(tmp_path: Path) -> None:
    metrics = run_experiment(compose_config([*SMOKE, "macrohft.faithful=true", "macrohft.single_ddqn=false",
                                             "macrohft.splits.fold=0"]), tmp_path)
    eff = OmegaConf.load(tmp_path / "config_effective.yaml")
    for key, value in (("env.teacher_commission", 1e-3), ("regimes.normalise_slope", False),
                       ("regimes.fold_val_tails", True), ("hyper.episode", "whole_split"),
                       ("hyper.memory_key", "encode"), ("hyper.input_context", True),
                       ("hyper.router_fraction", 0.0), ("hyper.lr", 1e-4), ("hyper.batch_size", 512),
                       ("hyper.eps_start", 0.7), ("hyper.steps_per_round", 512), ("subagent.lr", 1e-4)):
        assert OmegaConf.select(eff, key) == value, key
    assert {k[6:]: v for k, v in metrics.items() if k.startswith("alpha_")} == REFERENCE_ALPHAS
    # no validation choices: the last hyper-agent epoch, plain weights, no margin
    assert metrics["val_hyper_best_epoch"] == 15 and metrics["val_shrinkage"] == 0.0
    assert metrics["val_margin"] == 0.0 and metrics["n_router_chunks"] == 0 and metrics["fold"] == 0
    model = load_checkpoint(tmp_path / "macrohft.safetensors")
    assert model.mixer.memory_key == "encode" and model.mixer.encode.out_features == 32


def test_router_slice_is_held_out_of_the_subagents_and_too_few_chunks_fail_early(tmp_path: Path) -> None:
    on = run_experiment(compose_config([*SMOKE, "macrohft.single_ddqn=false"]), tmp_path / "on")
    off = run_experiment(compose_config([*SMOKE, "macrohft.single_ddqn=false",
                                         "macrohft.hyper.router_fraction=0.0"]), tmp_path / "off")
    assert on["n_router_chunks"] == round(0.3 * on["n_train_chunks"]) > 0 and off["n_router_chunks"] == 0
    assert sum(on[f"chunks_{r}"] for r in REGIMES) < sum(off[f"chunks_{r}"] for r in REGIMES)
    with pytest.raises(ValueError, match=r"no training chunk falls in regime"):
        run_experiment(compose_config([*SMOKE, "macrohft.regimes.chunk_length=100"]), tmp_path / "few")
    with pytest.raises(ValueError, match="router_fraction"):
        run_experiment(compose_config([*SMOKE, "macrohft.hyper.router_fraction=0.95"]), tmp_path / "bad")
    assert not (tmp_path / "bad" / "metrics.csv").exists() or \
        pd.read_csv(tmp_path / "bad" / "metrics.csv").empty  # failed before any training


def test_run_on_a_users_csv_file(tmp_path: Path) -> None:
    df, _ = synthetic_market(700, seed=11, freq="1D")
    csv = tmp_path / "prices.csv"
    pd.DataFrame({"day": df.index.strftime("%d/%m/%Y"), "o": df.open, "h": df.high, "l": df.low,
                  "c": df.close}).to_csv(csv, index=False)
    overrides = [*SMOKE, "data=csv", f"data.path={csv}", "data.time_column=day",
                 "data.date_format=%d/%m/%Y", "data.columns.open=o", "data.columns.high=h",
                 "data.columns.low=l", "data.columns.close=c", "data.columns.volume=null",
                 "data.bar_frequency=1d", "macrohft.alphas=[0.0]", "macrohft.single_ddqn=false"]
    metrics = run_experiment(compose_config(overrides), tmp_path / "run")
    assert metrics["bars_per_year"] == 252
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["n_test_bars"] > 50
