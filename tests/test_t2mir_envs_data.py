"""T2MIR task families (streammoe_envs.task_families) and learning-history datasets (collection, files,
validation, context sampling)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import streammoe_envs  # noqa: F401  (registers the ids)
from gymnasium.utils.env_checker import check_env
from streammoe_envs.task_families import CHEETAH_VEL_ID, POINT_ROBOT_ID, task_family

from streammoe.control.t2mir.data import (
    ContextSampler,
    collect_expert_anneal,
    collect_sb3,
    ensure_dataset,
    load_dataset,
    write_dataset,
)


def test_point_robot_dynamics_reward_and_task_setting() -> None:
    env = gym.make(POINT_ROBOT_ID, goal=(0.0, 1.0))
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.tolist() == [0.0, 0.0]
    obs, r, term, trunc, _ = env.step(np.array([1.0, 5.0]))  # clipped to the box, scaled by 0.1
    np.testing.assert_allclose(obs, [0.1, 0.1], atol=1e-6)
    assert r == pytest.approx(-np.hypot(0.1, 0.9), abs=1e-6)
    # a task given at reset replaces the one from construction and stays
    env.reset(options={"task": [1.0, 0.0]})
    assert env.step([1.0, 0.0])[1] == pytest.approx(-0.9, abs=1e-6)
    env.reset()
    assert env.unwrapped.task.tolist() == [1.0, 0.0]
    for _ in range(19):
        _, _, term, trunc, _ = env.step([0.0, 0.0])
    assert not trunc
    _, _, term, trunc, _ = env.step([0.0, 0.0])
    assert trunc and not term  # 20 steps per episode
    with pytest.raises(ValueError, match="goal"):
        env.reset(options={"task": [np.nan, 0.0]})


def test_cheetah_vel_reward_is_velocity_tracking() -> None:
    env = gym.make(CHEETAH_VEL_ID, target_velocity=1.5)
    env.reset(seed=0)
    a = np.full(6, 0.5, np.float32)
    _, r, _, _, info = env.step(a)
    assert r == pytest.approx(-abs(info["x_velocity"] - 1.5) - 0.05 * float((a**2).sum()), rel=1e-6)
    env.reset(options={"task": 0.3})
    _, r, _, _, info = env.step(np.zeros(6, np.float32))
    assert r == pytest.approx(-abs(info["x_velocity"] - 0.3), rel=1e-6)
    assert env.spec.max_episode_steps == 200


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_cheetah_vel_rejects_non_finite_actions_and_keeps_its_state(bad) -> None:
    env = gym.make(CHEETAH_VEL_ID, target_velocity=1.0)
    env.reset(seed=0)
    env.step(np.full(6, 0.3, np.float32))
    qpos = env.unwrapped.data.qpos.copy()
    action = np.zeros(6, np.float32)
    action[2] = bad
    with pytest.raises(ValueError, match="CheetahVel action contains NaN or inf"):
        env.step(action)
    np.testing.assert_array_equal(env.unwrapped.data.qpos, qpos)  # the physics never saw it
    obs, r, *_ = env.step(np.zeros(6, np.float32))
    assert np.isfinite(obs).all() and np.isfinite(r)
    with pytest.raises(ValueError, match="6 entries"):
        env.step(np.zeros(5, np.float32))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_point_robot_rejects_non_finite_actions(bad) -> None:
    env = gym.make(POINT_ROBOT_ID, goal=(0.0, 1.0))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="2 finite numbers"):
        env.step(np.array([bad, 0.0], np.float32))
    assert env.unwrapped._pos.tolist() == [0.0, 0.0]


def test_task_family_sets_are_disjoint_and_seeded() -> None:
    fam = task_family("point_robot", 30, 5, task_seed=0)
    assert fam.train_tasks.shape == (30, 2) and fam.test_tasks.shape == (5, 2)
    np.testing.assert_allclose(np.linalg.norm(fam.train_tasks, axis=1), 1.0, atol=1e-6)
    assert (fam.train_tasks[:, 1] >= 0).all()  # upper semicircle
    dists = np.linalg.norm(fam.train_tasks[:, None] - fam.test_tasks[None], axis=-1)
    assert dists.min() > 0
    # growing the training set keeps the held-out tasks
    np.testing.assert_array_equal(task_family("point_robot", 40, 5).test_tasks, fam.test_tasks)
    cv = task_family("cheetah_vel", 8, 2)
    assert ((cv.train_tasks >= 0) & (cv.train_tasks <= 3)).all() and cv.horizon == 200
    with pytest.raises(ValueError, match="unknown task family"):
        task_family("walker", 2, 1)


def test_expert_anneal_history_improves() -> None:
    fam = task_family("point_robot", 3, 1)
    h = collect_expert_anneal(fam, fam.train_tasks[0], n_episodes=20, seed=0)
    assert h.observations.shape == (20, 20, 2) and h.actions.shape == (20, 20, 2)
    assert h.returns[-5:].mean() > h.returns[:5].mean() + 5.0
    assert np.abs(h.actions).max() <= 1.0
    with pytest.raises(ValueError, match="needs a learned expert"):
        collect_expert_anneal(task_family("cheetah_vel", 1, 1), np.array([1.0]), 2, 0)


def test_correlated_exploration_travels_further_and_keeps_the_default() -> None:
    fam = task_family("point_robot", 3, 1)
    goal = fam.train_tasks[0]

    def first_episode_reach(rho: float) -> float:  # mean distance from the origin at the end
        return float(np.mean([np.linalg.norm(collect_expert_anneal(
            fam, goal, 2, seed=s, anneal_fraction=0.5, noise_correlation=rho).observations[0, -1])
            for s in range(20)]))

    assert first_episode_reach(0.8) > 1.8 * first_episode_reach(0.0)
    h = collect_expert_anneal(fam, goal, 4, seed=3, anneal_fraction=0.25, noise_correlation=0.8)
    assert np.abs(h.actions).max() <= 1.0
    again = collect_expert_anneal(fam, goal, 4, seed=3, anneal_fraction=0.25, noise_correlation=0.8)
    np.testing.assert_array_equal(h.actions, again.actions)  # seeded
    # noise_correlation=0 draws exactly what the collector drew before the option existed
    # (so datasets collected earlier stay valid): the first episode is uniform random actions
    base = collect_expert_anneal(fam, goal, 2, seed=0, anneal_fraction=0.5)
    rng = np.random.default_rng(0)
    rng.integers(2**31)  # the env-reset seed is drawn before the first action
    expected = [(rng.random(), rng.uniform(-1.0, 1.0, 2))[1] for _ in range(20)]
    np.testing.assert_allclose(base.actions[0], np.asarray(expected, np.float32))
    with pytest.raises(ValueError, match="noise_correlation"):
        collect_expert_anneal(fam, goal, 2, seed=0, noise_correlation=1.0)


def test_sb3_learner_history_is_logged_in_order() -> None:
    fam = task_family("point_robot", 1, 1, horizon=10)
    h = collect_sb3(fam, fam.train_tasks[0], n_episodes=5, seed=0,
                    algo_kwargs={"n_steps": 20, "batch_size": 10, "n_epochs": 1})
    assert h.observations.shape == (5, 10, 2) and h.rewards.shape == (5, 10)
    np.testing.assert_array_equal(h.observations[:, 0], 0.0)  # every episode starts at the origin
    # the logged observation after an action is the previous position plus 0.1 * action
    np.testing.assert_allclose(h.observations[:, 1:], h.observations[:, :-1] + 0.1 * h.actions[:, :-1],
                               atol=1e-5)


def _small_dataset(tmp_path):
    fam = task_family("point_robot", 3, 1, horizon=8)
    folder, manifest, hist = ensure_dataset(tmp_path, fam, 6, {"name": "expert_anneal"}, seed=0)
    return fam, folder, manifest, hist


def test_dataset_files_roundtrip_and_reuse(tmp_path, monkeypatch) -> None:
    fam, folder, manifest, hist = _small_dataset(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "task_000.npz", "task_001.npz",
                                                       "task_002.npz"]
    assert manifest["n_episodes"] == 6 and manifest["horizon"] == 8
    _, again = load_dataset(folder)
    for a, b in zip(hist, again):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.task, b.task)
    # the second call must reuse the files, not collect again
    import streammoe.control.t2mir.data as data

    def boom(*args, **kwargs):
        raise AssertionError("collected again")

    monkeypatch.setattr(data, "collect_expert_anneal", boom)
    folder2, _, _ = ensure_dataset(tmp_path, fam, 6, {"name": "expert_anneal"}, seed=0)
    assert folder2 == folder


def test_dataset_validation_names_the_problem(tmp_path) -> None:
    _, folder, _, hist = _small_dataset(tmp_path)
    with pytest.raises(ValueError, match="n_episodes"):
        load_dataset(folder, expect={"n_episodes": 7})
    (folder / "task_001.npz").write_bytes((folder / "task_001.npz").read_bytes()[:-10])
    with pytest.raises(ValueError, match="task_001.npz.*SHA-256"):
        load_dataset(folder)
    (folder / "task_001.npz").unlink()
    with pytest.raises(FileNotFoundError, match="task_001.npz"):
        load_dataset(folder)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        load_dataset(tmp_path / "nowhere")
    # a file whose shapes disagree with the manifest (sha recomputed so only the shape is wrong)
    fam = task_family("point_robot", 1, 1, horizon=8)
    bad = hist[0]
    bad.rewards = bad.rewards[:, :5]
    out = write_dataset(tmp_path / "bad", fam, [hist[1], bad], {"name": "expert_anneal"})
    with pytest.raises(ValueError, match="rewards has shape"):
        load_dataset(out)
    m = json.loads((out / "manifest.json").read_text())
    m["format"] = "something/else"
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ValueError, match="format"):
        load_dataset(out)


def test_context_sampler_two_views_per_task(tmp_path) -> None:
    _, _, _, hist = _small_dataset(tmp_path)
    s = ContextSampler(hist, context_episodes=2, batch_size=6, seed=0)
    b = s.sample()
    assert b["obs"].shape == (6, 16, 2) and b["act"].shape == (6, 16, 2) and b["rew"].shape == (6, 16)
    ids = b["task_ids"]
    np.testing.assert_array_equal(ids[:3], ids[3:])
    assert len(set(ids[:3].tolist())) == 3
    np.testing.assert_array_equal(b["t"][0], np.tile(np.arange(8), 2))
    state = s.state()
    nxt = s.sample()
    s.set_state(state)
    np.testing.assert_array_equal(s.sample()["obs"], nxt["obs"])
    with pytest.raises(ValueError, match="even"):
        ContextSampler(hist, 2, 5, 0)
    with pytest.raises(ValueError, match="context_episodes"):
        ContextSampler(hist, 7, 4, 0)


def test_concurrent_collection_keeps_the_first_dataset(tmp_path, monkeypatch) -> None:
    """Two runs collecting the same dataset at once: the loser's copy is discarded, no error."""
    fam = task_family("point_robot", 2, 1, horizon=5)
    folder, _, first = ensure_dataset(tmp_path, fam, 3, {"name": "expert_anneal"}, seed=0)
    import streammoe.control.t2mir.data as data

    real_is_file = type(folder).is_file
    # pretend the manifest was absent when this run looked, so it collects and then loses the rename
    calls = {"n": 0}

    def is_file_once(self):
        if self.name == "manifest.json" and calls["n"] == 0:
            calls["n"] += 1
            return False
        return real_is_file(self)

    monkeypatch.setattr(type(folder), "is_file", is_file_once)
    folder2, _, second = data.ensure_dataset(tmp_path, fam, 3, {"name": "expert_anneal"}, seed=0)
    assert folder2 == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no .tmp leftovers
    np.testing.assert_array_equal(first[0].actions, second[0].actions)
