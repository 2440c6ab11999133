"""Exponential-moving-average copies of modules (momentum key encoders, target networks).

>>> import torch
>>> online = torch.nn.Linear(2, 1)
>>> target = ema_copy(online)
>>> _ = torch.nn.init.zeros_(online.weight)
>>> ema_update(target, online, tau=1.0)   # tau=1 copies the online weights
>>> bool(target.weight.abs().sum() == 0)
True
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["ema_copy", "ema_update"]


def ema_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy of ``module`` (no gradients, eval mode), to be updated by :func:`ema_update`."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    target.eval()
    return target


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """``target <- (1 - tau) * target + tau * online`` for every parameter; buffers are copied.

    Both modules must have the same structure (``target`` usually comes from :func:`ema_copy`).
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    t_params, o_params = list(target.parameters()), list(online.parameters())
    if len(t_params) != len(o_params) or any(a.shape != b.shape for a, b in zip(t_params, o_params)):
        raise ValueError("target and online modules have different parameter shapes")
    torch._foreach_lerp_(t_params, [o.detach() for o in o_params], tau)  # one kernel per list
    for t, o in zip(target.buffers(), online.buffers()):
        t.copy_(o)
