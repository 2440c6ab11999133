"""Resuming SkillBlender's PPO training (skills and task policies) from periodic checkpoints gives
exactly the parameters and results of a run that never stopped."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from streammoe_envs.skillblend import ENV_IDS

from streammoe.cli import run_experiment
from streammoe.control.skillblend import checkpoint as ckpt_mod
from streammoe.control.skillblend.checkpoint import (
    PeriodicCheckpoint,
    find_checkpoint_dir,
    latest_checkpoint,
    learn_resumable,
    restore_checkpoint,
    save_checkpoint,
)
from streammoe.control.skillblend.experiment import make_vec
from streammoe.control.skillblend.skills import load_skill

# Three rollouts of 2 envs x 32 steps in every PPO phase, so a run can stop in the middle of each.
SMALL = ["experiment=skillblend_smoke", "skillblend.video_episodes=0", "skillblend.timesteps=192",
         "skillblend.skills.timesteps.walk=128", "skillblend.skills.timesteps.reach=192"]


class Interrupted(Exception):
    """Stands in for a killed process."""


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, checkpoint_name: str) -> None:
    """Make the run die right after writing ``checkpoint_name``."""
    original = PeriodicCheckpoint.save

    def save_then_die(self: PeriodicCheckpoint) -> Path:
        path = original(self)
        if path.name == checkpoint_name:
            raise Interrupted(path.name)
        return path

    monkeypatch.setattr(PeriodicCheckpoint, "save", save_then_die)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return PPO.load(path, device="cpu").policy.state_dict()


def test_run_stopped_twice_and_resumed_equals_uninterrupted(make_config, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    ref = run_experiment(make_config(SMALL), tmp_path / "ref")

    run_dir = tmp_path / "stopped"
    with monkeypatch.context() as m:  # dies in the reach skill's training, after its 1st rollout
        _interrupt_after(m, "skill_reach_0000000064.safetensors")
        with pytest.raises(Interrupted):
            run_experiment(make_config(SMALL), run_dir)
    assert not (run_dir / "skills" / "reach.safetensors").exists()
    with monkeypatch.context() as m:  # resumes, then dies in the blender's training
        _interrupt_after(m, "task_far_reach_blend_0000000128.safetensors")
        with pytest.raises(Interrupted):
            run_experiment(make_config([*SMALL, "skillblend.resume=auto"]), run_dir)
    out = run_experiment(make_config([*SMALL, "skillblend.resume=auto"]), run_dir)

    for name in ("walk", "reach"):
        a = load_skill(tmp_path / "ref" / "skills" / f"{name}.safetensors").state_dict()
        b = load_skill(run_dir / "skills" / f"{name}.safetensors").state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    pa, pb = _params(tmp_path / "ref" / "model.zip"), _params(run_dir / "model.zip")
    assert pa.keys() == pb.keys() and all(torch.equal(pa[k], pb[k]) for k in pa)
    for key in ("final_error_mean", "final_error_std", "energy", "tilt", "train_steps"):
        assert out[key] == ref[key], key
    assert json.loads((run_dir / "metrics.json").read_text())["train_steps"] == 192
    # each resume kept the curve written before it
    assert (run_dir / "metrics_before_resume.csv").is_file() and (run_dir / "metrics_before_resume1.csv").is_file()


def test_checkpoint_resume_continues_learn_bitwise(tmp_path: Path) -> None:
    """The unit underneath: learn(N) == learn to a checkpoint, reload, learn the rest (flat PPO,
    an episode boundary inside the stopped stretch)."""
    def fresh() -> PPO:
        return PPO("MlpPolicy", make_vec(ENV_IDS["button"], 2, 3, episode_steps=20), n_steps=16,
                   batch_size=16, n_epochs=2, seed=3, device="cpu", policy_kwargs={"net_arch": [8]})

    meta = {"phase": "unit", "env_id": ENV_IDS["button"], "n_envs": 2, "seed": 3}
    ref = learn_resumable(fresh(), 160, [])
    stopped = fresh()
    learn_resumable(stopped, 96, [PeriodicCheckpoint(tmp_path, meta, every=2)])
    path = latest_checkpoint(tmp_path, "unit")
    assert path is not None and path.name == "unit_0000000096.safetensors"
    resumed = fresh()  # a new process builds the model from the run's config, then restores
    # scramble the global RNGs as a new process would have them
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002  (the legacy global RNG SB3 draws from)
    resumed = learn_resumable(restore_checkpoint(resumed, path, expect=meta), 160, [])
    assert resumed.num_timesteps == ref.num_timesteps == 160
    a, b = ref.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(ref._last_obs, resumed._last_obs)


def _tiny(seed: int = 0) -> PPO:
    return PPO("MlpPolicy", make_vec(ENV_IDS["far_reach"], 1, seed, episode_steps=8), n_steps=8, batch_size=8,
               n_epochs=1, seed=seed, device="cpu", policy_kwargs={"net_arch": [4]})


def test_checkpoints_are_pruned_and_found_by_phase(tmp_path: Path) -> None:
    model = _tiny()
    meta = {"phase": "p", "env_id": ENV_IDS["far_reach"], "n_envs": 1, "seed": 0}
    learn_resumable(model, 40, [PeriodicCheckpoint(tmp_path, meta, every=1, keep=2)])
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["p_0000000032.safetensors",
                                                                      "p_0000000040.safetensors"]
    assert latest_checkpoint(tmp_path, "p").name == "p_0000000040.safetensors"
    assert latest_checkpoint(tmp_path, "other") is None and latest_checkpoint(None, "p") is None
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave no temp files
    # a model that already reached its budget does not train further
    done = restore_checkpoint(_tiny(), tmp_path / "p_0000000040.safetensors")
    assert learn_resumable(done, 40, []).num_timesteps == 40


def test_bad_checkpoints_and_resume_paths_give_clear_errors(tmp_path: Path) -> None:
    model = learn_resumable(_tiny(), 8, [])
    meta = {"phase": "p", "env_id": ENV_IDS["far_reach"], "n_envs": 1, "seed": 0}
    good = save_checkpoint(model, tmp_path / "p_0000000000.safetensors", meta)
    with pytest.raises(ValueError, match="seed=0.*seed=1"):
        restore_checkpoint(_tiny(), good, expect={**meta, "seed": 1})
    with pytest.raises(ValueError, match="phase"):
        restore_checkpoint(_tiny(), good, expect={**meta, "phase": "q"})
    truncated = tmp_path / "p_0000000008.safetensors"
    truncated.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(ValueError, match="corrupt"):
        restore_checkpoint(_tiny(), truncated)
    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(pickle.dumps({"format": "something else"}))
    with pytest.raises(ValueError, match="not a skillblend PPO checkpoint"):
        restore_checkpoint(_tiny(), foreign)
    # resume paths: off, auto (may be empty), an explicit folder must hold checkpoints
    assert find_checkpoint_dir(None, tmp_path) is None
    assert find_checkpoint_dir("auto", tmp_path / "run") == tmp_path / "run" / ckpt_mod.CHECKPOINT_DIR
    assert find_checkpoint_dir(str(tmp_path), tmp_path / "run") == tmp_path
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        find_checkpoint_dir(str(tmp_path / "missing"), tmp_path / "run")


def test_resume_refuses_a_checkpoint_of_another_seed(make_config, tmp_path: Path) -> None:
    cfg = make_config(["experiment=skillblend_smoke", "skillblend.video_episodes=0", "skillblend.method=flat"])
    run_experiment(cfg, tmp_path / "a")
    other = make_config(["experiment=skillblend_smoke", "skillblend.video_episodes=0", "skillblend.method=flat",
                         "seed=1", f"skillblend.resume={tmp_path / 'a'}"])
    with pytest.raises(ValueError, match="seed"):
        run_experiment(other, tmp_path / "b")
