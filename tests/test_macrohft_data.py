"""MacroHFT data: CSV loader errors, synthetic market, splits, features, market decomposition."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streammoe_envs.trading.data import (
    BUILTIN_DATASETS,
    bars_per_year,
    chronological_splits,
    load_builtin,
    load_data,
    load_ohlcv_csv,
    synthetic_market,
)
from streammoe_envs.trading.features import Standardiser, build_features, raw_features

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
