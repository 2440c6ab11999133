"""Trading metrics from a portfolio value series, annualised with the bar frequency.

Per-bar simple returns ``r_t = V_t / V_{t-1} - 1``; ``bars_per_year`` comes from
:func:`streammoe_envs.trading.data.bars_per_year`. Risk-free rate 0.

- total return ``V_T / V_0 - 1``;
- annualised volatility ``std(r, ddof=1) * sqrt(bars_per_year)``;
- max drawdown ``max_t (1 - V_t / max_{s<=t} V_s)`` (a positive fraction);
- Sharpe ``mean(r) / std(r, ddof=1) * sqrt(bars_per_year)``;
- Sortino ``mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(bars_per_year)``;
- Calmar ``annualised return / max drawdown`` with annualised return
  ``(V_T / V_0)^(bars_per_year / T) - 1``;
- trades: bars where the position changes (entering from the initial flat counts).

A ratio with a zero denominator is 0 when its numerator is 0, else +-inf (``None`` in JSON).

>>> m = trading_metrics([100, 110, 99, 121], bars_per_year=1)
>>> round(m["total_return"], 4), round(m["max_drawdown"], 4)
(0.21, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["METRIC_KEYS", "count_trades", "trading_metrics"]

METRIC_KEYS = ("total_return", "annual_volatility", "max_drawdown", "sharpe", "calmar", "sortino",
               "n_trades")


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def count_trades(positions: Sequence[float] | np.ndarray, initial: float = 0.0) -> int:
    """Bars where the held position differs from the previous one.

    >>> count_trades([0, 1, 1, 0, -1])
    3
    """
    p = np.concatenate([[initial], np.asarray(positions, np.float64)])
    return int(np.count_nonzero(np.diff(p)))


def trading_metrics(values: Sequence[float] | np.ndarray, bars_per_year: float,
                    positions: Sequence[float] | np.ndarray | None = None) -> dict[str, float]:
    """Return, volatility, drawdown, Sharpe, Calmar, Sortino and trades of a value series,
    annualised with ``bars_per_year``."""
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or len(v) < 2:
        raise ValueError(f"need a 1-D value series of >= 2 points, got shape {v.shape}")
    if not np.isfinite(v).all() or (v <= 0).any():
        raise ValueError("portfolio values must be finite and positive")
    r = v[1:] / v[:-1] - 1
    std = float(r.std(ddof=1)) if len(r) > 1 else 0.0
    mean = float(r.mean())
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    peak = np.maximum.accumulate(v)
    max_dd = float(np.max(1 - v / peak))
    total = float(v[-1] / v[0] - 1)
    annual_return = float((v[-1] / v[0]) ** (bars_per_year / len(r)) - 1)
    scale = math.sqrt(bars_per_year)
    return {
        "total_return": total,
        "annual_volatility": std * scale,
        "max_drawdown": max_dd,
        "sharpe": _ratio(mean, std) * scale,
        "calmar": _ratio(annual_return, max_dd),
        "sortino": _ratio(mean, downside) * scale,
        "n_trades": float(count_trades(positions)) if positions is not None else float("nan"),
    }
