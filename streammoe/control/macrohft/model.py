"""The trained MacroHFT bundle (sub-agents, hyper-agent, single-DDQN baseline, memory) with
checkpoint save / load, and the MACD rule baseline."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from streammoe_envs.trading.features import ObsLayout
from torch import Tensor, nn

from streammoe.control.macrohft.memory import EpisodicMemory
from streammoe.control.macrohft.networks import HyperAgent, SubAgentQNet, mixed_q, stack_q
from streammoe.control.macrohft.train import UniformMixer

__all__ = ["CHECKPOINT_VERSION", "MacroHFT", "load_checkpoint", "macd_long", "save_checkpoint"]

CHECKPOINT_VERSION = 1


@dataclass
class MacroHFT:
    layout: ObsLayout
    n_actions: int
    subagents: dict[str, SubAgentQNet]
    mixer: nn.Module  # HyperAgent, or UniformMixer for the ablation
    single_ddqn: SubAgentQNet | None = None
    memory: EpisodicMemory | None = None
    alphas: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # config, scalers, thresholds, levels

    @torch.no_grad()
    def weights(self, obs: Tensor) -> Tensor:
        return self.mixer(obs)

    @torch.no_grad()
    def q_values(self, obs: Tensor) -> Tensor:
        """``Q_mix(obs)``: ``(B, A)``."""
        return mixed_q(self.mixer(obs), stack_q(list(self.subagents.values()), obs))


def save_checkpoint(model: MacroHFT, path: str | Path) -> Path:
    """Write the trained model to ``path``; ``load_checkpoint`` reads it back."""
    path = Path(path)
    hyper = model.mixer if isinstance(model.mixer, HyperAgent) else None
    torch.save({
        "version": CHECKPOINT_VERSION, "layout": asdict(model.layout), "n_actions": model.n_actions,
        "subagents": {k: v.state_dict() for k, v in model.subagents.items()},
        "subagent_adapter": {k: v.use_adapter for k, v in model.subagents.items()},
        "hidden": next(iter(model.subagents.values())).encode.out_features,
        "hyper": None if hyper is None else hyper.state_dict(),
        "hyper_cfg": None if hyper is None else {"hidden": hyper.encode.out_features,
                                                 "use_adapter": hyper.use_adapter,
                                                 "temperature": hyper.temperature},
        "single_ddqn": None if model.single_ddqn is None else model.single_ddqn.state_dict(),
        "single_ddqn_adapter": None if model.single_ddqn is None else model.single_ddqn.use_adapter,
        "memory": None if model.memory is None else model.memory.state_dict(),
        "alphas": model.alphas, "meta": model.meta,
    }, path)
    return path


def load_checkpoint(path: str | Path) -> MacroHFT:
    """Rebuild a :class:`MacroHFT` saved by :func:`save_checkpoint`; clear errors otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # torch raises several types for truncated / foreign files
        raise ValueError(f"{path} is not a readable MacroHFT checkpoint: {err}") from err
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{path} is not a MacroHFT checkpoint (version "
                         f"{ckpt.get('version') if isinstance(ckpt, dict) else None})")
    layout, n_actions, hidden = ObsLayout(**ckpt["layout"]), ckpt["n_actions"], ckpt["hidden"]
    subagents = {}
    for name, state in ckpt["subagents"].items():
        net = SubAgentQNet(layout, n_actions, hidden, ckpt["subagent_adapter"][name])
        net.load_state_dict(state)
        subagents[name] = net.eval()
    if ckpt["hyper"] is None:
        mixer: nn.Module = UniformMixer(len(subagents))
    else:
        mixer = HyperAgent(layout, len(subagents), **ckpt["hyper_cfg"])
        mixer.load_state_dict(ckpt["hyper"])
    single = None
    if ckpt["single_ddqn"] is not None:
        single = SubAgentQNet(layout, n_actions, hidden, ckpt["single_ddqn_adapter"])
        single.load_state_dict(ckpt["single_ddqn"])
        single.eval()
    memory = None
    if ckpt["memory"] is not None:
        m = ckpt["memory"]
        memory = EpisodicMemory(len(m["q"]), m["keys"].shape[1], m["obs"].shape[1])
        memory.load_state_dict(m)
    return MacroHFT(layout, n_actions, subagents, mixer.eval(), single, memory,
                    dict(ckpt["alphas"]), dict(ckpt["meta"]))


def macd_long(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> np.ndarray:
    """MACD crossover rule: True (long) where ``EMA_fast - EMA_slow`` is above its
    ``signal``-bar EMA. Causal: bar t uses closes <= t.

    >>> macd_long(np.linspace(1, 2, 60))[-1], macd_long(np.linspace(2, 1, 60))[-1]
    (np.True_, np.False_)
    """
    s = pd.Series(np.asarray(close, np.float64))
    macd = s.ewm(span=fast, adjust=False).mean() - s.ewm(span=slow, adjust=False).mean()
    return (macd > macd.ewm(span=signal, adjust=False).mean()).to_numpy()
