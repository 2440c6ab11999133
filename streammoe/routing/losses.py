"""Routing losses. Each returns a scalar tensor; weights (coefficients) are the caller's choice.

>>> import torch
>>> round(load_balance_loss(torch.ones(4), torch.ones(4)).item(), 6)  # perfectly balanced
0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "bilinear_contrastive_loss",
    "cv_squared",
    "entropy",
    "info_nce_loss",
    "load_balance_loss",
    "multi_hot_bce",
    "router_z_loss",
    "switch_balance_loss",
]


def cv_squared(x: Tensor, eps: float = 1e-10) -> Tensor:
    """Squared coefficient of variation ``var(x) / mean(x)^2`` (0 for a single element)."""
    x = x.float()
    if x.numel() <= 1:
        return x.new_zeros(())
    return x.var(unbiased=False) / (x.mean() ** 2 + eps)


def load_balance_loss(importance: Tensor, load: Tensor) -> Tensor:
    """Shazeer et al. (2017): ``cv^2(importance) + cv^2(load)`` over experts."""
    return cv_squared(importance) + cv_squared(load)


def switch_balance_loss(router_probs: Tensor, expert_index: Tensor) -> Tensor:
    """Switch Transformer's balance loss ``E * sum_i f_i * P_i``.

    ``router_probs`` is ``(tokens, E)`` (softmax over all experts), ``expert_index`` ``(tokens,)``
    or ``(tokens, k)`` with the selected experts; ``f_i`` is the fraction of selections that went
    to expert i, ``P_i`` the mean probability. Equals 1 when both are uniform.
    """
    n_experts = router_probs.shape[-1]
    probs = router_probs.reshape(-1, n_experts)
    counts = F.one_hot(expert_index.reshape(-1), n_experts).to(probs.dtype).sum(0)
    fraction = counts / counts.sum().clamp_min(1.0)
    return n_experts * (fraction * probs.mean(0)).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's z-loss ``mean(logsumexp(logits)^2)``: keeps router logits small and stable."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def entropy(probs: Tensor, eps: float = 1e-12) -> Tensor:
    """Mean entropy (nats) of the routing distributions in the last dimension.

    Add it with a negative coefficient to encourage exploration among experts, a positive one
    to make routing decisive.
    """
    p = probs.float().clamp_min(eps)
    return -(p * p.log()).sum(-1).mean()


def multi_hot_bce(logits: Tensor, target_mask: Tensor) -> Tensor:
    """Mean BCE-with-logits between router logits and a multi-hot mask of acceptable experts
    (DriftMoE's router target: every expert that got the instance right)."""
    if logits.shape != target_mask.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target_mask {tuple(target_mask.shape)} differ")
    return F.binary_cross_entropy_with_logits(logits, target_mask.to(logits.dtype))


def _multi_positive_ce(scores: Tensor, positives: Tensor) -> Tensor:
    # -log( sum_pos exp(s) / sum_all exp(s) ), averaged over rows that have a positive.
    log_all = torch.logsumexp(scores, dim=-1)
    log_pos = torch.logsumexp(scores.masked_fill(~positives, float("-inf")), dim=-1)
    has_pos = positives.any(-1)
    if not bool(has_pos.any()):
        raise ValueError("no row has a positive: every task id appears once")
    return (log_all - log_pos)[has_pos].mean()


def _positive_mask(query_ids: Tensor, key_ids: Tensor) -> Tensor:
    return query_ids.reshape(-1, 1) == key_ids.reshape(1, -1)


def info_nce_loss(
    query: Tensor,
    key: Tensor,
    query_ids: Tensor,
    key_ids: Tensor | None = None,
    temperature: float = 0.1,
) -> Tensor:
    """InfoNCE with cosine similarity; positives are keys with the same task id as the query.

    Symmetric (queries against keys and keys against queries). With ``key_ids=None`` the keys
    share the queries' ids (two views of the same batch).
    """
    key_ids = query_ids if key_ids is None else key_ids
    q = F.normalize(query.float(), dim=-1)
    k = F.normalize(key.float(), dim=-1)
    scores = q @ k.T / temperature
    pos = _positive_mask(query_ids, key_ids)
    return 0.5 * (_multi_positive_ce(scores, pos) + _multi_positive_ce(scores.T, pos.T))


def bilinear_contrastive_loss(
    query: Tensor,
    key: Tensor,
    weight: Tensor,
    query_ids: Tensor,
    key_ids: Tensor | None = None,
) -> Tensor:
    """CURL-style bilinear contrastive loss: scores ``q W k^T``, symmetric cross-entropy with
    positives given by equal task ids (T2MIR's task-routing loss). ``weight`` is ``(dq, dk)``."""
    key_ids = query_ids if key_ids is None else key_ids
    # No max-shift: logsumexp is already stable, and a per-row shift would change the
    # column-wise (transposed) cross-entropy.
    scores = query @ weight @ key.T
    pos = _positive_mask(query_ids, key_ids)
    return 0.5 * (_multi_positive_ce(scores, pos) + _multi_positive_ce(scores.T, pos.T))
