"""End-to-end MacroHFT runs through the Hydra config (``experiment=macrohft_smoke``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from streammoe_envs.trading import TradingEnv
from streammoe_envs.trading.data import load_data, synthetic_market
from streammoe_envs.trading.features import build_features

from streammoe.cli import CONF_DIR, run_experiment
from streammoe.control.macrohft.metrics import METRIC_KEYS, trading_metrics
from streammoe.control.macrohft.model import load_checkpoint
from streammoe.control.macrohft.regimes import REGIMES
from streammoe.control.macrohft.train import greedy_rollout, q_table, table_policy

SMOKE = ["experiment=macrohft_smoke"]


def compose_config(overrides: list[str]) -> DictConfig:
    """As ``tests/conftest.py``'s helper (a module-scoped fixture cannot use its fixture)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("smoke")
    return run_dir, run_experiment(compose_config(SMOKE), run_dir)


def test_smoke_run_writes_every_artefact(smoke_run: tuple[Path, dict]) -> None:
    run_dir, metrics = smoke_run
    for name in ("metrics.json", "metrics.csv", "equity.png", "weights.png", "regimes.png",
                 "test_weights.csv", "macrohft.safetensors", "config_resolved.yaml"):
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
    log = pd.read_csv(run_dir / "metrics.csv")
    assert set(log.stage) == {"subagent", "validation", "hyper"}
    assert {a for a in log.agent} == {*REGIMES, "single_ddqn", "hyper"}


def test_checkpoint_reloads_and_reproduces_the_test_metrics(smoke_run: tuple[Path, dict]) -> None:
    run_dir, metrics = smoke_run
    model = load_checkpoint(run_dir / "macrohft.safetensors")
    cfg = compose_config(SMOKE)
    c = cfg.macrohft
    fs = build_features(load_data(dict(cfg.data)), c.splits.train, c.splits.val,
                        c.features.context_window, c.features.market_window, c.features.clip)
    np.testing.assert_allclose(fs.scalers["state"].mean, model.meta["scalers"]["state"]["mean"])
    test = TradingEnv(fs.split("test"), tuple(c.env.position_levels), c.env.max_holding,
                      c.env.commission, c.subagent.gamma)
    rollout = greedy_rollout(test, table_policy(q_table(test, model.q_values)))
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
