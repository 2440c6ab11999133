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

    Algorithm (grouped by expert, one host synchronisation in all):

    1. the selection mask ``weights != 0`` is read expert-major (``mask.T``), so its selected
       ``(expert, row)`` pairs come out already sorted by expert, rows ascending (no sort needed);
    2. the number of rows per expert (``mask.sum(0)``) is the only value copied to the host (the
       slice sizes below; experts with no row are skipped, never called);
    3. the pairs' positions are found without ``torch.nonzero``: a cumulative sum of the mask
       gives each selected pair its slot, a scatter writes the pair there;
    4. the selected rows are gathered once, split into one contiguous slice per expert, each
       expert runs on its slice, the outputs are weighted, concatenated and summed back into
       their rows with one ``index_add_``.

    Every step but (2) stays on the tensors' device, and the mixture is differentiable in ``x``
    and ``weights`` like the dense formula. ``torch.compile`` breaks the graph once, at (2); with
    ``torch._dynamo.config.capture_scalar_outputs = True`` it traces the whole dispatch (every
    expert then runs, those without rows on an empty slice).

    >>> w = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
    >>> x = torch.ones(3, 2)
    >>> sparse_dispatch(x, w, [lambda z: z, lambda z: 2 * z, lambda z: 3 * z]).tolist()
    [[1.5, 1.5], [3.0, 3.0], [0.0, 0.0]]
    """
    if x.dim() != 2 or weights.dim() != 2 or weights.shape[0] != x.shape[0]:
        raise ValueError(
            f"sparse_dispatch needs x (batch, in_dim) and weights (batch, n_experts), got "
            f"{tuple(x.shape)} and {tuple(weights.shape)}"
        )
    n_rows, n_experts = weights.shape
    if n_experts != len(experts):
        raise ValueError(f"weights has {n_experts} experts but {len(experts)} were given")
    mask_t = (weights != 0).T  # (n_experts, batch): expert-major order of the pairs
    counts = mask_t.sum(1).tolist()  # the one host synchronisation
    # Traced by torch.compile (with capture_scalar_outputs), the counts are symbolic: no branch
    # may depend on them there, so every expert runs, on an empty slice if no row chose it.
    compiling = torch.compiler.is_compiling()
    if compiling:
        for n in counts:
            torch._check(n >= 0)
    total = sum(counts)
    if not compiling and total == 0:  # no row selected any expert: the mixture is empty
        probe = experts[0](x[:0])
        return torch.zeros(n_rows, probe.shape[-1], dtype=probe.dtype, device=x.device)
    flat = mask_t.reshape(-1)
    slot = torch.cumsum(flat, 0) - 1  # position of each selected pair among the selected
    slot = torch.where(flat, slot, torch.full_like(slot, total))  # the rest into a spare slot
    pair = torch.empty(total + 1, dtype=torch.long, device=weights.device)
    pair.scatter_(0, slot, torch.arange(flat.numel(), device=weights.device))
    pair = pair[:total]  # flat (expert * batch + row) index of each selected pair, by expert
    rows = pair % n_rows
    w_sel = weights.T.reshape(-1).index_select(0, pair).unsqueeze(-1)
    x_sel = x.index_select(0, rows).split(counts)
    ys = [expert(xs) for expert, xs, n in zip(experts, x_sel, counts) if compiling or n > 0]
    y = (ys[0] if len(ys) == 1 else torch.cat(ys)) * w_sel
    out = torch.zeros(n_rows, y.shape[-1], dtype=y.dtype, device=y.device)
    return out.index_add_(0, rows, y)


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
