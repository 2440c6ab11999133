"""SkillBlender's measurements and benchmark: success intervals, feasibility measures, learning
curves (also across a resume), SubprocVecEnv, the config keys behind them, the resumable bench,
and the scripted box pusher that shows the frozen skills can push."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from scipy.stats import binomtest
from streammoe_envs.skillblend import ENV_IDS

import streammoe.control.skillblend.experiment as experiment
from streammoe.cli import run_experiment
from streammoe.config import ConfigError
from streammoe.control.skillblend.checkpoint import PeriodicCheckpoint
from streammoe.control.skillblend.config import validated
from streammoe.control.skillblend.evaluate import episode_feasibility, evaluate, wilson_interval

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_SKILLS = ROOT / "results" / "skillblend" / "skills"
# Flat PPO at smoke size: three rollouts of 2 envs x 32 steps, a curve point after the first.
FLAT = ["experiment=skillblend_smoke", "skillblend.method=flat", "skillblend.video_episodes=0", "tensorboard=false",
        "skillblend.timesteps=192", "skillblend.curve_at=[64]"]
EVAL_KEYS = ("final_error_mean", "success_rate", "energy", "tilt", "tilt_max", "roll", "pitch", "feasible_rate")


class Interrupted(Exception):
    """Stands in for a killed process."""


def _die_after_checkpoint(monkeypatch: pytest.MonkeyPatch, steps: int) -> None:
    """Make a run die right after writing its checkpoint at ``steps`` env steps (by then the
    curve point at 64 has been evaluated)."""
    original = PeriodicCheckpoint.save

    def save_then_die(self: PeriodicCheckpoint) -> Path:
        path = original(self)
        if self.model.num_timesteps == steps:
            raise Interrupted(path.name)
        return path

    monkeypatch.setattr(PeriodicCheckpoint, "save", save_then_die)


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_skillblend", ROOT / "scripts" / "bench_skillblend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------- measures
@pytest.mark.parametrize(("k", "n"), [(0, 50), (50, 50), (25, 50), (3, 10), (1, 1), (37, 150)])
def test_wilson_interval_matches_scipy(k: int, n: int) -> None:
    low, high = wilson_interval(k, n)
    ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert low == pytest.approx(ref.low, abs=1e-12) and high == pytest.approx(ref.high, abs=1e-12)
    assert 0.0 <= low <= k / n <= high <= 1.0
    assert (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)


def test_wilson_interval_rejects_impossible_counts() -> None:
    for k, n in ((1, 0), (-1, 5), (6, 5), (2.5, 5)):
        with pytest.raises(ValueError, match="successes|trials"):
            wilson_interval(k, n)


def test_episode_feasibility_on_a_known_trajectory() -> None:
    # per step: |joint velocity|, |torque|, tilt, |roll|, |pitch|
    steps = [[1.0, 2.0, 0.1, 0.05, 0.02], [3.0, 4.0, 0.3, 0.15, 0.04]]
    f = episode_feasibility(np.array(steps))
    assert f == pytest.approx({"energy": 2.0 * 3.0, "joint_velocity": 2.0, "torque": 3.0, "tilt": 0.2,
                               "tilt_max": 0.3, "roll": 0.1, "pitch": 0.03})


def test_evaluate_reports_the_feasibility_measures_of_the_trajectory() -> None:
    """evaluate's figures equal the ones recomputed from MuJoCo's state along the same episodes,
    and the feasibility rate counts the episodes whose tilt stays within the limit."""
    def jerky(obs: np.ndarray) -> np.ndarray:  # full speed ahead, flipping every 5 steps
        jerky.t += 1
        return np.array([1.0, 0.0, 0.0, 1.0, -1.0, 1.0]) * (1 if (jerky.t // 5) % 2 else -1)

    env = gym.make(ENV_IDS["far_reach"], max_episode_steps=30)
    u = env.unwrapped
    per_episode = []
    for ep in range(3):
        jerky.t = 0
        obs, _ = env.reset(seed=7 + ep)
        rows = []
        for _ in range(30):
            obs, *_ = env.step(jerky(obs))
            q, v = u.data.qpos, u.data.qvel
            rows.append([np.abs(v[u._act_v]).mean(), np.abs(u.data.actuator_force).mean(),
                         np.arccos(np.clip(u.data.xmat[u._chassis][8], -1, 1)),
                         abs(q[u._qpos_idx["chassis_roll"]]), abs(q[u._qpos_idx["chassis_pitch"]])])
        rows = np.array(rows)
        per_episode.append({"energy": rows[:, 0].mean() * rows[:, 1].mean(), "tilt_max": rows[:, 2].max(),
                            "roll": rows[:, 3].mean(), "pitch": rows[:, 4].mean()})
    env.close()
    tilt_max = sorted(e["tilt_max"] for e in per_episode)
    assert tilt_max[0] > 0.01  # the jerks do tilt the chassis
    limit = (tilt_max[0] + tilt_max[1]) / 2  # one episode within the limit, two beyond
    jerky.t = 0
    m = evaluate(jerky, ENV_IDS["far_reach"], 3, seed=7, tilt_limit=limit, max_episode_steps=30)
    assert m["energy"] == pytest.approx(np.mean([e["energy"] for e in per_episode]))
    assert m["roll"] == pytest.approx(np.mean([e["roll"] for e in per_episode]))
    assert m["pitch"] == pytest.approx(np.mean([e["pitch"] for e in per_episode]))
    assert m["tilt_max"] == pytest.approx(tilt_max[-1])
    assert m["feasible_rate"] == pytest.approx(1 / 3) and m["tilt_limit"] == limit
    assert m["successes"] == 0 and m["success_ci_low"] == 0.0 and m["success_ci_high"] == pytest.approx(
        wilson_interval(0, 3)[1])
    with pytest.raises(ValueError, match="tilt_limit"):
        evaluate(jerky, ENV_IDS["far_reach"], 1, seed=0, tilt_limit=0.0)


# ---------------------------------------------------------------------- config keys
@pytest.mark.parametrize(("override", "match"), [
    ("skillblend.vec_env=threads", r"skillblend\.vec_env must be one of \['dummy', 'subproc'\]"),
    ("skillblend.tilt_limit=0.0", r"skillblend\.tilt_limit must be in \(0\.0"),
    ("skillblend.tilt_limit=2.0", r"skillblend\.tilt_limit must be in"),
    ("skillblend.curve_at=[64,32]", r"skillblend\.curve_at must increase"),
    ("skillblend.curve_at=[192]", r"skillblend\.curve_at\[0\] must be in \[1, skillblend\.timesteps=192\)"),
    ("skillblend.curve_at=[0]", r"skillblend\.curve_at\[0\]"),
    ("skillblend.eval_episodes=0", r"skillblend\.eval_episodes must be >= 1"),
])
def test_bad_new_keys_give_errors_naming_the_key(make_config, override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validated(make_config([*FLAT, override]))


def test_defaults_evaluate_enough_episodes(make_config) -> None:
    c = make_config(["experiment=skillblend"]).skillblend
    assert c.eval_episodes >= 50 and c.vec_env in ("dummy", "subproc") and 0 < c.tilt_limit < 0.5
    assert c.timesteps == 1_000_000 and list(c.curve_at) == [61_440, 250_000, 500_000]  # the bench's budget
    validated(make_config(["experiment=skillblend"]))
    with pytest.raises(ConfigError, match=r"curve_at\[1\] must be in \[1, skillblend\.timesteps=100000\).*"
                                          r"drop the point"):
        validated(make_config(["experiment=skillblend", "skillblend.timesteps=100000"]))


# ---------------------------------------------------------------------- learning curves
def test_a_curve_point_is_the_model_a_run_with_that_budget_ends_with(make_config, tmp_path: Path) -> None:
    long = run_experiment(make_config(FLAT), tmp_path / "long")
    short = run_experiment(make_config([*FLAT, "skillblend.timesteps=64", "skillblend.curve_at=[]"]),
                           tmp_path / "short")
    assert [(p["at"], p["env_steps"]) for p in long["curve"]] == [(64, 64), (192, 192)]
    for key in EVAL_KEYS:
        assert long["curve"][0][key] == short[key], key
        assert long["curve"][1][key] == long[key], key
    assert short["curve"] == [{"at": 64, "env_steps": 64, **{k: short[k] for k in short["curve"][0]
                                                             if k not in ("at", "env_steps")}}]
    saved = json.loads((tmp_path / "long" / "curve.json").read_text())["points"]
    assert saved == long["curve"] and json.loads((tmp_path / "long" / "metrics.json").read_text())["seed"] == 0


def test_an_interrupted_run_resumes_with_its_curve_points(make_config, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    ref = run_experiment(make_config(FLAT), tmp_path / "ref")
    run_dir = tmp_path / "stopped"
    with monkeypatch.context() as m:
        _die_after_checkpoint(m, 128)
        with pytest.raises(Interrupted):
            run_experiment(make_config(FLAT), run_dir)
    assert [p["at"] for p in json.loads((run_dir / "curve.json").read_text())["points"]] == [64]
    evaluated = []
    real_evaluate = experiment.evaluate
    monkeypatch.setattr(experiment, "evaluate", lambda *a, **k: evaluated.append(1) or real_evaluate(*a, **k))
    out = run_experiment(make_config([*FLAT, "skillblend.resume=auto"]), run_dir)
    assert len(evaluated) == 1  # only the final evaluation: the point at 64 was kept, not redone
    assert out["resumed_at_steps"] == 128 and out["curve"] == ref["curve"]


def test_subproc_vec_env_gives_the_same_run_as_dummy(make_config, tmp_path: Path) -> None:
    dummy = run_experiment(make_config(FLAT), tmp_path / "dummy")
    sub = run_experiment(make_config([*FLAT, "skillblend.vec_env=subproc"]), tmp_path / "subproc")
    assert sub["vec_env"] == "subproc" and sub["curve"] == dummy["curve"]  # checkpoints every rollout too


# ---------------------------------------------------------------------- the bench
def _run(task: str, method: str, seed: int, points: list[tuple[int, int, float]]) -> dict:
    """A run's metrics.json as the bench reads it: ``points`` = (at, successes of 10, error)."""
    curve = [{"at": at, "env_steps": at, "successes": k, "eval_episodes": 10, "success_rate": k / 10,
              "final_error_mean": err, "energy": 1.0 + seed, "tilt": 0.01, "tilt_max": 0.02 * (seed + 1),
              "roll": 0.0, "pitch": 0.01, "feasible_rate": 1.0, "joint_velocity": 0.2, "torque": 3.0}
             for at, k, err in points]
    return {"task": task, "method": method, "seed": seed, "curve": curve, "train_steps_per_s": 100.0}


def test_bench_pools_successes_over_episodes_and_seeds() -> None:
    bench = _bench_module()
    runs = [_run("button", "blend", 0, [(100, 2, 0.5), (200, 9, 0.1)]),
            _run("button", "blend", 1, [(100, 4, 0.3), (200, 8, 0.2)]),
            _run("button", "flat", 0, [(100, 5, 0.4), (200, 7, 0.3)])]
    rows = bench.summarise(runs)
    blend200 = next(r for r in rows if r["budget"] == 200 and r["method"] == "blend")
    assert blend200["successes"] == 17 and blend200["episodes"] == 20 and blend200["success_rate"] == 0.85
    assert (blend200["success_ci_low"], blend200["success_ci_high"]) == wilson_interval(17, 20)
    assert blend200["final_error_mean"] == pytest.approx(0.15) and blend200["final_error_seed_std"] == pytest.approx(0.05)
    assert blend200["energy"] == pytest.approx(1.5) and blend200["tilt_max"] == pytest.approx(0.04)
    tgt = bench.targets(rows)
    at100 = next(t for t in tgt["per_budget"] if t["budget"] == 100)
    assert at100["blend_success_ge_flat"] is False  # 6/20 < 5/10
    assert tgt["blend_success_at_final_budget"]["button"] == {"success_rate": 0.85, "target": 0.8, "met": True}
    assert tgt["success_ge_flat_everywhere"] is False
    text = bench.render(rows, tgt, "t")
    assert "| button | blend | 0.85 [" in text and text.index("success (95 % CI)") < text.index("final error")


def test_bench_resumes_an_interrupted_job_and_skips_finished_ones(make_config, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """One job of a tiny bench was killed after its checkpoint at 128 env steps (in this process,
    into the job's folder, with the job's own settings); the bench resumes it from there, keeps
    its curve point, aggregates, and a second call runs nothing."""
    bench = _bench_module()
    out = tmp_path / "bench"
    argv = ["--experiment", "skillblend_smoke", "--skills-dir", str(SHIPPED_SKILLS), "--tasks", "far_reach",
            "--methods", "flat", "--seeds", "3", "--timesteps", "192", "--curve-at", "64", "--eval-episodes", "2",
            "--jobs", "1", "--video-episodes", "0", "--out", str(out)]
    (job,) = bench.plan(out, SHIPPED_SKILLS, ["far_reach"], ["flat"], [3], 192, [64], 2, "dummy", 0, [],
                        "skillblend_smoke")
    overrides = [a for a in job.command[2:] if not a.startswith("hydra.")]
    assert "skillblend.resume=auto" in overrides and job.dir == out / "runs" / "far_reach" / "flat" / "seed_3"
    with monkeypatch.context() as m:
        _die_after_checkpoint(m, 128)
        with pytest.raises(Interrupted):
            run_experiment(make_config(overrides), job.dir)
    stopped_point = json.loads((job.dir / "curve.json").read_text())["points"][0]
    assert bench.main(argv) == 0
    log = (job.dir / "log.txt").read_text()
    assert "resuming task_far_reach_flat" in log and "(128 env steps done)" in log
    metrics = json.loads((job.dir / "metrics.json").read_text())
    assert metrics["resumed_at_steps"] == 128 and metrics["curve"][0] == stopped_point
    report = json.loads((out / "bench.json").read_text())
    assert [r["budget"] for r in report["summary"]] == [64, 192] and (out / "curves.png").is_file()
    assert "| far_reach | flat |" in (out / "bench.md").read_text()
    assert bench.main(argv) == 0  # finished: skipped
    assert json.loads((out / "bench.json").read_text())["sessions"][-1]["n_skipped"] == 1


def test_bench_refuses_bad_curve_points(tmp_path: Path) -> None:
    bench = _bench_module()
    with pytest.raises(SystemExit, match="--curve-at"):
        bench.main(["--skills-dir", str(SHIPPED_SKILLS), "--timesteps", "1000", "--curve-at", "500", "1000",
                    "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())  # refused before anything was written


# ---------------------------------------------------------------------- box push probe
def test_the_frozen_skills_can_push_the_box() -> None:
    """The scripted pusher (walk + reach, goals from the observation) places the box in 5 of 5
    held-out episodes (100 of 100 in results/skillblend/scripted_v5.json); without its steering
    feedback it places fewer."""
    from streammoe.control.skillblend.diagnose import PusherSettings, ScriptedPusher
    from streammoe.control.skillblend.skills import load_skill

    walk, reach = (load_skill(SHIPPED_SKILLS / f"{n}.safetensors") for n in ("walk", "reach"))
    pusher = ScriptedPusher(walk, reach)
    m = evaluate(pusher, ENV_IDS["box_push"], 5, seed=10_000)
    assert m["success_rate"] == 1.0 and m["final_error_mean"] < 0.1
    summary = pusher.phase_summary()
    assert summary["episodes"] == 5 and summary["episodes_pushed"] == 5 and summary["share_done"] > 0
    assert all(f <= 1.0 for f in (*pusher.goal_extent["walk"], *pusher.goal_extent["reach"]))
    assert PusherSettings().steer_gain > 0

