"""OHLCV data for MacroHFT: a strict CSV loader, the real series bundled in permissively licensed
PyPI packages, a seeded regime-switching synthetic market, and chronological splits.

Every loader returns a DataFrame indexed by a sorted, unique ``DatetimeIndex`` with float columns
``open, high, low, close, volume``.

>>> df, regimes = synthetic_market(500, seed=0)
>>> list(df.columns), len(df), df.index.is_monotonic_increasing
(['open', 'high', 'low', 'close', 'volume'], 500, True)
>>> chronological_splits(100, train=0.7, val=0.15)
{'train': (0, 70), 'val': (70, 85), 'test': (85, 100)}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "BUILTIN_DATASETS",
    "OHLCV",
    "bars_per_year",
    "chronological_splits",
    "load_builtin",
    "load_data",
    "load_ohlcv_csv",
    "synthetic_market",
    "validate_ohlcv",
]

OHLCV = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class BuiltinDataset:
    package: str  # the PyPI distribution's import name
    resource: str  # path inside the package
    time_column: str
    date_format: str
    bar_frequency: str
    licence: str


# Real series shipped inside permissively licensed packages (the `data` extra installs them).
BUILTIN_DATASETS: dict[str, BuiltinDataset] = {
    "eurusd_1h": BuiltinDataset("gym_anytrading", "datasets/data/FOREX_EURUSD_1H_ASK.csv", "Time",
                                "%d.%m.%Y %H:%M:%S.%f", "1h", "MIT (gym-anytrading)"),
    "googl_1d": BuiltinDataset("gym_anytrading", "datasets/data/STOCKS_GOOGL.csv", "Date",
                               "%Y-%m-%d", "1d", "MIT (gym-anytrading)"),
    "sp500_1d": BuiltinDataset("arch", "data/sp500/sp500.csv.gz", "Date", "%m/%d/%Y", "1d",
                               "NCSA (arch)"),
    "nasdaq_1d": BuiltinDataset("arch", "data/nasdaq/nasdaq.csv.gz", "Date", "%m/%d/%Y", "1d",
                                "NCSA (arch)"),
}


def validate_ohlcv(df: pd.DataFrame, source: str = "data") -> pd.DataFrame:
    """Check an OHLCV frame: sorted unique timestamps, no NaN, positive prices. Returns it."""
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; has {list(df.columns)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise TypeError(f"{source}: index must be a DatetimeIndex, got {type(df.index).__name__}")
    if df.index.hasnans:
        raise ValueError(f"{source}: {int(df.index.isna().sum())} timestamps could not be parsed")
    dup = df.index[df.index.duplicated()]
    if len(dup):
        raise ValueError(f"{source}: {len(dup)} duplicate timestamps, first {dup[0]}")
    if not df.index.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(df.index.asi8) < 0)) + 1
        raise ValueError(f"{source}: timestamps are not sorted (row {bad}: {df.index[bad]} comes "
                         f"after {df.index[bad - 1]})")
    nan_rows = df.index[df[list(OHLCV)].isna().any(axis=1)]
    if len(nan_rows):
        raise ValueError(f"{source}: NaN values in {len(nan_rows)} rows (a gap), first at "
                         f"{nan_rows[0]}; fill or drop them before loading")
    prices = df[["open", "high", "low", "close"]].to_numpy()
    if (prices <= 0).any():
        raise ValueError(f"{source}: prices must be positive")
    if len(df) < 2:
        raise ValueError(f"{source}: need at least 2 bars, got {len(df)}")
    return df


def load_ohlcv_csv(path: str | Path, time_column: str = "Date",
                   columns: Mapping[str, str | None] | None = None,
                   date_format: str | None = None, source: str | None = None) -> pd.DataFrame:
    """Read an OHLCV CSV (``.csv`` or ``.csv.gz``).

    ``columns`` maps our names (open, high, low, close, volume) to the file's; by default the
    capitalised names (``Open`` ...). ``volume: null`` means the file has no volume (filled with
    1, so volume features are constant). ``date_format`` is a ``strftime`` pattern; ``None``
    lets pandas infer it.
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"OHLCV file {path} not found")
    names = {c: c.capitalize() for c in OHLCV}
    names.update(dict(columns or {}))
    raw = pd.read_csv(path)
    wanted = [time_column, *(v for v in names.values() if v is not None)]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; the file has {list(raw.columns)} "
                         "(set data.time_column / data.columns.*)")
    try:
        index = pd.to_datetime(raw[time_column], format=date_format)
    except (ValueError, TypeError) as err:
        raise ValueError(f"{source}: cannot parse column {time_column!r} with date_format="
                         f"{date_format!r}: {err}") from err
    df = pd.DataFrame(index=pd.DatetimeIndex(index, name="time"))
    for ours, theirs in names.items():
        if theirs is None:
            df[ours] = 1.0
        else:
            df[ours] = pd.to_numeric(raw[theirs], errors="coerce").to_numpy(dtype=np.float64)
    return validate_ohlcv(df, source)


def load_builtin(name: str) -> pd.DataFrame:
    """One of :data:`BUILTIN_DATASETS`, read from the installed package."""
    if name not in BUILTIN_DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(BUILTIN_DATASETS)}")
    ds = BUILTIN_DATASETS[name]
    try:
        root = resources.files(ds.package)
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(f"dataset {name!r} ships with the {ds.package!r} package: "
                                  "pip install 'streammoe[data]'") from err
    with resources.as_file(root.joinpath(ds.resource)) as path:
        return load_ohlcv_csv(path, ds.time_column, date_format=ds.date_format, source=name)


def synthetic_market(n_bars: int = 3000, seed: int = 0, start_price: float = 100.0,
                     mean_duration: float = 200.0, drift: float = 5e-4,
                     vols: tuple[float, float, float] = (0.002, 0.005, 0.012),
                     substeps: int = 4, freq: str = "1h") -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded regime-switching market: trend regimes (bear/flat/bull: drift -d, 0, +d per bar)
    and volatility regimes (low/mid/high) switch independently with geometric durations.

    Returns the OHLCV frame and a frame of the true regimes per bar (``trend`` in {0,1,2},
    ``volatility`` in {0,1,2}). Bars are built from ``substeps`` log-normal sub-steps, so high and
    low bracket open and close.
    """
    if n_bars < 2:
        raise ValueError(f"n_bars must be >= 2, got {n_bars}")
    rng = np.random.default_rng(seed)
    p_switch = 1.0 / mean_duration

    def regime_path() -> np.ndarray:
        segment = np.cumsum(rng.random(n_bars) < p_switch)  # a switch starts a new segment
        return rng.integers(0, 3, size=segment[-1] + 1)[segment]

    trend, vol = regime_path(), regime_path()
    mu = (np.array([-drift, 0.0, drift]))[trend]
    sigma = np.asarray(vols)[vol]
    steps = rng.standard_normal((n_bars, substeps)) * (sigma / np.sqrt(substeps))[:, None]
    steps += (mu / substeps)[:, None]
    log_path = np.log(start_price) + np.cumsum(steps.ravel()).reshape(n_bars, substeps)
    close = np.exp(log_path[:, -1])
    open_ = np.concatenate([[start_price], close[:-1]])
    high = np.maximum(np.exp(log_path.max(1)), np.maximum(open_, close))
    low = np.minimum(np.exp(log_path.min(1)), np.minimum(open_, close))
    bar_ret = np.abs(np.log(close / open_))
    volume = 1e4 * (1 + 50 * bar_ret) * rng.lognormal(0.0, 0.3, n_bars) * (1 + vol)
    index = pd.date_range("2020-01-01", periods=n_bars, freq=freq, name="time")
    df = pd.DataFrame({"open": open_, "high": high, "low": low, "close": close,
                       "volume": volume}, index=index)
    return validate_ohlcv(df, "synthetic"), pd.DataFrame({"trend": trend, "volatility": vol},
                                                         index=index)


def load_data(cfg: Mapping[str, Any], seed: int = 0) -> pd.DataFrame:
    """The series a run's ``data`` config names: ``path`` (a user's CSV) wins over ``name``
    (``synthetic`` or a builtin)."""
    if cfg.get("path"):
        return load_ohlcv_csv(cfg["path"], cfg.get("time_column", "Date"),
                              dict(cfg.get("columns") or {}), cfg.get("date_format"))
    name = cfg.get("name", "synthetic")
    if name == "synthetic":
        syn = dict(cfg.get("synthetic") or {})
        return synthetic_market(seed=int(syn.pop("seed", seed)), freq=cfg.get("bar_frequency", "1h"),
                                **syn)[0]
    return load_builtin(name)


def bars_per_year(bar_frequency: str, trading_days: float = 252.0,
                  hours_per_day: float = 24.0) -> float:
    """Annualisation factor: bars in a year of ``trading_days`` days of ``hours_per_day`` hours.

    >>> bars_per_year("1d"), bars_per_year("1h"), bars_per_year("1min", 365)
    (252.0, 6048.0, 525600.0)
    >>> bars_per_year("1w")
    52.0
    """
    try:
        delta = pd.Timedelta(bar_frequency)
    except ValueError as err:
        raise ValueError(f"bar_frequency {bar_frequency!r} is not a duration like '1h', '5min', "
                         "'1d'; or set data.bars_per_year") from err
    if delta <= pd.Timedelta(0):
        raise ValueError(f"bar_frequency must be positive, got {bar_frequency!r}")
    if delta >= pd.Timedelta(days=7):
        return 52.0 * pd.Timedelta(days=7) / delta
    if delta >= pd.Timedelta(days=1):
        return trading_days * pd.Timedelta(days=1) / delta
    return trading_days * pd.Timedelta(hours=hours_per_day) / delta


def chronological_splits(n: int, train: float = 0.7, val: float = 0.15) -> dict[str, tuple[int, int]]:
    """``[start, end)`` row ranges of train / val / test in time order (never shuffled)."""
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise ValueError(f"need 0 < train, 0 <= val and train + val < 1; got {train}, {val}")
    a, b = int(round(n * train)), int(round(n * (train + val)))
    if a < 2 or b - a < (2 if val > 0 else 0) or n - b < 2:
        raise ValueError(f"{n} rows are too few for splits train={train}, val={val}")
    return {"train": (0, a), "val": (a, b), "test": (b, n)}
