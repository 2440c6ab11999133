"""SkillBlender environments: Gymnasium API, observation layout, rewards, bad input, rendering."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.utils.passive_env_checker import env_render_passive_checker
from streammoe_envs.skillblend import ACTION_DIM, ENV_IDS, PROPRIO_DIM
from streammoe_envs.skillblend.base import ACTION_SCALE

import streammoe  # noqa: F401  (sets MUJOCO_GL before mujoco loads)

ALL = sorted(ENV_IDS)
TASKS = ["box_push", "button", "far_reach"]


@pytest.mark.parametrize("name", ALL)
def test_env_passes_gymnasium_checker(name: str) -> None:
    env = gym.make(ENV_IDS[name], render_mode="rgb_array")
    # The checker's own render pass also opens a "human" window, which needs a display; the
    # rgb_array mode gets the same passive render check explicitly.
    check_env(env.unwrapped, skip_render_check=True)
    env.reset(seed=0)
    env_render_passive_checker(env.unwrapped)
    env.close()


@pytest.mark.parametrize("name", ALL)
def test_reset_is_seeded_and_layout_holds(name: str) -> None:
    env = gym.make(ENV_IDS[name])
    a, _ = env.reset(seed=3)
    b, _ = env.reset(seed=3)
    c, _ = env.reset(seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    assert env.action_space.shape == (ACTION_DIM,)
    u = env.unwrapped
    prop = u.proprioception()
    assert prop.shape == (PROPRIO_DIM,)
    # skills: [goal, proprio]; tasks: [proprio, features]
    np.testing.assert_allclose(c[-PROPRIO_DIM:] if name in ("walk", "walk_velocity", "reach") else c[:PROPRIO_DIM], prop)
    env.close()


@pytest.mark.parametrize("name", ["far_reach", "walk"])
def test_bad_actions_are_rejected(name: str) -> None:
    env = gym.make(ENV_IDS[name]).unwrapped
    env.reset(seed=0)
    with pytest.raises(ValueError, match="6 entries"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([0, 0, np.nan, 0, 0, 0]))


def test_walk_goal_shrinks_when_driving_towards_it() -> None:
    env = gym.make(ENV_IDS["walk"]).unwrapped
    env.reset(seed=1)
    g0 = env.goal()
    for _ in range(20):  # drive along the base-frame displacement (a trivially scripted walker)
        dxy = env.goal()[:2]
        env.step(np.r_[np.clip(2 * dxy, -1, 1), 0, 0, 0, 0])
    assert np.linalg.norm(env.goal()[:2]) < np.linalg.norm(g0[:2]) - 0.3


def test_walk_velocity_tracks_commands_that_change_and_stop() -> None:
    env = gym.make(ENV_IDS["walk_velocity"]).unwrapped
    commands, zero = [], 0
    for seed in range(40):
        env.reset(seed=seed)
        seen = [env.goal()]
        for _ in range(100):
            obs = env.step(np.zeros(ACTION_DIM))[0]
            np.testing.assert_array_equal(obs[:3], env.goal())  # the observation carries the command
            if not np.array_equal(seen[-1], env.goal()):
                seen.append(env.goal())
        commands.append(len(seen))
        zero += sum(not np.any(c) for c in seen)
        assert all(np.all(c >= env.goal_low) and np.all(c <= env.goal_high) for c in seen)
    assert max(commands) == 3 and min(commands) == 1  # 0-2 changes within an episode
    assert 0.1 < zero / sum(commands) < 0.45  # about a quarter of the commands say "stand still"
    # Tracking the command in the base frame beats standing still against it.
    env.reset(seed=5)
    env.command = np.array([0.6, -0.3, 0.5])
    for _ in range(15):
        _, r_track, _, _, info = env.step(np.r_[env.command / ACTION_SCALE[:3], 0, 0, 0])
    assert info["error"] < 0.05
    for _ in range(15):
        _, r_still, _, _, still = env.step(np.zeros(ACTION_DIM))
    assert still["error"] > 0.5 and r_track > r_still


def test_reach_goal_distortion_changes_what_the_skill_sees_not_the_error() -> None:
    plain = gym.make(ENV_IDS["reach"]).unwrapped
    bent = gym.make(ENV_IDS["reach"], goal_distortion_gain=2.0).unwrapped
    obs_plain, _ = plain.reset(seed=4)
    obs_bent, _ = bent.reset(seed=4)
    np.testing.assert_allclose(obs_plain[:3], plain.goal())  # default: the exact difference vector
    np.testing.assert_array_equal(plain.goal_distortion_matrix, np.eye(3))
    m = bent.goal_distortion_matrix
    assert not np.allclose(m, np.eye(3))
    assert np.all((np.diag(m) >= 0.5) & (np.diag(m) <= 2.0)) and np.abs(m - np.diag(np.diag(m))).max() <= 0.3
    np.testing.assert_allclose(obs_bent[:3], m @ bent.goal())
    info = bent.step(np.zeros(ACTION_DIM))[-1]
    assert info["error"] == pytest.approx(np.linalg.norm(bent.goal()))  # scored on the true error
    with pytest.raises(ValueError, match="goal_distortion_gain"):
        gym.make(ENV_IDS["reach"], goal_distortion_gain=0.5)


def test_reach_reward_peaks_at_the_target() -> None:
    env = gym.make(ENV_IDS["reach"]).unwrapped
    env.reset(seed=2)
    far_reward, far_info = env.step(np.zeros(ACTION_DIM))[1::3]
    env.target = env.ee_pos  # put the target on the hand: error 0
    near_reward, near_info = env.step(np.zeros(ACTION_DIM))[1::3]
    assert near_info["error"] < 0.01 < far_info["error"]
    assert near_reward > far_reward and near_reward > 0.9
    assert near_info["success"]


def test_reach_targets_cover_the_low_workspace_the_box_push_needs() -> None:
    """Reach targets come from the arm's whole joint range, 35 % of them from poses pitched
    forward, so they include hand positions low ahead of the base (the box is 0.26 m tall); all
    clear the floor and the chassis."""
    env = gym.make(ENV_IDS["reach"]).unwrapped
    heights, ahead_low = [], 0
    for seed in range(300):
        env.reset(seed=seed)
        local = env.to_base_frame(env.target - np.array([*env.base_xy, 0.0]))
        heights.append(local[2])
        ahead_low += local[2] < 0.3 and local[0] > 0.35 and abs(local[1]) < 0.3
    assert min(heights) > 0.12
    assert ahead_low >= 8  # 2 in 300 with uniform poses over the old pitch range (±1.4)


@pytest.mark.parametrize("name", ["walk", "walk_velocity", "reach"])
def test_skill_rewards_charge_actuator_effort(name: str) -> None:
    """The skills' energy regulariser: a jerk of the command costs reward, scaled by effort."""
    charged, free = gym.make(ENV_IDS[name]).unwrapped, gym.make(ENV_IDS[name]).unwrapped
    free.energy_weight = 0.0
    charged.reset(seed=3), free.reset(seed=3)
    jerk = np.array([1.0, -1.0, 1.0, 1.0, -1.0, 1.0])
    r_charged, r_free = charged.step(jerk)[1], free.step(jerk)[1]
    assert charged.effort > 0.1  # a full-scale jerk pushes the actuators towards their limits
    assert r_charged == pytest.approx(r_free - charged.energy_weight * charged.effort)


@pytest.mark.parametrize("name", ALL)
def test_the_body_settles_under_a_zero_command_after_jerks(name: str) -> None:
    """Regression: without armature the arm's saturated velocity servos chattered forever (a
    2-step limit cycle at ~2 rad/s), which inflated every energy figure."""
    env = gym.make(ENV_IDS[name]).unwrapped
    for seed in range(25):  # armature 0.05 still chattered in 3 of these 25 seeds (each env)
        env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        for t in range(20):  # random jerks, then full-scale bang-bang
            env.step(rng.uniform(-1, 1, ACTION_DIM) if t < 10 else (-1) ** t * np.ones(ACTION_DIM))
        for _ in range(40):
            env.step(np.zeros(ACTION_DIM))
        assert env.effort < 1e-3
        assert np.abs(env.data.qvel[env._act_v]).max() < 1e-3


def test_button_press_latches_success() -> None:
    env = gym.make(ENV_IDS["button"]).unwrapped
    env.reset(seed=0)
    assert not env.step(np.zeros(ACTION_DIM))[4]["success"]
    env.data.qpos[env._button_q] = 0.02  # pushed 2 cm in
    info = env.step(np.zeros(ACTION_DIM))[4]
    assert info["success"]
    env.data.qpos[env._button_q] = 0.0
    assert env.step(np.zeros(ACTION_DIM))[4]["success"]  # stays pressed for the episode


@pytest.mark.parametrize(("name", "after_release"), [("button", 0.0), ("button_latched", 1.0)])
def test_button_press_term_holds_or_latches(name: str, after_release: float) -> None:
    """The press term pays 1 while the button is in; after a release it pays 0 under the holding
    reward and still 1 under the latched one. Success latches in both."""
    env = gym.make(ENV_IDS[name]).unwrapped
    env.reset(seed=0)
    face = env.button_face
    env.data.qpos[env._button_q] = 0.02
    pressed_reward, info = env._evaluate(np.zeros(ACTION_DIM))
    assert info["success"]
    hand_term = pressed_reward - 1.0
    env.data.qpos[env._button_q] = 0.0
    released_reward, info = env._evaluate(np.zeros(ACTION_DIM))
    assert info["success"]
    moved = np.exp(-np.linalg.norm(env.ee_pos - env.button_face)) - np.exp(-np.linalg.norm(env.ee_pos - face))
    assert released_reward == pytest.approx(hand_term + moved + after_release, abs=1e-9)


def test_box_push_error_is_box_to_goal_distance() -> None:
    env = gym.make(ENV_IDS["box_push"]).unwrapped
    env.reset(seed=5)
    info = env.step(np.zeros(ACTION_DIM))[4]
    assert info["error"] == pytest.approx(np.linalg.norm(env.box_pos[:2] - env.goal_xy))
    assert 0.5 < info["error"] < 1.1


def test_box_push_features_show_the_box_motion_and_a_quarter_turn_symmetric_yaw() -> None:
    """The last four task features: the box's velocity in the base frame and sin/cos(4 yaw) of
    the box relative to the base (a square box looks the same after a quarter turn)."""
    env = gym.make(ENV_IDS["box_push"]).unwrapped
    env.reset(seed=2)
    q, v = env.data.qpos.copy(), env.data.qvel.copy()
    q[env._qpos_idx["base_yaw"]] = np.pi / 2  # base faces +y: world +x is the base's -y
    q[env._box_q[2]] = np.pi / 2 + 0.3
    v[env._box_v] = [0.4, 0.0, 0.0]
    env.set_state(q, v)
    feats = env._get_obs()[PROPRIO_DIM:]
    assert feats.shape == (11,)
    np.testing.assert_allclose(feats[7:9], [0.0, -0.4], atol=1e-9)
    np.testing.assert_allclose(feats[9:], [np.sin(1.2), np.cos(1.2)], atol=1e-9)
    q[env._box_q[2]] += np.pi / 2
    env.set_state(q, v)
    np.testing.assert_allclose(env._get_obs()[PROPRIO_DIM + 9:], feats[9:], atol=1e-9)


def test_box_push_reward_prefers_the_hand_behind_the_box(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hand term pays for the push point on the box's side away from the goal: the same hand
    distance on the goal side earns less; within the success radius the point nears the box."""
    env = gym.make(ENV_IDS["box_push"]).unwrapped
    env.reset(seed=1)
    box = env.box_pos
    u = (env.goal_xy - box[:2]) / np.linalg.norm(env.goal_xy - box[:2])
    np.testing.assert_allclose(env.push_point, [*(box[:2] - env.push_standoff * u), box[2]])
    assert np.linalg.norm(env.push_point[:2] - box[:2]) == pytest.approx(0.155)
    env.goal_xy = box[:2] + 0.05 * u
    assert np.linalg.norm(env.push_point[:2] - box[:2]) == pytest.approx(0.155 * 0.05 / 0.1)
    env.goal_xy = box[:2] + 0.8 * u
    rewards = {}
    for side, sign in (("behind", -1.0), ("ahead", 1.0)):
        hand = np.array([*(box[:2] + sign * 0.2 * u), box[2]])
        monkeypatch.setattr(type(env), "ee_pos", property(lambda self, h=hand: h))  # the hand placed by hand
        rewards[side] = env._evaluate(np.zeros(ACTION_DIM))[0]
    assert rewards["behind"] > rewards["ahead"] + 0.1


@pytest.mark.parametrize(("arm", "moves"), [("lowered", True), ("raised", False)])
def test_only_a_lowered_hand_pushes_the_box(arm: str, moves: bool) -> None:
    """Driving at a box 1 m ahead: with the hand lowered (~0.2 m) it pushes the box; with the arm
    up the chassis passes over the box without moving it (only the hand can push)."""
    env = gym.make(ENV_IDS["box_push"]).unwrapped
    env.reset(seed=0)
    heading = np.array([np.cos(env.base_yaw), np.sin(env.base_yaw)])
    q = env.data.qpos.copy()
    q[env._box_q] = [*(env.base_xy + heading), 0.0]
    env.set_state(q, env.data.qvel.copy())
    start = env.box_pos.copy()
    arm_target = np.array([0.0, 1.5, 0.1]) if arm == "lowered" else np.zeros(3)
    for t in range(80):
        arm_action = np.clip(2.0 * (arm_target - env.data.qpos[env._arm_q]), -1, 1)
        env.step(np.array([0.0 if t < 25 else 0.5, 0.0, 0.0, *arm_action]))
    assert env.box_pos[2] == pytest.approx(start[2])  # it slides, never tips
    moved = np.linalg.norm(env.box_pos[:2] - start[:2])
    assert np.linalg.norm(env.base_xy) > 1.0  # the base drove past the box's start
    assert (moved > 0.3) if moves else (moved < 1e-6)


@pytest.mark.parametrize("name", TASKS)
def test_tasks_are_out_of_reach_from_the_start(name: str) -> None:
    """Every task needs the base to move: the target starts beyond the arm's ~0.75 m reach."""
    env = gym.make(ENV_IDS[name]).unwrapped
    for seed in range(5):
        env.reset(seed=seed)
        info = env.step(np.zeros(ACTION_DIM))[4]
        far = (np.linalg.norm(env.box_pos[:2] - env.base_xy) if name == "box_push" else info["error"])
        assert far > 0.9


def test_feasibility_figures_respond_to_motion() -> None:
    env = gym.make(ENV_IDS["far_reach"]).unwrapped
    env.reset(seed=0)
    still = env.step(np.zeros(ACTION_DIM))[4]
    for _ in range(5):
        moving = env.step(np.ones(ACTION_DIM))[4]
    assert moving["joint_velocity"] > still["joint_velocity"] + 0.5
    assert moving["torque"] > still["torque"]
    assert moving["tilt"] > 1e-3  # the suspension tilts under acceleration


def test_render_rgb_array_frame() -> None:
    env = gym.make(ENV_IDS["box_push"], render_mode="rgb_array")
    env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (240, 320, 3) and frame.dtype == np.uint8 and frame.std() > 5
    env.close()
