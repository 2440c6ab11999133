"""The trading environment: Gymnasium / SB3 checks, reward accounting, no look-ahead, teacher."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import streammoe_envs  # noqa: F401  (registers streammoe/Trading-v0)
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from streammoe_envs.trading import ENV_ID, TradingEnv
from streammoe_envs.trading.data import synthetic_market
from streammoe_envs.trading.features import build_features
from streammoe_envs.trading.teacher import teacher_q_table, transition_rewards


@pytest.fixture(scope="module")
def features():
    df, _ = synthetic_market(600, seed=3)
    return build_features(df, context_window=20, market_window=60)


def test_registered_env_passes_gymnasium_and_sb3_checkers() -> None:
    env = gym.make(ENV_ID, n_synthetic_bars=400)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(env.unwrapped, warn=True)


def test_episode_starts_flat_and_reward_is_value_change(features) -> None:
    env = TradingEnv(features, position_levels=(-1.0, 0.0, 1.0), max_holding=2.0,
                     commission=1e-3, normalise_reward=False)
    obs, info = env.reset(options={"start": 10})
    assert info["position"] == 0.0 and info["position_index"] == 1
    assert info["value"] == info["cash"] == pytest.approx(2.0 * env.prices[10])
    assert obs[-3:].tolist() == [0.0, 1.0, 0.0]  # one-hot of the flat previous position
    value = info["value"]
    for t, action in enumerate([2, 2, 0, 1, 0], start=10):
        prev_pos = info["position"]
        _, reward, terminated, truncated, info = env.step(action)
        pos = env.levels[action] * 2.0
        p0, p1 = env.prices[t], env.prices[t + 1]
        expected = pos * (p1 - p0) - 1e-3 * abs(pos - prev_pos) * p0  # the design note's formula
        assert reward == pytest.approx(expected)
        assert info["value"] - value == pytest.approx(expected)
        assert info["position"] == pos and info["bar"] == t + 1
        value = info["value"]
        assert not terminated and not truncated


def test_normalised_reward_is_percent_of_notional(features) -> None:
    raw = TradingEnv(features, commission=2e-4, normalise_reward=False)
    pct = TradingEnv(features, commission=2e-4, normalise_reward=True)
    for env in (raw, pct):
        env.reset(options={"start": 5})
    r_raw, r_pct = raw.step(1)[1], pct.step(1)[1]
    assert r_pct == pytest.approx(r_raw / pct.prices[5] * 100)


def test_episode_length_truncates_and_step_after_end_raises(features) -> None:
    env = TradingEnv(features, episode_length=3)
    env.reset(seed=0)
    flags = [env.step(0)[3] for _ in range(3)]
    assert flags == [False, False, True]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    with pytest.raises(ValueError, match="invalid action"):
        env.reset(options={"start": 0})
        env.step(5)


def test_observation_uses_no_future_bars() -> None:
    df, _ = synthetic_market(500, seed=4)
    fs = build_features(df, train=0.5, context_window=20, market_window=60)
    full = TradingEnv(fs)
    # change every bar after 300 (the training rows end earlier, so the scalers are unchanged):
    # observations at bars <= 300 must not move
    df2 = df.copy()
    df2.iloc[301:, :4] *= 1.5
    changed = TradingEnv(build_features(df2, train=0.5, context_window=20, market_window=60))
    first = len(df) - len(fs)  # bars dropped for warm-up
    assert first + fs.splits["train"][1] <= 300
    n = 301 - first  # env rows of bars 0..300
    np.testing.assert_array_equal(full.all_observations(0, n), changed.all_observations(0, n))
    assert not np.array_equal(full.all_observations(n + 1, n + 2), changed.all_observations(n + 1, n + 2))


def test_teacher_row_in_info_is_the_dp_optimum(features) -> None:
    env = TradingEnv(features, commission=5e-4, gamma=0.9)
    _, info = env.reset(options={"start": 0})
    q = teacher_q_table(env.prices, env.levels, 5e-4, 0.9)
    np.testing.assert_allclose(info["teacher_q"], q[0, env.flat_index], rtol=1e-5)
    # Bellman optimality: Q(t, p, a) = r(t, p, a) + gamma * max_a' Q(t+1, a, a')
    r = transition_rewards(env.prices, env.levels, 5e-4)
    np.testing.assert_allclose(q[:-1], r + 0.9 * q[1:].max(-1)[:, None, :], rtol=1e-9)
    # greedy on the teacher beats every constant policy over the series
    greedy_total, pos = 0.0, env.flat_index
    for t in range(len(env.prices) - 1):
        a = int(q[t, pos].argmax())
        greedy_total += r[t, pos, a]
        pos = a
    assert greedy_total >= max(r[0, env.flat_index, a] + r[1:, a, a].sum() for a in range(2))


def test_teacher_uses_the_env_commission(features) -> None:
    cheap, dear = TradingEnv(features, commission=0.0), TradingEnv(features, commission=1e-2)
    assert not np.allclose(cheap.teacher_q, dear.teacher_q)
    # with a high commission, switching from flat to long costs exactly 1 % of the price now
    _, info_cheap = cheap.reset(options={"start": 0})
    _, info_dear = dear.reset(options={"start": 0})
    assert info_dear["teacher_q"][1] < info_cheap["teacher_q"][1]


@pytest.mark.parametrize("kwargs, match", [
    ({"position_levels": (1.0,)}, "distinct"), ({"position_levels": (-1.0, 1.0)}, "contain 0"),
    ({"commission": -1.0}, "commission"), ({"episode_length": 10_000}, "episode_length"),
])
def test_bad_env_arguments_raise(features, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TradingEnv(features, **kwargs)
