"""TensorBoard: ``RunRecorder(tensorboard=True)`` writes every logged number as a scalar into
``<run dir>/tensorboard``; every system's entry passes ``cfg.tensorboard`` on, SB3 models get
``tensorboard_log`` below that folder; ``tensorboard=false`` writes no event file at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from streammoe.cli import run_experiment
from streammoe.runs import RunRecorder
from tests.conftest import compose_config

DEMO_FAST = ["demo.steps=60", "demo.log_every=20"]


def event_dirs(run_dir: Path) -> list[Path]:
    """Folders under ``run_dir`` holding a TensorBoard event file, relative to ``run_dir``."""
    return sorted({p.parent.relative_to(run_dir) for p in run_dir.rglob("events.out.tfevents.*")})


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve of one event folder, read back the way TensorBoard reads it."""
    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_recorder_writes_numbers_as_scalars_named_by_strings(tmp_path) -> None:
    rec = RunRecorder(tmp_path, tensorboard=True)
    assert rec.sb3_tensorboard_log("walk") == str(tmp_path / "tensorboard" / "walk")
    rec.log(phase="walk", env_steps=64, episode_return=np.float32(1.5), error=float("nan"))
    rec.log(phase="walk", env_steps=128, episode_return=2.5, error=0.25)
    rec.log(phase="reach", env_steps=64, episode_return=-1.0, error=None)
    rec.finish({"done": 1}, echo=False)
    assert event_dirs(tmp_path) == [Path("tensorboard")]
    got = scalars(tmp_path / "tensorboard")
    assert set(got) == {"walk/episode_return", "walk/error", "reach/episode_return"}  # no step tag
    assert got["walk/episode_return"] == [(64, 1.5), (128, 2.5)]
    assert got["walk/error"] == [(128, 0.25)]  # NaN / None are left out, not written as NaN
    assert got["reach/episode_return"] == [(64, -1.0)]
    # metrics.csv is unchanged by the switch
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "phase,env_steps,episode_return,error"


def test_recorder_without_a_step_key_counts_rows_and_csv_only_rows(tmp_path) -> None:
    rec = RunRecorder(tmp_path, tensorboard=True)
    rec.log(stage="validation", agent="a", score=1.0, step=None)
    rec.log(stage="validation", agent="a", score=2.0, step=None)
    rec.log_row({"stage": "train", "agent": "a", "score": 9.0, "step": 5}, tensorboard=False)
    rec.log(stage="train", agent="a", score=3.0, step=7)
    rec.close()
    rec.close()  # twice is fine
    got = scalars(tmp_path / "tensorboard")
    assert got == {"validation/a/score": [(0, 1.0), (1, 2.0)], "train/a/score": [(7, 3.0)]}
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == 5  # header + 4 rows


def test_recorder_off_writes_no_events(tmp_path) -> None:
    rec = RunRecorder(tmp_path)
    assert rec.sb3_tensorboard_log("x") is None
    rec.log(step=1, loss=0.5)
    rec.finish({}, echo=False)
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize("on", [True, False])
def test_router_demo_writes_events_only_when_switched_on(tmp_path, on) -> None:
    cfg = compose_config(["experiment=router_demo", *DEMO_FAST, f"tensorboard={str(on).lower()}"])
    run_experiment(cfg, tmp_path)
    if not on:
        assert event_dirs(tmp_path) == [] and not (tmp_path / "tensorboard").exists()
        return
    assert event_dirs(tmp_path) == [Path("tensorboard")]
    got = scalars(tmp_path / "tensorboard")
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    header, last = rows[0].split(","), rows[-1].split(",")
    # the last moe_mse in TensorBoard is the last one in metrics.csv, at the same step
    step, value = got["moe_mse"][-1]
    assert step == int(last[header.index("step")]) == 60
    assert value == pytest.approx(float(last[header.index("moe_mse")]), rel=1e-6)
    assert [s for s, _ in got["moe_mse"]] == [20, 40, 60]


@pytest.mark.parametrize("on", [True, False])
def test_skillblend_smoke_sb3_writes_its_own_events(tmp_path, on) -> None:
    cfg = compose_config(["experiment=skillblend_smoke", "skillblend.video_episodes=0",
                          "skillblend.skills.video_episodes=0", f"tensorboard={str(on).lower()}"])
    run_experiment(cfg, tmp_path)
    if not on:
        assert event_dirs(tmp_path) == [] and not (tmp_path / "tensorboard").exists()
        return
    tb = Path("tensorboard")
    # our own scalars, plus SB3's PPO_1 per trained model (each skill, then the blender)
    assert event_dirs(tmp_path) == [tb, tb / "blend" / "PPO_1", tb / "skill_reach" / "PPO_1",
                                    tb / "skill_walk" / "PPO_1"]
    ours = scalars(tmp_path / "tensorboard")
    assert {"blend/episode_return", "skill_walk/steps_per_s"} <= set(ours)
    assert [s for s, _ in ours["blend/steps_per_s"]][-1] == 128  # env steps of the blender
    sb3 = scalars(tmp_path / "tensorboard" / "blend" / "PPO_1")
    assert "train/loss" in sb3 and all(np.isfinite(v) for _, v in sb3["train/loss"])


def test_t2mir_sb3_collector_writes_events_per_task(tmp_path) -> None:
    from streammoe_envs.task_families import task_family

    from streammoe.control.t2mir.data import ensure_dataset

    fam = task_family("point_robot", 2, 1, horizon=10)
    collector = {"name": "sb3", "algo": "ppo", "algo_kwargs": {"n_steps": 20, "batch_size": 10, "n_epochs": 1}}
    folder, _, _ = ensure_dataset(tmp_path / "data", fam, 3, collector, seed=0,
                                  tensorboard_log=tmp_path / "run" / "tensorboard" / "collect")
    tb = Path("tensorboard") / "collect"
    found = event_dirs(tmp_path / "run")  # SB3 names the run PPO_0 (learn in chunks, no reset)
    assert [d.parent for d in found] == [tb / "task_000", tb / "task_001"]
    assert "train/loss" in scalars(tmp_path / "run" / found[0])
    assert event_dirs(folder) == []  # the dataset folder holds data only


def test_every_system_passes_the_switch_on() -> None:
    """Each RunRecorder built by a system's entry is given ``cfg.tensorboard`` (or a flag from it)."""
    import re

    import streammoe

    root = Path(streammoe.__file__).parent
    calls = [f"{p.relative_to(root)}: {m.group(0)}" for p in root.rglob("*.py") if p.name != "runs.py"
             for m in re.finditer(r"RunRecorder\([^)]*\)", p.read_text())]
    assert len(calls) >= 6, calls  # demo, stream, macrohft, t2mir, skillblend x2
    assert [c for c in calls if "tensorboard=" not in c] == []
