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

import gzip
import re
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
    "bar_spacing",
    "bars_per_year",
    "check_bar_frequency",
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


def _row(df: pd.DataFrame, i: int) -> str:
    """``row 8 (2020-01-08 00:00:00)``: the 1-based data row (header not counted) and its time."""
    return f"row {i + 1} ({df.index[i]})"


def validate_ohlcv(df: pd.DataFrame, source: str = "data",
                   column_names: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """Check an OHLCV frame and return it; every error names ``source``, the column and the first
    offending row (1-based, header not counted) and says how to fix it.

    Checks: the five columns; sorted, unique, parsed timestamps; no gaps (NaN); finite numbers;
    positive prices; ``volume >= 0``; ``low <= min(open, close)`` and ``high >= max(open, close)``
    (so ``high >= low``); at least 2 bars. ``column_names`` maps our names to the file's for the
    messages (default: ours).
    """
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; has {list(df.columns)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise TypeError(f"{source}: index must be a DatetimeIndex, got {type(df.index).__name__}")
    names = {c: c for c in OHLCV}
    names.update({k: v for k, v in (column_names or {}).items() if v is not None})

    def col(c: str) -> str:
        return repr(names[c]) if names[c] == c else f"{names[c]!r} ({c})"

    if len(df) < 2:
        raise ValueError(f"{source}: need at least 2 bars, got {len(df)}")
    if df.index.hasnans:
        i = int(np.argmax(df.index.isna()))
        raise ValueError(f"{source}: {int(df.index.isna().sum())} timestamps could not be parsed, "
                         f"first at row {i + 1}")
    dup = np.flatnonzero(df.index.duplicated())
    if len(dup):
        raise ValueError(f"{source}: {len(dup)} duplicate timestamps, first {_row(df, int(dup[0]))}; "
                         "keep one bar per timestamp")
    if not df.index.is_monotonic_increasing:
        bad = int(np.argmax(np.diff(df.index.asi8) < 0)) + 1
        raise ValueError(f"{source}: timestamps are not sorted (row {bad + 1}: {df.index[bad]} comes "
                         f"after {df.index[bad - 1]}); sort the file by time, oldest first")
    values = df[list(OHLCV)].to_numpy(np.float64)
    nan = np.isnan(values)
    if nan.any():
        i, j = np.argwhere(nan)[0]
        raise ValueError(f"{source}: NaN values in {int(nan.any(axis=1).sum())} rows (a gap), first "
                         f"{_row(df, int(i))} column {col(OHLCV[j])}; fill or drop them before loading")
    inf = ~np.isfinite(values)
    if inf.any():
        i, j = np.argwhere(inf)[0]
        raise ValueError(f"{source}: column {col(OHLCV[j])} {_row(df, int(i))} is {values[i, j]}: "
                         "prices and volumes must be finite numbers; fix or drop that row")
    prices = values[:, :4]
    if (prices <= 0).any():
        i, j = np.argwhere(prices <= 0)[0]
        raise ValueError(f"{source}: column {col(OHLCV[j])} {_row(df, int(i))} is {prices[i, j]}: "
                         "prices must be positive (a price series, not returns or differences)")
    if (values[:, 4] < 0).any():
        i = int(np.argmax(values[:, 4] < 0))
        raise ValueError(f"{source}: column {col('volume')} {_row(df, i)} is {values[i, 4]}: volume "
                         "must be >= 0 (map data.columns.volume=null if the file has no real volume)")
    o, h, lo, c = prices.T
    checks = [
        (h < lo, lambda i: f"high {col('high')} {h[i]} is below low {col('low')} {lo[i]}"),
        (h < np.maximum(o, c), lambda i: f"high {col('high')} {h[i]} is below the bar's open/close "
                                         f"{max(o[i], c[i])}"),
        (lo > np.minimum(o, c), lambda i: f"low {col('low')} {lo[i]} is above the bar's open/close "
                                          f"{min(o[i], c[i])}"),
    ]
    for bad, say in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{source}: {_row(df, i)}: {say(i)} ({int(bad.sum())} such rows); "
                             "the high must be the bar's maximum and the low its minimum (columns "
                             "swapped? check data.columns.high / data.columns.low)")
    return df


def _check_text_file(path: Path, source: str) -> None:
    """Fail clearly on an empty or binary file before pandas does (with a parser traceback)."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(8192)
    except (OSError, EOFError) as err:  # e.g. a .gz that is not gzip
        raise ValueError(f"{source}: cannot read the file ({err}); give a CSV (.csv or .csv.gz)") from err
    if not head.strip():
        raise ValueError(f"{source}: the file is empty; give a CSV with a header row and one row per bar")
    control = sum(ch < 32 and ch not in b"\t\n\r\x0c" for ch in head)
    if b"\x00" in head or control > len(head) // 10:
        raise ValueError(f"{source}: this is a binary file, not a text CSV (an Excel/Parquet/zip file?); "
                         "export it as CSV (UTF-8, comma-separated, one row per bar)")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 4:  # not a multi-byte character cut off at 8 KiB
            raise ValueError(f"{source}: not UTF-8 text (byte {head[err.start]:#04x} at offset "
                             f"{err.start}); save the file as UTF-8") from err


def _numeric(raw: pd.Series, column: str, source: str) -> np.ndarray:
    """A file column as float64; a cell that is not a number is an error naming row and value."""
    num = pd.to_numeric(raw, errors="coerce")
    bad = np.flatnonzero(num.isna().to_numpy() & raw.notna().to_numpy())
    if len(bad):
        i = int(bad[0])
        value = str(raw.iloc[i])
        hint = ("it looks like a decimal comma: write the number with a point (12.5), e.g. re-save "
                "the file with '.' as the decimal separator") if re.fullmatch(r"\s*-?\d+,\d+\s*", value) \
            else "fix or drop that row"
        raise ValueError(f"{source}: column {column!r} row {i + 1} is {value!r}, not a number "
                         f"({len(bad)} such cells); {hint}")
    return num.to_numpy(dtype=np.float64)


def load_ohlcv_csv(path: str | Path, time_column: str | None = "Date",
                   columns: Mapping[str, str | None] | None = None,
                   date_format: str | None = None, source: str | None = None,
                   bar_frequency: str | None = None) -> pd.DataFrame:
    """Read an OHLCV CSV (``.csv`` or ``.csv.gz``) and validate it (:func:`validate_ohlcv`).

    ``columns`` maps our names (open, high, low, close, volume) to the file's; by default the
    capitalised names (``Open`` ...). ``volume: null`` means the file has no volume (filled with
    1, so volume features are constant). ``date_format`` is a ``strftime`` pattern; ``None``
    lets pandas infer it. ``time_column=None``: the file has no timestamps; its rows are taken in
    file order as consecutive bars ``bar_frequency`` apart (required then), starting 2000-01-01.
    Empty, binary or unparsable files, and cells that are not numbers, raise a ``ValueError``
    naming the file, column and row.
    """
    path = Path(path)
    source = source or str(path)
    if not path.is_file():
        raise FileNotFoundError(f"OHLCV file {path} not found")
    names = {c: c.capitalize() for c in OHLCV}
    names.update(dict(columns or {}))
    unknown = sorted(set(names) - set(OHLCV))
    if unknown:
        raise ValueError(f"{source}: data.columns has unknown keys {unknown}; use {list(OHLCV)}")
    nulls = [c for c, v in names.items() if v is None and c != "volume"]
    if nulls:
        raise ValueError(f"{source}: data.columns.{nulls[0]} is null, but only volume may be absent")
    if time_column is None and bar_frequency is None:
        raise ValueError(f"{source}: data.time_column=null (no timestamps) needs data.bar_frequency "
                         "to space the bars")
    _check_text_file(path, source)
    try:
        raw = pd.read_csv(path)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{source}: the file has no CSV content; give a header row and one row "
                         "per bar") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: not a readable comma-separated file ({str(err).strip()}); a row with more "
                         "fields than the header often means a decimal comma (12,5): write 12.5"
                         ) from err
    wanted = [*([time_column] if time_column is not None else []),
              *(v for v in names.values() if v is not None)]
    missing = [c for c in wanted if c not in raw.columns]
    if missing:
        hint = "set data.time_column / data.columns.*"
        if time_column in missing:
            hint += "; data.time_column=null if the file has no timestamps"
        if len(raw.columns) == 1 and any(ch in str(raw.columns[0]) for ch in ";\t|"):
            hint = "the file is not comma-separated (';' or tab?): save it with ',' between fields"
        raise ValueError(f"{source}: missing columns {missing}; the file has {list(raw.columns)} ({hint})")
    if raw.empty:
        raise ValueError(f"{source}: the file has a header but no data rows")
    if time_column is None:
        index = pd.date_range("2000-01-01", periods=len(raw), freq=pd.Timedelta(bar_frequency))
    else:
        try:
            index = pd.to_datetime(raw[time_column], format=date_format)
        except (ValueError, TypeError) as err:
            parsed = pd.to_datetime(raw[time_column], format=date_format, errors="coerce")
            bad = np.flatnonzero(parsed.isna().to_numpy())
            where = f" (first bad value {raw[time_column].iloc[bad[0]]!r} in row {bad[0] + 1})" if len(bad) else ""
            raise ValueError(f"{source}: cannot parse column {time_column!r} with date_format="
                             f"{date_format!r}{where}: {str(err).splitlines()[0]}; set "
                             "data.date_format to the file's strftime pattern, e.g. '%Y-%m-%d %H:%M'"
                             ) from err
    df = pd.DataFrame(index=pd.DatetimeIndex(index, name="time"))
    for ours, theirs in names.items():
        df[ours] = 1.0 if theirs is None else _numeric(raw[theirs], theirs, source)
    df.attrs["source"] = source
    return validate_ohlcv(df, source, names)


def bar_spacing(index: pd.DatetimeIndex) -> pd.Timedelta:
    """The bar length of a series: the median gap between consecutive timestamps (robust to
    weekends, holidays and missing bars).

    >>> bar_spacing(pd.DatetimeIndex(["2024-01-05", "2024-01-08", "2024-01-09", "2024-01-10"]))
    Timedelta('1 days 00:00:00')
    """
    if len(index) < 2:
        raise ValueError("need at least 2 timestamps to infer the bar spacing")
    return pd.Timedelta(int(np.median(np.diff(index.as_unit("ns").asi8))), unit="ns")


def check_bar_frequency(df: pd.DataFrame, bar_frequency: str, hours_per_day: float | None = None,
                        source: str = "data") -> None:
    """Raise when the data's bar spacing (:func:`bar_spacing`) disagrees with ``bar_frequency``
    by more than a factor 1.5, and, for intraday bars, when the bars per trading day (median per
    calendar date) disagree with ``hours_per_day / bar length``: either would silently
    mis-annualise every figure (e.g. an hourly file read as daily bars)."""
    spacing = bar_spacing(df.index)
    try:
        configured = pd.Timedelta(bar_frequency)
    except ValueError as err:
        raise ValueError(f"data.bar_frequency {bar_frequency!r} is not a duration like '1h', '5min', "
                         "'1d'") from err

    def short(t: pd.Timedelta) -> str:
        for unit, size in (("d", "1D"), ("h", "1h"), ("min", "1min"), ("s", "1s")):
            n = t / pd.Timedelta(size)
            if n >= 1 and float(n).is_integer():
                return f"{int(n)}{unit}"
        return str(t)

    ratio = spacing / configured
    if not 1 / 1.5 <= ratio <= 1.5:
        raise ValueError(
            f"{source}: the bars are {short(spacing)} apart (median gap between timestamps) but "
            f"data.bar_frequency={bar_frequency}; set data.bar_frequency={short(spacing)} (it sets the "
            f"annualisation of the risk figures: {bars_per_year(short(spacing)):g} instead of "
            f"{bars_per_year(bar_frequency):g} bars per year at the default calendar), or give "
            "data.bars_per_year explicitly")
    if hours_per_day is None or spacing >= pd.Timedelta(days=1):
        return
    per_day = float(df.groupby(df.index.normalize()).size().median())
    expected = float(hours_per_day) * pd.Timedelta(hours=1) / spacing
    if not 1 / 1.5 <= per_day / expected <= 1.5:
        hours = per_day * spacing / pd.Timedelta(hours=1)
        raise ValueError(
            f"{source}: {per_day:g} bars per trading day (median) of {short(spacing)}, but "
            f"data.hours_per_day={hours_per_day:g} means {expected:g}; set data.hours_per_day="
            f"{hours:g} (e.g. 6.5 for US stock hours, 24 for FX/crypto), or give data.bars_per_year")


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
    df.attrs["source"] = "synthetic"
    return validate_ohlcv(df, "synthetic"), pd.DataFrame({"trend": trend, "volatility": vol},
                                                         index=index)


def load_data(cfg: Mapping[str, Any], seed: int = 0) -> pd.DataFrame:
    """The series a run's ``data`` config names: ``path`` (a user's CSV) wins over ``name``
    (``synthetic`` or a builtin). A file's or builtin's bar spacing is checked against
    ``bar_frequency`` (and intraday bars per day against ``hours_per_day``) unless
    ``bars_per_year`` is given, which then sets the annualisation alone."""
    check = not cfg.get("bars_per_year") and cfg.get("bar_frequency") is not None
    if cfg.get("path"):
        time_column = cfg.get("time_column", "Date")
        df = load_ohlcv_csv(cfg["path"], time_column, dict(cfg.get("columns") or {}),
                            cfg.get("date_format"), bar_frequency=cfg.get("bar_frequency"))
        if time_column is None:  # spaced by bar_frequency: nothing to check
            return df
    else:
        name = cfg.get("name", "synthetic")
        if name == "synthetic":
            syn = dict(cfg.get("synthetic") or {})
            return synthetic_market(seed=int(syn.pop("seed", seed)), freq=cfg.get("bar_frequency", "1h"),
                                    **syn)[0]
        df = load_builtin(name)
    if check:
        check_bar_frequency(df, cfg["bar_frequency"], cfg.get("hours_per_day"),
                            df.attrs.get("source", "data"))
    return df


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


def chronological_splits(n: int, train: float = 0.7, val: float = 0.15, folds: int = 1,
                         fold: int = 0) -> dict[str, tuple[int, int]]:
    """``[start, end)`` row ranges of train / val / test in time order (never shuffled).

    ``folds > 1``: walk-forward folds. The first ``train`` and ``val`` fractions of the rows are
    fold 0's train and validation windows and the rest is cut into ``folds`` equal test windows;
    fold ``k`` moves all three windows forward by ``k`` test windows (same lengths), so every
    fold's test window follows its own validation window and the test windows tile the tail.

    >>> chronological_splits(100, 0.5, 0.1, folds=4, fold=1)
    {'train': (10, 60), 'val': (60, 70), 'test': (70, 80)}
    """
    if not (0 < train < 1 and 0 <= val < 1 and train + val < 1):
        raise ValueError(f"need 0 < train, 0 <= val and train + val < 1; got {train}, {val}")
    if not (isinstance(folds, int) and folds >= 1 and isinstance(fold, int) and 0 <= fold < folds):
        raise ValueError(f"need folds >= 1 and 0 <= fold < folds; got folds={folds}, fold={fold}")
    a, b = int(round(n * train)), int(round(n * (train + val)))
    step = (n - b) // folds
    if a < 2 or b - a < (2 if val > 0 else 0) or step < 2:
        raise ValueError(f"{n} rows are too few for splits train={train}, val={val}, folds={folds}")
    if folds == 1:
        return {"train": (0, a), "val": (a, b), "test": (b, n)}
    k = fold * step
    return {"train": (k, a + k), "val": (a + k, b + k), "test": (b + k, b + k + step)}
