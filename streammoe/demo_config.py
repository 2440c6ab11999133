"""Schema of ``experiment=router_demo`` (``cfg.demo``, :mod:`streammoe.demo`), see
:mod:`streammoe.config` for how schemas are registered and checked.

``device`` places the router, the experts and the baseline: ``auto`` takes CUDA when torch sees a
GPU, ``cuda`` without one is an error.
"""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING, DictConfig

from streammoe.config import (
    RootConfig,
    at_least,
    greater_than,
    in_range,
    one_of,
    validate,
)

__all__ = ["GATES", "DemoConfig", "RouterDemoExperiment", "validated"]

GATES = ("top_k", "hard_soft", "softmax")


@dataclass
class DemoConfig:
    """``cfg.demo``."""

    n_regions: int = MISSING
    n_experts: int = MISSING
    top_k: int = MISSING          # experts per input (gate=top_k)
    gate: str = MISSING           # top_k | hard_soft | softmax
    hidden: list[int] = MISSING   # router hidden sizes ([]: linear)
    steps: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    balance_weight: float = MISSING
    z_weight: float = MISSING
    noise_std: float = MISSING
    log_every: int = MISSING

    def check(self, at: str) -> None:
        at_least(f"{at}n_regions", self.n_regions, 1)
        at_least(f"{at}n_experts", self.n_experts, 1)
        one_of(f"{at}gate", self.gate, GATES)
        in_range(f"{at}top_k", self.top_k, 1, self.n_experts)
        for i, width in enumerate(self.hidden):
            at_least(f"{at}hidden[{i}]", width, 1)
        at_least(f"{at}steps", self.steps, 1)
        at_least(f"{at}batch_size", self.batch_size, 1)
        greater_than(f"{at}lr", self.lr, 0.0)
        at_least(f"{at}balance_weight", self.balance_weight, 0.0)
        at_least(f"{at}z_weight", self.z_weight, 0.0)
        at_least(f"{at}noise_std", self.noise_std, 0.0)
        at_least(f"{at}log_every", self.log_every, 1)


@dataclass
class RouterDemoExperiment(RootConfig):
    """Schema ``schema/router_demo``."""

    demo: DemoConfig = MISSING


def validated(cfg: DictConfig) -> RouterDemoExperiment:
    """``cfg`` checked against :class:`RouterDemoExperiment` (first line of :func:`streammoe.demo.run`)."""
    return validate(cfg, RouterDemoExperiment)
