"""MacroHFT end to end (``experiment=macrohft`` / ``macrohft_smoke``), top to bottom:

1. load OHLCV, build features (scalers fitted on train), chronological train / val / test envs;
2. decompose the training split into trend / volatility chunks (``regimes.png``);
3. train the six sub-agents, each with the KL weight alpha picked on its regime's val chunks;
4. train the single-DDQN baseline on all chunks (alpha picked on val too);
5. train the hyper-agent over the frozen sub-agents (memory, teacher KL);
6. evaluate on the test split: MacroHFT, buy-and-hold, MACD, single DDQN, each sub-agent;
   write ``metrics.json``, ``equity.png``, ``weights.png`` / ``test_weights.csv`` and the
   checkpoint ``macrohft.safetensors`` (``macrohft.resume_from=.../macrohft.safetensors`` reuses its sub-agents
   and single DDQN and retrains only the hyper-agent, which gives the same result as not
   stopping).
"""

from __future__ import annotations

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

from streammoe.control.macrohft.config import validated
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
    HyperConfig,
    Rollout,
    UniformMixer,
    greedy_rollout,
    q_table,
    table_policy,
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
                              env_cfg.commission, gamma, normalise_reward=env_cfg.normalise_reward)
            for split in ("train", "val", "test")}


def _val_score(env: TradingEnv, net: torch.nn.Module, starts: np.ndarray, length: int) -> float:
    """Mean summed reward over the given validation chunks (the whole split when none)."""
    table = q_table(env, net)
    policy = table_policy(table)
    if len(starts) == 0:
        return float(greedy_rollout(env, policy).rewards.sum())
    return float(np.mean([greedy_rollout(env, policy, int(s), length).rewards.sum() for s in starts]))


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Hydra entry: data, regimes, sub-agents, hyper-agent, test-split evaluation and plots."""
    validated(cfg)  # every key's type and range; device: CPU only (macrohft/config.py)
    c, data_cfg = cfg.macrohft, OmegaConf.to_container(cfg.data, resolve=True)
    torch.set_num_threads(int(c.threads))
    rec = RunRecorder(run_dir, tensorboard=cfg.tensorboard)
    log = rec.log

    # 1. data, features, envs ------------------------------------------------------------------
    df = load_data(data_cfg, seed=cfg.seed)
    fs = build_features(df, c.splits.train, c.splits.val, c.features.context_window,
                        c.features.market_window, c.features.clip,
                        min_train_bars=int(c.regimes.chunk_length))  # one regime chunk at least
    bpy = float(data_cfg["bars_per_year"] or bars_per_year(
        data_cfg["bar_frequency"], data_cfg["trading_days"], data_cfg["hours_per_day"]))
    sub_cfg = _dataclass_from(DQNConfig, c.subagent)
    hyper_cfg = _dataclass_from(HyperConfig, c.hyper)
    envs = build_envs(fs, c.env, sub_cfg.gamma)
    L = int(c.regimes.chunk_length)

    # 2. market decomposition (training split only) ----------------------------------------------
    starts, labels = chunk_labels(envs["train"].prices, L, c.regimes.filter_order, c.regimes.cutoff)
    thresholds = RegimeThresholds.fit(labels, tuple(c.regimes.quantiles))
    regime_starts = assign_regimes(starts, labels, thresholds)
    plot_regimes(envs["train"].prices, starts, L, thresholds.bins(labels), run_dir / "regimes.png")
    val_len = len(envs["val"].prices)
    if val_len > L:  # validation chunks labelled with the *training* thresholds
        vs, vl = chunk_labels(envs["val"].prices, L, c.regimes.filter_order, c.regimes.cutoff)
        val_starts = assign_regimes(vs, vl, thresholds)
        val_all = vs
    else:
        val_starts, val_all = {k: np.array([], int) for k in REGIMES}, np.array([], int)

    resumed = load_checkpoint(c.resume_from, expect=subagent_config(  # checked before any training
        OmegaConf.to_container(c, resolve=True), data_cfg, cfg.seed)) if c.resume_from else None

    # 3. sub-agents, alpha picked on validation ---------------------------------------------------
    def fit_with_alpha(name: str, train_starts: np.ndarray, val_s: np.ndarray, seed: int
                       ) -> tuple[torch.nn.Module, float]:
        if len(c.alphas) == 0:
            raise ValueError("macrohft.alphas is empty: give at least one teacher-KL weight")
        best: tuple[float, float, torch.nn.Module] | None = None
        for alpha in c.alphas:
            net = train_subagent(envs["train"], train_starts, L, sub_cfg, float(alpha), seed, log, name)
            score = _val_score(envs["val"], net, val_s, L)
            log(stage="validation", agent=name, alpha=float(alpha), epoch=None, step=None,
                td_loss=None, kl_loss=None, memory_loss=None, score=score)
            if best is None or score > best[0]:
                best = (score, float(alpha), net)
        assert best is not None
        return best[2], best[1]

    if resumed is not None:
        subagents, alphas = resumed.subagents, dict(resumed.alphas)
        single = resumed.single_ddqn
    else:
        subagents, alphas = {}, {}
        for i, name in enumerate(REGIMES):
            train_s = regime_starts[name]
            if len(train_s) == 0:  # tiny data: every chunk (metrics.json shows chunks_<name> = 0)
                train_s = starts
            subagents[name], alphas[name] = fit_with_alpha(name, train_s, val_starts[name],
                                                           cfg.seed + _SUBAGENT_SEED + i)
        # 4. single DDQN on all chunks (a baseline)
        single = None
        if c.single_ddqn:
            single, alphas["single_ddqn"] = fit_with_alpha("single_ddqn", starts, val_all,
                                                           cfg.seed + _DDQN_SEED)

    # 5. hyper-agent ----------------------------------------------------------------------------
    names = list(subagents)
    memory = None
    if c.mixing == "uniform":
        mixer: torch.nn.Module = UniformMixer(len(names))
    elif c.mixing == "learned":
        mixer, memory = train_hyperagent(envs["train"], starts, L, [subagents[n] for n in names],
                                         hyper_cfg, cfg.seed + _HYPER_SEED, log)
    else:
        raise ValueError(f"macrohft.mixing must be 'learned' or 'uniform', got {c.mixing!r}")
    model = MacroHFT(envs["train"].layout, envs["train"].action_space.n, subagents, mixer, single,
                     memory, alphas, meta={
                         "config": OmegaConf.to_container(c, resolve=True), "data": data_cfg, "seed": int(cfg.seed),
                         "levels": list(c.env.position_levels),
                         "scalers": {k: s.state_dict() for k, s in fs.scalers.items()},
                         "thresholds": thresholds.state_dict(), "feature_names": fs.names})
    if c.checkpoint:
        save_checkpoint(model, run_dir / "macrohft.safetensors")

    # 6. test evaluation --------------------------------------------------------------------------
    test = envs["test"]
    test_index = test.features.index  # the test split's timestamps
    a0 = fs.splits["test"][0]
    long_a, flat_a = int(np.argmax(test.levels)), test.flat_index
    macd = macd_long(fs.close)[a0:]
    policies = {
        "macrohft": table_policy(q_table(test, model.q_values)),
        "buy_and_hold": lambda bar, pos: long_a,
        "macd": lambda bar, pos: long_a if macd[bar] else flat_a,
    }
    if single is not None:
        policies["ddqn"] = table_policy(q_table(test, single))
    for name in names:
        policies[f"subagent_{name}"] = table_policy(q_table(test, subagents[name]))
    rollouts = {k: greedy_rollout(test, p) for k, p in policies.items()}
    results = {k: trading_metrics(r.values, bpy, r.positions) for k, r in rollouts.items()}

    # which sub-agent the hyper-agent trusted when (along the realised test trajectory)
    mh = rollouts["macrohft"]
    obs = torch.from_numpy(test.all_observations())
    prev_pos = np.concatenate([[test.flat_index], mh.actions[:-1]])
    weights = model.weights(obs[mh.bars, prev_pos]).numpy()
    stats = RoutingStats(len(names), window=len(weights))
    stats.update(torch.from_numpy(weights))
    pd.DataFrame({"time": test_index[mh.bars], "close": test.prices[mh.bars],
                  "position": mh.positions, **{f"w_{n}": weights[:, i] for i, n in enumerate(names)}}
                 ).to_csv(run_dir / "test_weights.csv", index=False)
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
    metrics.update({"routing_entropy": stats.mean_entropy, "routing_switch_rate": stats.switch_rate,
                    "bars_per_year": bpy, "n_test_bars": len(mh.actions),
                    "n_train_chunks": len(starts),
                    **{f"chunks_{k}": len(v) for k, v in regime_starts.items()}})
    return rec.finish(metrics, title=f"MacroHFT on {data_cfg['path'] or data_cfg['name']} (test split)")


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
