"""Schema of ``experiment=macrohft`` / ``macrohft_smoke`` (``cfg.macrohft`` and ``cfg.data``), see
:mod:`streammoe.config` for how schemas are registered and checked.

``macrohft.subagent`` and ``macrohft.hyper`` mirror :class:`~streammoe.control.macrohft.train.DQNConfig`
and :class:`~streammoe.control.macrohft.train.HyperConfig` field for field (a test keeps them equal);
the entry still builds those from the config.

``device``: MacroHFT runs on the CPU. Its networks are small MLPs evaluated on single bars while
rolling an episode out bar by bar, and its replay batches are a few hundred rows: the CPU with one
thread (``macrohft.threads``) is faster than a GPU round trip per bar. ``device=auto``/``cpu`` run
on the CPU and ``device=cuda`` is an error (``cuda`` without a GPU fails as in every system), not
silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from omegaconf import MISSING, DictConfig, OmegaConf

from streammoe.config import (
    ConfigError,
    RootConfig,
    at_least,
    cpu_only_device,
    greater_than,
    in_range,
    non_empty,
    one_of,
    validate,
)

__all__ = ["FAITHFUL", "REFERENCE_ALPHAS", "DQNSettings", "DataConfig", "HyperSettings",
           "MacroHFTConfig", "MacroHFTExperiment", "effective", "macrohft_device", "validated"]

MIXINGS = ("learned", "uniform")
EPISODES = ("chunks", "whole_split")
# The reference's teacher-KL weight per sub-agent (its scripts/low_level.sh); faithful mode uses
# these instead of picking alpha on validation.
REFERENCE_ALPHAS = {"trend_bear": 1.0, "trend_flat": 4.0, "trend_bull": 0.0,
                    "vol_low": 4.0, "vol_mid": 1.0, "vol_high": 1.0}
# ``macrohft.faithful=true`` replaces these keys with the reference's behaviour (docs/macrohft.md
# lists each point; the values come from reading the reference code). Everything else
# (features, chunk length, network widths of the sub-agents, flat episode starts) stays ours.
FAITHFUL: dict = {
    "env": {"teacher_commission": 1e-3},
    "regimes": {"normalise_slope": False, "fold_val_tails": True},
    "select_best_epoch": False,  # the reference keeps a reference to live weights: the last epoch
    "subagent": {"lr": 1e-4, "batch_size": 512, "gamma": 0.99, "tau": 0.005, "steps_per_round": 100,
                 "updates_per_round": 10, "eps_start": 0.5, "eps_end": 0.1, "eps_decay_epochs": 5.0,
                 "epochs": 15, "buffer_size": 1_000_000},
    "hyper": {"hidden": 32, "lr": 1e-4, "batch_size": 512, "gamma": 0.99, "tau": 0.005,
              "steps_per_round": 512, "updates_per_round": 10, "eps_start": 0.7, "eps_end": 0.3,
              "eps_decay_epochs": 5.0, "epochs": 15, "buffer_size": 1_000_000,
              "memory_capacity": 4320, "memory_k": 5, "memory_weight": 0.5, "kl_weight": 5.0,
              "input_context": True, "memory_key": "encode", "memory_fallback": True,
              "router_fraction": 0.0, "episode": "whole_split"},
    "selection": {"shrinkage": [0.0], "margins": [0.0]},
    "mixing": "learned",
}


@dataclass
class SyntheticMarket:
    """``data.synthetic`` (``conf/data/synthetic.yaml``): the seeded regime-switching market.

    Defaults equal to ``synthetic.yaml``'s (not ``MISSING``): a config that sets a part of this
    block and then switches ``data`` to a file (``macrohft_smoke`` with ``data=csv``) keeps a
    complete, unused block."""

    n_bars: int = 3000
    seed: int = 0
    mean_duration: float = 200.0
    drift: float = 0.0005
    vols: list[float] = field(default_factory=lambda: [0.002, 0.005, 0.012])

    def check(self, at: str) -> None:
        at_least(f"{at}n_bars", self.n_bars, 2)
        greater_than(f"{at}mean_duration", self.mean_duration, 0.0)
        if len(self.vols) != 3:
            raise ConfigError(f"{at}vols must be 3 volatilities (low, mid, high), got {self.vols}")
        for i, v in enumerate(self.vols):
            greater_than(f"{at}vols[{i}]", v, 0.0)


@dataclass
class DataConfig:
    """``conf/data/<name>.yaml``: which OHLCV series and how to read and annualise it."""

    name: str = MISSING
    path: str | None = MISSING             # a user's CSV; wins over name
    time_column: str | None = MISSING     # None: no timestamps (a CSV read in file order)
    columns: dict[str, str | None] = MISSING
    date_format: str | None = MISSING
    bar_frequency: str = MISSING
    bars_per_year: float | None = MISSING  # None: from bar_frequency
    trading_days: float = MISSING
    hours_per_day: float = MISSING
    synthetic: SyntheticMarket | None = None  # only data=synthetic has this block

    def check(self, at: str) -> None:
        from streammoe_envs.trading.data import (
            BUILTIN_DATASETS,  # pandas: at check time, not at CLI start
        )

        if not self.path:
            one_of(f"{at}name", self.name, ["synthetic", *BUILTIN_DATASETS])  # csv: data.path
        if self.name == "synthetic" and self.synthetic is None and not self.path:
            raise ConfigError(f"{at}synthetic is missing: data=synthetic needs its block "
                              "(conf/data/synthetic.yaml)")
        if not self.columns.get("close"):
            raise ConfigError(f"{at}columns.close must name the close column, got {self.columns}")
        if self.bars_per_year is not None:
            greater_than(f"{at}bars_per_year", self.bars_per_year, 0.0)
        in_range(f"{at}trading_days", self.trading_days, 0.0, 366.0, low_open=True)
        in_range(f"{at}hours_per_day", self.hours_per_day, 0.0, 24.0, low_open=True)


@dataclass
class Splits:
    """Walk-forward splits: fold 0's train and validation windows are the first ``train`` and
    ``val`` fractions of the bars, the rest is ``folds`` test windows, and fold k moves all three
    windows forward by k test windows (``folds=1``: one train / val / test split)."""

    train: float = MISSING
    val: float = MISSING
    folds: int = MISSING
    fold: int | None = MISSING  # None: the last fold (the most recent test window)

    def check(self, at: str) -> None:
        in_range(f"{at}train", self.train, 0.0, 1.0, low_open=True, high_open=True)
        in_range(f"{at}val", self.val, 0.0, 1.0, high_open=True)
        if not self.train + self.val < 1.0:
            raise ConfigError(f"{at}train + {at}val must be < 1 (the test windows are the rest), "
                              f"got {self.train} + {self.val}")
        at_least(f"{at}folds", self.folds, 1)
        if self.fold is not None:
            in_range(f"{at}fold", self.fold, 0, self.folds - 1)


@dataclass
class Features:
    context_window: int = MISSING
    market_window: int = MISSING
    clip: float = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}context_window", self.context_window, 2)
        at_least(f"{at}market_window", self.market_window, 2)
        greater_than(f"{at}clip", self.clip, 0.0)


@dataclass
class EnvSettings:
    position_levels: list[float] = MISSING
    max_holding: float = MISSING
    commission: float = MISSING
    teacher_commission: float | None = MISSING  # None: the env's commission
    normalise_reward: bool = MISSING

    def check(self, at: str) -> None:
        if len(set(self.position_levels)) != len(self.position_levels) or len(self.position_levels) < 2:
            raise ConfigError(f"{at}position_levels must be >= 2 distinct fractions, got "
                              f"{self.position_levels}")
        if 0.0 not in self.position_levels:
            raise ConfigError(f"{at}position_levels must contain 0 (episodes start flat), got "
                              f"{self.position_levels}")
        greater_than(f"{at}max_holding", self.max_holding, 0.0)
        at_least(f"{at}commission", self.commission, 0.0)
        if self.teacher_commission is not None:
            at_least(f"{at}teacher_commission", self.teacher_commission, 0.0)


@dataclass
class Regimes:
    chunk_length: int = MISSING
    filter_order: int = MISSING
    cutoff: float = MISSING
    quantiles: list[float] = MISSING
    normalise_slope: bool = MISSING  # trend slope divided by the chunk's mean close
    fold_val_tails: bool = MISSING  # validation chunks in the outer bins join classes 1 / 3

    def check(self, at: str) -> None:
        at_least(f"{at}filter_order", self.filter_order, 1)
        # the forward-backward Butterworth filter pads 3 * (order + 1) bars; and at least 8
        at_least(f"{at}chunk_length", self.chunk_length, max(8, 3 * (self.filter_order + 1) + 1))
        in_range(f"{at}cutoff", self.cutoff, 0.0, 1.0, low_open=True, high_open=True)
        q = self.quantiles
        if len(q) != 4 or any(b <= a for a, b in zip(q, q[1:])) or not 0 < q[0] or not q[-1] < 1:
            raise ConfigError(f"{at}quantiles must be 4 increasing numbers in (0, 1), got {q}")


@dataclass
class DQNSettings:
    """``macrohft.subagent`` (and the first half of ``macrohft.hyper``): double DQN training."""

    hidden: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    gamma: float = MISSING
    tau: float = MISSING
    steps_per_round: int = MISSING
    updates_per_round: int = MISSING
    grad_clip: float = MISSING
    eps_start: float = MISSING
    eps_end: float = MISSING
    eps_decay_epochs: float = MISSING
    epochs: int = MISSING
    buffer_size: int = MISSING
    use_adapter: bool = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}hidden", self.hidden, 1)
        greater_than(f"{at}lr", self.lr, 0.0)
        at_least(f"{at}batch_size", self.batch_size, 1)
        in_range(f"{at}gamma", self.gamma, 0.0, 1.0)
        in_range(f"{at}tau", self.tau, 0.0, 1.0, low_open=True)
        at_least(f"{at}steps_per_round", self.steps_per_round, 1)
        at_least(f"{at}updates_per_round", self.updates_per_round, 0)
        greater_than(f"{at}grad_clip", self.grad_clip, 0.0)
        in_range(f"{at}eps_start", self.eps_start, 0.0, 1.0)
        in_range(f"{at}eps_end", self.eps_end, 0.0, 1.0)
        at_least(f"{at}eps_decay_epochs", self.eps_decay_epochs, 0.0)
        at_least(f"{at}epochs", self.epochs, 1)
        at_least(f"{at}buffer_size", self.buffer_size, self.batch_size)


@dataclass
class HyperSettings(DQNSettings):
    """``macrohft.hyper``: the hyper-agent (DQN settings plus memory, teacher KL, temperature)."""

    memory_capacity: int = MISSING
    memory_k: int = MISSING
    memory_weight: float = MISSING
    kl_weight: float = MISSING
    use_memory: bool = MISSING
    temperature: float = MISSING
    input_context: bool = MISSING
    memory_key: str = MISSING
    memory_fallback: bool = MISSING
    router_fraction: float = MISSING
    episode: str = MISSING

    def check(self, at: str) -> None:
        super().check(at)
        one_of(f"{at}memory_key", self.memory_key, ("film", "encode"))
        one_of(f"{at}episode", self.episode, EPISODES)
        in_range(f"{at}router_fraction", self.router_fraction, 0.0, 1.0, high_open=True)
        at_least(f"{at}memory_capacity", self.memory_capacity, 1)
        in_range(f"{at}memory_k", self.memory_k, 1, self.memory_capacity)
        at_least(f"{at}memory_weight", self.memory_weight, 0.0)
        at_least(f"{at}kl_weight", self.kl_weight, 0.0)
        greater_than(f"{at}temperature", self.temperature, 0.0)


@dataclass
class Selection:
    """``macrohft.selection``: candidates chosen on the validation window by its Sharpe ratio."""

    shrinkage: list[float] = MISSING  # hyper-agent weights toward uniform (1 = uniform mixing)
    margins: list[float] = MISSING  # action margin in units of the trade's commission

    def check(self, at: str) -> None:
        non_empty(f"{at}shrinkage", self.shrinkage)
        for i, v in enumerate(self.shrinkage):
            in_range(f"{at}shrinkage[{i}]", v, 0.0, 1.0)
        non_empty(f"{at}margins", self.margins)
        for i, v in enumerate(self.margins):
            at_least(f"{at}margins[{i}]", v, 0.0)


@dataclass
class MacroHFTConfig:
    """``cfg.macrohft``."""

    faithful: bool = MISSING
    threads: int = MISSING
    splits: Splits = MISSING
    features: Features = MISSING
    env: EnvSettings = MISSING
    regimes: Regimes = MISSING
    alphas: list[float] = MISSING
    subagent: DQNSettings = MISSING
    hyper: HyperSettings = MISSING
    mixing: str = MISSING
    select_best_epoch: bool = MISSING
    selection: Selection = MISSING
    single_ddqn: bool = MISSING
    checkpoint: bool = MISSING
    resume_from: str | None = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}threads", self.threads, 1)
        non_empty(f"{at}alphas", self.alphas)
        for i, alpha in enumerate(self.alphas):
            at_least(f"{at}alphas[{i}]", alpha, 0.0)
        one_of(f"{at}mixing", self.mixing, MIXINGS)


@dataclass
class MacroHFTExperiment(RootConfig):
    """Schema ``schema/macrohft``."""

    data: DataConfig = MISSING
    macrohft: MacroHFTConfig = MISSING

    def check(self, at: str) -> None:
        super().check(at)
        macrohft_device(self.device)


def macrohft_device(name: str) -> torch.device:
    """Always the CPU; ``cuda`` is an error (see the module doc)."""
    return cpu_only_device(name, "MacroHFT", "small networks rolled out bar by bar")


def validated(cfg: DictConfig) -> MacroHFTExperiment:
    """``cfg`` checked against :class:`MacroHFTExperiment` (the entry's first line)."""
    return validate(cfg, MacroHFTExperiment)


def effective(c: DictConfig) -> DictConfig:
    """``cfg.macrohft`` as the run uses it: with ``faithful=true`` the :data:`FAITHFUL` keys
    replace the configured ones (the run writes the result to ``config_effective.yaml``)."""
    if not c.faithful:
        return c
    return OmegaConf.merge(c, FAITHFUL)
