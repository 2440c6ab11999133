"""MergeVLA's Meta-World suites, instructions, task env (streammoe_envs.metaworld) and scripted
demonstrations in robomimic-layout HDF5 (streammoe.control.mergevla.data)."""

from __future__ import annotations

import doctest
import subprocess
import sys
import warnings

import gymnasium as gym
import h5py
import mujoco
import numpy as np
import pytest
import streammoe_envs
import streammoe_envs.metaworld as mw
import streammoe_envs.metaworld.suites as suites_mod
from gymnasium.utils.env_checker import check_env
from streammoe_envs.metaworld import (
    INSTRUCTION_LEN,
    N_EXTRA_VARIATIONS,
    N_VARIATIONS,
    PAD_ID,
    SUITES,
    TASKS,
    VOCAB,
    detokenize,
    split_variations,
    tokenize,
)

import streammoe  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from streammoe.control.mergevla import data as demo_data
from streammoe.control.mergevla.data import (
    action_chunks,
    collect_demos,
    ensure_demos,
    load_demos,
    read_demos,
    write_demos,
)

ENV_ID = streammoe_envs.METAWORLD_ID
# Two cheap tasks of different suites, reused everywhere (Meta-World's task objects are cached).
DRAWER, BUTTON, REACH = "drawer-close-v3", "button-press-v3", "reach-v3"


# ----- suites, instructions, vocabulary ------------------------------------------------------------

def test_suites_group_tasks_and_every_instruction_tokenizes() -> None:
    assert len(SUITES) >= 4 and all(len(tasks) >= 2 for tasks in SUITES.values())
    assert sorted(t for tasks in SUITES.values() for t in tasks) == sorted(mw.TASK_NAMES)
    # the pre-training tasks are Meta-World tasks outside every suite, with their own instructions
    assert sorted(TASKS) == sorted((*mw.TASK_NAMES, *mw.PRETRAIN_TASKS))
    assert not set(mw.PRETRAIN_TASKS) & set(mw.TASK_NAMES)
    assert all(TASKS[t].suite == mw.PRETRAIN_SUITE for t in mw.PRETRAIN_TASKS)
    assert mw.TASK_GROUPS == {**SUITES, mw.PRETRAIN_SUITE: mw.PRETRAIN_TASKS}
    instructions = [spec.instruction for spec in TASKS.values()]
    assert len(set(instructions)) == len(instructions)  # the instruction tells tasks apart
    assert TASKS["drawer-open-v3"].instruction == "open the drawer"
    assert TASKS["button-press-topdown-v3"].instruction == "press the button from the top"
    for spec in TASKS.values():
        ids = tokenize(spec.instruction)
        assert ids.shape == (INSTRUCTION_LEN,) and ids.dtype == np.int64
        assert detokenize(ids) == spec.instruction
        assert spec.max_steps < 500  # inside Meta-World's own horizon
    assert not set(mw.DROPPED_TASKS) & set(TASKS)
    with pytest.raises(ValueError, match="dropped: scripted expert 92 %"):
        mw.task_spec("door-open-v3")
    with pytest.raises(ValueError, match="choose one of"):
        mw.task_spec("reach-v2")


def test_tokenize_pads_and_rejects_unknown_words_by_name() -> None:
    ids = tokenize("Close the DRAWER.")
    assert ids.tolist()[:4] == [VOCAB.index("close"), VOCAB.index("the"), VOCAB.index("drawer"), PAD_ID]
    assert VOCAB[PAD_ID] == "<pad>" and "<unk>" not in VOCAB
    with pytest.raises(ValueError, match="word 'fridge' is not in the vocabulary"):
        tokenize("open the fridge")
    with pytest.raises(ValueError, match="word '<pad>'"):
        tokenize("<pad>")
    with pytest.raises(ValueError, match="more than INSTRUCTION_LEN"):
        tokenize(" ".join(["the"] * (INSTRUCTION_LEN + 1)))
    with pytest.raises(ValueError, match="empty"):
        tokenize("  ")
    with pytest.raises(ValueError, match="token ids must lie"):
        detokenize(np.array([len(VOCAB)]))


def test_variation_split_is_seeded_and_disjoint() -> None:
    train, heldout = split_variations()
    assert (train, heldout) == split_variations(10, 0)
    assert not set(train) & set(heldout) and len(train) + len(heldout) == N_VARIATIONS
    assert split_variations(10, 1) != (train, heldout)
    with pytest.raises(ValueError, match="n_heldout"):
        split_variations(N_VARIATIONS)


def test_suites_import_without_the_simulator() -> None:
    code = ("import sys, streammoe_envs, streammoe_envs.metaworld as m; m.tokenize('open the door'); "
            "assert 'metaworld' not in sys.modules and 'mujoco' not in sys.modules, 'eager import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_env_package_doctests() -> None:
    import streammoe_envs.metaworld.env as env_mod

    for module in (mw, suites_mod, env_mod):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.failed == 0, module.__name__


# ----- the task env ----------------------------------------------------------------------------------

def test_env_state_observations_pass_gymnasium_checks_and_succeed_with_the_expert() -> None:
    env = gym.make(ENV_ID, task=DRAWER, variation=5, vision=False)
    assert ENV_ID in streammoe_envs.ENV_SPECS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # object state is unbounded (as in Meta-World)
        check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    space = env.observation_space
    assert set(obs) == {"state", "proprio", "instruction"} and obs in space
    assert obs["state"].shape == (mw.STATE_DIM,) and obs["state"].dtype == np.float32
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert detokenize(obs["instruction"]) == "close the drawer"
    assert info == {"success": False, "task": DRAWER, "suite": "drawer", "variation": 5,
                    "instruction": "close the drawer"}
    raw = env.unwrapped.raw_obs
    np.testing.assert_allclose(obs["state"][-3:], raw[36:39], rtol=1e-6)  # the goal
    terminated = truncated = False
    steps = 0
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(env.unwrapped.expert_action())
        steps += 1
    assert info["success"] and terminated and not truncated and steps < TASKS[DRAWER].max_steps
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(np.zeros(4, np.float32))


def test_env_truncates_at_max_steps_and_switches_variations_at_reset() -> None:
    env = mw.MetaWorldTaskEnv(BUTTON, variation=0, vision=False)
    first, _ = env.reset()
    again, _ = env.reset(seed=123)  # the start is fixed by the variation
    np.testing.assert_array_equal(first["state"], again["state"])
    other, info = env.reset(options={"variation": 7})
    assert info["variation"] == 7 and not np.allclose(other["state"], first["state"])
    np.testing.assert_array_equal(env.reset()[0]["state"], other["state"])  # it stays
    with pytest.raises(ValueError, match="variation must be an integer"):
        env.reset(options={"variation": N_VARIATIONS + N_EXTRA_VARIATIONS})
    with pytest.raises(ValueError, match="variation must be an integer"):
        env.reset(options={"variation": -1})
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"seed": 1})
    assert env.variation == 7
    env.reset()
    for _ in range(env.max_steps):
        _, _, terminated, truncated, info = env.step(np.zeros(4, np.float32))
    assert truncated and not terminated and not info["success"]
    env.close()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_env_rejects_bad_actions_before_the_simulation_changes(bad) -> None:
    env = mw.MetaWorldTaskEnv(DRAWER, vision=False)
    env.reset()
    env.step(np.array([0.5, 0.0, 0.0, 0.0], np.float32))
    qpos, raw = env.unwrapped._mw.data.qpos.copy(), env.raw_obs
    action = np.zeros(4, np.float32)
    action[1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(action)
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        env.step(np.zeros(3, np.float32))
    np.testing.assert_array_equal(env._mw.data.qpos, qpos)
    np.testing.assert_array_equal(env.raw_obs, raw)
    assert env._steps == 1
    obs, *_ = env.step(np.array([5.0, 0.0, 0.0, 0.0]))  # finite but outside: clipped
    assert np.isfinite(obs["state"]).all()
    env.close()


def test_step_chunk_equals_single_steps_and_renders_once(monkeypatch) -> None:
    rng = np.random.default_rng(0)
    chunks = rng.uniform(-1, 1, (6, 4, 4)).astype(np.float32)
    one, many = (mw.MetaWorldTaskEnv(BUTTON, variation=4, vision=True, image_size=16) for _ in range(2))
    one.reset()
    many.reset()
    renders = []
    real = mw.env._Camera.render
    monkeypatch.setattr(mw.env._Camera, "render", lambda self, data: renders.append(1) or real(self, data))
    for chunk in chunks:
        total = 0.0
        for a in chunk:
            obs1, r, term1, trunc1, info1 = one.step(a)
            total += r
        n_before = len(renders)
        obs4, r4, term4, trunc4, info4, taken = many.step_chunk(chunk)
        assert taken == 4 and len(renders) == n_before + 1  # one image per chunk
        assert r4 == pytest.approx(total) and (term4, trunc4) == (term1, trunc1) and info4 == info1
        np.testing.assert_array_equal(obs4["image"], obs1["image"])
        np.testing.assert_array_equal(many.raw_obs, one.raw_obs)
    # the chunk stops where the episode ends
    many._steps = many.max_steps - 2
    *_, truncated, _, taken = many.step_chunk(chunks[0])
    assert truncated and taken == 2
    with pytest.raises(RuntimeError, match="call reset"):
        many.step_chunk(chunks[0])
    many.reset()
    raw = many.raw_obs
    bad = chunks[0].copy()
    bad[3, 1] = np.nan  # a bad action anywhere in the chunk: nothing is stepped
    with pytest.raises(ValueError, match="NaN or inf"):
        many.step_chunk(bad)
    for shape in [(4,), (0, 4), (2, 3)]:
        with pytest.raises(ValueError, match=r"shape \(k, 4\)"):
            many.step_chunk(np.zeros(shape, np.float32))
    np.testing.assert_array_equal(many.raw_obs, raw)
    assert many._steps == 0
    one.close()
    many.close()


def test_env_rejects_bad_settings_naming_them() -> None:
    with pytest.raises(ValueError, match="unknown MergeVLA task 'open-fridge'"):
        mw.MetaWorldTaskEnv("open-fridge")
    with pytest.raises(ValueError, match="variation must be an integer"):
        mw.MetaWorldTaskEnv(DRAWER, variation=-1)
    with pytest.raises(ValueError, match="camera 'ceiling' is neither in Meta-World's scene nor in FREE_CAMERAS"):
        mw.MetaWorldTaskEnv(DRAWER, camera="ceiling")
    with pytest.raises(ValueError, match="image_size must be in"):
        mw.MetaWorldTaskEnv(DRAWER, image_size=4096)
    with pytest.raises(ValueError, match="render_mode"):
        mw.MetaWorldTaskEnv(DRAWER, render_mode="human")


def test_env_images_from_the_fixed_camera() -> None:
    env = gym.make(ENV_ID, task=BUTTON, variation=2, vision=True, image_size=32,
                   render_mode="rgb_array", render_size=48)
    check_env(env.unwrapped, skip_render_check=True)  # its render check builds more envs: slow
    obs, _ = env.reset()
    assert set(obs) == {"image", "proprio", "instruction"}
    img = obs["image"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and img.std() > 10  # not blank
    assert env.render().shape == (48, 48, 3)
    # the arm moves, the picture changes
    for _ in range(5):
        obs2, *_ = env.step(np.array([1.0, 0.0, 0.0, 0.0], np.float32))
    assert np.abs(obs2["image"].astype(int) - img.astype(int)).sum() > 0
    env.close()


def test_workspace_camera_frames_the_objects_closer_and_upright() -> None:
    """The free camera of FREE_CAMERAS renders upright (no flip) and draws the reach goal marker
    larger than corner3 does at the same size (its pixels: those that change when it is hidden)."""
    def goal_pixels(camera: str) -> int:
        env = mw.MetaWorldTaskEnv("reach-v3", variation=0, vision=True, image_size=64, camera=camera)
        shown = env.reset()[0]["image"]
        model = env._mw.model
        model.site_rgba[model.site("goal").id, 3] = 0.0
        hidden = env.reset()[0]["image"]
        env.close()
        return int((np.abs(shown.astype(int) - hidden.astype(int)).sum(-1) > 0).sum())
    assert goal_pixels("workspace") >= max(2, 2 * goal_pixels("corner3"))
    env = mw.MetaWorldTaskEnv(DRAWER, variation=0, vision=True, image_size=32, camera="workspace")
    img = env.reset()[0]["image"]
    assert img.shape == (32, 32, 3) and img.std() > 10
    # upright: the table's wood (brown: red over blue) along the bottom, the empty background
    # (black: no skybox) in the top right corner
    assert img[-4:, :, 0].mean() > img[-4:, :, 2].mean() + 20 and img[:3, -3:].max() < 30
    env.close()


def test_markers_draw_the_goal_depth_and_puck_and_leave_the_physics_alone() -> None:
    """markers=True: a floating goal (reach) gets a line and a disc (2 geoms), a goal on the
    table (plate-slide) a disc only; the puck turns yellow; the simulation is Meta-World's either way."""
    def run(markers: bool, task: str = "reach-v3"):
        env = mw.MetaWorldTaskEnv(task, variation=3, vision=True, image_size=64, markers=markers)
        obs = [env.reset()[0]]
        for _ in range(3):
            obs.append(env.step(np.array([0.5, -0.3, 0.2, 1.0], np.float32))[0])
        raw = env.raw_obs
        scene = mujoco.MjvScene(env._mw.model, maxgeom=1000)
        mujoco.mjv_updateScene(env._mw.model, env._mw.data, mujoco.MjvOption(), None,
                               mujoco.MjvCamera(), mujoco.mjtCatBit.mjCAT_ALL, scene)
        before = scene.ngeom
        added = mw.env.draw_markers(scene, env._mw.model, env._mw.data)
        assert scene.ngeom == before + added
        env.close()
        return obs, raw, added

    plain, raw_plain, _ = run(False)
    marked, raw_marked, added = run(True)
    assert added == 2 and run(True, "plate-slide-v3")[2] == 1
    np.testing.assert_array_equal(raw_plain, raw_marked)  # the physics: identical
    np.testing.assert_array_equal(plain[-1]["proprio"], marked[-1]["proprio"])
    img_plain, img_marked = plain[0]["image"].astype(int), marked[0]["image"].astype(int)
    goal_red = lambda im: (im[..., 0] > 150) & (im[..., 1] < 60) & (im[..., 2] < 60)  # noqa: E731
    yellow = lambda im: (im[..., 0] > 200) & (im[..., 1] > 200) & (im[..., 2] < 120)  # noqa: E731
    # the line and the disc add goal-coloured pixels below the marker; the puck shows in yellow
    assert goal_red(img_marked).sum() >= goal_red(img_plain).sum() + 4
    assert yellow(img_marked).sum() >= 4 and yellow(img_plain).sum() == 0
    with pytest.raises(TypeError, match="markers must be a bool"):
        mw.MetaWorldTaskEnv("reach-v3", markers="yes")


def test_markers_enter_the_demonstrations_settings_only_when_they_draw(tmp_path) -> None:
    """Files made before markers existed keep their names: markers=False, or True without images,
    names the same file; True with images is another file whose settings and env_kwargs say so."""
    kwargs = dict(tasks=[BUTTON], episodes_per_task=1, vision=False)
    path, demos = ensure_demos(tmp_path, **kwargs)
    assert ensure_demos(tmp_path, markers=False, **kwargs)[0] == path
    assert ensure_demos(tmp_path, markers=True, **kwargs)[0] == path
    assert "markers" not in demos.settings
    images = dict(kwargs, vision=True, image_size=16)
    plain_path, _ = ensure_demos(tmp_path, **images)
    marked_path, marked = ensure_demos(tmp_path, markers=True, **images)
    assert marked_path != plain_path and marked.settings["markers"] is True
    with h5py.File(marked_path) as f:
        assert '"markers": true' in f["data"].attrs["env_args"]
    with pytest.raises(TypeError, match="markers must be a bool"):
        ensure_demos(tmp_path, markers="true", **images)


def test_extra_variations_are_new_placements_of_the_same_generator() -> None:
    """Indices from N_VARIATIONS up are placements Meta-World's generator draws with other seeds:
    none repeats one of the benchmark's 50 (so none is a held-out one), each is fixed, and they
    lie in the range the benchmark's span."""
    import pickle

    def placement(v: int) -> np.ndarray:
        return np.asarray(pickle.loads(mw.variation_task(REACH, v).data)["rand_vec"])

    bench = np.stack([placement(v) for v in range(N_VARIATIONS)])
    extra = np.stack([placement(v) for v in range(N_VARIATIONS, N_VARIATIONS + 120)])
    assert len(np.unique(extra, axis=0)) == 120  # three blocks of 50 (two whole): all different
    assert not any(np.any(np.all(np.isclose(bench, e), axis=1)) for e in extra)
    spread = bench.max(0) - bench.min(0)
    assert np.all(extra.min(0) >= bench.min(0) - 0.2 * spread)
    assert np.all(extra.max(0) <= bench.max(0) + 0.2 * spread)
    np.testing.assert_array_equal(placement(N_VARIATIONS + 7), extra[7])  # fixed, not redrawn
    env = mw.MetaWorldTaskEnv(REACH, variation=N_VARIATIONS + 3, vision=False)
    obs, info = env.reset()
    assert info["variation"] == N_VARIATIONS + 3
    np.testing.assert_allclose(obs["state"][-3:], extra[3][3:6], atol=1e-6)  # the goal it placed
    env.close()


def test_extra_variations_add_one_episode_each_and_name_the_file_only_when_used(tmp_path) -> None:
    """The usual episodes first (unchanged), then one per extra variation; 0 names the same file
    as before the setting existed."""
    kwargs = dict(tasks=[BUTTON], episodes_per_task=2, vision=False, seed=3)
    path, plain = ensure_demos(tmp_path, **kwargs)
    assert ensure_demos(tmp_path, extra_variations=0, **kwargs)[0] == path
    assert "extra_variations" not in plain.settings
    more_path, more = ensure_demos(tmp_path, extra_variations=3, **kwargs)
    assert more_path != path and more.settings["extra_variations"] == 3
    assert [ep.variation for ep in more.episodes] == [
        *(ep.variation for ep in plain.episodes), N_VARIATIONS, N_VARIATIONS + 1, N_VARIATIONS + 2]
    for a, b in zip(plain.episodes, more.episodes):
        np.testing.assert_array_equal(a.actions, b.actions)
    assert more.stats[BUTTON]["attempts"] == 5


# ----- demonstrations ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demos():
    return collect_demos([DRAWER, BUTTON], episodes_per_task=2, vision=False, seed=3)


@pytest.fixture(scope="module")
def demo_file(demos, tmp_path_factory):
    path = tmp_path_factory.mktemp("mergevla") / "demos.hdf5"
    fingerprint = write_demos(path, demos)
    return path, fingerprint


def test_collection_reports_expert_success_and_is_seeded_per_task(demos) -> None:
    assert demos.stats[DRAWER]["attempts"] == 2 and demos.stats[DRAWER]["success_rate"] == 1.0
    assert not demos.dropped and len(demos.episodes) == 4
    train, _ = split_variations()
    for ep in demos.episodes:
        assert ep.success and ep.variation in train and ep.dones[-1] == 1 and ep.dones[:-1].sum() == 0
        assert np.all(np.abs(ep.actions) <= 1.0) and not np.allclose(ep.actions, ep.expert_actions)
        assert ep.obs["instruction"].shape == (len(ep), INSTRUCTION_LEN)
    assert "drawer-close-v3" in demos.summary() and "100.0 %" in demos.summary()
    # a task's demonstrations do not depend on the other tasks collected with it
    alone = collect_demos([BUTTON], episodes_per_task=1, vision=False, seed=3)
    first = next(ep for ep in demos.episodes if ep.task == BUTTON)
    np.testing.assert_array_equal(alone.episodes[0].actions, first.actions)
    assert alone.episodes[0].variation == first.variation


def test_task_under_min_success_is_dropped_and_said(monkeypatch) -> None:
    monkeypatch.setattr(mw.MetaWorldTaskEnv, "expert_action", lambda self: np.zeros(4, np.float32))
    with pytest.warns(UserWarning, match="button-press-v3: the scripted expert succeeded in 0/1"):
        got = collect_demos([BUTTON], episodes_per_task=1, vision=False)
    assert got.dropped == {BUTTON: 0.0} and not got.episodes and "DROPPED" in got.summary()
    with pytest.raises(ValueError, match="no demonstrations to write"):
        write_demos("unused.hdf5", got)


def test_collect_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="episodes_per_task"):
        collect_demos([DRAWER], episodes_per_task=0)
    with pytest.raises(ValueError, match="action_noise"):
        collect_demos([DRAWER], action_noise=float("nan"))
    with pytest.raises(ValueError, match="unknown MergeVLA task"):
        collect_demos(["drawer-open-v2"])
    with pytest.raises(ValueError, match="variations must be"):
        collect_demos([DRAWER], variations=[50])
    for bad in (-1, N_EXTRA_VARIATIONS + 1, 2.5, True):
        with pytest.raises(ValueError, match="extra_variations must be"):
            collect_demos([DRAWER], extra_variations=bad)
    with pytest.raises(TypeError, match="write \\['drawer-close-v3'\\]"):
        collect_demos(DRAWER)


def test_file_is_robomimic_layout_and_round_trips(demos, demo_file) -> None:
    path, fingerprint = demo_file
    with h5py.File(path, "r") as f:
        data = f["data"]
        assert data.attrs["total"] == sum(len(ep) for ep in demos.episodes)
        assert '"env_name": "streammoe/MetaWorldTask-v0"' in data.attrs["env_args"]
        g = data["demo_0"]
        assert g.attrs["num_samples"] == len(g["actions"]) and g.attrs["task"] == DRAWER
        assert set(g["obs"]) == {"state", "proprio", "instruction"}
        assert {"actions", "expert_actions", "rewards", "dones"} <= set(g)
        assert sorted(x.decode() for x in f["mask/drawer"][()]) == ["demo_0", "demo_1"]
        assert f.attrs["sha256"] == fingerprint
    back = read_demos(path)
    assert back.fingerprint == fingerprint and back.stats == demos.stats
    for a, b in zip(back.episodes, demos.episodes, strict=True):
        assert (a.task, a.variation, a.instruction) == (b.task, b.variation, b.instruction)
        np.testing.assert_array_equal(a.actions, b.actions)
        for k in b.obs:
            np.testing.assert_array_equal(a.obs[k], b.obs[k])
    # same content, same fingerprint
    assert write_demos(path.with_name("copy.hdf5"), demos) == fingerprint


def test_changed_or_corrupt_files_are_refused(demo_file, tmp_path) -> None:
    path, _ = demo_file
    changed = tmp_path / "changed.hdf5"
    changed.write_bytes(path.read_bytes())
    with h5py.File(changed, "r+") as f:
        f["data/demo_1/actions"][0, 0] += 0.5
    with pytest.raises(ValueError, match="fingerprint mismatch.*modified or corrupted"):
        read_demos(changed)
    garbage = tmp_path / "garbage.hdf5"
    garbage.write_bytes(b"not an hdf5 file" * 100)
    with pytest.raises(ValueError, match="not a readable HDF5 file.*collect the demonstrations again"):
        read_demos(garbage)
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match="collect the demonstrations again"):
        read_demos(truncated)
    with pytest.raises(FileNotFoundError, match="collect it first"):
        read_demos(tmp_path / "missing.hdf5")


def test_action_chunks_repeat_the_last_action() -> None:
    actions = np.arange(10, dtype=np.float32).reshape(5, 2)
    chunks, valid = action_chunks(actions, 3)
    assert chunks.shape == (5, 3, 2) and valid.shape == (5, 3)
    np.testing.assert_array_equal(chunks[0], actions[:3])
    np.testing.assert_array_equal(chunks[4], np.repeat(actions[4:], 3, axis=0))
    assert valid.sum(1).tolist() == [3, 3, 3, 2, 1]
    with pytest.raises(ValueError, match="chunk_size"):
        action_chunks(actions, 0)


def test_load_demos_stacks_per_suite_with_chunk_targets(demos, demo_file) -> None:
    path, _ = demo_file
    data = load_demos(path, chunk_size=5)
    assert sorted(data) == ["button", "drawer"]
    d = data["drawer"]
    drawer_eps = [ep for ep in demos.episodes if ep.task == DRAWER]
    n = sum(len(ep) for ep in drawer_eps)
    assert len(d) == n and d.tasks == (DRAWER,) and d.instructions == {DRAWER: "close the drawer"}
    assert d.obs["state"].shape == (n, mw.STATE_DIM) and d.obs["instruction"].shape == (n, INSTRUCTION_LEN)
    assert d.actions.shape == (n, 5, 4) and d.actions.dtype == np.float32
    assert (d.task_index == 0).all() and d.step[0] == 0
    first = drawer_eps[0]
    np.testing.assert_array_equal(d.actions[: len(first), 0], first.actions)
    np.testing.assert_array_equal(d.actions[len(first) - 1], np.repeat(first.actions[-1:], 5, 0))
    assert not d.action_valid[len(first) - 1, 1:].any()
    expert = load_demos(path, chunk_size=1, suites=["button"], action_key="expert_actions")
    assert list(expert) == ["button"]
    with pytest.raises(ValueError, match="no demonstrations of suites"):
        load_demos(path, chunk_size=1, suites=["door_window"])


def test_ensure_demos_collects_once_and_images_round_trip(tmp_path, monkeypatch) -> None:
    kwargs = dict(tasks=[BUTTON], episodes_per_task=1, vision=True, image_size=16)
    path, got = ensure_demos(tmp_path, **kwargs)
    img = got.episodes[0].obs["image"]
    assert img.shape[1:] == (16, 16, 3) and img.dtype == np.uint8
    monkeypatch.setattr(demo_data, "collect_demos", lambda **_: pytest.fail("collected twice"))
    again_path, again = ensure_demos(tmp_path, **kwargs)
    assert again_path == path and again.fingerprint == got.fingerprint
    with pytest.raises(TypeError, match="collect_demos' keyword arguments"):
        ensure_demos(tmp_path, episodes=3)
