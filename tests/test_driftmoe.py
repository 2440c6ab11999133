"""DriftMoE (DriftMoEData, DriftMoETask, the DriftMoEClassifier entry): River's conformance suite,
River ecosystem, the input policy, the algorithm."""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest
from river import checks, compose, datasets, drift, evaluate, metrics, preprocessing

from streammoe.stream import DriftMoEClassifier, DriftMoEData, DriftMoETask
from streammoe.stream.streams import make_stream

SMALL = {"n_experts": 4, "top_k": 2, "hidden_sizes": (16,), "batch_size": 16, "grace_period": 20}
SMALL_TASK = {"hidden_sizes": (16,), "batch_size": 16, "grace_period": 20}


def small(mode: str = "data", **kw):
    """A small model of either mode."""
    return DriftMoEClassifier(mode, **(SMALL if mode == "data" else SMALL_TASK), **kw)


def phishing(n: int = 300) -> list[tuple[dict, bool]]:
    return list(datasets.Phishing().take(n))


CHECK_SETS = [(cls, p) for cls in (DriftMoEData, DriftMoETask) for p in cls._unit_test_params()]


@pytest.mark.parametrize("cls, params", CHECK_SETS, ids=lambda p: p.__name__ if isinstance(p, type) else
                         "-".join(f"{k}={v}" for k, v in p.items() if k not in SMALL) or "small")
def test_river_check_estimator(cls: type, params: dict) -> None:
    # The whole suite, nothing skipped (DriftMoE declares no _unit_test_skips).
    model = cls(**params)
    assert model._unit_test_skips() == set()
    checks.check_estimator(model)


def test_river_check_estimator_on_the_defaults() -> None:
    checks.check_estimator(DriftMoEClassifier())


def test_progressive_val_score_in_a_pipeline_with_a_scaler() -> None:
    model = preprocessing.StandardScaler() | small(seed=1)
    metric = evaluate.progressive_val_score(phishing(), model, metrics.Accuracy())
    assert isinstance(model, compose.Pipeline)
    assert metric.get() > 0.75  # majority class is ~55%


def test_predict_before_learning_and_single_class() -> None:
    model = small(seed=0)
    assert model.predict_proba_one({"a": 1.0}) == {}
    assert model.predict_one({"a": 1.0}) is None
    model.learn_one({"a": 1.0}, "yes")
    assert model.predict_proba_one({"a": 2.0}) == {"yes": 1.0}


@pytest.mark.parametrize("mode", ["data", "task"])
@pytest.mark.parametrize("faithful", [False, True])
def test_pickle_roundtrip_resumes_identically(mode: str, faithful: bool) -> None:
    data = phishing(400)
    model = small(mode, faithful=faithful, seed=3)
    for x, y in data[:250]:
        model.predict_one(x)
        model.learn_one(x, y)
    restored = pickle.loads(pickle.dumps(model))
    for x, y in data[250:]:
        assert model.predict_proba_one(x) == restored.predict_proba_one(x)
        model.learn_one(x, y)
        restored.learn_one(x, y)
    assert model.n_router_updates == restored.n_router_updates > 0


def test_clone_is_fresh_and_deepcopy_is_equal() -> None:
    model = DriftMoEData(**SMALL, seed=5)
    for x, y in phishing(100):
        model.learn_one(x, y)
    twin = copy.deepcopy(model)
    x = phishing(101)[-1][0]
    assert twin.predict_proba_one(x) == model.predict_proba_one(x)
    assert model.clone().predict_proba_one(x) == {}


def test_seed_makes_runs_identical_and_seeds_differ() -> None:
    data = phishing(200)

    def probas(seed: int) -> list[dict]:
        m = DriftMoEData(**SMALL, seed=seed)
        out = []
        for x, y in data:
            out.append(m.predict_proba_one(x))
            m.learn_one(x, y)
        return out

    assert probas(7) == probas(7)
    assert probas(7) != probas(8)


def test_predicting_first_does_not_change_learning() -> None:
    # The test-then-train cache must be invisible: predict+learn == learn alone.
    data = phishing(200)
    a, b = DriftMoEData(**SMALL, seed=2), DriftMoEData(**SMALL, seed=2)
    for x, y in data:
        a.predict_proba_one(x)
        a.learn_one(x, y)
        b.learn_one(x, y)
    probe = [x for x, _ in phishing(260)[200:]]
    assert [a.predict_proba_one(x) for x in probe] == [b.predict_proba_one(x) for x in probe]


@pytest.mark.parametrize("bad, match", [(float("nan"), "is nan"), (float("inf"), "is inf"),
                                        ("red", "non-numeric"), ([1.0], "non-numeric")])
def test_rejects_bad_values_with_a_clear_error(bad: object, match: str) -> None:
    model = DriftMoEData(**SMALL, seed=0)
    model.learn_one({"a": 1.0, "b": 2.0}, 0)
    model.learn_one({"a": 2.0, "b": 1.0}, 1)
    with pytest.raises(ValueError, match=match):
        model.learn_one({"a": 1.0, "colour": bad}, 0)
    with pytest.raises(ValueError, match="'colour'"):
        model.predict_one({"a": 1.0, "colour": bad})


def test_none_counts_as_missing() -> None:
    model = DriftMoEData(**SMALL, seed=0)
    model.learn_one({"a": 1.0, "b": None}, 0)
    model.learn_one({"a": 2.0, "b": 3.0}, 1)
    assert set(model.predict_proba_one({"a": 1.5, "b": None})) == {0, 1}


def test_invalid_parameters_are_rejected() -> None:
    with pytest.raises(ValueError, match="mode"):
        DriftMoEClassifier(mode="expert")
    with pytest.raises(ValueError, match="top_k"):
        DriftMoEData(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="max_features"):
        DriftMoETask(max_features="all")
    with pytest.raises(ValueError, match="faithful"):
        DriftMoEData(faithful=True, max_features="sqrt")
    with pytest.raises(ValueError, match="drift_detector"):
        DriftMoETask(drift_detector="adwn")
    with pytest.raises(ValueError, match="dropout"):
        DriftMoEClassifier(dropout=1.0)
    with pytest.raises(ValueError, match="delta"):
        DriftMoEClassifier(delta=0.0)
    with pytest.raises(ValueError, match="memory_budget_mb"):
        DriftMoEClassifier(memory_budget_mb=-1.0)
    with pytest.raises(ValueError, match="memory_estimate_period"):
        DriftMoEClassifier(memory_estimate_period=0)
    for bad in (-1.0, 1e9, True, "6"):
        with pytest.raises(ValueError, match="poisson_lambda"):
            DriftMoEData(poisson_lambda=bad)
    with pytest.raises(ValueError, match="poisson_lambda"):
        DriftMoEData(faithful=True, poisson_lambda=6.0)


def test_tree_settings_follow_faithful_unless_given() -> None:
    paper = DriftMoEData(n_experts=4, top_k=2, faithful=True).experts[0]
    improved = DriftMoEData(n_experts=4, top_k=2).experts[0]
    assert (paper.delta, paper.max_size, paper.memory_estimate_period) == (1e-7, 100.0, 1_000_000)
    assert (improved.delta, improved.max_size, improved.memory_estimate_period) == (0.01, 4.0, 10_000)
    given = DriftMoEData(n_experts=4, top_k=2, faithful=True, delta=0.001,
                               memory_budget_mb=8.0, memory_estimate_period=500).experts[0]
    assert (given.delta, given.max_size, given.memory_estimate_period) == (0.001, 2.0, 500)


def test_task_mode_shares_the_memory_budget_as_classes_appear() -> None:
    model = DriftMoETask(hidden_sizes=(8,), memory_budget_mb=6.0, seed=0)
    for y in ("a", "b", "c"):
        model.learn_one({"x": 1.0}, y)
        assert [e.max_size for e in model.experts] == [6.0 / len(model.classes)] * len(model.classes)


def test_memory_budget_stops_the_trees_growing() -> None:
    # A small budget checked often: the trees grow, then deactivate leaves and the model's size
    # levels off, while the same model without a budget keeps splitting and growing.
    stream = list(make_stream("RBFm", scale=0.006, seed=1))  # 6000 rows
    kw = dict(n_experts=2, top_k=2, hidden_sizes=(8,), batch_size=64, memory_estimate_period=200,
              seed=0)
    capped = DriftMoEData(**kw, memory_budget_mb=0.2)
    free = DriftMoEData(**kw, memory_budget_mb=1000.0)
    capped_sizes, free_sizes = [], []
    for i, (x, y) in enumerate(stream, start=1):
        capped.learn_one(x, y)
        free.learn_one(x, y)
        if i % 2000 == 0:
            capped_sizes.append(capped._raw_memory_usage)
            free_sizes.append(free._raw_memory_usage)
    assert all(e.n_nodes > 1 for e in capped.experts)  # it did learn splits
    assert sum(e._n_inactive_leaves for e in capped.experts) > 0
    assert sum(e._n_inactive_leaves for e in free.experts) == 0
    assert capped_sizes[-1] < 1.1 * capped_sizes[0]  # flat after the first 2000 rows
    assert free_sizes[-1] > 1.5 * free_sizes[0]  # the uncapped model kept growing


@pytest.mark.parametrize("mode", ["data", "task"])
def test_new_classes_appear_in_probabilities(mode: str) -> None:
    model = small(mode, seed=0)
    rng = np.random.default_rng(0)
    for t in range(120):
        y = "a" if t < 40 else ("b" if t < 80 else "c")
        model.learn_one({"f": rng.normal() + ord(y), "g": rng.normal()}, y)
    proba = model.predict_proba_one({"f": float(ord("c")), "g": 0.0})
    assert set(proba) == {"a", "b", "c"}
    assert sum(proba.values()) == pytest.approx(1.0)
    if mode == "task":
        assert len(model.experts) == 3


def test_new_feature_widens_router_without_changing_its_scores() -> None:
    model = DriftMoEData(**SMALL, faithful=True, seed=0)
    data = phishing(100)
    for x, y in data:
        model.learn_one(x, y)
    x = data[0][0]
    before = model.router.scores(model._vector(x)).copy()
    adam_before = model.router.optimizer_state()["state"][0]["exp_avg"].shape
    model.learn_one({**x, "brand_new": 5.0}, True)  # 1 row: no router step yet
    assert model.router.in_dim == len(x) + 1
    assert model.router.optimizer_state()["state"][0]["exp_avg"].shape[1] == adam_before[1] + 1
    np.testing.assert_allclose(model.router.scores(model._vector(x)), before)


def test_faithful_data_mode_answers_with_the_top_expert_alone() -> None:
    model = DriftMoEData(**SMALL, faithful=True, seed=4)
    data = phishing(300)
    for x, y in data[:250]:
        model.learn_one(x, y)
    for x, _ in data[250:]:
        proba = model.predict_proba_one(x)
        expert = model.experts[model.last_expert].predict_proba_one(x)
        total = sum(expert.values())
        expected = {c: expert.get(c, 0.0) / total for c in model.classes} if total else \
            {c: 1 / len(model.classes) for c in model.classes}
        assert proba == pytest.approx(expected)


def test_faithful_task_mode_prediction_is_the_router_argmax() -> None:
    model = DriftMoETask(hidden_sizes=(16,), grace_period=20, faithful=True, seed=4)
    data = list(datasets.ImageSegments().take(150))
    for x, y in data[:120]:
        model.learn_one(x, y)
    assert model.n_router_updates == 120  # the paper's task mode: one Adam step per row
    for x, _ in data[120:]:
        y_pred = model.predict_one(x)
        assert y_pred == model.classes[model.last_expert]


def test_router_steps_every_batch_and_buffers_stay_bounded() -> None:
    model = DriftMoEData(**SMALL, seed=0)
    data = phishing(16 * 6)
    for i, (x, y) in enumerate(data, start=1):
        model.learn_one(x, y)
        assert model.n_router_updates == i // 16
        assert model.router is None or model.router.buffered == i % 16


def test_only_top_k_experts_learn_each_instance() -> None:
    model = DriftMoEData(n_experts=6, top_k=2, hidden_sizes=(16,), batch_size=16, faithful=True,
                         seed=0)  # faithful: no expert resets
    seen_before = [0.0] * 6
    for x, y in phishing(60):
        model.learn_one(x, y)
        seen = [e._train_weight_seen_by_model for e in model.experts]
        grew = [s - b for s, b in zip(seen, seen_before)]
        assert sorted(grew) == [0, 0, 0, 0, 1, 1]
        seen_before = seen


def test_poisson_lambda_weights_what_the_top_k_experts_learn() -> None:
    """With ``poisson_lambda`` the top-k still are the only learners, each with a Poisson weight
    (0 skips the row): the weight the experts saw is about lambda x top_k per row."""
    model = DriftMoEData(n_experts=6, top_k=2, hidden_sizes=(16,), batch_size=16, poisson_lambda=6.0,
                         drift_detector="none", seed=0)
    n_rows = 200
    for x, y in phishing(n_rows):
        seen_before = [e._train_weight_seen_by_model for e in model.experts]
        model.learn_one(x, y)
        grew = [e._train_weight_seen_by_model - b for e, b in zip(model.experts, seen_before)]
        assert sum(g > 0 for g in grew) <= 2 and all(g == int(g) for g in grew)
    total = sum(e._train_weight_seen_by_model for e in model.experts)
    assert 6.0 * 2 * n_rows * 0.9 < total < 6.0 * 2 * n_rows * 1.1
    # the improved default resamples with lambda 3; faithful and poisson_lambda=0 learn each row once
    for params, rows_weight in (({}, None), ({"faithful": True}, 2.0), ({"poisson_lambda": 0.0}, 2.0)):
        model = DriftMoEData(n_experts=6, top_k=2, hidden_sizes=(16,), batch_size=16, seed=0, **params)
        for x, y in phishing(50):
            model.learn_one(x, y)
        total = sum(e._train_weight_seen_by_model for e in model.experts)
        if rows_weight is None:
            assert 2.0 * 2 * 50 < total < 4.0 * 2 * 50
        else:
            assert total <= rows_weight * 50 and (params.get("faithful") or total == rows_weight * 50)


def test_learns_a_drifting_stream_better_than_chance() -> None:
    stream = make_stream("SEAa", scale=0.003, seed=1)  # 3000 rows, drifts at 750/1500/2250
    model = DriftMoEData(n_experts=6, top_k=2, hidden_sizes=(32,), batch_size=64, seed=0)
    metric = metrics.Accuracy()
    for x, y in stream:
        metric.update(y, model.predict_one(x))
        model.learn_one(x, y)
    assert metric.get() > 0.80  # SEA with 10% label noise: the majority class is ~60%
    assert model.n_router_updates == 3000 // 64


def test_drift_detector_resets_experts_on_abrupt_change() -> None:
    model = DriftMoEData(**SMALL, seed=0)
    rng = np.random.default_rng(0)
    for t in range(3000):
        a, b = rng.uniform(-1, 1, 2)
        y = (a > 0) if t < 1500 else (a <= 0)  # the concept flips at 1500
        model.learn_one({"a": a, "b": b}, bool(y))
    assert model.n_resets >= 1
    faithful = DriftMoEData(**SMALL, faithful=True, seed=0)
    for x, y in itertools.islice(phishing(), 50):
        faithful.learn_one(x, y)
    assert faithful.n_resets == 0


def test_drift_detector_ignores_a_fall_in_error() -> None:
    # Noisy labels, then a clean concept: the error drops (ADWIN flags it) but no expert went
    # stale, so nothing is reset.
    model = DriftMoEData(**SMALL, seed=0)
    rng = np.random.default_rng(0)
    for t in range(3000):
        a, b = rng.uniform(-1, 1, 2)
        y = bool(rng.random() < 0.5) if t < 1500 else bool(a > 0)
        model.learn_one({"a": a, "b": b}, y)
    assert model.n_drifts >= 1
    assert model.n_resets == 0


def test_task_mode_drift_reset_restarts_every_tree_on_a_rise_in_error() -> None:
    def run(drift_reset: bool) -> DriftMoETask:
        model = DriftMoETask(hidden_sizes=(16,), batch_size=4, grace_period=20, seed=0,
                             drift_detector=None if drift_reset else drift.NoDrift())
        rng = np.random.default_rng(0)
        for t in range(3000):
            a, b = rng.uniform(-1, 1, 2)
            y = (a > 0) if t < 1500 else (a <= 0)  # the concept flips at 1500
            x = {"a": a, "b": b}
            model.predict_proba_one(x)
            model.learn_one(x, bool(y))
        return model

    reset, kept = run(True), run(False)
    assert reset.n_resets >= 1 and kept.n_resets == 0
    # The restarted trees learned only after the flip; the kept ones saw (nearly) every row.
    assert all(e._train_weight_seen_by_model < 1500 for e in reset.experts)
    assert all(e._train_weight_seen_by_model > 2900 for e in kept.experts)  # from its class's 1st row


# ----------------------------------------------------------------- input policy (issue 18.7)
def _trained(mode: str, faithful: bool = False):
    model = small(mode, faithful=faithful, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(80):
        a, b = rng.normal(size=2)
        model.learn_one({"a": a, "b": b}, int(a > 0))
    return model


@pytest.mark.parametrize("mode", ["data", "task"])
@pytest.mark.parametrize("x, y, match", [
    ({"a": 1e300, "b": 0.0}, 1, "out of DriftMoE's range"),
    ({"a": 3.5e38, "b": 0.0}, 1, "out of DriftMoE's range"),
    ({"a": -10**20, "b": 0.0}, 1, "out of DriftMoE's range"),
    ({"a": 1.0, "new": float("nan")}, 1, "is nan"),
    ({"a": 1.0, "new": "red"}, 1, "non-numeric"),
    ({"a": 1.0, "b": 0.0}, "x", "is a str"),
    ({"a": 1.0, "b": 0.0}, float("nan"), "NaN labels"),
    ({"a": 1.0, "b": 0.0}, None, "is None"),
    ({"a": 1.0, "b": 0.0}, [1], "not hashable"),
    ([1.0, 0.0], 1, "must be a dict"),
])
def test_a_rejected_row_or_label_changes_nothing(mode: str, x, y, match: str) -> None:
    model = _trained(mode)
    before = pickle.dumps(model)
    with pytest.raises((ValueError, TypeError), match=match):
        model.learn_one(x, y)
    assert pickle.dumps(model) == before  # nothing learned, nothing cached, no class added


def test_values_up_to_the_bound_keep_the_faithful_router_finite() -> None:
    # The faithful router sees raw values in float32: at the documented bound it must stay finite.
    model = _trained("data", faithful=True)
    for t in range(64):
        model.learn_one({"a": 1e15 * (-1) ** t, "b": 0.0}, t % 2)
    assert model.n_router_updates >= 1 and model.router.weights_finite()
    assert len(set(model.predict_proba_one({"a": 1.0, "b": 0.0}).values())) >= 1


def test_labels_of_one_kind_are_accepted_numbers_mix() -> None:
    model = small("data", seed=0)
    model.learn_one({"a": 1.0}, 1)
    model.learn_one({"a": 2.0}, 2.5)  # numbers are one kind
    model.learn_one({"a": 3.0}, np.int64(3))
    assert model.classes == [1, 2.5, 3]
    with pytest.raises(ValueError, match="is a bool"):
        model.learn_one({"a": 1.0}, True)


try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    given = None

if given is not None:
    _bad_value = st.one_of(st.just(float("nan")), st.just(float("inf")), st.just(-float("inf")),
                           st.floats(min_value=1.01e15, max_value=1e308),
                           st.floats(min_value=-1e308, max_value=-1.01e15),
                           st.text(max_size=3), st.just([1.0]))
    _good_value = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
    _bad_label = st.one_of(st.just(float("nan")), st.just(None), st.text(min_size=1, max_size=3),
                           st.just(True))

    @settings(max_examples=40, deadline=None)
    @given(mode=st.sampled_from(["data", "task"]), faithful=st.booleans(),
           good=st.dictionaries(st.sampled_from(["a", "b", "c"]), _good_value, max_size=3),
           bad_key=st.sampled_from(["a", "b", "z"]), bad=_bad_value, label=_bad_label,
           which=st.sampled_from(["row", "label", "both"]), predict_first=st.booleans())
    def test_after_any_rejected_input_predictions_are_unchanged(
            mode, faithful, good, bad_key, bad, label, which, predict_first) -> None:
        model = _MODELS[(mode, faithful)]
        probes = [{"a": 0.5, "b": -0.5}, {"a": -1.0, "c": 2.0}, {}]
        expected = [model.predict_proba_one(p) for p in probes]
        x = {**good, bad_key: bad} if which != "label" else good
        y = label if which != "row" else 1
        if predict_first:
            try:
                model.predict_proba_one(x)
            except ValueError:
                pass
        with pytest.raises((ValueError, TypeError)):
            model.learn_one(x, y)
        assert [model.predict_proba_one(p) for p in probes] == expected

    _MODELS = {(m, f): _trained(m, faithful=f) for m in ("data", "task") for f in (False, True)}


# ----------------------------------------------------------------- the entry and the presets
def test_the_entry_builds_each_mode_and_the_default_is_the_documented_one() -> None:
    from streammoe.stream.driftmoe import DEFAULT_MODE
    from streammoe.stream.learners import driftmoe_preset, make_learner

    assert isinstance(DriftMoEClassifier(), {"data": DriftMoEData, "task": DriftMoETask}[DEFAULT_MODE])
    # The benchmark's improved preset of the default mode is the no-argument estimator.
    kind = "driftmoe" if DEFAULT_MODE == "data" else "driftmoe_task"
    preset = {k: v for k, v in driftmoe_preset(kind).items() if k != "mode"}
    default = DriftMoEClassifier()
    assert all(getattr(default, k) == v for k, v in preset.items())
    assert make_learner(kind, seed=0)._get_params() == DriftMoEClassifier(seed=0)._get_params()
    assert type(make_learner("driftmoe_task_faithful")).__name__ == "DriftMoETask"


def test_any_river_drift_detector_can_be_passed() -> None:
    model = DriftMoEData(**SMALL, drift_detector=drift.PageHinkley(), seed=0)
    assert isinstance(model.clone().drift_detector, drift.PageHinkley)
    off = DriftMoEData(**SMALL, drift_detector="none", seed=0)
    rng = np.random.default_rng(0)
    for t in range(3000):
        a, b = rng.uniform(-1, 1, 2)
        off.learn_one({"a": a, "b": b}, bool((a > 0) if t < 1500 else (a <= 0)))
    assert off.n_resets == 0 and off.n_drifts == 0


def test_feature_subspaces_make_each_leaf_watch_the_set_number_of_features() -> None:
    model = DriftMoEData(**SMALL, max_features="sqrt", poisson_lambda=0.0, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(15):  # < grace_period (weight 1 a row): the roots are still leaves
        x = {f"f{i}": float(v) for i, v in enumerate(rng.normal(size=16))}
        model.learn_one(x, int(x["f0"] > 0))
    learned = [e for e in model.experts if e._root is not None]
    assert learned and all(len(e._root.splitters) == 4 for e in learned)  # sqrt(16)
    # 1.0: every feature; the improved default: every feature up to 10, then 10 random ones
    for params, width, watched in (({"max_features": 1.0}, 16, 16), ({}, 16, 10), ({}, 8, 8)):
        other = DriftMoEData(**SMALL, poisson_lambda=0.0, seed=0, **params)
        for _ in range(15):
            x = {f"f{i}": float(v) for i, v in enumerate(rng.normal(size=width))}
            other.learn_one(x, int(x["f0"] > 0))
        learned = [e for e in other.experts if e._root is not None]
        assert learned and all(len(e._root.splitters) == watched for e in learned)
