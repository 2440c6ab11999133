"""MacroHFT end to end (``experiment=macrohft`` / ``macrohft_smoke``), top to bottom, on one
walk-forward fold (``macrohft.splits.fold``; ``scripts/bench_macrohft.py`` runs them all):

1. load OHLCV, build features (scalers fitted on the fold's training window), train / val / test
   envs; with ``macrohft.faithful=true`` the reference's settings replace ours
   (:data:`~streammoe.control.macrohft.config.FAITHFUL`, written to ``config_effective.yaml``);
2. decompose the training window into trend / volatility chunks (``regimes.png``); the last
   ``hyper.router_fraction`` of them are held out of the sub-agents for the hyper-agent;
3. train the six sub-agents, each epoch scored on its regime's validation chunks (best epoch
   kept), alpha picked on validation too (faithful: the reference's alpha per agent, last epoch);
4. train the single-DDQN baseline on all training chunks, with the same selection;
5. train the hyper-agent over the frozen sub-agents (memory, teacher KL), best epoch by
   validation Sharpe;
6. pick the shrinkage toward uniform weights and the action margin on the validation window
   (``val_*`` metrics), and the uniform mixture's and single DDQN's margins likewise;
7. evaluate on the test window: MacroHFT, buy-and-hold, MACD, single DDQN, uniform mixing, each
   sub-agent; write ``metrics.json``, ``test_returns.csv`` (per-bar returns and weights, for the
   benchmark's bootstrap), ``equity.png``, ``weights.png`` / ``test_weights.csv`` and the
   checkpoint ``macrohft.safetensors`` (``macrohft.resume_from=.../macrohft.safetensors`` reuses
   its sub-agents and single DDQN and retrains only the hyper-agent, which gives the same
   result as not stopping).
"""

from __future__ import annotations

import copy
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf
from streammoe_envs.trading import TradingEnv
from streammoe_envs.trading.data import bars_per_year, load_data
from streammoe_envs.trading.features import FeatureSet, build_features

from streammoe.control.macrohft.config import REFERENCE_ALPHAS, effective, validated
from streammoe.control.macrohft.metrics import trading_metrics
from streammoe.control.macrohft.model import (
    MacroHFT,
    load_checkpoint,
    macd_long,
    save_checkpoint,
    subagent_config,
)
from streammoe.control.macrohft.regimes import (
    REGIMES,
    RegimeThresholds,
    assign_regimes,
    chunk_labels,
    plot_regimes,
)
from streammoe.control.macrohft.train import (
    DQNConfig,
    EpochSelection,
    HyperConfig,
    Rollout,
    UniformMixer,
    greedy_rollout,
    q_table,
    table_rollout,
    train_hyperagent,
    train_subagent,
)
from streammoe.routing import RoutingStats
from streammoe.runs import RunRecorder, pyplot, save_figure

__all__ = ["build_envs", "run"]

# stage seeds are offsets of the run seed, so a resumed stage sees the seed it would have seen
_SUBAGENT_SEED, _DDQN_SEED, _HYPER_SEED = 1000, 2000, 3000


def _dataclass_from(cls: type, cfg: Any) -> Any:
    d = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}")
    return cls(**d)


def build_envs(fs: FeatureSet, env_cfg: Any, gamma: float) -> dict[str, TradingEnv]:
    return {split: TradingEnv(fs.split(split), tuple(env_cfg.position_levels), env_cfg.max_holding,
                              env_cfg.commission, gamma, normalise_reward=env_cfg.normalise_reward,
                              teacher_commission=env_cfg.teacher_commission)
            for split in ("train", "val", "test")}


def _chunk_score(env: TradingEnv, starts: np.ndarray, length: int):
    """Validation score of a Q-network: mean summed reward of its greedy policy over the given
    validation chunks from flat (the whole window when there are none)."""
    def score(net: torch.nn.Module) -> float:
        table = q_table(env, net)
        if len(starts) == 0:
            return float(table_rollout(env, table).rewards.sum())
        return float(np.mean([table_rollout(env, table[int(s):], start=int(s), length=length).rewards.sum()
                              for s in starts]))
    return score


def _sharpe(env: TradingEnv, table: np.ndarray, bpy: float, margin: float = 0.0) -> float:
    r = table_rollout(env, table, margin)
    return float(trading_metrics(r.values, bpy, r.positions)["sharpe"])


def _pick_margin(env: TradingEnv, table: np.ndarray, bpy: float, margins: list[float]
                 ) -> tuple[float, float]:
    """The margin with the best validation Sharpe (the first of equals): ``(margin, sharpe)``."""
    scores = [_sharpe(env, table, bpy, m) for m in margins]
    i = int(np.argmax(scores))
    return float(margins[i]), float(scores[i])


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Hydra entry: data, regimes, sub-agents, hyper-agent, validation choices, test evaluation."""
    validated(cfg)  # every key's type and range; device: CPU only (macrohft/config.py)
    t_start = time.perf_counter()
    c, data_cfg = effective(cfg.macrohft), OmegaConf.to_container(cfg.data, resolve=True)
    OmegaConf.save(c, run_dir / "config_effective.yaml")
    torch.set_num_threads(int(c.threads))
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    log = rec.log

    # 1. data, features, envs ------------------------------------------------------------------
    df = load_data(data_cfg, seed=cfg.seed)
    fold = c.splits.folds - 1 if c.splits.fold is None else int(c.splits.fold)
    fs = build_features(df, c.splits.train, c.splits.val, c.features.context_window,
                        c.features.market_window, c.features.clip,
                        min_train_bars=int(c.regimes.chunk_length),  # one regime chunk at least
                        folds=int(c.splits.folds), fold=fold)
    bpy = float(data_cfg["bars_per_year"] or bars_per_year(
        data_cfg["bar_frequency"], data_cfg["trading_days"], data_cfg["hours_per_day"]))
    sub_cfg = _dataclass_from(DQNConfig, c.subagent)
    hyper_cfg = _dataclass_from(HyperConfig, c.hyper)
    envs = build_envs(fs, c.env, sub_cfg.gamma)
    train_env, val_env, test_env = envs["train"], envs["val"], envs["test"]
    L = int(c.regimes.chunk_length)

    # 2. market decomposition (training window only); the router slice is the last chunks --------
    starts, labels = chunk_labels(train_env.prices, L, c.regimes.filter_order, c.regimes.cutoff,
                                  c.regimes.normalise_slope)
    n_router = int(round(hyper_cfg.router_fraction * len(starts))) if c.mixing == "learned" else 0
    if n_router and len(starts) - n_router < 2:
        raise ValueError(f"the training window has {len(starts)} chunks of {L} bars: too few to hold "
                         f"out hyper.router_fraction={hyper_cfg.router_fraction} of them for the "
                         "hyper-agent and train sub-agents on the rest; lower router_fraction or "
                         "regimes.chunk_length, or use a longer series")
    sub_idx = np.arange(len(starts) - n_router)
    sub_starts, router_starts = starts[sub_idx], starts[len(sub_idx):]
    sub_labels = {k: v[sub_idx] for k, v in labels.items()}
    thresholds = RegimeThresholds.fit(sub_labels, tuple(c.regimes.quantiles))
    regime_starts = assign_regimes(sub_starts, sub_labels, thresholds)
    plot_regimes(train_env.prices, sub_starts, L, thresholds.bins(sub_labels), run_dir / "regimes.png")
    if len(val_env.prices) > L:  # validation chunks labelled with the *training* thresholds
        vs, vl = chunk_labels(val_env.prices, L, c.regimes.filter_order, c.regimes.cutoff,
                              c.regimes.normalise_slope)
        val_starts = assign_regimes(vs, vl, thresholds, fold_tails=c.regimes.fold_val_tails)
        val_all = vs
    else:
        val_starts, val_all = {k: np.array([], int) for k in REGIMES}, np.array([], int)

    resumed = load_checkpoint(c.resume_from, expect=subagent_config(  # checked before any training
        OmegaConf.to_container(c, resolve=True), data_cfg, cfg.seed)) if c.resume_from else None

    # 3. sub-agents: epochs and alpha picked on validation ------------------------------------------
    def fit(name: str, train_s: np.ndarray, val_s: np.ndarray, seed: int, alphas: list[float]
            ) -> tuple[torch.nn.Module, float]:
        best: tuple[float, float, torch.nn.Module] | None = None
        for alpha in alphas:
            sel = EpochSelection(_chunk_score(val_env, val_s, L), keep_best=c.select_best_epoch)
            net = train_subagent(train_env, train_s, L, sub_cfg, float(alpha), seed, log, name, sel)
            score = sel.scores[sel.best_epoch - 1]
            log(stage="validation", agent=name, alpha=float(alpha), epoch=sel.best_epoch, step=None,
                td_loss=None, kl_loss=None, memory_loss=None, score=score)
            if best is None or score > best[0]:
                best = (score, float(alpha), net)
        assert best is not None
        return best[2], best[1]

    empty = [name for name, s in regime_starts.items() if len(s) == 0]
    if empty and resumed is None:  # before any training
        raise ValueError(
            f"fold {fold}: no training chunk falls in regime(s) {empty}: the sub-agents get "
            f"{len(sub_starts)} chunks of {L} bars from the training window. Use a longer series, "
            "fewer folds or a larger macrohft.splits.train, a shorter regimes.chunk_length, or a "
            "smaller hyper.router_fraction")
    if resumed is not None:
        subagents, alphas = resumed.subagents, dict(resumed.alphas)
        single = resumed.single_ddqn
    else:
        subagents, alphas = {}, {}
        for i, name in enumerate(REGIMES):
            train_s = regime_starts[name]
            candidates = [REFERENCE_ALPHAS[name]] if c.faithful else list(c.alphas)
            subagents[name], alphas[name] = fit(name, train_s, val_starts[name],
                                                cfg.seed + _SUBAGENT_SEED + i, candidates)
        # 4. single DDQN on all training chunks (a baseline)
        single = None
        if c.single_ddqn:
            single, alphas["single_ddqn"] = fit("single_ddqn", starts, val_all,
                                                cfg.seed + _DDQN_SEED, list(c.alphas))

    # 5. hyper-agent, best epoch by validation Sharpe ---------------------------------------------
    names = list(subagents)
    expert_list = [subagents[n] for n in names]
    memory = None
    if c.mixing == "uniform":
        mixer: torch.nn.Module = UniformMixer(len(names))
        hyper_sel = None
    else:
        if hyper_cfg.episode == "whole_split":
            h_starts, h_len = np.array([0]), len(train_env.prices) - 1
        else:
            h_starts, h_len = (router_starts if n_router else starts), L

        def mixture_sharpe(hyper: torch.nn.Module) -> float:
            return _sharpe(val_env, q_table(val_env, MacroHFT(
                val_env.layout, val_env.action_space.n, subagents, hyper).q_values), bpy)

        hyper_sel = EpochSelection(mixture_sharpe, keep_best=c.select_best_epoch)
        mixer, memory = train_hyperagent(train_env, h_starts, h_len, expert_list, hyper_cfg,
                                         cfg.seed + _HYPER_SEED, log, hyper_sel)
    model = MacroHFT(train_env.layout, train_env.action_space.n, subagents, mixer, single,
                     memory, alphas, meta={
                         "config": OmegaConf.to_container(c, resolve=True), "data": data_cfg,
                         "seed": int(cfg.seed), "fold": fold,
                         "levels": list(c.env.position_levels),
                         "scalers": {k: s.state_dict() for k, s in fs.scalers.items()},
                         "thresholds": thresholds.state_dict(), "feature_names": fs.names})

    # 6. validation choices: shrinkage x margin for MacroHFT, a margin for uniform mixing and DDQN --
    grid = []
    for lam in c.selection.shrinkage:
        model.shrinkage = float(lam)
        table = q_table(val_env, model.q_values)
        grid += [(_sharpe(val_env, table, bpy, m), float(lam), float(m)) for m in c.selection.margins]
    val_best = max(grid, key=lambda g: g[0])  # the first of equals: lists go from plain to shrunk
    model.shrinkage, model.margin = val_best[1], val_best[2]
    uniform = copy.copy(model)
    uniform.shrinkage = 1.0
    uniform.margin, val_uniform = _pick_margin(val_env, q_table(val_env, uniform.q_values), bpy,
                                               list(c.selection.margins))
    single_margin = val_single = None
    if single is not None:
        single_margin, val_single = _pick_margin(val_env, q_table(val_env, single), bpy,
                                                 list(c.selection.margins))
    if c.checkpoint:
        save_checkpoint(model, run_dir / "macrohft.safetensors")

    # 7. test evaluation --------------------------------------------------------------------------
    test = test_env
    test_index = test.features.index  # the test window's timestamps
    a0 = fs.splits["test"][0]
    long_a, flat_a = int(np.argmax(test.levels)), test.flat_index
    macd = macd_long(fs.close)[a0:]
    rollouts: dict[str, Rollout] = {
        "macrohft": table_rollout(test, q_table(test, model.q_values), model.margin),
        "buy_and_hold": greedy_rollout(test, lambda bar, pos: long_a),
        "macd": greedy_rollout(test, lambda bar, pos: long_a if macd[bar] else flat_a),
        "uniform": table_rollout(test, q_table(test, uniform.q_values), uniform.margin),
    }
    if single is not None:
        rollouts["ddqn"] = table_rollout(test, q_table(test, single), single_margin or 0.0)
    for name in names:
        rollouts[f"subagent_{name}"] = table_rollout(test, q_table(test, subagents[name]))
    results = {k: trading_metrics(r.values, bpy, r.positions) for k, r in rollouts.items()}

    # which sub-agent the hyper-agent trusted when (along the realised test trajectory)
    mh = rollouts["macrohft"]
    obs = torch.from_numpy(test.all_observations())
    prev_pos = np.concatenate([[test.flat_index], mh.actions[:-1]])
    weights = model.weights(obs[mh.bars, prev_pos]).numpy()
    stats = RoutingStats(len(names), window=len(weights))
    stats.update(torch.from_numpy(weights))
    w_cols = {f"w_{n}": weights[:, i] for i, n in enumerate(names)}
    pd.DataFrame({"time": test_index[mh.bars], "close": test.prices[mh.bars],
                  "position": mh.positions, **w_cols}).to_csv(run_dir / "test_weights.csv", index=False)
    regime_cols = _bar_regimes(test.prices, L, c.regimes, thresholds, len(mh.bars))
    pd.DataFrame({"time": test_index[mh.bars + 1], "close": test.prices[mh.bars + 1],
                  **{f"r_{k}": np.diff(r.values) / r.values[:-1] for k, r in rollouts.items()
                     if not k.startswith("subagent_")},
                  **w_cols, **regime_cols}).to_csv(run_dir / "test_returns.csv", index=False)
    _plot_equity(test_index, rollouts, run_dir / "equity.png")
    _plot_weights(test_index[mh.bars], test.prices[mh.bars], weights, names,
                  run_dir / "weights.png")

    metrics: dict[str, Any] = dict(results["macrohft"])
    metrics.update({f"baseline_{k}": v for k, v in results["buy_and_hold"].items()})
    for strategy, res in results.items():
        if strategy not in ("macrohft", "buy_and_hold"):
            metrics.update({f"{strategy}_{k}": v for k, v in res.items()})
    metrics.update({f"alpha_{k}": v for k, v in alphas.items()})
    metrics.update({f"weight_{n}": float(u) for n, u in zip(names, weights.mean(0))})
    metrics.update({
        "val_sharpe": val_best[0], "val_shrinkage": model.shrinkage, "val_margin": model.margin,
        "val_uniform_sharpe": val_uniform, "val_uniform_margin": uniform.margin,
        "val_hyper_best_epoch": hyper_sel.best_epoch if hyper_sel else None,
        "val_hyper_epoch_sharpes": ",".join(f"{v:.3f}" for v in hyper_sel.scores) if hyper_sel else None,
    })
    if single is not None:
        metrics.update({"val_ddqn_sharpe": val_single, "val_ddqn_margin": single_margin})
    metrics.update({"routing_entropy": stats.mean_entropy, "routing_switch_rate": stats.switch_rate,
                    "bars_per_year": bpy, "n_test_bars": len(mh.actions), "fold": fold,
                    "faithful": bool(c.faithful), "commission": float(c.env.commission),
                    "test_start": str(test_index[0]), "test_end": str(test_index[-1]),
                    "n_train_chunks": len(starts), "n_router_chunks": len(router_starts),
                    **{f"chunks_{k}": len(v) for k, v in regime_starts.items()},
                    "wall_seconds": time.perf_counter() - t_start})
    return rec.finish(metrics, title=f"MacroHFT on {data_cfg['path'] or data_cfg['name']} "
                                     f"(fold {fold} test window)")


def _bar_regimes(close: np.ndarray, length: int, regimes: Any, thresholds: RegimeThresholds,
                 n: int) -> dict[str, np.ndarray]:
    """Trend / volatility bin (0..4, training thresholds) of the chunk each of the first ``n``
    bars of a window falls in (-1 for the incomplete last chunk): for plots only, never acted on
    (a chunk's label looks ahead inside the chunk)."""
    out = {"regime_trend": np.full(n, -1), "regime_volatility": np.full(n, -1)}
    if len(close) < length:
        return out
    cs, cl = chunk_labels(close, length, regimes.filter_order, regimes.cutoff, regimes.normalise_slope)
    bins = thresholds.bins(cl)
    for s, bt, bv in zip(cs, bins["trend"], bins["volatility"]):
        out["regime_trend"][s:s + length] = bt
        out["regime_volatility"][s:s + length] = bv
    return out


def _plot_equity(index: pd.DatetimeIndex, rollouts: dict[str, Rollout], path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9, 4))
    for name in ("macrohft", "buy_and_hold", "ddqn", "macd"):
        if name in rollouts:
            v = rollouts[name].values
            ax.plot(index[: len(v)], v / v[0], label=name, lw=1.6 if name == "macrohft" else 1.0)
    ax.set_ylabel("portfolio value / initial")
    ax.set_title("test split: equity curves (after commission)")
    ax.legend()
    fig.autofmt_xdate()
    save_figure(fig, path)


def _plot_weights(index: pd.DatetimeIndex, close: np.ndarray, weights: np.ndarray,
                  names: list[str], path: Path) -> None:
    plt = pyplot()

    fig, (ax0, ax1) = plt.subplots(2, 1, figsize=(9, 5), sharex=True, height_ratios=(1, 1.4))
    ax0.plot(index, close, color="black", lw=0.8)
    ax0.set_ylabel("close")
    ax1.stackplot(index, weights.T, labels=names)
    ax1.set_ylim(0, 1)
    ax1.set_ylabel("hyper-agent weight")
    ax1.legend(loc="upper left", fontsize=7, ncol=3)
    ax0.set_title("which sub-agent the hyper-agent trusted when (test split)")
    fig.autofmt_xdate()
    save_figure(fig, path)
