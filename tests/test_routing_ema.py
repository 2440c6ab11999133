"""EMA copies (streammoe.routing.ema): frozen copy, exact moving-average arithmetic, bad input."""

from __future__ import annotations

import pytest
import torch

from streammoe.routing.ema import ema_copy, ema_update


def test_ema_copy_is_frozen_and_independent() -> None:
    online = torch.nn.Linear(3, 2)
    target = ema_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert not target.training
    with torch.no_grad():
        online.weight.add_(1.0)
    assert not torch.equal(online.weight, target.weight)


def test_ema_update_moves_by_tau() -> None:
    torch.manual_seed(0)
    online = torch.nn.Linear(3, 2)
    target = ema_copy(online)
    before = target.weight.clone()
    with torch.no_grad():
        online.weight.add_(2.0)
    ema_update(target, online, tau=0.25)
    torch.testing.assert_close(target.weight, before + 0.25 * 2.0)
    ema_update(target, online, tau=0.0)
    torch.testing.assert_close(target.weight, before + 0.5)


def test_ema_update_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="tau"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), tau=1.5)
    with pytest.raises(ValueError, match="shapes"):
        ema_update(torch.nn.Linear(2, 2), torch.nn.Linear(3, 2), tau=0.1)
