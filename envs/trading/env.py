"""A single-asset trading environment (Gymnasium id ``streammoe/Trading-v0``), MacroHFT's market.

One step is one bar. The agent sees bar t (features computed from bars <= t), picks a target
position level, the trade fills at bar t's close, and the reward is the mark-to-market change
over bar t+1 minus commission (:mod:`streammoe_envs.trading.teacher`). Episodes start flat
with ``max_holding * P_start`` in cash, so "fully long" is 100 % invested.

Observation (float32): ``[state features | context features | market class | one-hot previous
position]`` (:class:`~streammoe_envs.trading.features.ObsLayout`). ``info`` carries
``position``, ``position_index``, ``cash``, ``value``, ``bar`` and, with ``teacher=True``,
``teacher_q``: the dynamic-programming optimal Q-row for the current bar and position.

With no data it builds a seeded synthetic regime-switching market, so
``gymnasium.make("streammoe/Trading-v0")`` works out of the box.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from streammoe_envs import TRADING_ID
from streammoe_envs.trading.data import synthetic_market
from streammoe_envs.trading.features import FeatureSet, ObsLayout, build_features
from streammoe_envs.trading.teacher import teacher_q_table, transition_rewards

__all__ = ["TradingEnv"]

ENV_ID = TRADING_ID


class TradingEnv(gym.Env):
    metadata = {"render_modes": []}

    def __init__(self, features: FeatureSet | None = None,
                 position_levels: Sequence[float] = (0.0, 1.0), max_holding: float = 1.0,
                 commission: float = 2e-4, gamma: float = 0.99, episode_length: int | None = None,
                 teacher: bool = True, normalise_reward: bool = True,
                 n_synthetic_bars: int = 1500, synthetic_seed: int = 0,
                 teacher_commission: float | None = None) -> None:
        if features is None:
            df, _ = synthetic_market(n_synthetic_bars, seed=synthetic_seed)
            features = build_features(df, context_window=30, market_window=120)
        levels = np.asarray(position_levels, np.float64)
        if levels.ndim != 1 or len(levels) < 2 or len(set(levels.tolist())) != len(levels):
            raise ValueError(f"position_levels must be >= 2 distinct numbers, got {position_levels}")
        if 0.0 not in levels:
            raise ValueError(f"position_levels must contain 0 (episodes start flat), got {position_levels}")
        if commission < 0 or max_holding <= 0:
            raise ValueError(f"need commission >= 0 and max_holding > 0, got {commission}, {max_holding}")
        if teacher_commission is not None and teacher_commission < 0:
            raise ValueError(f"need teacher_commission >= 0 (or None: the env's), got {teacher_commission}")
        if len(features) < 2:
            raise ValueError("need at least 2 bars")
        if episode_length is not None and not 1 <= episode_length < len(features):
            raise ValueError(f"episode_length must be in [1, {len(features) - 1}], got {episode_length}")
        self.features = features
        self.prices = features.close  # not `close`: that is Env.close()
        self.levels = levels
        self.flat_index = int(np.flatnonzero(levels == 0.0)[0])
        self.max_holding, self.commission, self.gamma = float(max_holding), float(commission), gamma
        self.episode_length, self.normalise_reward = episode_length, normalise_reward
        self.layout = ObsLayout(features.state.shape[1], features.context.shape[1],
                                features.market.shape[1], len(levels))
        # the observation minus the position block, one row per bar
        self._bar_obs = np.concatenate([features.state, features.context, features.market], 1
                                       ).astype(np.float32)
        self.reward_table = transition_rewards(self.prices, levels, commission, max_holding, normalise_reward)
        # the commission part of each transition's reward, >= 0 (what a trade costs, in reward units)
        self.switch_costs = transition_rewards(self.prices, levels, 0.0, max_holding,
                                               normalise_reward) - self.reward_table
        self.teacher_commission = commission if teacher_commission is None else float(teacher_commission)
        self.teacher_q = (teacher_q_table(self.prices, levels, self.teacher_commission, gamma,
                                          max_holding, normalise_reward).astype(np.float32)
                          if teacher else None)
        self.action_space = spaces.Discrete(len(levels))
        # standardised features are clipped, so the box is bounded
        bound = max((s.clip for s in features.scalers.values()), default=np.inf)
        self.observation_space = spaces.Box(-bound, bound, (self.layout.dim,), np.float32)
        self._t = self._end = 0
        self._pos_index = self.flat_index
        self._cash = self._value = 0.0
        self._done = True

    # -- helpers ---------------------------------------------------------------------------------
    def observation(self, bar: int, position_index: int) -> np.ndarray:
        one_hot = np.zeros(len(self.levels), np.float32)
        one_hot[position_index] = 1.0
        return np.concatenate([self._bar_obs[bar], one_hot])

    def all_observations(self, start: int = 0, end: int | None = None) -> np.ndarray:
        """Observations for every bar in ``[start, end)`` and every previous position:
        shape ``(T, K, dim)`` (lets a policy be evaluated in one batch)."""
        bars = self._bar_obs[start:end]
        eye = np.broadcast_to(np.eye(len(self.levels), dtype=np.float32), (len(bars), len(self.levels), len(self.levels)))
        rep = np.broadcast_to(bars[:, None, :], (len(bars), len(self.levels), bars.shape[1]))
        return np.concatenate([rep, eye], axis=2)

    def portfolio_values(self, actions: np.ndarray, start: int = 0) -> np.ndarray:
        """Portfolio values ``(len(actions) + 1,)`` of taking ``actions`` at bars ``start,
        start + 1, ...`` from flat: the same accounting as :meth:`step`, vectorised."""
        a = np.asarray(actions, np.int64)
        if a.ndim != 1 or not len(a) or start < 0 or start + len(a) >= len(self.prices):
            raise ValueError(f"need 1 <= len(actions) <= {len(self.prices) - 1 - start} from bar "
                             f"{start}, got {a.shape}")
        if (a < 0).any() or (a >= len(self.levels)).any():
            raise ValueError(f"actions must be in [0, {len(self.levels)}), got {a.min()}..{a.max()}")
        pos = self.levels[a] * self.max_holding
        prev = np.concatenate([[0.0], pos[:-1]])
        p = self.prices[start:start + len(a) + 1]
        pnl = pos * (p[1:] - p[:-1]) - self.commission * np.abs(pos - prev) * p[:-1]
        return self.max_holding * float(p[0]) + np.concatenate([[0.0], np.cumsum(pnl)])

    def _info(self) -> dict[str, Any]:
        info = {"position": float(self.levels[self._pos_index] * self.max_holding),
                "position_index": self._pos_index, "cash": float(self._cash),
                "value": float(self._value),
                "bar": self._t}
        if self.teacher_q is not None:
            info["teacher_q"] = self.teacher_q[self._t, self._pos_index].copy()
        return info

    # -- Gymnasium API ---------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """``options``: ``start`` (first bar, default 0 or random when ``episode_length`` is set)
        and ``length`` (steps, default ``episode_length`` or to the last bar)."""
        super().reset(seed=seed)
        options = options or {}
        last = len(self.prices) - 1
        length = options.get("length", self.episode_length)
        if "start" in options:
            start = int(options["start"])
        elif length is not None:
            start = int(self.np_random.integers(0, last - length + 1))
        else:
            start = 0
        if not 0 <= start < last:
            raise ValueError(f"start must be in [0, {last - 1}], got {start}")
        self._t = start
        self._end = last if length is None else min(last, start + int(length))
        self._pos_index = self.flat_index
        self._cash = self._value = self.max_holding * float(self.prices[start])
        self._done = False
        return self.observation(self._t, self._pos_index), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("episode is over: call reset()")
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        a, t = int(action), self._t
        old, new = self.levels[self._pos_index] * self.max_holding, self.levels[a] * self.max_holding
        price = float(self.prices[t])
        # fill at this bar's close, pay commission on the traded notional, mark to the next close
        self._cash -= (new - old) * price + self.commission * abs(new - old) * price
        reward = float(self.reward_table[t, self._pos_index, a])
        self._t, self._pos_index = t + 1, a
        self._value = self._cash + new * float(self.prices[t + 1])
        truncated = self._t >= self._end
        self._done = truncated
        return self.observation(self._t, a), reward, False, truncated, self._info()

