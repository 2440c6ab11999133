"""MacroHFT data: CSV loader errors, synthetic market, splits, features, market decomposition."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streammoe_envs.trading.data import (
    BUILTIN_DATASETS,
    bar_spacing,
    bars_per_year,
    check_bar_frequency,
    chronological_splits,
    load_builtin,
    load_data,
    load_ohlcv_csv,
    synthetic_market,
)
from streammoe_envs.trading.features import (
    Standardiser,
    build_features,
    raw_features,
    required_bars,
)

from streammoe.control.macrohft.regimes import (
    REGIMES,
    RegimeThresholds,
    assign_regimes,
    chunk_labels,
    plot_regimes,
)


def _write_csv(path: Path, n: int = 30, **edits) -> Path:
    df, _ = synthetic_market(n, seed=1, freq="1D")
    out = pd.DataFrame({"Date": df.index.strftime("%Y-%m-%d"), "Open": df.open, "High": df.high,
                        "Low": df.low, "Close": df.close, "Volume": df.volume}).reset_index(drop=True)
    for fn in edits.values():
        out = fn(out)
    out.to_csv(path, index=False)
    return path


def test_csv_round_trip_with_custom_columns(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "a.csv", rename=lambda d: d.rename(columns={"Close": "px", "Date": "ts"}))
    df = load_ohlcv_csv(path, "ts", {"close": "px"}, "%Y-%m-%d")
    assert list(df.columns) == ["open", "high", "low", "close", "volume"] and len(df) == 30
    assert isinstance(df.index, pd.DatetimeIndex) and df.index.is_monotonic_increasing
    no_volume = load_ohlcv_csv(path, "ts", {"close": "px", "volume": None})
    assert (no_volume.volume == 1.0).all()


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.drop(columns=["High"]), r"missing columns \['High'\]"),
    (lambda d: d.iloc[::-1], "not sorted"),
    (lambda d: pd.concat([d.iloc[:5], d.iloc[4:]]), "duplicate timestamps"),
    (lambda d: d.assign(Close=d.Close.where(d.index != 7)), "NaN values in 1 rows"),
    (lambda d: d.assign(Date=d.Date.where(d.index != 3, "not a date")), "cannot parse"),
    (lambda d: d.assign(Low=-1.0), "positive"),
])
def test_csv_errors_name_the_problem(tmp_path: Path, edit, match: str) -> None:
    path = _write_csv(tmp_path / "bad.csv", edit=edit)
    with pytest.raises(ValueError, match=match):
        load_ohlcv_csv(path, "Date", date_format="%Y-%m-%d")


def test_missing_file_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_ohlcv_csv(tmp_path / "nope.csv")
    with pytest.raises(KeyError, match="known"):
        load_builtin("btc_1s")


def test_load_data_prefers_path_over_name(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "a.csv", n=40)
    df = load_data({"name": "eurusd_1h", "path": str(path), "time_column": "Date",
                    "columns": {}, "date_format": "%Y-%m-%d"})
    assert len(df) == 40
    syn = load_data({"name": "synthetic", "synthetic": {"n_bars": 50, "seed": 2}})
    pd.testing.assert_frame_equal(syn, synthetic_market(50, seed=2)[0])


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_datasets_load_when_the_data_extra_is_installed(name: str) -> None:
    pytest.importorskip(BUILTIN_DATASETS[name].package)
    df = load_builtin(name)
    assert len(df) > 2000 and df.index.is_monotonic_increasing


def test_synthetic_market_is_seeded_and_has_regimes() -> None:
    a, regimes = synthetic_market(3000, seed=7)
    b, _ = synthetic_market(3000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not synthetic_market(3000, seed=8)[0].equals(a)
    assert (a.high >= a[["open", "close"]].max(1)).all() and (a.low <= a[["open", "close"]].min(1)).all()
    assert set(regimes.trend) == {0, 1, 2} and set(regimes.volatility) == {0, 1, 2}
    ret = np.log(a.close).diff()
    by_vol = ret.groupby(regimes.volatility.to_numpy()).std()
    assert by_vol[0] < by_vol[1] < by_vol[2]  # volatility regimes are what they say
    by_trend = ret.groupby(regimes.trend.to_numpy()).mean()
    assert by_trend[0] < 0 < by_trend[2]


def test_splits_are_chronological() -> None:
    s = chronological_splits(1000, 0.6, 0.2)
    assert s == {"train": (0, 600), "val": (600, 800), "test": (800, 1000)}
    with pytest.raises(ValueError):
        chronological_splits(1000, 0.9, 0.2)
    with pytest.raises(ValueError, match="too few"):
        chronological_splits(5, 0.7, 0.15)


def test_walk_forward_folds_tile_the_tail_with_fixed_window_lengths() -> None:
    folds = [chronological_splits(1000, 0.5, 0.1, folds=4, fold=k) for k in range(4)]
    assert folds[0] == {"train": (0, 500), "val": (500, 600), "test": (600, 700)}
    for k, s in enumerate(folds):
        assert s["train"][1] == s["val"][0] and s["val"][1] == s["test"][0]  # adjacent, in order
        assert [b - a for a, b in s.values()] == [500, 100, 100]
        assert s["train"][0] == 100 * k
    assert [s["test"] for s in folds] == [(600, 700), (700, 800), (800, 900), (900, 1000)]
    assert chronological_splits(1000, 0.6, 0.2, folds=1) == chronological_splits(1000, 0.6, 0.2)
    for bad in ({"folds": 4, "fold": 4}, {"folds": 0, "fold": 0}, {"folds": 2, "fold": -1}):
        with pytest.raises(ValueError, match="fold"):
            chronological_splits(1000, 0.5, 0.1, **bad)
    with pytest.raises(ValueError, match="too few"):
        chronological_splits(20, 0.5, 0.1, folds=8, fold=0)


def test_features_of_a_fold_are_scaled_on_that_folds_training_window() -> None:
    df, _ = synthetic_market(900, seed=5)
    f0 = build_features(df, 0.5, 0.1, 20, 60, folds=3, fold=0)
    f2 = build_features(df, 0.5, 0.1, 20, 60, folds=3, fold=2)
    (a0, b0), (a2, b2) = f0.splits["train"], f2.splits["train"]
    assert a2 > a0 and b2 - a2 == b0 - a0 and f2.splits["test"][1] <= len(f2)
    raw0, raw2 = f0.state * f0.scalers["state"].std + f0.scalers["state"].mean, \
        f2.state * f2.scalers["state"].std + f2.scalers["state"].mean
    np.testing.assert_allclose(f2.state[a2:b2].mean(0), 0, atol=0.05)
    assert not np.allclose(f0.scalers["state"].mean, f2.scalers["state"].mean)
    unclipped = (np.abs(f0.state) < 5) & (np.abs(f2.state) < 5)
    np.testing.assert_allclose(raw0[unclipped], raw2[unclipped], rtol=1e-4, atol=1e-5)  # same bars
    with pytest.raises(ValueError, match="fold"):
        build_features(df.iloc[:200], 0.5, 0.1, 20, 60, folds=40, fold=0)


def test_bars_per_year() -> None:
    assert bars_per_year("1d") == 252 and bars_per_year("1h") == 252 * 24
    assert bars_per_year("1h", hours_per_day=6.5) == pytest.approx(252 * 6.5)
    assert bars_per_year("5min", 365) == 365 * 24 * 12


def test_features_fit_scalers_on_train_only() -> None:
    df, _ = synthetic_market(800, seed=5)
    fs = build_features(df, train=0.6, val=0.2, context_window=20, market_window=60)
    a, b = fs.splits["train"]
    # the training rows are standardised (before clipping, mean 0 / std 1)
    np.testing.assert_allclose(fs.state[a:b].mean(0), 0, atol=0.05)
    # changing the test period leaves the scalers (and so the train rows) unchanged
    df2 = df.copy()
    df2.iloc[-100:, :4] *= 3.0
    fs2 = build_features(df2, train=0.6, val=0.2, context_window=20, market_window=60)
    np.testing.assert_array_equal(fs.scalers["state"].mean, fs2.scalers["state"].mean)
    np.testing.assert_array_equal(fs.state[a:b], fs2.state[a:b])
    assert np.isfinite(fs.state).all() and np.abs(fs.state).max() <= 5.0
    assert fs.split("test").close.shape == (fs.splits["test"][1] - fs.splits["test"][0],)


def test_raw_features_are_causal() -> None:
    df, _ = synthetic_market(400, seed=6)
    full = raw_features(df, 20, 60)
    head = raw_features(df.iloc[:250], 20, 60)
    for f, h in zip(full, head):
        pd.testing.assert_frame_equal(f.iloc[:250], h)


def test_standardiser_rejects_nan_and_wrong_width() -> None:
    with pytest.raises(ValueError, match="NaN"):
        Standardiser.fit(np.array([[1.0], [np.nan]]))
    s = Standardiser.fit(np.random.default_rng(0).normal(size=(50, 3)))
    with pytest.raises(ValueError, match="3 feature columns"):
        s.transform(np.zeros((2, 4)))
    assert Standardiser.from_state_dict(s.state_dict()).transform(np.ones((1, 3))).tolist() == \
        s.transform(np.ones((1, 3))).tolist()


def test_decomposition_labels_and_bins(tmp_path: Path) -> None:
    df, truth = synthetic_market(6000, seed=9, mean_duration=400, drift=2e-3)
    close = df.close.to_numpy()
    starts, labels = chunk_labels(close, 100)
    assert len(starts) == 60 and starts[1] == 100
    thr = RegimeThresholds.fit(labels)
    bins = thr.bins(labels)
    # 5/35/65/95 % quantiles: the middle classes hold ~30 % of the chunks each
    for kind in ("trend", "volatility"):
        counts = np.bincount(bins[kind], minlength=5)
        assert counts[1:4].min() >= 15 and counts[0] <= 4 and counts[4] <= 4
    groups = assign_regimes(starts, labels, thr)
    assert set(groups) == set(REGIMES)
    # the volatility label tracks the generator's volatility regime
    true_vol = truth.volatility.to_numpy()[: 6000].reshape(60, 100).mean(1)
    assert np.corrcoef(true_vol, labels["volatility"])[0, 1] > 0.7
    true_trend = truth.trend.to_numpy().reshape(60, 100).mean(1)
    assert np.corrcoef(true_trend, labels["trend"])[0, 1] > 0.4
    png = plot_regimes(close, starts, 100, bins, tmp_path / "regimes.png")
    assert png.stat().st_size > 10_000
    with pytest.raises(ValueError):
        RegimeThresholds.fit(labels, (0.5, 0.4, 0.6, 0.9))


def test_builtin_dataset_without_its_package_says_how_to_install(monkeypatch) -> None:
    from streammoe_envs.trading import data

    fake = data.BuiltinDataset("no_such_pkg_xyz", "a.csv", "Date", "%Y", "1d", "none")
    monkeypatch.setitem(data.BUILTIN_DATASETS, "fake", fake)
    with pytest.raises(ModuleNotFoundError, match=r"streammoe\[data\]"):
        load_builtin("fake")


# ----- bad user files: each fails at load time, naming the file, the column/row and the fix ------

def _hourly_csv(path: Path, n: int = 200, freq: str = "1h", **edits) -> Path:
    df, _ = synthetic_market(n, seed=3, freq=freq)
    out = pd.DataFrame({"Date": df.index.strftime("%Y-%m-%d %H:%M"), "Open": df.open, "High": df.high,
                        "Low": df.low, "Close": df.close, "Volume": df.volume}).reset_index(drop=True)
    for fn in edits.values():
        out = fn(out)
    out.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.assign(High=d.High.where(d.index != 7, d.Low * 0.9)),
     r"bad.csv: row 8 \(2020-01-01 07:00:00\): high 'High' \(high\) .* is below low 'Low' \(low\).*"
     r"data.columns.high"),
    (lambda d: d.assign(High=d.High.where(d.index != 4, d[["Open", "Close"]].min(axis=1))),
     r"row 5 .*high 'High' \(high\) .* is below the bar's open/close"),
    (lambda d: d.assign(Volume=d.Volume.where(d.index != 2, -5.0)),
     r"bad.csv: column 'Volume' \(volume\) row 3 .* is -5.0: volume must be >= 0"),
    (lambda d: d.assign(Close=d.Close.astype(object).where(d.index != 3, "inf")),
     r"bad.csv: column 'Close' \(close\) row 4 .* is inf: prices and volumes must be finite"),
    (lambda d: d.assign(Open=d.Open.astype(object).where(d.index != 5, "12,5")),
     r"bad.csv: column 'Open' row 6 is '12,5', not a number \(1 such cells\); .*decimal comma"),
    (lambda d: d.assign(Low=d.Low.astype(object).where(d.index != 5, "1.2.3")),
     r"column 'Low' row 6 is '1.2.3', not a number.*fix or drop that row"),
    (lambda d: d.assign(Close=d.Close.where(d.index != 9, 0.0)),
     r"column 'Close' \(close\) row 10 .* is 0.0: prices must be positive"),
    (lambda d: d.assign(Close=d.Close.where(d.index != 7)),
     r"NaN values in 1 rows \(a gap\), first row 8 .* column 'Close' \(close\)"),
    (lambda d: d.assign(Date=d.Date.where(d.index != 3, "yesterday")),
     r"cannot parse column 'Date' .*first bad value 'yesterday' in row 4.*data.date_format"),
])
def test_bad_cells_name_file_column_row_and_fix(tmp_path: Path, edit, match: str) -> None:
    path = _hourly_csv(tmp_path / "bad.csv", edit=edit)
    with pytest.raises(ValueError, match=match):
        load_ohlcv_csv(path, "Date", date_format="%Y-%m-%d %H:%M")


def test_empty_header_only_binary_and_garbled_files(tmp_path: Path) -> None:
    cases = {
        "empty.csv": (b"", "empty.csv: the file is empty"),
        "blank.csv": (b"\n\n  \n", "blank.csv: the file is empty"),
        "header.csv": (b"Date,Open,High,Low,Close,Volume\n", "header.csv: the file has a header but no data rows"),
        "binary.csv": (b"PK\x03\x04\x14\x00\x06\x00" + bytes(range(256)) * 4, "binary.csv: this is a binary file"),
        "latin.csv": ("Date,Open\n2020-01-01,\xe9t\xe9\n".encode("latin-1") + b"x" * 20,
                      r"latin.csv: not UTF-8 text \(byte 0xe9 at offset 21\); save the file as UTF-8"),
        "fake.csv.gz": (b"Date,Open\n", r"fake.csv.gz: cannot read the file"),
        # an unquoted decimal comma adds a field to the row
        "comma.csv": (b"Date,Open,High,Low,Close,Volume\n2020-01-01,1,2,1,1,5\n2020-01-02,1,2,1,12,5,5\n",
                      r"comma.csv: not a readable comma-separated file .*line 3.*decimal comma"),
        "semicolon.csv": (b"Date;Open;High;Low;Close;Volume\n2020-01-01;1;2;1;1;5\n",
                          r"semicolon.csv: missing columns .*not comma-separated"),
    }
    for name, (content, match) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=match):
            load_ohlcv_csv(tmp_path / name)


def test_missing_time_column_says_how_to_do_without(tmp_path: Path) -> None:
    path = _hourly_csv(tmp_path / "t.csv", edit=lambda d: d.drop(columns=["Date"]))
    with pytest.raises(ValueError, match=r"missing columns \['Date'\].*data.time_column=null"):
        load_ohlcv_csv(path)
    with pytest.raises(ValueError, match="data.time_column=null .* needs data.bar_frequency"):
        load_ohlcv_csv(path, None)
    # no time column: rows in file order, bar_frequency apart; nothing to check the spacing against
    df = load_data({"path": str(path), "time_column": None, "columns": {}, "bar_frequency": "1h",
                    "hours_per_day": 24})
    assert len(df) == 200 and (np.diff(df.index.asi8) == np.diff(df.index.asi8)[0]).all()
    assert df.index[1] - df.index[0] == pd.Timedelta("1h")
    with pytest.raises(ValueError, match="only volume may be absent"):
        load_ohlcv_csv(path, None, {"close": None}, bar_frequency="1h")


def test_short_file_says_how_many_bars_the_windows_and_splits_need(tmp_path: Path) -> None:
    path = _hourly_csv(tmp_path / "short.csv", n=5)
    df = load_data({"path": str(path), "time_column": "Date", "columns": {}, "bar_frequency": "1h"})
    with pytest.raises(ValueError, match=r"short.csv: 5 bars, but the configured windows and splits need at "
                                         r"least 72: 60 warm-up bars .*market_window=60.* \+ 12 bars for "
                                         r"splits train=0.7 / val=0.15"):
        build_features(df, 0.7, 0.15, context_window=20, market_window=60)
    assert required_bars(0.7, 0.15, 20, 60) == (60, 72)
    warm, need = required_bars(0.7, 0.15, 20, 60, min_train_bars=24)
    assert need > 72
    ok = synthetic_market(need, seed=0)[0]
    build_features(ok, 0.7, 0.15, 20, 60, min_train_bars=24)  # exactly enough is enough
    with pytest.raises(ValueError, match=f"synthetic: {need - 1} bars.*need at least {need}.*train >= 24"):
        build_features(ok.iloc[:-1], 0.7, 0.15, 20, 60, min_train_bars=24)
    one = tmp_path / "one.csv"
    one.write_text("Date,Open,High,Low,Close,Volume\n2020-01-01,1,2,1,1,5\n")
    with pytest.raises(ValueError, match="one.csv: need at least 2 bars, got 1"):
        load_ohlcv_csv(one)


def test_bar_spacing_is_inferred_and_checked_against_bar_frequency(tmp_path: Path) -> None:
    hourly = _hourly_csv(tmp_path / "hourly.csv", n=300)
    cfg = {"path": str(hourly), "time_column": "Date", "columns": {}, "date_format": None,
           "bar_frequency": "1d", "bars_per_year": None, "trading_days": 252, "hours_per_day": 24}
    with pytest.raises(ValueError, match=r"hourly.csv: the bars are 1h apart .* but data.bar_frequency=1d; "
                                         r"set data.bar_frequency=1h .*6048 instead of 252 bars per year"):
        load_data(cfg)
    assert len(load_data({**cfg, "bar_frequency": "1h"})) == 300
    assert len(load_data({**cfg, "bars_per_year": 6048})) == 300  # an explicit factor wins, unchecked
    # a daily file with weekends and holidays is daily (median gap), and not hourly
    days = pd.bdate_range("2020-01-01", periods=120).delete([10, 11, 40])
    assert bar_spacing(days) == pd.Timedelta("1D")
    daily = _write_csv(tmp_path / "daily.csv", n=60)
    assert len(load_data({**cfg, "path": str(daily)})) == 60
    with pytest.raises(ValueError, match=r"daily.csv: the bars are 1d apart .*set data.bar_frequency=1d"):
        load_data({**cfg, "path": str(daily), "bar_frequency": "1h"})
    # hourly stock bars (7 per trading day) annualised with 24-hour days
    stock = pd.DatetimeIndex([d + pd.Timedelta(hours=h) for d in pd.bdate_range("2021-01-04", periods=40)
                              for h in range(10, 17)])
    df = synthetic_market(len(stock), seed=0)[0].set_axis(stock)
    with pytest.raises(ValueError, match=r"7 bars per trading day .* data.hours_per_day=24 means 24; "
                                         r"set data.hours_per_day=7"):
        check_bar_frequency(df, "1h", 24, "stock.csv")
    check_bar_frequency(df, "1h", 7)
    check_bar_frequency(df, "1h", 6.5)


def test_builtin_data_agree_with_their_configs() -> None:
    pytest.importorskip("gym_anytrading")
    for name, ds in BUILTIN_DATASETS.items():
        if importlib.util.find_spec(ds.package) is not None:
            check_bar_frequency(load_builtin(name), ds.bar_frequency, 24, name)
