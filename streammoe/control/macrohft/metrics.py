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
- trades: bars where the position changes (entering from the initial flat counts);
- turnover: traded position per year, ``sum_t |pos_t - pos_{t-1}| * bars_per_year / T`` in
  position units (fractions of ``max_holding`` when it is 1; entering from flat counts).

:func:`paired_block_bootstrap` compares two strategies over the same bars: a circular
moving-block bootstrap interval of the mean per-bar return difference.

A ratio with a zero denominator is 0 when its numerator is 0, else +-inf (``None`` in JSON).

>>> m = trading_metrics([100, 110, 99, 121], bars_per_year=1)
>>> round(m["total_return"], 4), round(m["max_drawdown"], 4)
(0.21, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["METRIC_KEYS", "count_trades", "paired_block_bootstrap", "trading_metrics"]

METRIC_KEYS = ("total_return", "annual_volatility", "max_drawdown", "sharpe", "calmar", "sortino",
               "n_trades", "turnover")


def _ratio(num: float, den: float) -> float:
    if den > 0:
        return num / den
    return 0.0 if num == 0 else math.copysign(math.inf, num)


def count_trades(positions: Sequence[float] | np.ndarray, initial: float = 0.0) -> int:
    """Bars where the held position differs from the previous one.

    >>> count_trades([0, 1, 1, 0, -1])
    3
    """
    return int(np.count_nonzero(_position_changes(positions, initial)))


def _position_changes(positions: Sequence[float] | np.ndarray, initial: float = 0.0) -> np.ndarray:
    """``pos_t - pos_{t-1}`` per bar, starting from ``initial``."""
    return np.diff(np.concatenate([[initial], np.asarray(positions, np.float64)]))


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
        "turnover": (float(np.abs(_position_changes(positions)).sum() * bars_per_year / len(r))
                     if positions is not None else float("nan")),
    }


def paired_block_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray,
                           block: int = 20, n_boot: int = 2000, seed: int = 0,
                           level: float = 0.95) -> dict[str, float | int | bool]:
    """Percentile interval of ``mean(a - b)`` by a circular moving-block bootstrap.

    ``a`` and ``b`` are per-bar returns of two strategies over the same bars. Each replicate
    joins ``ceil(n / block)`` blocks of ``block`` consecutive differences, each starting at a
    uniformly drawn bar and wrapping around the end, cut to ``n`` bars; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicate means. Blocks keep
    the serial dependence of returns within ``block`` bars. Every replicate's mean comes from
    prefix sums (no loop over replicates): memory ``n_boot * n / block`` draws.

    Returns ``mean_diff``, ``low``, ``high``, ``n``, ``block``, ``excludes_zero``
    (``low > 0 or high < 0``).

    >>> r = paired_block_bootstrap([0.02, 0.01, 0.03, 0.02], [0.0, 0.0, 0.01, 0.0], block=2,
    ...                            n_boot=200)
    >>> round(r["mean_diff"], 4), r["n"], r["excludes_zero"]
    (0.0175, 4, True)
    >>> r["low"] <= r["mean_diff"] <= r["high"]
    True
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError(f"need 1-D return arrays, got shapes {a.shape} and {b.shape}")
    if a.shape != b.shape:
        raise ValueError(f"return arrays must be aligned (same length), got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError(f"need at least 2 bars, got {n}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("returns must be finite (found NaN or inf)")
    if not 1 <= block <= n:
        raise ValueError(f"block must be in [1, {n}] (the number of bars), got {block}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    n_blocks = -(-n // block)
    last = n - (n_blocks - 1) * block  # length of the final, possibly cut, block
    # circular prefix sums: window sums of `block` and `last` bars starting at every bar
    cs = np.concatenate([[0.0], np.cumsum(np.concatenate([d, d[:block]]))])
    starts = np.arange(n)
    full_sums = cs[starts + block] - cs[starts]
    last_sums = cs[starts + last] - cs[starts]
    draws = np.random.default_rng(seed).integers(0, n, size=(n_boot, n_blocks))
    means = (full_sums[draws[:, :-1]].sum(axis=1) + last_sums[draws[:, -1]]) / n
    alpha = 1.0 - level
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return {"mean_diff": float(d.mean()), "low": float(low), "high": float(high), "n": n,
            "block": int(block), "excludes_zero": bool(low > 0 or high < 0)}
