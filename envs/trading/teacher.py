"""The trading reward and the dynamic-programming teacher (optimal Q with hindsight).

Reward for holding target position ``pos_t`` over bar t (filled at the previous close):
``r_t = pos_t * (P_t - P_{t-1}) - c * |pos_t - pos_{t-1}| * P_{t-1}``. With ``normalise`` it
is divided by the notional ``max_holding * P_{t-1}`` and multiplied by 100 (percent), so reward
scales match across markets. The env and the teacher both use :func:`transition_rewards`, so the
teacher always sees the env's commission.

>>> r = transition_rewards(np.array([100., 101.]), np.array([0., 1.]), 1e-3, normalise=False)
>>> r[0].tolist()  # rows: previous level (flat, long); columns: action
[[0.0, 0.9], [-0.1, 1.0]]
>>> q = teacher_q_table(np.array([100., 101., 100.]), np.array([0., 1.]), 0.0, 1.0, normalise=False)
>>> q[0].tolist(), q[1].tolist()
([[0.0, 1.0], [0.0, 1.0]], [[0.0, -1.0], [0.0, -1.0]])
"""

from __future__ import annotations

import numpy as np

__all__ = ["teacher_q_table", "transition_rewards"]


def transition_rewards(close: np.ndarray, levels: np.ndarray, commission: float,
                       max_holding: float = 1.0, normalise: bool = True) -> np.ndarray:
    """``r[t, p, a]``: reward of moving from level ``p`` to level ``a`` at bar t's close and
    holding over bar t+1. Shape ``(T-1, K, K)``."""
    pos = np.asarray(levels, np.float64) * max_holding
    p0, p1 = close[:-1, None, None], close[1:, None, None]
    r = pos[None, None, :] * (p1 - p0) - commission * np.abs(pos[None, None, :] - pos[None, :, None]) * p0
    if normalise:
        r = r / (max_holding * p0) * 100.0
    return r


def teacher_q_table(close: np.ndarray, levels: np.ndarray, commission: float, gamma: float,
                    max_holding: float = 1.0, normalise: bool = True) -> np.ndarray:
    """Optimal ``Q[t, p, a]`` over the series by backward induction (value 0 after the last
    bar). Shape ``(T, K, K)``; the last row is zero (no bar left to trade)."""
    r = transition_rewards(close, levels, commission, max_holding, normalise)
    T, K = len(close), len(levels)
    q = np.zeros((T, K, K))
    v_next = np.zeros(K)  # value of holding level a at the next bar
    for t in range(T - 2, -1, -1):
        q[t] = r[t] + gamma * v_next[None, :]
        v_next = q[t].max(axis=1)
    return q
