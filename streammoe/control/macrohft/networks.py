"""MacroHFT's networks: the sub-agent Q-network (dueling head, FiLM/adaLN adapter) and the
hyper-agent (a router over frozen sub-agents, conditioned on the market class).

Both read the env's flat observation and split it with an
:class:`~streammoe_envs.trading.features.ObsLayout`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from streammoe_envs.trading.features import ObsLayout
from torch import Tensor, nn

from streammoe.routing import dense_mixture, softmax_gate

__all__ = ["FiLM", "HyperAgent", "SubAgentQNet", "dueling_combine", "mixed_q", "stack_q"]


def dueling_combine(value: Tensor, advantage: Tensor) -> Tensor:
    """``Q = V + A - mean_a A`` with the mean over actions *per sample* (the reference code
    averages over the whole batch, so a sample's Q depends on its batch-mates)."""
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


class FiLM(nn.Module):
    """adaLN-style conditioning: ``LayerNorm(h) * (1 + scale) + shift``, with ``(shift, scale) =
    Linear(SiLU(cond))``. The modulation layer starts at zero, so it starts as plain LayerNorm."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.modulation = nn.Linear(hidden, 2 * hidden)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, h: Tensor, cond: Tensor) -> Tensor:
        shift, scale = self.modulation(nn.functional.silu(cond)).chunk(2, dim=-1)
        return self.norm(h) * (1 + scale) + shift


class SubAgentQNet(nn.Module):
    """Dueling Q-network over (state features, previous position) with a context adapter.

    Context = embedding(previous position) + linear(context features), fed to :class:`FiLM`.
    ``use_adapter=False`` (ablation) drops the context features and adds the position embedding
    to the normalised hidden state instead.
    """

    def __init__(self, layout: ObsLayout, n_actions: int, hidden: int = 64,
                 use_adapter: bool = True) -> None:
        super().__init__()
        self.layout, self.use_adapter = layout, use_adapter
        self.encode = nn.Linear(layout.n_state, hidden)
        self.position = nn.Linear(layout.n_levels, hidden, bias=False)  # embedding of a one-hot
        self.context = nn.Linear(layout.n_context, hidden)
        self.film = FiLM(hidden)
        self.trunk = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.value = nn.Linear(hidden, 1)
        self.advantage = nn.Linear(hidden, n_actions)

    def features(self, obs: Tensor) -> Tensor:
        state, context, _, position = self.layout.split(obs)
        h = self.encode(state)
        if self.use_adapter:
            h = self.film(h, self.position(position) + self.context(context))
        else:
            h = self.film.norm(h) + self.position(position)
        return self.trunk(h)

    def forward(self, obs: Tensor) -> Tensor:
        h = self.features(obs)
        return dueling_combine(self.value(h), self.advantage(h))


class HyperAgent(nn.Module):
    """Softmax weights over sub-agents from (state, previous position), FiLM-conditioned on the
    market class. The logits layer starts at zero, so the first weights are uniform.

    ``input_context=True`` also feeds the context features to the input layer (the reference's
    input). ``key(obs)`` keys the episodic memory: the FiLM-conditioned hidden state
    (``memory_key="film"``) or the input layer's output before the normalisation and FiLM
    (``"encode"``, the reference's key).
    """

    MEMORY_KEYS = ("film", "encode")

    def __init__(self, layout: ObsLayout, n_experts: int, hidden: int = 64,
                 use_adapter: bool = True, temperature: float = 1.0, input_context: bool = False,
                 memory_key: str = "film") -> None:
        super().__init__()
        if memory_key not in self.MEMORY_KEYS:
            raise ValueError(f"memory_key must be one of {self.MEMORY_KEYS}, got {memory_key!r}")
        self.layout, self.use_adapter, self.temperature = layout, use_adapter, temperature
        self.input_context, self.memory_key = input_context, memory_key
        n_in = layout.n_state + layout.n_levels + (layout.n_context if input_context else 0)
        self.encode = nn.Linear(n_in, hidden)
        self.market = nn.Linear(layout.n_market, hidden)
        self.film = FiLM(hidden)
        self.trunk = nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU())
        self.logits = nn.Linear(hidden, n_experts)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def _encoded(self, obs: Tensor) -> Tensor:
        state, context, _, position = self.layout.split(obs)
        parts = [state, context, position] if self.input_context else [state, position]
        return self.encode(torch.cat(parts, dim=-1))

    def embed(self, obs: Tensor) -> Tensor:
        """The hidden state the logits read."""
        h = self._encoded(obs)
        market = self.layout.split(obs)[2]
        h = self.film(h, self.market(market)) if self.use_adapter else self.film.norm(h)
        return self.trunk(h)

    def key(self, obs: Tensor) -> Tensor:
        """The episodic memory's key of ``obs`` (see ``memory_key``)."""
        return self.embed(obs) if self.memory_key == "film" else self._encoded(obs)

    def forward(self, obs: Tensor) -> Tensor:
        """Mixing weights ``(..., n_experts)``."""
        return softmax_gate(self.logits(self.embed(obs)), self.temperature)


def mixed_q(weights: Tensor, expert_q: Tensor) -> Tensor:
    """``Q_mix = sum_i w_i Q_i``: weights ``(B, E)``, expert Q ``(B, E, A)`` -> ``(B, A)``."""
    return dense_mixture(weights, expert_q)


def stack_q(agents: Sequence[nn.Module], obs: Tensor) -> Tensor:
    """Q-values of every (frozen) sub-agent, shape ``(B, E, A)``."""
    return torch.stack([agent(obs) for agent in agents], dim=1)
