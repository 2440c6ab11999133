"""Trading metrics against series computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from streammoe.control.macrohft.metrics import count_trades, trading_metrics


def test_metrics_on_hand_computed_series() -> None:
    # values 100 -> 110 -> 99 -> 121: returns +10 %, -10 %, +2/9
    m = trading_metrics([100, 110, 99, 121], bars_per_year=1, positions=[1, 1, 1])
    mean = (0.1 - 0.1 + 2 / 9) / 3  # 2/27
    std = math.sqrt(((0.1 - mean) ** 2 + (-0.1 - mean) ** 2 + (2 / 9 - mean) ** 2) / 2)
    assert m["total_return"] == pytest.approx(0.21)
    assert m["max_drawdown"] == pytest.approx(0.1)  # peak 110, trough 99
    assert m["annual_volatility"] == pytest.approx(std)
    assert m["sharpe"] == pytest.approx(mean / std)
    assert m["sortino"] == pytest.approx(mean / math.sqrt(0.01 / 3))
    assert m["calmar"] == pytest.approx((1.21 ** (1 / 3) - 1) / 0.1)
    assert m["n_trades"] == 1  # entered once from flat
    assert m["turnover"] == pytest.approx(1 / 3)  # one unit traded over 3 bars of a 1-bar year
    assert trading_metrics([100, 110, 99, 121], 252, positions=[1, 0, 1])["turnover"] == \
        pytest.approx(3 * 252 / 3)
    assert m["sharpe"] == pytest.approx(0.45536944, rel=1e-6)


def test_annualisation_scales_with_bar_frequency() -> None:
    v = [100, 110, 99, 121]
    yearly, quarterly = trading_metrics(v, 1), trading_metrics(v, 4)
    assert quarterly["sharpe"] == pytest.approx(2 * yearly["sharpe"])
    assert quarterly["annual_volatility"] == pytest.approx(2 * yearly["annual_volatility"])
    assert quarterly["calmar"] == pytest.approx((1.21 ** (4 / 3) - 1) / 0.1)
    assert quarterly["total_return"] == yearly["total_return"]


def test_flat_strategy_and_monotone_series() -> None:
    flat = trading_metrics(np.full(10, 50.0), 252, positions=np.zeros(9))
    assert flat == {"total_return": 0.0, "annual_volatility": 0.0, "max_drawdown": 0.0,
                    "sharpe": 0.0, "calmar": 0.0, "sortino": 0.0, "n_trades": 0.0,
                    "turnover": 0.0}
    up = trading_metrics([1.0, 2.0, 3.0], 1)
    assert up["max_drawdown"] == 0.0 and math.isinf(up["calmar"]) and math.isinf(up["sortino"])
    assert math.isnan(up["n_trades"]) and math.isnan(up["turnover"])  # no positions given


def test_count_trades() -> None:
    assert count_trades([0, 0, 1, 1, 0, -1, -1]) == 3
    assert count_trades([1, 1], initial=1) == 0


@pytest.mark.parametrize("bad", [[1.0], [1.0, np.nan], [1.0, 0.0, 2.0], [[1.0, 2.0]]])
def test_bad_value_series_raise(bad: list) -> None:
    with pytest.raises(ValueError):
        trading_metrics(bad, 252)
