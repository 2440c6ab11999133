"""Mixtures: combine expert outputs with gate weights.

* :func:`dense_mixture` weighs outputs that every expert already produced.
* :func:`sparse_dispatch` runs each expert only on the rows that selected it, so unselected
  experts cost nothing (the point of top-k routing).
* :class:`SparseMoE` is a ready-made layer: a router, a gate and a list of expert modules.

>>> import torch
>>> w = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
>>> outs = torch.stack([torch.ones(2, 3), torch.zeros(2, 3)], dim=1)  # (batch, experts, dim)
>>> dense_mixture(w, outs)[:, 0].tolist()
[1.0, 0.25]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from streammoe.routing.routers import NoisyTopKRouter, RouterOutput

__all__ = ["SparseMoE", "dense_mixture", "sparse_dispatch"]


def dense_mixture(weights: Tensor, expert_outputs: Tensor) -> Tensor:
    """Weighted sum over experts.

    ``expert_outputs`` is ``(..., n_experts, out_dim)``. ``weights`` is ``(..., n_experts)`` (one
    weight per expert) or ``(..., n_experts, out_dim)`` (one weight per expert and output
    dimension, as from :func:`~streammoe.routing.gates.softmax_per_dim_gate`).
    """
    if expert_outputs.dim() < 2:
        raise ValueError(f"expert_outputs must be (..., n_experts, out_dim), got {tuple(expert_outputs.shape)}")
    if weights.shape == expert_outputs.shape[:-1]:
        weights = weights.unsqueeze(-1)
    elif weights.shape != expert_outputs.shape:
        raise ValueError(
            f"weights {tuple(weights.shape)} match neither (..., n_experts) nor (..., n_experts, out_dim) "
            f"of expert_outputs {tuple(expert_outputs.shape)}"
        )
    return (weights * expert_outputs).sum(dim=-2)


def sparse_dispatch(
    x: Tensor, weights: Tensor, experts: Sequence[Callable[[Tensor], Tensor]]
) -> Tensor:
    """Run expert ``i`` only on the rows whose weight for ``i`` is non-zero; sum weighted outputs.

    ``x`` is ``(batch, in_dim)``, ``weights`` ``(batch, n_experts)`` (e.g. from ``top_k_gate``).
    Equal to ``dense_mixture(weights, stack(expert(x)))`` whenever experts are row-wise
    functions, at a cost proportional to the number of selected (row, expert) pairs.
    """
    if x.dim() != 2 or weights.dim() != 2 or weights.shape[0] != x.shape[0]:
        raise ValueError(
            f"sparse_dispatch needs x (batch, in_dim) and weights (batch, n_experts), got "
            f"{tuple(x.shape)} and {tuple(weights.shape)}"
        )
    if weights.shape[1] != len(experts):
        raise ValueError(f"weights has {weights.shape[1]} experts but {len(experts)} were given")
    out: Tensor | None = None
    for i, expert in enumerate(experts):
        rows = torch.nonzero(weights[:, i], as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        y = expert(x.index_select(0, rows)) * weights[rows, i].unsqueeze(-1)
        if out is None:
            out = torch.zeros(x.shape[0], y.shape[-1], dtype=y.dtype, device=y.device)
        out = out.index_add(0, rows, y)
    if out is None:  # no row selected any expert: the mixture is empty
        probe = experts[0](x[:0])
        out = torch.zeros(x.shape[0], probe.shape[-1], dtype=probe.dtype, device=x.device)
    return out


class SparseMoE(nn.Module):
    """Top-k mixture of experts over the last dimension of ``x``.

    ``forward(x, route_input=None)`` routes on ``route_input`` when given (e.g. a task
    representation) and on ``x`` otherwise; returns ``(output, RouterOutput)`` so callers can add
    the balance loss and log routing statistics. Inputs of any leading shape are flattened to rows.
    """

    def __init__(
        self,
        experts: Sequence[nn.Module],
        router: NoisyTopKRouter,
    ) -> None:
        super().__init__()
        if router.n_experts != len(experts):
            raise ValueError(f"router scores {router.n_experts} experts but {len(experts)} were given")
        self.experts = nn.ModuleList(experts)
        self.router = router

    def forward(self, x: Tensor, route_input: Tensor | None = None) -> tuple[Tensor, RouterOutput]:
        """Mix the selected experts' outputs for every row of ``x``."""
        route_input = x if route_input is None else route_input
        if route_input.shape[:-1] != x.shape[:-1]:
            raise ValueError(
                f"route_input leading shape {tuple(route_input.shape[:-1])} != x's {tuple(x.shape[:-1])}"
            )
        routed = self.router(route_input)
        flat_w = routed.weights.reshape(-1, len(self.experts))
        y = sparse_dispatch(x.reshape(-1, x.shape[-1]), flat_w, list(self.experts))
        return y.reshape(*x.shape[:-1], y.shape[-1]), routed
