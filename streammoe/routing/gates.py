"""Gates: pure functions that turn router scores (logits) into expert weights.

Every gate takes ``logits`` whose last dimension indexes experts (except
:func:`softmax_per_dim_gate`, whose experts sit on ``expert_dim``) and returns weights of the
same shape and dtype. Which gradients flow is part of each gate's contract and is tested:

============================  ========================  =====================================
gate                          forward                   backward (d weights / d logits)
============================  ========================  =====================================
``softmax_gate``              softmax(logits / T)       softmax's Jacobian
``top_k_gate``                softmax over top-k only   through the k selected logits only
``hard_gate``                 one-hot argmax            none, or identity (straight-through)
``hard_soft_gate``            one-hot argmax            softmax's Jacobian (ST-softmax)
``sigmoid_gate``              sigmoid, independent      sigmoid's derivative
``softmax_per_dim_gate``      softmax over experts,     softmax's Jacobian, per output dim
                              per output dimension
============================  ========================  =====================================

>>> import torch
>>> w = top_k_gate(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), k=2)
>>> (w > 0).sum().item(), round(w.sum().item(), 6)
(2, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "GATES",
    "get_gate",
    "hard_gate",
    "hard_soft_gate",
    "sigmoid_gate",
    "softmax_gate",
    "softmax_per_dim_gate",
    "top_k_gate",
    "top_k_indices",
    "shrink_to_uniform",
]


def _check_logits(logits: Tensor, name: str = "logits") -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one expert on its last dim, got {tuple(logits.shape)}")
    if not torch.is_floating_point(logits):
        raise TypeError(f"{name} must be a floating-point tensor, got {logits.dtype}")


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def softmax_gate(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Dense softmax over experts: ``softmax(logits / temperature)``.

    Low temperatures sharpen towards argmax, high ones flatten towards uniform. Stable for large
    logits (torch subtracts the max).
    """
    _check_logits(logits)
    _check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def shrink_to_uniform(weights: Tensor, shrinkage: float) -> Tensor:
    """``(1 - shrinkage) * weights + shrinkage / n_experts``: a convex mixture of the gate's
    weights with uniform weights (``0``: unchanged, ``1``: uniform). Rows still sum to 1, and the
    gradient is the gate's scaled by ``1 - shrinkage``.

    >>> shrink_to_uniform(torch.tensor([[1.0, 0.0]]), 0.5).tolist()
    [[0.75, 0.25]]
    """
    _check_logits(weights, "weights")
    if not 0.0 <= shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
    return (1.0 - shrinkage) * weights + shrinkage / weights.shape[-1]


def top_k_indices(logits: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest-scoring experts per row (ties broken by lower index)."""
    _check_logits(logits)
    n_experts = logits.shape[-1]
    if not 1 <= k <= n_experts:
        raise ValueError(f"k must be in [1, n_experts={n_experts}], got {k}")
    return torch.topk(logits, k, dim=-1, sorted=True).indices


def top_k_gate(logits: Tensor, k: int, temperature: float = 1.0, indices: Tensor | None = None
               ) -> Tensor:
    """Sparse gate: softmax renormalised over the ``k`` highest logits, exact zeros elsewhere.

    Gradients reach only the selected logits; unselected experts get weight 0 and no gradient.
    Pass ``indices`` (from :func:`top_k_indices` on the same logits) when the caller needs them
    too, so the top-k search runs once.
    """
    _check_temperature(temperature)
    idx = top_k_indices(logits, k) if indices is None else indices
    masked = torch.full_like(logits, float("-inf")).scatter(-1, idx, logits.gather(-1, idx))
    return torch.softmax(masked / temperature, dim=-1)


def _one_hot_argmax(logits: Tensor) -> Tensor:
    idx = logits.argmax(dim=-1, keepdim=True)
    return torch.zeros_like(logits).scatter(-1, idx, 1.0)


def hard_gate(logits: Tensor, straight_through: bool = False) -> Tensor:
    """One-hot argmax. Without ``straight_through`` no gradient flows to the logits.

    With ``straight_through=True`` the backward pass is the identity (Bengio et al., 2013):
    ``d weights / d logits = I``, so the router still learns from the loss.
    """
    _check_logits(logits)
    hard = _one_hot_argmax(logits.detach())
    if straight_through:
        return hard + (logits - logits.detach())  # exactly hard in the forward pass
    return hard


def hard_soft_gate(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Hard top-1 forward, soft backward: forward is the one-hot argmax, the gradient is the
    softmax's (the straight-through softmax estimator)."""
    soft = softmax_gate(logits, temperature)
    hard = _one_hot_argmax(logits.detach())
    return hard + (soft - soft.detach())


def sigmoid_gate(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """Independent per-expert weights in (0, 1) (multi-label routing); rows need not sum to 1."""
    _check_logits(logits)
    _check_temperature(temperature)
    return torch.sigmoid(logits / temperature)


def softmax_per_dim_gate(logits: Tensor, temperature: float = 1.0, expert_dim: int = -2) -> Tensor:
    """Softmax over experts separately for every output dimension.

    ``logits`` has shape ``(..., n_experts, out_dim)`` by default (``expert_dim=-2``): each of the
    ``out_dim`` columns (e.g. each joint of a robot) gets its own distribution over experts.
    """
    _check_logits(logits)
    _check_temperature(temperature)
    if logits.dim() < 2:
        raise ValueError(
            f"softmax_per_dim_gate needs (..., n_experts, out_dim) logits, got {tuple(logits.shape)}"
        )
    return F.softmax(logits / temperature, dim=expert_dim)


GATES: dict[str, Callable[..., Tensor]] = {
    "softmax": softmax_gate,
    "top_k": top_k_gate,
    "hard": hard_gate,
    "hard_soft": hard_soft_gate,
    "sigmoid": sigmoid_gate,
    "softmax_per_dim": softmax_per_dim_gate,
}


def get_gate(name: str) -> Callable[..., Tensor]:
    """Look a gate up by name (as configs spell it)."""
    try:
        return GATES[name]
    except KeyError:
        raise ValueError(f"unknown gate {name!r}; choose one of {sorted(GATES)}") from None
