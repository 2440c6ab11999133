"""Schema of ``experiment=t2mir_pointrobot`` / ``t2mir_cheetahvel`` / ``t2mir_cheetahvel_full`` /
``t2mir_smoke`` (``cfg.t2mir``), see :mod:`streammoe.config` for how schemas are registered and
checked.

``t2mir.model`` and ``t2mir.train`` mirror :class:`~streammoe.control.t2mir.model.ModelConfig`
(less the shapes the data gives: ``obs_dim``, ``act_dim``, ``horizon``; and what a variant sets:
``token_moe``, ``task_moe``, ``seed``) and :class:`~streammoe.control.t2mir.train.TrainConfig`
field for field (a test keeps them equal). ``t2mir.collector.sb3.algo_kwargs`` stays free-form:
SB3's keyword arguments of ``t2mir.collector.sb3.algo``.

``device`` places the transformer (training and in-context evaluation); the ``sb3`` collector's
learners run on the CPU. ``auto`` takes CUDA when torch sees a GPU, ``cuda`` without one is an
error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING, DictConfig

from streammoe.config import (
    ConfigError,
    RootConfig,
    at_least,
    greater_than,
    in_range,
    non_empty,
    one_of,
    validate,
)
from streammoe.control.t2mir.data import WINDOWS
from streammoe.control.t2mir.evaluate import ACTION_MODES, CONTEXTS
from streammoe.control.t2mir.model import VARIANTS
from streammoe.control.t2mir.train import PRECISIONS

__all__ = ["CollectorConfig", "T2MIRConfig", "T2MIRExperiment", "T2MIRModelSettings",
           "T2MIRTrainSettings", "validated"]

FAMILIES = ("point_robot", "cheetah_vel")
COLLECTORS = ("expert_anneal", "sb3")


@dataclass
class ExpertAnnealSettings:
    anneal_fraction: float = MISSING
    action_noise: float = MISSING
    noise_correlation: float = MISSING
    explore_std: float = MISSING

    def check(self, at: str) -> None:
        in_range(f"{at}anneal_fraction", self.anneal_fraction, 0.0, 1.0)
        at_least(f"{at}action_noise", self.action_noise, 0.0)
        in_range(f"{at}noise_correlation", self.noise_correlation, 0.0, 1.0, high_open=True)
        at_least(f"{at}explore_std", self.explore_std, 0.0)


@dataclass
class SB3CollectorSettings:
    algo: str = MISSING                     # ppo | sac
    algo_kwargs: dict[str, Any] = MISSING   # SB3 keyword arguments of that algorithm

    def check(self, at: str) -> None:
        one_of(f"{at}algo", self.algo, ("ppo", "sac"))


@dataclass
class CollectorConfig:
    """``t2mir.collector``: ``name`` picks the block of settings that is used."""

    name: str = MISSING
    expert_anneal: ExpertAnnealSettings = MISSING
    sb3: SB3CollectorSettings = MISSING

    def check(self, at: str) -> None:
        one_of(f"{at}name", self.name, COLLECTORS)


@dataclass
class T2MIRModelSettings:
    d_model: int = MISSING
    n_layers: int = MISSING
    n_heads: int = MISSING
    dropout: float = MISSING
    ffn_mult: int = MISSING
    expert_hidden: int = MISSING
    n_token_experts: int = MISSING
    token_k: int = MISSING
    n_task_experts: int = MISSING
    task_k: int = MISSING
    min_log_std: float = MISSING
    max_log_std: float = MISSING

    def check(self, at: str) -> None:
        for key in ("d_model", "n_layers", "n_heads", "ffn_mult", "expert_hidden", "n_token_experts",
                    "n_task_experts"):
            at_least(f"{at}{key}", getattr(self, key), 1)
        if self.d_model % self.n_heads:
            raise ConfigError(f"{at}d_model must be a multiple of {at}n_heads ({self.n_heads}), "
                              f"got {self.d_model}")
        in_range(f"{at}dropout", self.dropout, 0.0, 1.0, high_open=True)
        in_range(f"{at}token_k", self.token_k, 1, self.n_token_experts)
        in_range(f"{at}task_k", self.task_k, 1, self.n_task_experts)
        if not self.min_log_std < self.max_log_std:
            raise ConfigError(f"{at}min_log_std must be < {at}max_log_std, got {self.min_log_std} "
                              f"and {self.max_log_std}")


@dataclass
class T2MIRTrainSettings:
    steps: int = MISSING
    batch_size: int = MISSING            # B/2 tasks x 2 windows (contrastive positives)
    context_episodes: int = MISSING
    sort_by_return: bool = MISSING
    window: str = MISSING                # random_sorted | consecutive
    lr: float = MISSING
    weight_decay: float = MISSING
    warmup_steps: int = MISSING
    grad_clip: float = MISSING
    balance_weight: float = MISSING
    contrastive_weight: float = MISSING
    contrastive: str = MISSING           # bilinear | info_nce
    info_nce_temperature: float = MISSING
    ema_tau: float = MISSING
    log_every: int = MISSING
    ckpt_every: int = MISSING
    precision: str = MISSING             # fp32 (TF32 matmuls on CUDA) | bf16 (autocast)

    def check(self, at: str) -> None:
        at_least(f"{at}steps", self.steps, 1)
        at_least(f"{at}batch_size", self.batch_size, 2)
        if self.batch_size % 2:
            raise ConfigError(f"{at}batch_size must be even (two views per task), got {self.batch_size}")
        at_least(f"{at}context_episodes", self.context_episodes, 1)
        one_of(f"{at}window", self.window, WINDOWS)
        greater_than(f"{at}lr", self.lr, 0.0)
        at_least(f"{at}weight_decay", self.weight_decay, 0.0)
        at_least(f"{at}warmup_steps", self.warmup_steps, 0)
        greater_than(f"{at}grad_clip", self.grad_clip, 0.0)
        at_least(f"{at}balance_weight", self.balance_weight, 0.0)
        at_least(f"{at}contrastive_weight", self.contrastive_weight, 0.0)
        one_of(f"{at}contrastive", self.contrastive, ("bilinear", "info_nce"))
        greater_than(f"{at}info_nce_temperature", self.info_nce_temperature, 0.0)
        in_range(f"{at}ema_tau", self.ema_tau, 0.0, 1.0, low_open=True)
        at_least(f"{at}log_every", self.log_every, 1)
        at_least(f"{at}ckpt_every", self.ckpt_every, 1)
        one_of(f"{at}precision", self.precision, PRECISIONS)


@dataclass
class CheetahExpertSettings:
    """``t2mir.expert``: the goal-conditioned SAC expert of Cheetah-Vel's ``expert_anneal`` histories."""

    steps: int = MISSING
    target_range: list[float] = MISSING
    hidden: list[int] = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    learning_starts: int = MISSING
    settle_steps: int = MISSING
    max_error: float = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}steps", self.steps, 1)
        if len(self.target_range) != 2 or not self.target_range[0] < self.target_range[1]:
            raise ConfigError(f"{at}target_range must be [low, high] with low < high, got {list(self.target_range)}")
        non_empty(f"{at}hidden", self.hidden)
        for i, h in enumerate(self.hidden):
            at_least(f"{at}hidden[{i}]", h, 1)
        greater_than(f"{at}lr", self.lr, 0.0)
        at_least(f"{at}batch_size", self.batch_size, 1)
        at_least(f"{at}learning_starts", self.learning_starts, 0)
        at_least(f"{at}settle_steps", self.settle_steps, 0)
        greater_than(f"{at}max_error", self.max_error, 0.0)


@dataclass
class T2MIREvalSettings:
    n_episodes: int = MISSING
    context_episodes: int | None = MISSING   # None: as in training
    context: str = MISSING                   # best_sorted | recent
    actions: list[str] = MISSING             # mean (deterministic) and/or sample
    video: bool = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}n_episodes", self.n_episodes, 1)
        if self.context_episodes is not None:
            at_least(f"{at}context_episodes", self.context_episodes, 1)
        one_of(f"{at}context", self.context, CONTEXTS)
        non_empty(f"{at}actions", self.actions)
        for i, mode in enumerate(self.actions):
            one_of(f"{at}actions[{i}]", mode, ACTION_MODES)
        if len(set(self.actions)) != len(self.actions):
            raise ConfigError(f"{at}actions lists a mode twice: {list(self.actions)}")


@dataclass
class T2MIRConfig:
    """``cfg.t2mir``."""

    family: str = MISSING
    n_train_tasks: int = MISSING
    n_test_tasks: int = MISSING
    task_seed: int = MISSING
    horizon: int = MISSING
    data_dir: str = MISSING
    data_seed: int = MISSING
    n_episodes: int = MISSING
    collector: CollectorConfig = MISSING
    expert: CheetahExpertSettings | None = None  # Cheetah-Vel's learned expert (expert_anneal)
    variants: list[str] = MISSING
    model: T2MIRModelSettings = MISSING
    train: T2MIRTrainSettings = MISSING
    eval: T2MIREvalSettings = MISSING

    def check(self, at: str) -> None:
        one_of(f"{at}family", self.family, FAMILIES)
        at_least(f"{at}n_train_tasks", self.n_train_tasks, 1)
        at_least(f"{at}n_test_tasks", self.n_test_tasks, 1)
        at_least(f"{at}horizon", self.horizon, 1)
        at_least(f"{at}n_episodes", self.n_episodes, 1)
        if self.collector.name == "expert_anneal" and self.family != "point_robot" and self.expert is None:
            raise ConfigError(f"{at}collector.name=expert_anneal on {self.family!r} needs a learned expert: "
                              f"set the {at}expert block (see conf/experiment/t2mir_cheetahvel.yaml)")
        non_empty(f"{at}variants", self.variants)
        for i, variant in enumerate(self.variants):
            one_of(f"{at}variants[{i}]", variant, VARIANTS)
        if self.train.context_episodes > self.n_episodes:
            raise ConfigError(f"{at}train.context_episodes must be <= {at}n_episodes "
                              f"({self.n_episodes}), got {self.train.context_episodes}")


@dataclass
class T2MIRExperiment(RootConfig):
    """Schema ``schema/t2mir``."""

    t2mir: T2MIRConfig = MISSING


def validated(cfg: DictConfig) -> T2MIRExperiment:
    """``cfg`` checked against :class:`T2MIRExperiment` (the entry's first line)."""
    return validate(cfg, T2MIRExperiment)
