"""The trained MacroHFT bundle (sub-agents, hyper-agent, single-DDQN baseline, memory) with
checkpoint save / load, and the MACD rule baseline.

A checkpoint (``macrohft.safetensors``) is :mod:`streammoe.checkpoint`'s format: every network's
weights and the memory as tensors, architecture, alphas and metadata as JSON; loading unpickles
nothing. A checkpoint written by a run also holds the config its sub-agents were trained with
(:func:`subagent_config`), which ``macrohft.resume_from`` must match.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from streammoe_envs.trading.features import ObsLayout
from torch import Tensor, nn

from streammoe import checkpoint as ckpt
from streammoe.control.macrohft.memory import EpisodicMemory
from streammoe.control.macrohft.networks import HyperAgent, SubAgentQNet, mixed_q, stack_q
from streammoe.control.macrohft.train import UniformMixer
from streammoe.routing import shrink_to_uniform

__all__ = ["CHECKPOINT_VERSION", "MacroHFT", "load_checkpoint", "macd_long", "save_checkpoint",
           "subagent_config"]

CHECKPOINT_KIND = "streammoe.macrohft.model"
CHECKPOINT_VERSION = 3  # 1: a torch.save pickle (macrohft.pt); 2: no shrinkage/margin; neither read
LABEL = "MacroHFT checkpoint"
# The config keys the sub-agents and the single DDQN depend on (not the hyper-agent's).
SUBAGENT_KEYS = ("faithful", "splits", "features", "env", "regimes", "alphas", "select_best_epoch",
                 "subagent", "single_ddqn", "mixing")


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
    shrinkage: float = 0.0  # weights shrunk toward uniform (chosen on validation)
    margin: float = 0.0  # action margin in commissions (chosen on validation; train.table_rollout)

    @torch.no_grad()
    def weights(self, obs: Tensor) -> Tensor:
        """The hyper-agent's weights, shrunk toward uniform by ``shrinkage``: ``(B, E)``."""
        return shrink_to_uniform(self.mixer(obs), self.shrinkage)

    @torch.no_grad()
    def q_values(self, obs: Tensor) -> Tensor:
        """``Q_mix(obs)``: ``(B, A)``."""
        return mixed_q(self.weights(obs), stack_q(list(self.subagents.values()), obs))


def subagent_config(config: dict[str, Any], data: dict[str, Any], seed: int) -> dict[str, Any]:
    """What a run resuming from a checkpoint (reusing its sub-agents) must share with the run
    that trained them: data, seed and the ``macrohft`` keys of :data:`SUBAGENT_KEYS`."""
    return {"seed": int(seed), "data": data, **{k: config.get(k) for k in SUBAGENT_KEYS},
            # the router slice decides which chunks the sub-agents train on
            "router_fraction": (config.get("hyper") or {}).get("router_fraction")}


def save_checkpoint(model: MacroHFT, path: str | Path) -> Path:
    """Write the trained model to ``path`` (atomically); ``load_checkpoint`` reads it back. With
    ``config``, ``data`` and ``seed`` in ``model.meta`` the file also records :func:`subagent_config`."""
    hyper = model.mixer if isinstance(model.mixer, HyperAgent) else None
    state = {
        "layout": asdict(model.layout), "n_actions": model.n_actions,
        "subagents": {k: v.state_dict() for k, v in model.subagents.items()},
        "subagent_adapter": {k: v.use_adapter for k, v in model.subagents.items()},
        "hidden": next(iter(model.subagents.values())).encode.out_features,
        "hyper": None if hyper is None else hyper.state_dict(),
        "hyper_cfg": None if hyper is None else {"hidden": hyper.encode.out_features,
                                                 "use_adapter": hyper.use_adapter,
                                                 "temperature": hyper.temperature,
                                                 "input_context": hyper.input_context,
                                                 "memory_key": hyper.memory_key},
        "single_ddqn": None if model.single_ddqn is None else model.single_ddqn.state_dict(),
        "single_ddqn_adapter": None if model.single_ddqn is None else model.single_ddqn.use_adapter,
        "memory": None if model.memory is None else model.memory.state_dict(),
        "alphas": model.alphas, "meta": model.meta,
        "shrinkage": model.shrinkage, "margin": model.margin,
    }
    meta = model.meta
    config = ({"subagents": subagent_config(meta["config"], meta["data"], meta["seed"])}
              if {"config", "data", "seed"} <= set(meta) else {})
    return ckpt.save(path, state, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION, config=config)


def load_checkpoint(path: str | Path, expect: dict[str, Any] | None = None) -> MacroHFT:
    """Rebuild a :class:`MacroHFT` saved by :func:`save_checkpoint`; clear errors otherwise.
    ``expect``: this run's :func:`subagent_config`, which the file's must equal (for resuming)."""
    path = Path(path)
    ck = ckpt.load(path, kind=CHECKPOINT_KIND, version=CHECKPOINT_VERSION, label=LABEL,
                   match=None if expect is None else {"subagents": expect},
                   hints={"subagents": "Its sub-agents were trained with other settings than this run's: "
                                       "resume with the same data, seed and sub-agent settings, or "
                                       "drop macrohft.resume_from."}).state
    try:
        return _rebuild(ck)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ckpt.CheckpointError(f"{path} is not a usable {LABEL}: {type(err).__name__}: {err}") from err


def _rebuild(ck: dict[str, Any]) -> MacroHFT:
    layout, n_actions, hidden = ObsLayout(**ck["layout"]), ck["n_actions"], ck["hidden"]
    subagents = {}
    for name, state in ck["subagents"].items():
        net = SubAgentQNet(layout, n_actions, hidden, ck["subagent_adapter"][name])
        net.load_state_dict(state)
        subagents[name] = net.eval()
    if ck["hyper"] is None:
        mixer: nn.Module = UniformMixer(len(subagents))
    else:
        mixer = HyperAgent(layout, len(subagents), **ck["hyper_cfg"])
        mixer.load_state_dict(ck["hyper"])
    single = None
    if ck["single_ddqn"] is not None:
        single = SubAgentQNet(layout, n_actions, hidden, ck["single_ddqn_adapter"])
        single.load_state_dict(ck["single_ddqn"])
        single.eval()
    memory = None
    if ck["memory"] is not None:
        m = ck["memory"]
        memory = EpisodicMemory(len(m["q"]), m["keys"].shape[1], m["obs"].shape[1])
        memory.load_state_dict(m)
    return MacroHFT(layout, n_actions, subagents, mixer.eval(), single, memory,
                    dict(ck["alphas"]), dict(ck["meta"]), float(ck["shrinkage"]), float(ck["margin"]))


def macd_long(close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9) -> np.ndarray:
    """MACD crossover rule: True (long) where ``EMA_fast - EMA_slow`` is above its
    ``signal``-bar EMA. Causal: bar t uses closes <= t.

    >>> macd_long(np.linspace(1, 2, 60))[-1], macd_long(np.linspace(2, 1, 60))[-1]
    (np.True_, np.False_)
    """
    s = pd.Series(np.asarray(close, np.float64))
    macd = s.ewm(span=fast, adjust=False).mean() - s.ewm(span=slow, adjust=False).mean()
    return (macd > macd.ewm(span=signal, adjust=False).mean()).to_numpy()
