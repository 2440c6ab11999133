"""SkillBlender: frozen skills, the per-joint blender policy under PPO, checkpoints, and the Hydra
experiments end to end at smoke size."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import imageio.v2 as imageio
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env
from streammoe_envs.skillblend import ACTION_DIM, ENV_IDS, PROPRIO_DIM, PROPRIO_RATES, SKILL_ENVS
from streammoe_envs.skillblend.skill_envs import ReachEnv, WalkEnv

import streammoe  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from streammoe import checkpoint
from streammoe.cli import run_experiment
from streammoe.config import ConfigError
from streammoe.control.skillblend import (
    MLPSkill,
    SkillBlendPolicy,
    load_skill,
    save_skill,
    skill_from_sb3,
)
from streammoe.control.skillblend import skills as skills_module
from streammoe.control.skillblend.config import validated
from streammoe.control.skillblend.experiment import make_model

SMALL_PPO = {"n_steps": 32, "batch_size": 32, "n_epochs": 2, "learning_rate": 1e-3}


def make_skills(seed: int = 0) -> list[MLPSkill]:
    torch.manual_seed(seed)
    return [MLPSkill("walk", 3 + PROPRIO_DIM, ACTION_DIM, WalkEnv.goal_low, WalkEnv.goal_high, hidden=(16,)),
            MLPSkill("reach", 3 + PROPRIO_DIM, ACTION_DIM, ReachEnv.goal_low, ReachEnv.goal_high, hidden=(16,))]


def blender(selection: str = "blend", seed: int = 0, n_envs: int = 2) -> PPO:
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=n_envs, seed=seed, env_kwargs={"max_episode_steps": 20})
    return PPO(SkillBlendPolicy, vec, seed=seed, device="cpu", **SMALL_PPO,
               policy_kwargs={"skills": make_skills(seed), "proprio_dim": PROPRIO_DIM,
                              "selection": selection, "net_arch": [16, 16]})


# ---------------------------------------------------------------------- skills
def test_skill_checkpoint_round_trip(tmp_path: Path) -> None:
    skill = make_skills()[1]
    path = save_skill(skill, tmp_path / "reach.pt")
    loaded = load_skill(path)
    g, p = torch.randn(5, 3), torch.randn(5, PROPRIO_DIM)
    torch.testing.assert_close(loaded(g, p), skill(g, p))
    assert loaded.name == "reach" and not any(q.requires_grad for q in loaded.parameters())
    torch.testing.assert_close(loaded.goal_high, torch.tensor(ReachEnv.goal_high, dtype=torch.float32))


def test_bad_skill_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no skill checkpoint"):
        load_skill(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable skill checkpoint"):
        load_skill(tmp_path / "corrupt.pt")
    checkpoint.save(tmp_path / "foreign.pt", {"state_dict": {}}, kind=skills_module.CHECKPOINT_KIND,
                    version=skills_module.CHECKPOINT_VERSION)
    with pytest.raises(ValueError, match="missing"):
        load_skill(tmp_path / "foreign.pt")
    skill = make_skills()[0]
    save_skill(skill, tmp_path / "walk.pt")
    ckpt = checkpoint.load(tmp_path / "walk.pt", kind=skills_module.CHECKPOINT_KIND,
                           version=skills_module.CHECKPOINT_VERSION).state
    ckpt["config"]["hidden"] = [8]
    checkpoint.save(tmp_path / "mismatch.pt", ckpt, kind=skills_module.CHECKPOINT_KIND,
                    version=skills_module.CHECKPOINT_VERSION)
    with pytest.raises(ValueError, match="do not fit"):
        load_skill(tmp_path / "mismatch.pt")


def test_skill_rejects_wrong_input_sizes() -> None:
    skill = make_skills()[0]
    with pytest.raises(ValueError, match="takes goal"):
        skill(torch.zeros(2, 4), torch.zeros(2, PROPRIO_DIM))
    with pytest.raises(ValueError, match="low < high"):
        MLPSkill("bad", 5, 2, [1.0], [0.0])


def test_skill_from_sb3_matches_the_ppo_actor() -> None:
    vec = make_vec_env(ENV_IDS["reach"], n_envs=1, seed=0)
    model = PPO("MlpPolicy", vec, seed=0, device="cpu", policy_kwargs={"net_arch": [16, 16]})
    raw = skill_from_sb3(model, "reach", ReachEnv.goal_low, ReachEnv.goal_high, squash="none")
    squashed = skill_from_sb3(model, "reach", ReachEnv.goal_low, ReachEnv.goal_high)
    obs = np.random.default_rng(0).normal(size=(4, 3 + PROPRIO_DIM)).astype(np.float32) * 3
    expected = model.policy.get_distribution(torch.as_tensor(obs)).distribution.mean.detach()
    x = torch.as_tensor(obs)
    torch.testing.assert_close(raw(x[:, :3], x[:, 3:]), expected)
    torch.testing.assert_close(squashed(x[:, :3], x[:, 3:]), torch.tanh(expected))


def test_squashed_skills_stay_in_the_action_box() -> None:
    skill = make_skills()[0]
    with torch.no_grad():
        skill.head.weight.mul_(100.0)  # raw means far outside [-1, 1]
    out = skill(torch.randn(64, 3), torch.randn(64, PROPRIO_DIM))
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.99
    with pytest.raises(ValueError, match="squash"):
        MLPSkill("bad", 5, 2, [-1.0], [1.0], squash="clip")


# ---------------------------------------------------------------------- the blender
def test_blend_is_a_per_joint_softmax_mixture_of_skill_actions() -> None:
    model = blender()
    policy = model.policy
    with torch.no_grad():  # random logits so the weights are far from uniform
        policy.action_net.weight.normal_(0, 1.0)
        policy.action_net.bias.normal_(0, 1.0)
    obs = np.stack([model.env.observation_space.sample() for _ in range(3)]).clip(-3, 3)
    d = policy.blend_details(obs)
    w, acts = d["weights"], d["skill_actions"]
    assert w.shape == (3, 2, ACTION_DIM)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    assert np.abs(w[:, 0] - w[:, 0, :1]).max() > 1e-3  # joints get different weights
    np.testing.assert_allclose(d["mean"], (w * acts).sum(axis=1), rtol=1e-5, atol=1e-6)
    # goals inside each skill's range
    lo = np.r_[WalkEnv.goal_low, ReachEnv.goal_low]
    hi = np.r_[WalkEnv.goal_high, ReachEnv.goal_high]
    assert np.all(d["goals"] >= lo) and np.all(d["goals"] <= hi)
    # the deterministic action is the blend's mean (clipped to the action box)
    action, _ = model.predict(obs, deterministic=True)
    np.testing.assert_allclose(action, d["mean"].clip(-1, 1), rtol=1e-5, atol=1e-6)


def test_stacked_skills_match_running_them_one_by_one() -> None:
    policy = blender().policy
    assert policy.stacked
    goals = torch.randn(5, policy.goal_total)
    proprio = torch.randn(5, PROPRIO_DIM)
    stacked = policy._skill_actions(goals, proprio)
    one_by_one = torch.stack([s(goals[:, sl], proprio) for s, sl in zip(policy.skills, policy.goal_slices)], dim=1)
    torch.testing.assert_close(stacked, one_by_one)
    policy.stacked = False
    torch.testing.assert_close(policy._skill_actions(goals, proprio), one_by_one)
    # squashed goals equal each skill's own clamp_goal
    raw = torch.randn(5, policy.goal_total) * 3
    squashed = policy.goal_mid + policy.goal_half * torch.tanh(raw)
    for s, sl in zip(policy.skills, policy.goal_slices):
        torch.testing.assert_close(squashed[:, sl], s.clamp_goal(raw[:, sl]))


def test_hard_selection_uses_one_skill_for_all_joints() -> None:
    policy = blender("hard").policy
    with torch.no_grad():
        policy.action_net.bias.copy_(torch.tensor([0.0] * 6 + [0.0, 3.0]))  # goals, 2 skill logits
    d = policy.blend_details(np.zeros((2, PROPRIO_DIM + 5), dtype=np.float32))
    np.testing.assert_array_equal(d["weights"][:, 1], 1.0)
    np.testing.assert_array_equal(d["weights"][:, 0], 0.0)
    np.testing.assert_allclose(d["mean"], d["skill_actions"][:, 1], rtol=1e-6)


def test_log_std_is_state_independent_over_joint_actions() -> None:
    policy = blender().policy
    dist = policy.get_distribution(torch.randn(4, PROPRIO_DIM + 5))
    assert policy.log_std.shape == (ACTION_DIM,)
    std = dist.distribution.stddev
    torch.testing.assert_close(std, policy.log_std.exp().expand(4, ACTION_DIM))


@pytest.mark.parametrize("selection", ["blend", "hard"])
def test_ppo_trains_the_blender_not_the_skills(selection: str) -> None:
    model = blender(selection)
    policy = model.policy
    skills_before = [p.detach().clone() for p in policy.skills.parameters()]
    heads_before = {n: p.detach().clone() for n, p in policy.named_parameters() if not n.startswith("skills.")}
    opt_params = {id(p) for g in policy.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in opt_params for p in policy.skills.parameters())
    model.learn(total_timesteps=64)
    for before, after in zip(skills_before, policy.skills.parameters()):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    changed = {n for n, p in policy.named_parameters() if n in heads_before and not torch.equal(heads_before[n], p)}
    assert {"action_net.weight", "log_std", "value_net.weight"} <= changed
    assert any(n.startswith("mlp_extractor.policy_net") for n in changed)


def test_gradients_flow_through_frozen_skills_into_the_goal_head() -> None:
    policy = blender().policy
    obs = torch.randn(8, PROPRIO_DIM + 5)
    actions = torch.randn(8, ACTION_DIM)
    _, log_prob, _ = policy.evaluate_actions(obs, actions)
    log_prob.sum().backward()
    goal_rows = policy.action_net.weight.grad[: policy.goal_total]
    logit_rows = policy.action_net.weight.grad[policy.goal_total:]
    assert goal_rows.abs().sum() > 0  # through skill(goal, proprio) to the goals
    assert logit_rows.abs().sum() > 0  # through the per-joint softmax to the weight logits
    assert all(p.grad is None for p in policy.skills.parameters())


def test_blender_save_load_round_trip(tmp_path: Path) -> None:
    model = blender()
    model.learn(total_timesteps=64)
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert isinstance(loaded.policy, SkillBlendPolicy) and loaded.policy.selection == "blend"
    obs = np.stack([model.env.observation_space.sample() for _ in range(4)]).clip(-3, 3)
    np.testing.assert_allclose(loaded.predict(obs, deterministic=True)[0],
                               model.predict(obs, deterministic=True)[0], rtol=1e-6)


def test_blender_can_be_blind_to_rates_while_the_skills_see_them(tmp_path: Path) -> None:
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=1, seed=0, env_kwargs={"max_episode_steps": 20})
    model = PPO(SkillBlendPolicy, vec, seed=0, device="cpu", **SMALL_PPO,
                policy_kwargs={"skills": make_skills(), "proprio_dim": PROPRIO_DIM, "net_arch": [16, 16],
                               "hidden_from_blender": PROPRIO_RATES})
    with torch.no_grad():  # random heads, so goals and weights depend on every visible input
        model.policy.action_net.weight.normal_()
    obs = np.stack([vec.observation_space.sample() for _ in range(3)]).clip(-3, 3)
    moved = obs.copy()
    moved[:, list(PROPRIO_RATES)] += 0.5
    a, b = model.policy.blend_details(obs), model.policy.blend_details(moved)
    np.testing.assert_array_equal(a["goals"], b["goals"])
    np.testing.assert_array_equal(a["weights"], b["weights"])
    assert not np.allclose(a["skill_actions"], b["skill_actions"])  # the skills still read the rates
    values = [model.policy.predict_values(model.policy.obs_to_tensor(o)[0]) for o in (obs, moved)]
    torch.testing.assert_close(values[0], values[1])
    pose = obs.copy()
    pose[:, 0] += 0.5  # arm joint angle: visible to the blender
    assert not np.allclose(model.policy.blend_details(pose)["goals"], a["goals"])
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.policy.hidden_from_blender == tuple(sorted(PROPRIO_RATES))
    np.testing.assert_allclose(loaded.policy.blend_details(moved)["goals"], a["goals"], rtol=1e-6)
    with pytest.raises(ValueError, match="hidden_from_blender"):
        PPO(SkillBlendPolicy, vec, policy_kwargs={"skills": make_skills(), "proprio_dim": PROPRIO_DIM,
                                                  "hidden_from_blender": [10_000]})


def test_policy_rejects_bad_configuration() -> None:
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=1, seed=0)
    with pytest.raises(ValueError, match="selection"):
        PPO(SkillBlendPolicy, vec, policy_kwargs={"skills": make_skills(), "proprio_dim": PROPRIO_DIM,
                                                  "selection": "soft"})
    with pytest.raises(ValueError, match="proprio"):
        PPO(SkillBlendPolicy, vec, policy_kwargs={"skills": make_skills(), "proprio_dim": PROPRIO_DIM + 1})
    with pytest.raises(ValueError, match="at least one skill"):
        PPO(SkillBlendPolicy, vec, policy_kwargs={"skills": [], "proprio_dim": PROPRIO_DIM})
    with pytest.raises(ValueError, match="goal_gain"):
        PPO(SkillBlendPolicy, vec, policy_kwargs={"skills": make_skills(), "proprio_dim": PROPRIO_DIM,
                                                  "goal_gain": 0.0})


def test_blender_sees_rates_switch_reaches_the_policy(make_config) -> None:
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=1, seed=0)
    for sees, hidden in ((False, tuple(PROPRIO_RATES)), (True, ())):
        cfg = make_config(["experiment=skillblend_smoke", f"skillblend.blender_sees_rates={sees}"])
        for method in ("blend", "hard"):
            assert make_model(method, vec, make_skills(), cfg.skillblend, 0, "cpu").policy.hidden_from_blender == hidden


def test_goal_gain_is_per_task_unless_set(make_config) -> None:
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=1, seed=0)
    gains = {}
    for overrides in ([], ["skillblend.task=box_push"], ["skillblend.task=box_push", "skillblend.goal_gain=2.0"],
                      ["skillblend.goal_gain_by_task.far_reach=0.5"]):
        cfg = make_config(["experiment=skillblend_smoke", *overrides])
        validated(cfg)
        gains[tuple(overrides)] = make_model("blend", vec, make_skills(), cfg.skillblend, 0, "cpu").policy.goal_gain
    default = make_config(["experiment=skillblend"]).skillblend.goal_gain_by_task
    assert list(gains.values()) == [default["far_reach"], default["box_push"], 2.0, 0.5]
    assert default["box_push"] != default["far_reach"]  # the per-task choice is in effect


@pytest.mark.parametrize(("overrides", "match"), [
    (["skillblend.goal_gain=0.0"], r"skillblend\.goal_gain must be > 0"),
    (["skillblend.goal_gain_by_task.far_reach=-1.0"], r"skillblend\.goal_gain_by_task\.far_reach must be > 0"),
    (["+skillblend.goal_gain_by_task.box_pull=1.0"], r"goal_gain_by_task key must be one of"),
    (["~skillblend.goal_gain_by_task.far_reach"], r"no entry for task 'far_reach'.*goal_gain_by_task\.far_reach="),
])
def test_bad_goal_gain_settings_are_refused(make_config, overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        validated(make_config(["experiment=skillblend_smoke", *overrides]))


def test_make_model_rejects_unknown_method(make_config) -> None:
    cfg = make_config(["experiment=skillblend_smoke"])
    vec = make_vec_env(ENV_IDS["far_reach"], n_envs=1, seed=0)
    with pytest.raises(ValueError, match="method"):
        make_model("soft", vec, make_skills(), cfg.skillblend, 0, "cpu")


# ---------------------------------------------------------------------- experiments end to end
def test_real_configs_compose(make_config) -> None:
    cfg = make_config(["experiment=skillblend"])
    assert cfg.skillblend.method == "blend" and cfg.skillblend.eval_episodes >= 20
    assert cfg.skillblend.blender_sees_rates is False
    assert list(cfg.skillblend.skills.names) == ["walk", "reach"]
    cfg = make_config(["experiment=skillblend_skills"])
    assert all(name in SKILL_ENVS and cfg.skillblend.skills.timesteps[name] > 10_000
               for name in cfg.skillblend.skills.names)


def test_skill_env_kwargs_reach_the_skill_envs(make_config) -> None:
    from streammoe.control.skillblend.experiment import make_vec, skill_env_kwargs

    sk = make_config(["experiment=skillblend_skills",
                      "skillblend.skills.env_kwargs.reach.goal_distortion_gain=2.0"]).skillblend.skills
    assert skill_env_kwargs(sk, "reach") == {"goal_distortion_gain": 2.0}
    assert skill_env_kwargs(sk, "walk_velocity") == {}
    vec = make_vec(ENV_IDS["reach"], 2, 0, 16, skill_env_kwargs(sk, "reach"))
    assert all(e.unwrapped.goal_distortion_gain == 2.0 for e in vec.envs)
    vec.close()
    with pytest.raises(TypeError, match="no_such_option"):
        make_vec(ENV_IDS["reach"], 1, 0, None, {"no_such_option": 1})


def _frames(path: Path) -> int:
    reader = imageio.get_reader(path)
    try:
        return sum(1 for _ in reader)
    finally:
        reader.close()


def test_smoke_trains_skills_then_blender_and_writes_everything(make_config, tmp_path: Path) -> None:
    cfg = make_config(["experiment=skillblend_smoke"])
    metrics = run_experiment(cfg, tmp_path)
    for key in ("final_error_mean", "final_error_std", "success_rate", "energy", "joint_velocity", "tilt"):
        assert np.isfinite(metrics[key]), key
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["final_error_mean"] == pytest.approx(metrics["final_error_mean"])
    assert (tmp_path / "skills" / "walk.safetensors").is_file() and (tmp_path / "skills" / "reach.safetensors").is_file()
    assert (tmp_path / "blend_weights.png").stat().st_size > 1000
    weights = np.load(tmp_path / "blend_weights.npz")["weights"]
    assert weights.shape == (16, 2, ACTION_DIM)
    # one episode of 16 steps: a frame after reset and one after each step
    assert metrics["video_frames"] == 17 and _frames(tmp_path / "far_reach_blend.mp4") == 17
    assert (tmp_path / "metrics.csv").read_text().count("\n") >= 3  # skill + blender rollouts


def test_smoke_reuses_a_skills_dir_and_runs_baselines(make_config, tmp_path: Path) -> None:
    skills_run = tmp_path / "skills_run"
    cfg = make_config(["experiment=skillblend_skills", "skillblend/skills=smoke"])
    out = run_experiment(cfg, skills_run)
    assert np.isfinite(out["walk_final_error_mean"]) and out["reach_video_frames"] == 17
    walk_before = (skills_run / "skills" / "walk.safetensors").stat().st_mtime_ns
    for method in ("hard", "flat"):
        cfg = make_config(["experiment=skillblend_smoke", f"skillblend.method={method}",
                           "skillblend.task=button", f"skillblend.skills_dir={skills_run / 'skills'}"])
        m = run_experiment(cfg, tmp_path / method)
        assert m["method"] == method and np.isfinite(m["final_error_mean"])
        assert (tmp_path / method / f"button_{method}.mp4").is_file()
        assert (tmp_path / method / "blend_weights.png").is_file() == (method == "hard")
    assert (skills_run / "skills" / "walk.safetensors").stat().st_mtime_ns == walk_before  # reused, not retrained
    assert not (tmp_path / "hard" / "skills").exists()


def test_smoke_is_deterministic(make_config, tmp_path: Path) -> None:
    cfg = make_config(["experiment=skillblend_smoke", "skillblend.video_episodes=0",
                       "skillblend.method=flat", "skillblend.task=box_push"])
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    assert a["final_error_mean"] == b["final_error_mean"] and a["energy"] == b["energy"]


# ---------------------------------------------------------------------- diagnostic
@pytest.mark.parametrize("task", ["far_reach", "button", "box_push"])
def test_scripted_blender_routes_walk_to_the_base_and_reach_to_the_arm(task: str) -> None:
    from streammoe.control.skillblend.diagnose import scripted_blender

    walk, reach = make_skills()
    for skill, bias in ((walk, -0.3), (reach, 0.4)):  # constant skills: output tanh(head bias)
        with torch.no_grad():
            skill.head.weight.zero_()
            skill.head.bias.copy_(bias * torch.arange(1, ACTION_DIM + 1) / ACTION_DIM)
    policy = scripted_blender(task, walk, reach, standoff=0.5)
    obs, _ = gym.make(ENV_IDS[task]).reset(seed=0)
    action = policy(obs)
    expected = np.tanh(np.concatenate([walk.head.bias.detach().numpy()[:3], reach.head.bias.detach().numpy()[3:]]))
    np.testing.assert_allclose(action, expected, rtol=1e-6)
    with pytest.raises(ValueError, match="unknown task"):
        scripted_blender("juggle", walk, reach, 0.5)


def test_reach_error_by_height_reports_every_target() -> None:
    from streammoe.control.skillblend.diagnose import reach_error_by_height

    _, reach = make_skills()
    rows = reach_error_by_height(reach, [0.2, 0.6], [0.5], steps=3)
    assert [r["target_height"] for r in rows] == [0.2, 0.6]
    # the hand barely moves in 3 steps, so the error is about |hand - target|
    assert all(r["final_error"] > 0.1 and np.isfinite(r["hand_height"]) for r in rows)


SHIPPED_SKILLS = Path(__file__).resolve().parents[1] / "results" / "skillblend" / "skills"


@pytest.mark.parametrize("name", ["walk", "walk_velocity", "reach"])
def test_shipped_skills_still_solve_their_env(name: str) -> None:
    """The skills behind docs/skillblender.md's results ship in results/skillblend/skills. If the
    body, the observation layout or the skill envs change, they stop working: retrain them
    (experiment=skillblend_skills) and re-run the bench."""
    from streammoe.control.skillblend.evaluate import evaluate
    from streammoe.control.skillblend.experiment import skill_policy_fn
    from streammoe.control.skillblend.skills import load_skill

    skill = load_skill(SHIPPED_SKILLS / f"{name}.safetensors")
    metrics = evaluate(skill_policy_fn(skill), ENV_IDS[name], n_episodes=3, seed=10_000)
    if name == "walk_velocity":  # the command may change a few steps before the end: a transient
        assert metrics["success_rate"] >= 2 / 3 and metrics["final_error_mean"] < 0.1
    else:
        assert metrics["success_rate"] == 1.0 and metrics["final_error_mean"] < 0.05
