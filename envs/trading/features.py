"""OHLCV features for MacroHFT, computed vectorised with backward-looking windows only (the row
at bar t uses bars <= t), then standardised with statistics fitted on the training split.

Three groups (the paper's order-book features do not exist in OHLCV data):
- ``state``: log returns and candle shape (kmid, klen, kup, klow, ksft and their range-normalised
  forms), volume ratio;
- ``context``: rolling z-scores over ``context_window`` bars (the sub-agents' adapter input);
- ``market``: slope and volatility of log price over ``market_window`` bars (the hyper-agent's
  market class).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from streammoe_envs.trading.data import chronological_splits, validate_ohlcv

__all__ = ["FeatureSet", "ObsLayout", "Standardiser", "build_features", "raw_features", "required_bars",
           "rolling_slope", "warm_up_bars"]

EPS = 1e-12


def rolling_slope(y: np.ndarray, window: int) -> np.ndarray:
    """Least-squares slope of ``y`` against 0..window-1 over each trailing window (NaN before).

    >>> rolling_slope(np.array([0., 2, 4, 6, 7]), 3).round(3).tolist()
    [nan, nan, 2.0, 2.0, 1.5]
    """
    n = len(y)
    out = np.full(n, np.nan)
    if n < window:
        return out
    i = np.arange(n, dtype=np.float64)
    cy, ciy = np.concatenate([[0], np.cumsum(y)]), np.concatenate([[0], np.cumsum(i * y)])
    sy = cy[window:] - cy[:-window]
    start = np.arange(n - window + 1, dtype=np.float64)
    sjy = (ciy[window:] - ciy[:-window]) - start * sy  # sum of j * y with j = 0..window-1
    sj, sjj = window * (window - 1) / 2, (window - 1) * window * (2 * window - 1) / 6
    out[window - 1:] = (window * sjy - sj * sy) / (window * sjj - sj**2)
    return out


def raw_features(df: pd.DataFrame, context_window: int = 60, market_window: int = 360
                 ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Unscaled (state, context, market) frames, NaN during each window's warm-up."""
    validate_ohlcv(df, df.attrs.get("source", "data"))
    o, h, lo, c = (df[k].to_numpy(np.float64) for k in ("open", "high", "low", "close"))
    v = np.log(df["volume"].to_numpy(np.float64).clip(min=EPS))
    logc = pd.Series(np.log(c), index=df.index)
    rng = np.maximum(h - lo, EPS)
    top, bottom = np.maximum(o, c), np.minimum(o, c)
    state = pd.DataFrame({
        "ret_1": logc.diff(1), "ret_5": logc.diff(5), "ret_15": logc.diff(15),
        "kmid": (c - o) / o, "klen": (h - lo) / o, "kup": (h - top) / o,
        "klow": (bottom - lo) / o, "ksft": (2 * c - h - lo) / o,
        "kmid2": (c - o) / rng, "kup2": (h - top) / rng, "klow2": (bottom - lo) / rng,
        "ksft2": (2 * c - h - lo) / rng,
        "volume_ratio": v - pd.Series(v, index=df.index).rolling(20).mean(),
    }, index=df.index)

    def zscore(s: pd.Series) -> pd.Series:
        roll = s.rolling(context_window)
        return (s - roll.mean()) / (roll.std() + EPS)

    ret = state["ret_1"]
    context = pd.DataFrame({
        "close_z": zscore(logc), "ret_z": zscore(ret), "volume_z": zscore(pd.Series(v, index=df.index)),
        "klen_z": zscore(state["klen"]),
        "vol_ratio": np.log(ret.rolling(15).std() / (ret.rolling(context_window).std() + EPS) + EPS),
    }, index=df.index)
    market = pd.DataFrame({
        "slope": rolling_slope(np.log(c), market_window),
        "volatility": ret.rolling(market_window).std(),
    }, index=df.index)
    return state, context, market


@dataclass(frozen=True)
class ObsLayout:
    """Column blocks of the trading env's flat observation:
    ``[state | context | market | one-hot previous position]``."""

    n_state: int
    n_context: int
    n_market: int
    n_levels: int

    @property
    def dim(self) -> int:
        return self.n_state + self.n_context + self.n_market + self.n_levels

    def split(self, obs: Any) -> tuple[Any, Any, Any, Any]:
        """(state, context, market, position one-hot) views of ``obs[..., :]``."""
        a = self.n_state
        b = a + self.n_context
        c = b + self.n_market
        if obs.shape[-1] != self.dim:
            raise ValueError(f"observation has {obs.shape[-1]} columns, layout expects {self.dim}")
        return obs[..., :a], obs[..., a:b], obs[..., b:c], obs[..., c:]


@dataclass
class Standardiser:
    """Per-column ``(x - mean) / std`` clipped to ``[-clip, clip]``; fitted on training rows."""

    mean: np.ndarray
    std: np.ndarray
    clip: float = 5.0

    @classmethod
    def fit(cls, x: np.ndarray, clip: float = 5.0) -> Standardiser:
        if not np.isfinite(x).all():
            raise ValueError("Standardiser.fit: features contain NaN or inf")
        return cls(x.mean(0), np.maximum(x.std(0), 1e-8), clip)

    def transform(self, x: np.ndarray) -> np.ndarray:
        if x.shape[-1] != len(self.mean):
            raise ValueError(f"expected {len(self.mean)} feature columns, got {x.shape[-1]}")
        return np.clip((x - self.mean) / self.std, -self.clip, self.clip).astype(np.float32)

    def state_dict(self) -> dict[str, Any]:
        return {"mean": self.mean.tolist(), "std": self.std.tolist(), "clip": self.clip}

    @classmethod
    def from_state_dict(cls, d: Mapping[str, Any]) -> Standardiser:
        return cls(np.asarray(d["mean"]), np.asarray(d["std"]), float(d["clip"]))


@dataclass
class FeatureSet:
    """Aligned arrays over the usable bars (after warm-up) and the split ranges into them."""

    index: pd.DatetimeIndex
    close: np.ndarray  # (T,) float64 prices the env trades at
    state: np.ndarray  # (T, F) float32, standardised
    context: np.ndarray  # (T, C)
    market: np.ndarray  # (T, 2)
    splits: dict[str, tuple[int, int]]
    names: dict[str, list[str]] = field(default_factory=dict)
    scalers: dict[str, Standardiser] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.close)

    def split(self, name: str) -> FeatureSet:
        """The rows of one split (same scalers), with that split as its only range."""
        a, b = self.splits[name]
        return FeatureSet(self.index[a:b], self.close[a:b], self.state[a:b], self.context[a:b],
                          self.market[a:b], {name: (0, b - a)}, self.names, self.scalers)


def warm_up_bars(context_window: int = 60, market_window: int = 360) -> int:
    """Bars dropped before every feature is defined: the longest trailing window over returns
    (returns start at the second bar), at least the 20-bar volume ratio.

    >>> warm_up_bars(20, 60), warm_up_bars(5, 10)
    (60, 19)
    """
    return max(int(context_window), int(market_window), 19)


def required_bars(train: float = 0.7, val: float = 0.15, context_window: int = 60,
                  market_window: int = 360, min_train_bars: int = 2, folds: int = 1) -> tuple[int, int]:
    """``(warm-up bars, fewest bars in all)`` that :func:`build_features` accepts: the warm-up plus
    enough bars that the chronological splits give train ``>= max(2, min_train_bars)`` bars and
    validation (when ``val > 0``) and test ``>= 2``.

    >>> required_bars(0.7, 0.15, 20, 60)
    (60, 72)
    """
    warm = warm_up_bars(context_window, market_window)
    min_train = max(2, int(min_train_bars))
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise ValueError(f"need 0 < train, 0 <= val and train + val < 1; got {train}, {val}")

    def fits(m: int) -> bool:
        a, b = int(round(m * train)), int(round(m * (train + val)))
        return a >= min_train and b - a >= (2 if val > 0 else 0) and (m - b) // folds >= 2

    m = min_train + 2
    while not fits(m):
        m += 1
    return warm, warm + m


def build_features(df: pd.DataFrame, train: float = 0.7, val: float = 0.15,
                   context_window: int = 60, market_window: int = 360, clip: float = 5.0,
                   min_train_bars: int = 2, folds: int = 1, fold: int = 0) -> FeatureSet:
    """Features for every bar after the longest warm-up, split in time order; each group is
    standardised with the training rows' statistics only.

    A series shorter than :func:`required_bars` raises a ``ValueError`` that names the source
    (``df.attrs["source"]``, set by the loaders), says how many bars the windows and splits need
    and which settings lower that; ``min_train_bars``: the caller's own minimum for the training
    split (e.g. one regime chunk)."""
    validate_ohlcv(df, df.attrs.get("source", "data"))
    warm, need = required_bars(train, val, context_window, market_window, min_train_bars, folds)
    if len(df) < need:
        raise ValueError(
            f"{df.attrs.get('source', 'data')}: {len(df)} bars, but the configured windows and splits "
            f"need at least {need}: {warm} warm-up bars (the longest window; market_window="
            f"{market_window}, context_window={context_window}) + {need - warm} bars for splits "
            f"train={train} / val={val} / test in {folds} fold(s) (train >= "
            f"{max(2, int(min_train_bars))} bars, validation and each test window >= 2). "
            "Use a longer series, or smaller windows or chunks "
            "(macrohft.features.market_window / context_window, macrohft.regimes.chunk_length)")
    groups = raw_features(df, context_window, market_window)
    valid = np.all([g.notna().all(axis=1).to_numpy() for g in groups], axis=0)
    first = int(np.argmax(valid))
    if not valid[first:].all():
        raise ValueError("features have NaN after the warm-up (zero-range or constant input?)")
    splits = chronological_splits(len(df) - first, train, val, folds, fold)
    a, b = splits["train"]
    arrays, scalers, names = [], {}, {}
    for key, g in zip(("state", "context", "market"), groups):
        x = g.to_numpy(np.float64)[first:]
        scalers[key] = Standardiser.fit(x[a:b], clip)
        arrays.append(scalers[key].transform(x))
        names[key] = list(g.columns)
    return FeatureSet(df.index[first:], df["close"].to_numpy(np.float64)[first:], *arrays,
                      splits=splits, names=names, scalers=scalers)
