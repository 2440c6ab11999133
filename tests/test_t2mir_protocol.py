"""T2MIR on Cheetah-Vel: the goal-conditioned expert (target in its input, never in the histories'
observations), noise-annealed histories, the reference's context protocol (random episodes sorted
by return for training, the best previous episodes sorted by return at evaluation), baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from streammoe_envs.task_families import task_family

from streammoe import checkpoint as ckpt
from streammoe.control.t2mir import evaluate as evaluate_module
from streammoe.control.t2mir.data import (
    ContextSampler,
    History,
    collect_expert_anneal,
    ensure_dataset,
)
from streammoe.control.t2mir.evaluate import context_episodes_for, evaluate_in_context
from streammoe.control.t2mir.expert import (
    CheetahExpert,
    TargetInObservation,
    ensure_expert,
    score_expert,
)
from streammoe.control.t2mir.model import ModelConfig
from streammoe.control.t2mir.train import TrainConfig, train_variant

SETTINGS = {"steps": 1, "target_range": [0.0, 3.0], "hidden": [8, 8], "lr": 3e-4, "batch_size": 4,
            "learning_starts": 0, "settle_steps": 2, "max_error": 10.0}


def _histories(returns: np.ndarray) -> list[History]:
    """Histories whose episode i has return returns[task, i] (one step per episode)."""
    n_tasks, n_ep = returns.shape
    return [History(np.full((n_ep, 1, 1), i, np.float32), np.zeros((n_ep, 1, 1), np.float32),
                    returns[i][:, None].astype(np.float32), np.zeros(1, np.float32)) for i in range(n_tasks)]


def test_target_in_observation_wrapper_resamples_and_appends_the_target() -> None:
    fam = task_family("cheetah_vel", 2, 1, horizon=5)
    env = TargetInObservation(fam.make_env(fam.train_tasks[0]), 0.5, 2.5)
    obs, _ = env.reset(seed=3)
    assert obs.shape == (18,) and env.observation_space.shape == (18,)
    targets = [float(obs[-1])] + [float(env.reset()[0][-1]) for _ in range(20)]
    assert all(0.5 <= t <= 2.5 for t in targets) and len(set(targets)) == 21
    assert float(env.unwrapped.task[0]) == pytest.approx(targets[-1])  # the env rewards that target
    assert float(TargetInObservation(fam.make_env(fam.train_tasks[0]), 0.5, 2.5).reset(seed=3)[0][-1]) == targets[0]
    with pytest.raises(ValueError, match="low < high"):
        TargetInObservation(fam.make_env(fam.train_tasks[0]), 2.0, 1.0)


def test_expert_file_roundtrip_and_wrong_settings(tmp_path) -> None:
    expert = CheetahExpert(17, 6, [8, 8])
    path = expert.save(tmp_path / "e.safetensors", SETTINGS, {"mean_abs_error_all": 0.1})
    again, score = CheetahExpert.load(path, SETTINGS)
    obs, targets = np.random.default_rng(0).standard_normal((4, 17)), np.array([0.0, 1.0, 2.0, 3.0])
    np.testing.assert_array_equal(expert.act(obs, targets), again.act(obs, targets))
    assert expert.act(obs, targets).shape == (4, 6) and np.abs(expert.act(obs, targets)).max() <= 1.0
    assert score == {"mean_abs_error_all": 0.1}
    with pytest.raises(ckpt.CheckpointError, match="steps"):
        CheetahExpert.load(path, {**SETTINGS, "steps": 2})
    (tmp_path / "bad.safetensors").write_bytes(b"\x80\x04not a checkpoint")
    with pytest.raises(ckpt.CheckpointError, match="never unpickles"):
        CheetahExpert.load(tmp_path / "bad.safetensors")


def test_ensure_expert_trains_once_and_enforces_its_acceptance(tmp_path, monkeypatch) -> None:
    import streammoe.control.t2mir.expert as expert_module

    fam = task_family("cheetah_vel", 2, 2, horizon=30)
    calls = []

    def fake_train(family, settings, seed, tensorboard_log=None):
        calls.append(seed)
        return CheetahExpert(17, 6, settings["hidden"])

    monkeypatch.setattr(expert_module, "train_expert", fake_train)
    path, _, score = ensure_expert(tmp_path, fam, SETTINGS, seed=0)
    assert path.is_file() and path.with_suffix(".json").is_file() and calls == [0]
    assert len(score["mean_abs_error"]) == 2  # one per test velocity
    ensure_expert(tmp_path, fam, SETTINGS, seed=0)
    assert calls == [0]  # cached
    with pytest.raises(ValueError, match="misses its acceptance test"):
        ensure_expert(tmp_path, fam, {**SETTINGS, "max_error": 1e-6}, seed=0)


def test_score_expert_measures_velocity_error_after_settling() -> None:
    fam = task_family("cheetah_vel", 1, 2, horizon=25)
    still = CheetahExpert(17, 6, [4])
    with torch.no_grad():
        for p in still.parameters():
            p.zero_()  # zero action: the cheetah hardly moves, so the error is about the target
    score = score_expert(still, fam, np.array([0.0, 2.0]), seed=0, settle_steps=5)
    assert score["mean_abs_error"][0] < 0.1 and score["mean_abs_error"][1] == pytest.approx(2.0, abs=0.1)


def test_cheetah_histories_never_show_the_target_and_anneal_to_the_expert() -> None:
    """An 'expert' that holds one posture: its episodes differ from the random ones, so returns move
    as the random-action probability anneals; the observations are HalfCheetah's 17 numbers."""
    fam = task_family("cheetah_vel", 2, 1, horizon=20)
    seen = []

    def expert(obs, task):
        seen.append(float(np.ravel(task)[0]))
        return np.zeros(6)

    hists = [collect_expert_anneal(fam, task, 10, seed=i, anneal_fraction=0.5, expert=expert)
             for i, task in enumerate(fam.train_tasks)]
    for h, task in zip(hists, fam.train_tasks):
        assert h.observations.shape == (10, 20, 17)  # HalfCheetah's observation: no target in it
        cols = h.observations.reshape(-1, 17)
        assert not np.any(np.all(np.isclose(cols, task[0]), axis=0))  # no column is the target
        assert np.abs(h.actions[5:]).max() <= 0.5  # after the anneal: the expert (+ noise 0.1)
        assert np.abs(h.actions[0]).max() > 0.9  # the first episode: uniform random actions
    assert sorted(set(np.round(seen, 4).tolist())) == sorted(np.round(fam.train_tasks.ravel().astype(float), 4).tolist())


def test_random_sorted_windows_rise_and_span_the_history() -> None:
    rng = np.random.default_rng(0)
    returns = np.cumsum(rng.normal(1.0, 2.0, (4, 30)), axis=1)  # noisy learning curves
    hist = _histories(returns)
    s = ContextSampler(hist, context_episodes=4, batch_size=8, seed=0)
    spans = []
    for _ in range(50):
        b = s.sample()
        r = b["rew"].reshape(8, 4)
        assert (np.diff(r, axis=1) >= 0).all()  # in return order
        for row, task in zip(r, b["task_ids"]):
            spans.append((row.max() - row.min()) / np.ptp(returns[task]))
            assert len(set(row.tolist())) == 4  # four distinct episodes
    assert np.mean(spans) >= 1 / 3
    consecutive = ContextSampler(hist, 4, 8, 0, window="consecutive").sample()
    ep = consecutive["obs"].shape  # a run of 4 episodes of the stored order
    assert ep == (8, 4, 1)
    with pytest.raises(ValueError, match="unknown context window"):
        ContextSampler(hist, 4, 8, 0, window="sorted")


def test_context_choice_at_evaluation() -> None:
    r = np.array([[-5.0, -1.0, -3.0, -2.0], [0.0, -1.0, -2.0, -3.0]])
    assert context_episodes_for(r, 3, "best_sorted").tolist() == [[2, 3, 1], [2, 1, 0]]
    assert context_episodes_for(r[:, :1], 3, "best_sorted").tolist() == [[0], [0]]
    assert context_episodes_for(r[:, :0], 3, "best_sorted").shape == (2, 0)
    assert context_episodes_for(r, 2, "recent").tolist() == [[2, 3], [2, 3]]


def test_evaluation_prefills_the_best_previous_episodes_in_return_order(tmp_path, monkeypatch) -> None:
    fam = task_family("point_robot", 4, 2, horizon=6)
    _, _, hist = ensure_dataset(tmp_path, fam, 6, {"name": "expert_anneal"}, seed=0)
    mcfg = ModelConfig(obs_dim=2, act_dim=2, horizon=6, d_model=16, n_layers=2, n_heads=2, expert_hidden=16)
    model, _ = train_variant("ad", mcfg, TrainConfig(steps=2, batch_size=4, context_episodes=3, warmup_steps=1),
                             hist, torch.device("cpu"), seed=0)
    prefilled = []
    real = evaluate_module.prefill_context

    def spy(model, cache, obs, act, rew, horizon):
        prefilled.append(rew.reshape(rew.shape[0], -1, horizon).sum(-1))
        return real(model, cache, obs, act, rew, horizon)

    monkeypatch.setattr(evaluate_module, "prefill_context", spy)
    res = evaluate_in_context(model, fam, fam.test_tasks, 5, 3, seed=0, sample=True)
    assert len(prefilled) == 4  # episodes 2..5 have a context
    for ep, ctx in enumerate(prefilled, start=1):
        best = np.sort(res.returns[:, :ep], axis=1)[:, -min(2, ep):]
        np.testing.assert_allclose(ctx, best, rtol=1e-5)
    assert res.rewards.shape == (2, 5, 6)
    np.testing.assert_allclose(res.rewards.sum(-1), res.returns, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown evaluation context"):
        evaluate_in_context(model, fam, fam.test_tasks, 2, 3, seed=0, context="best")


def test_shipped_cheetah_expert_passes_acceptance_and_its_histories_learn(make_config) -> None:
    """The expert the Cheetah-Vel benchmark used (results/t2mir/cheetah_expert, trained by
    ensure_expert with the config's t2mir.expert settings): below 0.3 m/s mean velocity error on
    the held-out velocities after 20 steps, and a noise-annealed history on a training velocity
    ends far above where it starts (and above standing still)."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from streammoe.control.t2mir.experiment import family_from_config

    c = make_config(["experiment=t2mir_cheetahvel"]).t2mir
    settings = OmegaConf.to_container(c.expert, resolve=True)
    files = sorted((Path(__file__).resolve().parents[1] / "results/t2mir/cheetah_expert").glob("*.safetensors"))
    assert len(files) == 1
    expert, saved = CheetahExpert.load(files[0], settings)  # refuses an expert of other settings
    fam = family_from_config(c)
    score = score_expert(expert, fam, fam.test_tasks, seed=1, settle_steps=settings["settle_steps"])
    assert score["mean_abs_error_all"] < settings["max_error"] == 0.3
    # the same expert scores what it scored when saved, up to the drift of a contact-rich rollout
    # between machines and library builds: 0.1294 when saved, 0.1203 on the machines of
    # 2026-12-07 with the same package versions pinned here (gymnasium 1.2-1.4 and numpy 2.3-2.4
    # alike); a different expert or settings would be refused by CheetahExpert.load above
    assert score["mean_abs_error_all"] == pytest.approx(saved["mean_abs_error_all"], rel=0.15)
    task = fam.train_tasks[0]
    h = collect_expert_anneal(fam, task, 10, seed=0, anneal_fraction=0.6, action_noise=0.1, expert=expert.act)
    standing_still = -float(task[0]) * fam.horizon
    assert h.returns[-1] > h.returns[0] + 0.5 * abs(standing_still)
    assert h.returns[-1] > standing_still + 0.5 * abs(standing_still)
