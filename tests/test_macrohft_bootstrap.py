"""Paired circular block bootstrap of the mean per-bar return difference."""

from __future__ import annotations

import numpy as np
import pytest

from streammoe.control.macrohft.metrics import paired_block_bootstrap


def test_constant_positive_difference_excludes_zero() -> None:
    rng = np.random.default_rng(0)
    b = rng.normal(0, 0.01, 300)
    r = paired_block_bootstrap(b + 1e-3, b)
    assert r["mean_diff"] == pytest.approx(1e-3)
    assert r["low"] == pytest.approx(1e-3) and r["high"] == pytest.approx(1e-3)
    assert r["excludes_zero"] and r["n"] == 300 and r["block"] == 20


def test_same_distribution_noise_mostly_contains_zero() -> None:
    contains = 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        a, b = rng.normal(0, 0.01, (2, 400))
        r = paired_block_bootstrap(a, b, n_boot=500, seed=seed)
        assert r["low"] <= r["mean_diff"] <= r["high"]
        contains += not r["excludes_zero"]
    assert contains >= 16


def test_coverage_of_iid_mean() -> None:
    covered = 0
    for seed in range(100):
        d = np.random.default_rng(10_000 + seed).normal(0.1, 1.0, 500)
        r = paired_block_bootstrap(d, np.zeros_like(d), block=20, n_boot=500, seed=seed)
        covered += r["low"] <= 0.1 <= r["high"]
    assert covered >= 85


def test_matches_explicit_block_resampling() -> None:
    """The prefix-sum replicates equal blocks drawn and joined one by one."""
    d = np.random.default_rng(1).normal(size=53)
    r = paired_block_bootstrap(d, np.zeros(53), block=7, n_boot=5, seed=3, level=0.5)
    starts = np.random.default_rng(3).integers(0, 53, size=(5, 8))
    means = [np.concatenate([d[(s + np.arange(7)) % 53] for s in row])[:53].mean() for row in starts]
    assert [r["low"], r["high"]] == pytest.approx(np.quantile(means, [0.25, 0.75]))


def test_bad_inputs_raise() -> None:
    x = np.zeros(50)
    with pytest.raises(ValueError, match="same length"):
        paired_block_bootstrap(x, np.zeros(49))
    with pytest.raises(ValueError, match="1-D"):
        paired_block_bootstrap(np.zeros((5, 10)), np.zeros((5, 10)))
    with pytest.raises(ValueError, match="finite"):
        paired_block_bootstrap(np.r_[x[:-1], np.nan], x)
    with pytest.raises(ValueError, match="finite"):
        paired_block_bootstrap(x, np.r_[x[:-1], np.inf])
    with pytest.raises(ValueError, match="block"):
        paired_block_bootstrap(x, x, block=51)
    with pytest.raises(ValueError, match="at least 2"):
        paired_block_bootstrap([0.1], [0.0], block=1)


def test_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0, 0.01, (2, 250))
    assert paired_block_bootstrap(a, b, seed=4) == paired_block_bootstrap(a, b, seed=4)
    assert paired_block_bootstrap(a, b, seed=4) != paired_block_bootstrap(a, b, seed=5)
