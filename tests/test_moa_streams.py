"""MOA's generators as a stream source (``streammoe.stream.moa_streams``), next to River's.

Skipped where CapyMOA or Java is missing (``pip install 'streammoe[moa]'``), except the test of
the error message, which needs neither.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import numpy as np
import pytest

from streammoe.stream import moa_streams
from streammoe.stream.moa_streams import MOA_STREAMS, MOADriftStream, make_moa_stream
from streammoe.stream.streams import STREAMS, DriftStream, make_stream

HAVE_MOA = importlib.util.find_spec("capymoa") is not None and (
    shutil.which("java") is not None or "JAVA_HOME" in os.environ)
needs_moa = pytest.mark.skipif(not HAVE_MOA, reason="capymoa or Java missing "
                               "(pip install 'streammoe[moa]' and a Java runtime)")

SCALE = 0.005  # 5,000 instances, drifts at 1,250 / 2,500 / 3,750 (a), 1,125 / 2,375 / 3,625 (g)
LED_SEGMENTS = np.array([  # MOA's / River's 7-segment codes of the digits 0..9
    [1, 1, 1, 0, 1, 1, 1], [0, 0, 1, 0, 0, 1, 0], [1, 0, 1, 1, 1, 0, 1], [1, 0, 1, 1, 0, 1, 1],
    [0, 1, 1, 1, 0, 1, 0], [1, 1, 0, 1, 0, 1, 1], [1, 1, 0, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1, 0],
    [1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 1, 1]])


@needs_moa
@pytest.mark.parametrize("name", MOA_STREAMS)
def test_shape_drifts_and_types_match_river_stream(name):
    moa = make_moa_stream(name, scale=SCALE, seed=3)
    river = make_stream(name, scale=SCALE, seed=3)
    assert isinstance(moa, DriftStream) and isinstance(moa, MOADriftStream)
    assert (moa.name, moa.n_instances, moa.drifts, moa.drift_width, moa.seed) == (
        river.name, river.n_instances, river.drifts, river.drift_width, river.seed)
    rows = list(moa)
    assert len(rows) == moa.n_instances == 5000
    n_features = {"led": 24, "sea": 3, "rbf": 10}[STREAMS[name].family]
    x, y = rows[0]
    assert list(x) == list(range(n_features))  # River's keys
    assert all(type(v) is float for x, _ in rows[:50] for v in x.values())
    assert all(type(y) is int for _, y in rows)
    labels = {y for _, y in rows}
    assert labels == (set(range(10)) if name.startswith("LED") else {0, 1})
    X, Y = moa.arrays()
    assert X.shape == (5000, n_features) and Y.dtype == np.int64
    assert np.array_equal(X[:100], [[r[0][k] for k in range(n_features)] for r in rows[:100]])


@needs_moa
def test_n_instances_overrides_length_and_keeps_drifts():
    s = make_moa_stream("SEAg", scale=0.1, n_instances=300)
    assert s.n_instances == 300 and s.drifts == [22500, 47500, 72500] and s.drift_width == 5000
    assert sum(1 for _ in s) == 300
    assert "-p 22500 -w 5000" in s.cli


@needs_moa
def test_seeded_reproducibility():
    a = list(make_moa_stream("RBFf", scale=0.001, seed=1))
    b = list(make_moa_stream("RBFf", scale=0.001, seed=1))
    c = list(make_moa_stream("RBFf", scale=0.001, seed=2))
    assert a == b
    assert a[0] != c[0]
    s = make_moa_stream("SEAa", scale=0.001, seed=5)
    assert list(s)[:20] == list(s)[:20]  # each iteration restarts the MOA stream


def _led_agreement(X, y, attribute, segment):
    """How often ``X[:, attribute]`` shows ``segment`` of the label's digit."""
    return float(np.mean(X[:, attribute] == LED_SEGMENTS[y, segment]))


@needs_moa
def test_led_concepts_move_segments_to_irrelevant_attributes():
    """MOA's LEDGeneratorDrift with d drifting attributes shows segment i at attribute 7 + i
    for i < d: 1 -> 3 -> 5 -> 7 moves segments 1, 2 (then 3, 4, then 5, 6) at each drift."""
    s = make_moa_stream("LEDa", scale=0.01, seed=1)  # drifts at 2500 / 5000 / 7500, width 50
    X, y = s.arrays()
    before, after, last = slice(200, 2400), slice(2600, 4900), slice(7600, 10000)
    assert _led_agreement(X[before], y[before], 7, 0) > 0.85  # segment 0 drifted from the start
    assert _led_agreement(X[before], y[before], 1, 1) > 0.85  # segment 1 in place
    assert abs(_led_agreement(X[before], y[before], 8, 1) - 0.5) < 0.1  # attribute 8 irrelevant
    assert _led_agreement(X[after], y[after], 8, 1) > 0.85  # after the first drift it carries 1
    assert abs(_led_agreement(X[after], y[after], 1, 1) - 0.5) < 0.1
    for seg in range(7):  # 7 drifting attributes: every segment at 7 + i
        assert _led_agreement(X[last], y[last], 7 + seg, seg) > 0.85
    # 10 % noise per segment (MOA's 1 + nextInt(100) <= 10)
    assert 0.87 < _led_agreement(X[before], y[before], 7, 0) < 0.93


@needs_moa
def test_sea_functions_follow_moa_numbering():
    """River variants 0 -> 1 -> 3 -> 0 (thresholds 8, 9, 9.5, 8) are MOA's functions 1, 2, 4, 1:
    inside each concept the noisy label agrees with its threshold 90 % of the time."""
    X, y = make_moa_stream("SEAa", scale=0.02, seed=1).arrays()  # drifts at 5000/10000/15000
    s = X[:, 0] + X[:, 1]
    for window, threshold in ((slice(0, 4900), 8), (slice(5100, 9900), 9),
                              (slice(10100, 14900), 9.5), (slice(15100, 20000), 8)):
        agree = np.mean((s[window] > threshold).astype(int) == y[window])
        assert 0.87 < agree < 0.93, (window, threshold, agree)
    band = (s > 9) & (s <= 9.5)  # class 1 under function 2 (9), class 0 under function 4 (9.5)
    assert y[5100:9900][band[5100:9900]].mean() > 0.8
    assert y[10100:14900][band[10100:14900]].mean() < 0.2


@needs_moa
def test_rbf_is_one_continuously_drifting_generator():
    m, f = make_moa_stream("RBFm", scale=SCALE), make_moa_stream("RBFf", scale=SCALE)
    assert m.drifts == [] and "ConceptDriftStream" not in m.cli
    assert "-s 0.0001 " in m.cli and "-s 0.001 " in f.cli and "-k 50 " in m.cli


def test_missing_capymoa_raises_import_error_with_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "capymoa", None)  # `import capymoa` now fails
    with pytest.raises(ImportError, match=r"pip install 'streammoe\[moa\]'.*Java"):
        make_moa_stream("SEAa", scale=0.001)
    with pytest.raises(ValueError, match="unknown stream"):  # names checked first, as River's
        moa_streams.make_moa_stream("nope")


def test_streams_without_moa_version_are_refused():
    assert set(MOA_STREAMS) <= set(STREAMS)
    for name in sorted(set(STREAMS) - set(MOA_STREAMS)):  # River-only streams, if any
        with pytest.raises(ValueError, match="no MOA version"):
            make_moa_stream(name, scale=0.001)


@needs_moa
def test_moa_classifier_learns_moa_instances_like_rivers_tree():
    """``moa_classifier`` builds MOA's Hoeffding tree (the reference code's expert) over a MOA
    stream's own instances; prequentially it scores like River's tree with the same settings
    (``scripts/compare_moa_trees.py`` at 1M rows)."""
    from streammoe.stream.learners import make_learner

    s = make_moa_stream("SEAa", scale=0.002, seed=1)  # 2,000 rows
    stream = s.moa_stream()
    tree = moa_streams.moa_classifier("trees.HoeffdingTree -g 50 -c 1e-7", stream.getHeader())
    river_tree = make_learner("ht")
    right = {"moa": 0, "river": 0}
    for (x, y), _ in zip(s, range(s.n_instances)):
        inst = stream.nextInstance().getData()
        assert int(inst.classValue()) == y  # the same rows
        votes = list(tree.getVotesForInstance(inst))
        right["moa"] += bool(votes) and sum(votes) > 0 and int(np.argmax(votes)) == y
        right["river"] += river_tree.predict_one(x) == y
        tree.trainOnInstance(inst)
        river_tree.learn_one(x, y)
    majority = max(np.bincount([y for _, y in s])) / s.n_instances
    assert right["moa"] / s.n_instances > majority + 0.1
    assert abs(right["moa"] - right["river"]) / s.n_instances < 0.03


@needs_moa
def test_faithful_driftmoe_runs_with_moa_trees_as_experts():
    """``scripts/driftmoe_moa_experts.py``: faithful MoE-Data whose ``_new_tree`` hook returns MOA's
    tree behind River's API; it learns a MOA stream and its experts are MOA's trees."""
    import runpy
    from pathlib import Path

    from streammoe.stream.evaluation import prequential

    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" /
                                "driftmoe_moa_experts.py"), run_name="moa_experts")
    s = make_moa_stream("SEAa", scale=0.002, seed=1)  # 2,000 rows
    models = script["make_models"](s.moa_stream().getHeader(), seed=1)
    res = prequential(models, s, window=500, memory_checkpoints=1)
    experts = models["moa_trees"]._experts
    assert len(experts) == 12 and all(isinstance(e, script["MOATree"]) for e in experts)
    assert res["moa_trees"].accuracy > 0.75 and res["river_trees"].accuracy > 0.75
    proba = experts[0].predict_proba_one({0: 5.0, 1: 5.0, 2: 5.0})
    assert not proba or abs(sum(proba.values()) - 1) < 1e-9
