"""Streams, prequential evaluation, the Hydra experiments and the benchmark script."""

from __future__ import annotations

import itertools
import json
import runpy
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from river import tree

from streammoe.cli import run_experiment
from streammoe.stream import DriftMoEClassifier
from streammoe.stream.evaluation import kappa_stats, prequential
from streammoe.stream.streams import (
    STREAMS,
    DriftStream,
    SigmoidDrift,
    _concepts,
    iter_file,
    make_stream,
)
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_paper_stream_builds_with_scaled_drifts(name: str) -> None:
    s = make_stream(name, scale=0.002, seed=3)  # RBF generation is slow: keep it short
    assert s.n_instances == 2000
    data = list(s)
    assert len(data) == 2000
    spec = STREAMS[name]
    n_features = {"led": 24, "sea": 3}.get(spec.family, spec.n_features)
    assert all(len(x) == n_features for x, _ in data[:50])
    assert len({y for _, y in data}) == {"led": 10, "hyperplane": 2}.get(spec.family, spec.n_classes)
    if name.endswith("a"):
        assert s.drifts == [500, 1000, 1500] and s.drift_width == 50
    elif name.endswith("g"):
        assert s.drifts == [450, 950, 1450] and s.drift_width == 100
    else:
        assert s.drifts == []
    assert list(make_stream(name, scale=0.002, seed=3))[:100] == data[:100]  # seeded
    assert list(make_stream(name, scale=0.002, seed=4))[:100] != data[:100]


def test_full_length_positions_match_the_paper() -> None:
    assert make_stream("LEDa").drifts == [249_975, 499_975, 749_975]
    assert make_stream("SEAg").drifts == [225_000, 475_000, 725_000]
    assert make_stream("SEAg").drift_width == 50_000
    assert make_stream("RBFf").n_instances == 1_000_000


def test_wide_streams_have_their_widths_and_no_drift_centres() -> None:
    for name, n_features in (("HYP10", 10), ("HYP50", 50), ("RBF50", 50)):
        s = make_stream(name, scale=0.5, seed=2)
        assert s.n_instances == 500_000 and s.drifts == [] and STREAMS[name].drift == "continuous"
        assert STREAMS[name].n_features == n_features
    assert STREAMS["HYP10"].n_drift_features == 10 and STREAMS["HYP50"].n_drift_features == 10
    assert STREAMS["RBF50"].n_classes == 5


def _class_separation(rows: list, n: int) -> list[float]:
    """mean(x_i | y=1) - mean(x_i | y=0) per feature: the hyperplane's weights show through it."""
    sums, counts = {0: [0.0] * n, 1: [0.0] * n}, Counter(y for _, y in rows)
    for x, y in rows:
        for i in range(n):
            sums[y][i] += x[i]
    return [sums[1][i] / counts[1] - sums[0][i] / counts[0] for i in range(n)]


@pytest.mark.parametrize(("name", "scale"), [("HYP10", 0.02), ("HYP50", 0.04)])
def test_hyperplane_streams_rotate_their_moving_weights(name: str, scale: float) -> None:
    # Features are uniform whatever the concept; the drift is in the labels. A moving weight
    # changes how much its feature separates the classes between the first and last quarter of
    # the stream; the same generator with mag_change 0 (and HYP50's 40 fixed weights) only shows
    # sampling noise.
    spec = STREAMS[name]
    n, k = spec.n_features, spec.n_drift_features

    def change(stream: DriftStream) -> list[float]:
        data = list(stream)
        q = len(data) // 4
        return [abs(a - b) for a, b in zip(_class_separation(data[:q], n), _class_separation(data[-q:], n))]

    drifting = make_stream(name, scale=scale, seed=1)
    still = DriftStream(name, drifting.n_instances, [], 1, 1, replace(spec, change_speed=0.0))
    moved, noise = change(drifting), change(still)
    assert max(moved[:k]) > 2 * max(noise) and max(moved[:k]) > 0.06
    if k < n:
        assert max(moved[:k]) > 2 * max(moved[k:])


def test_rbf50_centroids_move_away_from_a_frozen_tree() -> None:
    # A tree fitted to the first quarter of RBF50 and then frozen predicts the second quarter
    # well and the last one badly; without centroid speed it predicts both alike.
    def early_late(stream: DriftStream) -> tuple[float, float]:
        data = list(stream)
        q = len(data) // 4
        model = tree.HoeffdingTreeClassifier()
        for x, y in data[:q]:
            model.learn_one(x, y)

        def acc(rows: list) -> float:
            return sum(model.predict_one(x) == y for x, y in rows) / len(rows)

        return acc(data[q:2 * q]), acc(data[3 * q:])

    drifting = make_stream("RBF50", scale=0.002, seed=1)  # 2000 instances
    early, late = early_late(drifting)
    assert early > 0.5 and early - late > 0.3
    spec = replace(STREAMS["RBF50"], change_speed=0.0)
    early0, late0 = early_late(DriftStream("RBF50", 2000, [], 1, 1, spec))
    assert abs(early0 - late0) < 0.1


def test_led_concepts_drift_the_attributes_moa_drifts() -> None:
    # MOA's LEDGeneratorDrift (the paper's) swaps relevant segment i with irrelevant attribute
    # 7 + i for i < d, so the concepts 1 -> 3 -> 5 -> 7 are nested. Check the mapping each River
    # concept uses, for two stream seeds, and that the concepts' instance draws differ.
    for seed in (1, 7):
        concepts = _concepts(STREAMS["LEDa"], seed)
        assert len({c.seed for c in concepts}) == 4
        for concept, d in zip(concepts, (1, 3, 5, 7)):
            next(iter(concept))  # River draws the drifting attributes when iteration starts
            expected = list(range(24))
            for i in range(d):
                expected[i], expected[7 + i] = 7 + i, i
            assert concept._attr_idx == expected, (seed, d)
    first = [list(itertools.islice(c, 50)) for c in _concepts(STREAMS["LEDa"], 1)]
    assert first[0] != first[1]


def test_sea_concept_changes_at_the_abrupt_drift() -> None:
    # SEA variant 0 (threshold 8) -> variant 1 (threshold 9): label = x0 + x1 > threshold.
    data = list(make_stream("SEAa", scale=0.004, seed=1))  # drifts at 1000, 2000, 3000

    def agreement(rows: list, theta: float) -> float:
        return sum((x[0] + x[1] > theta) == y for x, y in rows) / len(rows)

    before, after = data[200:950], data[1100:1950]
    assert agreement(before, 8.0) > agreement(before, 9.0) + 0.03
    assert agreement(after, 9.0) > agreement(after, 8.0) + 0.03


def test_sigmoid_drift_switches_at_its_position_without_overflow() -> None:
    old = [({"v": 0}, "old")] * 100_000
    new = [({"v": 1}, "new")] * 100_000
    drift = SigmoidDrift(old, new, position=50_000, width=50, seed=0)
    labels = [y for _, (_, y) in zip(range(60_000), drift)]
    assert set(labels[:49_800]) == {"old"} and set(labels[50_200:]) == {"new"}


def test_make_stream_rejects_unknown_names_and_scales() -> None:
    with pytest.raises(ValueError, match="unknown stream"):
        make_stream("Elec")
    with pytest.raises(ValueError, match="scale"):
        make_stream("SEAa", scale=2.0)


def test_csv_and_arff_files_stream_in_order(tmp_path: Path) -> None:
    csv_path = tmp_path / "elec.csv"
    csv_path.write_text("date,nswprice,day,class\n0.1,0.05,2,UP\n0.2,?,3,DOWN\n0.3,0.07,,UP\n")
    rows = list(iter_file(csv_path))
    assert rows == [({"date": 0.1, "nswprice": 0.05, "day": 2.0}, "UP"),
                    ({"date": 0.2, "day": 3.0}, "DOWN"), ({"date": 0.3, "nswprice": 0.07}, "UP")]
    assert list(iter_file(csv_path, target="day", drop=("date",), n_instances=1)) == \
        [({"nswprice": 0.05, "class": "UP"}, "2")]
    arff = tmp_path / "tiny.arff"
    arff.write_text("@relation t\n@attribute a numeric\n@attribute 'b' numeric\n"
                    "@attribute class {x,y}\n@data\n% a comment\n1,2,x\n3,?,y\n")
    assert list(iter_file(arff)) == [({"a": 1.0, "b": 2.0}, "x"), ({"a": 3.0}, "y")]
    with pytest.raises(ValueError, match="target column"):
        list(iter_file(csv_path, target="nope"))
    with pytest.raises(FileNotFoundError):
        list(iter_file(tmp_path / "missing.csv"))


def test_prequential_counts_every_instance_and_kappas() -> None:
    stream = make_stream("SEAa", scale=0.001, seed=2)  # 1000 instances
    labels = [y for _, y in stream]
    res = prequential({"ht": tree.HoeffdingTreeClassifier(),
                       "moe": DriftMoEClassifier("data", n_experts=3, top_k=1, hidden_sizes=(8,),
                                                 batch_size=32, seed=0)},
                      stream, window=300, memory_checkpoints=2)
    ht = res["ht"]
    # The first prediction is None (nothing learned) and still counts: n is every instance.
    assert ht.n == 1000 and ht.window_ends == [300, 600, 900, 1000]
    assert ht.window_accuracy[-1] == pytest.approx(
        (ht.accuracy * 1000 - sum(a * 300 for a in ht.window_accuracy[:-1])) / 100)
    majority = Counter(labels).most_common(1)[0][1] / 1000
    assert ht.accuracy > majority
    assert ht.kappa_m != ht.kappa_t and ht.kappa_m > 0 and ht.kappa_t > 0
    assert len(res["moe"].expert_share) == 4 and len(res["moe"].expert_share[0]) == 3
    assert sum(res["moe"].expert_share[0]) == pytest.approx(1.0)
    assert ht.inst_per_s > 0 and ht.peak_memory_mb > 0 and len(ht.memory_mb) == 2


def test_prequential_learn_first_reads_the_label_before_predicting() -> None:
    """``learn_first`` (the DriftMoE reference code's order) lets a model that memorises the
    last label score on every row after the first; test-then-train scores it on repeats only."""
    from river import dummy

    rows = [({"a": float(i)}, i % 3) for i in range(30)]  # the label changes every row
    res = prequential({"ttt": dummy.NoChangeClassifier(), "lf": dummy.NoChangeClassifier()},
                      rows, window=10, learn_first=["lf"])
    assert res["ttt"].accuracy == 0.0 and res["lf"].accuracy == 1.0
    with pytest.raises(ValueError, match="not evaluated"):
        prequential({"ttt": dummy.NoChangeClassifier()}, rows, learn_first=["other"])


def test_kappa_stats_formula() -> None:
    km, kt = kappa_stats(n=100, correct=80, majority_correct=60, no_change_correct=50)
    assert km == pytest.approx((0.8 - 0.6) / 0.4) and kt == pytest.approx((0.8 - 0.5) / 0.5)


def test_smoke_experiment_writes_figures_and_plots(tmp_path: Path, capsys) -> None:
    cfg = compose_config(["experiment=driftmoe_smoke"])
    metrics = run_experiment(cfg, tmp_path)
    out = capsys.readouterr().out
    assert "driftmoe" in out and "ht" in out and "accuracy" in out
    assert metrics["n"] == 2000 and metrics["drifts"] == [500, 1000, 1500]
    assert 70 < metrics["driftmoe/accuracy"] <= 100 and 70 < metrics["ht/accuracy"] <= 100
    for f in ("metrics.csv", "metrics.json", "accuracy_over_time.png", "experts_driftmoe.png",
              "config_resolved.yaml"):
        assert (tmp_path / f).stat().st_size > 0, f
    header = (tmp_path / "metrics.csv").read_text().splitlines()[0].split(",")
    assert header[:3] == ["instance", "acc_driftmoe", "acc_ht"] and "share_driftmoe_3" in header


def test_default_experiment_config_selects_stream_and_model() -> None:
    cfg = compose_config(["experiment=driftmoe", "stream=LEDg", "model=driftmoe_task_faithful"])
    assert cfg.driftmoe.stream.name == "LEDg" and cfg.driftmoe.stream.scale == 0.1
    assert cfg.driftmoe.model.kind == "driftmoe_task_faithful"
    assert list(cfg.driftmoe.baselines) == ["driftmoe_task", "arf", "ht"]


def test_bench_script_writes_json_with_speed_ratios(tmp_path: Path, capsys) -> None:
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_driftmoe.py"), run_name="bench")
    out = tmp_path / "bench.json"
    rc = bench["main"](["--streams", "SEAa,RBFm", "--seeds", "1", "--n-instances", "150",
                        "--learners", "driftmoe,arf,ht", "--n-jobs", "1", "--out", str(out)])
    assert rc == 0
    assert "speed_vs_arf" in capsys.readouterr().out
    data = json.loads(out.read_text())
    assert {r["stream"] for r in data["rows"]} == {"SEAa", "RBFm"}
    arf = [r for r in data["rows"] if r["learner"] == "arf"]
    assert all(r["speed_vs_arf"] == pytest.approx(1.0) for r in arf)
    assert set(data["vs_arf"]["driftmoe"]) == {"SEAa", "RBFm"}


def test_bench_script_runs_variants_and_skips_finished_jobs(tmp_path: Path) -> None:
    bench = runpy.run_path(str(ROOT / "scripts" / "bench_driftmoe.py"), run_name="bench")
    out = tmp_path / "bench.json"
    argv = ["--streams", "HYP10", "--seeds", "1", "--n-instances", "120", "--learners", "ht",
            "--variant", 'task_sqrt=driftmoe_task:{"max_features": "sqrt", "hidden_sizes": [8]}',
            "--n-jobs", "1", "--out", str(out)]
    assert bench["main"](argv) == 0
    job = tmp_path / "bench.jobs" / "HYP10_seed1.json"
    first = json.loads(job.read_text())
    assert list(first["learners"]) == ["ht", "task_sqrt"]
    assert first["learners"]["task_sqrt"]["speed_vs_ht"] > 0
    job.write_text(json.dumps({**first, "marker": "kept"}))  # a rerun must reuse, not redo
    assert bench["main"](argv) == 0
    assert json.loads(job.read_text())["marker"] == "kept"
    with pytest.raises(SystemExit, match="NAME=KIND:JSON"):
        bench["parse_variant"]("no-kind")
