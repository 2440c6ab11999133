"""T2MIR training and evaluation: contrastive loss and EMA key router, exact resume of training and
of evaluation, checkpoint round-trip and corruption, and the Hydra smoke experiment end to end."""

from __future__ import annotations

import json
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import torch
from streammoe_envs.task_families import task_family

from streammoe.cli import run_experiment
from streammoe.control.t2mir import train as train_module
from streammoe.control.t2mir.data import ContextSampler, History, ensure_dataset
from streammoe.control.t2mir.evaluate import evaluate_in_context, read_eval_state
from streammoe.control.t2mir.model import ModelConfig
from streammoe.control.t2mir.train import TrainConfig, Trainer, load_checkpoint, train_variant

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    fam = task_family("point_robot", 4, 2, horizon=6)
    _, _, hist = ensure_dataset(tmp_path_factory.mktemp("data"), fam, 6, {"name": "expert_anneal"}, seed=0)
    mcfg = ModelConfig(obs_dim=2, act_dim=2, horizon=6, d_model=16, n_layers=2, n_heads=2, expert_hidden=16)
    tcfg = TrainConfig(steps=6, batch_size=4, context_episodes=2, warmup_steps=2, log_every=2, ckpt_every=2)
    return fam, hist, mcfg, tcfg


@pytest.mark.parametrize("kind", ["bilinear", "info_nce"])
def test_contrastive_loss_trains_the_task_router_and_ema_follows(small, kind, monkeypatch) -> None:
    _, hist, mcfg, tcfg = small
    tcfg = TrainConfig(**{**vars(tcfg), "contrastive": kind, "balance_weight": 0.0, "ema_tau": 0.5})
    trainer = Trainer("t2mir", mcfg, tcfg, CPU, ContextSampler(hist, 2, 4, 0), seed=0)
    router = trainer.model.task_router
    key_before = trainer.key_router.w_gate.weight.clone()
    # query and key are the gates' outputs (probabilities over the task experts), not raw logits,
    # which made q W k^T grow without bound in long runs
    seen = {}
    loss_name = "bilinear_contrastive_loss" if kind == "bilinear" else "info_nce_loss"
    original = getattr(train_module, loss_name)

    def spy(query, key, *args, **kwargs):
        seen["query"], seen["key"] = query.detach(), key.detach()
        return original(query, key, *args, **kwargs)

    monkeypatch.setattr(train_module, loss_name, spy)
    out = trainer.train_step()
    for name in ("query", "key"):
        assert seen[name].shape == (4, mcfg.n_task_experts) and (seen[name] >= 0).all()
        torch.testing.assert_close(seen[name].sum(-1), torch.ones(4))
    assert np.isfinite(out["contrastive"]) and out["contrastive"] > 0
    if kind == "bilinear":
        assert trainer.bilinear.grad is not None and trainer.bilinear.grad.abs().sum() > 0
    assert router.w_gate.weight.grad.abs().sum() > 0
    # EMA moved the key router half way to the (updated) task router
    expected = 0.5 * key_before + 0.5 * router.w_gate.weight.detach()
    torch.testing.assert_close(trainer.key_router.w_gate.weight, expected)
    assert not trainer.key_router.w_gate.weight.requires_grad
    # the no-contrastive ablation has neither the key router nor the loss
    ablation = Trainer("t2mir_no_cl", mcfg, tcfg, CPU, ContextSampler(hist, 2, 4, 0), seed=0)
    assert ablation.key_router is None and "contrastive" not in ablation.train_step()


@pytest.mark.parametrize("variant", ["t2mir", "ad"])
def test_resumed_training_equals_uninterrupted(small, tmp_path, variant) -> None:
    _, hist, mcfg, tcfg = small
    straight, _ = train_variant(variant, mcfg, tcfg, hist, CPU, seed=3)
    ck = tmp_path / f"{variant}.pt"
    train_variant(variant, mcfg, tcfg, hist, CPU, seed=3, ckpt_path=ck, stop_after=3)
    torch.manual_seed(999)  # whatever happens in between must not matter
    resumed, info = train_variant(variant, mcfg, tcfg, hist, CPU, seed=3, ckpt_path=ck)
    assert info["resumed_from"] == 3.0  # stopping saves a checkpoint
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    # save/load round trip: the reloaded model acts the same
    loaded, raw = load_checkpoint(ck)
    assert raw["step"] == tcfg.steps
    obs, act = torch.zeros(1, 6, 2), torch.zeros(1, 6, 2)
    rew, t = torch.zeros(1, 6), torch.arange(6)[None]
    torch.testing.assert_close(loaded(obs, act, rew, t)[0], resumed.eval()(obs, act, rew, t)[0])


def test_corrupt_or_foreign_checkpoint_is_a_clear_error(small, tmp_path) -> None:
    _, hist, mcfg, tcfg = small
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read T2MIR checkpoint"):
        load_checkpoint(bad)
    torch.save({"hello": 1}, bad)
    with pytest.raises(ValueError, match="not a T2MIR checkpoint"):
        load_checkpoint(bad)
    ck = tmp_path / "ad.pt"
    train_variant("ad", mcfg, tcfg, hist, CPU, seed=0, ckpt_path=ck, stop_after=2)
    other = ModelConfig(**{**mcfg.to_dict(), "d_model": 8})
    with pytest.raises(ValueError, match="model_config differs"):
        train_variant("ad", other, tcfg, hist, CPU, seed=0, ckpt_path=ck)
    # another schedule or other learning histories: refused, not silently mixed into this run
    longer = TrainConfig(**{**vars(tcfg), "steps": 12, "ckpt_every": 5})
    with pytest.raises(ValueError, match=r"train_config differs .*\['steps'\]"):
        train_variant("ad", mcfg, longer, hist, CPU, seed=0, ckpt_path=ck)
    other_data = [type(h)(h.observations, h.actions, h.rewards + 0.5, h.task) for h in hist]
    with pytest.raises(ValueError, match="different learning histories"):
        train_variant("ad", mcfg, tcfg, other_data, CPU, seed=0, ckpt_path=ck)
    # log_every / ckpt_every may change on resume
    resumed, info = train_variant("ad", mcfg, TrainConfig(**{**vars(tcfg), "ckpt_every": 1}), hist, CPU,
                                  seed=0, ckpt_path=ck)
    assert info["resumed_from"] == 2.0


def test_evaluation_resumes_exactly(small, tmp_path) -> None:
    fam, hist, mcfg, tcfg = small
    model, _ = train_variant("t2mir", mcfg, tcfg, hist, CPU, seed=0)
    kwargs = dict(family=fam, tasks=fam.test_tasks, n_episodes=4, context_episodes=2, seed=5)
    full = evaluate_in_context(model, **kwargs)
    state = tmp_path / "eval.pt"
    evaluate_in_context(model, **kwargs, state_path=state, stop_after=2)
    resumed = evaluate_in_context(model, **kwargs, state_path=state)
    np.testing.assert_array_equal(full.returns, resumed.returns)
    np.testing.assert_array_equal(full.task_expert_counts, resumed.task_expert_counts)
    assert full.returns.shape == (2, 4)
    # every token of every step was routed to exactly k=2 task experts
    assert (full.task_expert_counts.sum(-1) == 2 * (3 * 6 - 2)).all()
    with pytest.raises(ValueError, match="different evaluation"):
        evaluate_in_context(model, **{**kwargs, "n_episodes": 5}, state_path=state)


def test_smoke_experiment_end_to_end_and_resume(make_config, tmp_path) -> None:
    cfg = make_config(["experiment=t2mir_smoke", f"t2mir.data_dir={tmp_path / 'data'}", "device=cpu",
                       "t2mir.eval.video=true"])
    run_dir = tmp_path / "run"
    metrics = run_experiment(cfg, run_dir)
    curves = metrics["returns_per_episode"]
    assert set(curves) == {"ad", "t2mir", "token_moe", "t2mir_no_cl"}
    assert all(set(c) == {"mean", "sample"} for c in curves.values())  # deterministic and sampled
    assert all(len(c) == 3 and all(np.isfinite(c)) for by_mode in curves.values() for c in by_mode.values())
    for name in ("returns.png", "first_episode_rewards.png", "expert_assignment_t2mir.png", "metrics.csv",
                 "checkpoints/t2mir.safetensors", "eval/t2mir_mean.safetensors", "eval/t2mir_sample.safetensors"):
        assert (run_dir / name).is_file(), name
    for mode in ("mean", "sample"):
        summary = {k: metrics[f"t2mir/{mode}/{k}"] for k in ("first_return", "last5_return", "improvement")}
        assert summary["improvement"] == pytest.approx(summary["last5_return"] - summary["first_return"])
        assert len(metrics["first_episode_step_rewards"]["t2mir"][mode]) == 6  # one per step
    assert metrics["baseline/expert_return"] > metrics["baseline/zero_return"]
    assert metrics["eval_protocol"] == {"context": "best_sorted", "context_episodes": 2, "window": "random_sorted",
                                        "n_episodes": 3}
    # a real, decodable video: 3 in-context episodes x (6 steps + the reset frame)
    n_frames, _ = imageio_ffmpeg.count_frames_and_secs(str(run_dir / "rollout_t2mir_mean.mp4"))
    assert n_frames == 3 * 7
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["returns_per_episode"] == curves
    # running again in the same folder resumes everything (no retraining) and reproduces it
    rows_before = (run_dir / "metrics.csv").read_text()
    again = run_experiment(cfg, run_dir)
    assert again["returns_per_episode"] == curves
    assert (run_dir / "metrics.csv").read_text() == rows_before


def test_probe_episode_matches_in_context_evaluation(small, tmp_path, monkeypatch) -> None:
    """scripts/bench_t2mir.py --probe plays with the same cached decoding as the evaluation."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "bench_t2mir.py"
    spec = importlib.util.spec_from_file_location("bench_t2mir", path)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up there
    spec.loader.exec_module(bench)
    fam, hist, mcfg, tcfg = small
    model, _ = train_variant("t2mir", mcfg, tcfg, hist, CPU, seed=0)
    for sample in (True, False):
        probed = bench.play_after_context(model, fam, fam.test_tasks, None, sample, seed=4)
        evaluated = evaluate_in_context(model, fam, fam.test_tasks, 1, 2, seed=4, sample=sample)
        np.testing.assert_allclose(probed, evaluated.returns[:, 0], rtol=1e-5)
    # with the evaluation's first episode as context, the probe replays its second episode
    state = tmp_path / "eval.pt"
    two = evaluate_in_context(model, fam, fam.test_tasks, 2, 2, seed=4, sample=False, state_path=state)
    st = read_eval_state(state)
    first = History(st["obs"][:, 0], st["act"][:, 0], st["rew"][:, 0], np.zeros(0))
    probed = bench.play_after_context(model, fam, fam.test_tasks, first, False, seed=4)
    np.testing.assert_allclose(probed, two.returns[:, 1], rtol=1e-5)
