"""The shared checkpoint module (streammoe.checkpoint) and every system's use of it: files hold
tensors and JSON only, so a crafted file placed where a system looks for its checkpoint cannot run
code; wrong, old, corrupt or mismatching files fail with a clear error before anything changes."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from streammoe_envs.skillblend import ENV_IDS
from streammoe_envs.trading.features import ObsLayout

from streammoe import checkpoint
from streammoe.checkpoint import CheckpointError
from streammoe.cli import run_experiment
from streammoe.control.macrohft.model import (
    MacroHFT,
    load_checkpoint,
    save_checkpoint,
    subagent_config,
)
from streammoe.control.macrohft.networks import SubAgentQNet
from streammoe.control.macrohft.train import UniformMixer
from streammoe.control.skillblend.skills import load_skill, skill_path


class Payload:
    """Unpickling this object creates ``marker``: the stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _plant(path: Path, marker: Path, how: str = "pickle") -> Path:
    """Write a malicious file at ``path``: a raw pickle or a ``torch.save`` zip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if how == "pickle":
        path.write_bytes(pickle.dumps({"format": "streammoe", "state": Payload(marker)}))
    else:
        torch.save({"format": "streammoe", "state": Payload(marker)}, path)
    return path


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    """A marker path, after checking that the payload does run when it *is* unpickled."""
    probe = tmp_path / "payload_works"
    pickle.loads(pickle.dumps(Payload(probe)))  # noqa: S301  (our own bytes, to prove the payload)
    assert probe.exists()
    return tmp_path / "code_ran"


# ---------------------------------------------------------------------------- the shared module
def test_round_trip_keeps_every_kind_of_value(tmp_path: Path) -> None:
    state = {
        "f32": torch.randn(3, 2), "bf16": torch.ones(2, dtype=torch.bfloat16), "bool": torch.tensor([True, False]),
        "view": torch.arange(10.0)[::3],  # non-contiguous
        "u32": np.arange(5, dtype=np.uint32), "empty": np.zeros((0, 3)), "scalar0d": np.array(2.5),
        "np_scalars": [np.float32(0.1), np.int64(-3), np.bool_(True)],
        "python": (3, tuple(range(5)), None), "big": 2**100, "nan": float("nan"), "neg0": -0.0,
        "int_keys": {0: {"step": torch.tensor(4.0)}, 1: {}}, "odd_keys": {"__tensor__": 1, (1, 2): "t"},
        "bytes": b"\x00\xff", "text": "ü", "nested": [[1, [2.0]], {"a": None}],
    }
    path = checkpoint.save(tmp_path / "all.safetensors", state, kind="test", version=3)
    out = checkpoint.load(path, kind="test", version=3).state
    assert out.keys() == state.keys()
    for k in ("f32", "bf16", "bool", "view"):
        assert out[k].dtype == state[k].dtype and torch.equal(out[k], state[k]), k
    for k in ("u32", "empty", "scalar0d"):
        assert out[k].dtype == state[k].dtype and np.array_equal(out[k], state[k]), k
        out[k][...] = 0  # writable copies
    assert [type(v) for v in out["np_scalars"]] == [np.float32, np.int64, np.bool_]
    assert out["np_scalars"] == state["np_scalars"]
    assert out["python"] == state["python"] and isinstance(out["python"][1], tuple)
    assert out["big"] == 2**100 and np.isnan(out["nan"]) and str(out["neg0"]) == "-0.0"
    assert torch.equal(out["int_keys"][0]["step"], torch.tensor(4.0)) and out["int_keys"][1] == {}
    assert out["odd_keys"] == state["odd_keys"]
    assert (out["bytes"], out["text"], out["nested"]) == (b"\x00\xff", "ü", [[1, [2.0]], {"a": None}])
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(TypeError, match="cannot store"):
        checkpoint.save(tmp_path / "bad.safetensors", {"x": object()}, kind="test", version=3)
    with pytest.raises(TypeError, match="dtype object"):
        checkpoint.save(tmp_path / "bad.safetensors", {"x": np.array([None])}, kind="test", version=3)
    assert not (tmp_path / "bad.safetensors").exists()


def test_global_rng_states_round_trip(tmp_path: Path) -> None:
    checkpoint.save(tmp_path / "rng.safetensors", {"rng": checkpoint.rng_state()}, kind="rng", version=1)
    draws = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    checkpoint.set_rng_state(checkpoint.load(tmp_path / "rng.safetensors", kind="rng", version=1).state["rng"])
    again = (random.random(), np.random.rand(), torch.rand(1))  # noqa: NPY002
    assert draws[:2] == again[:2] and torch.equal(draws[2], again[2])


def test_wrong_old_corrupt_and_mismatching_files_give_clear_errors(tmp_path: Path, marker: Path) -> None:
    cfg = {"train": {"lr": 0.1, "steps": 10, "net": {"width": 8}}, "seed": 0}
    good = checkpoint.save(tmp_path / "good.safetensors", {"w": torch.ones(4)}, kind="demo", version=2, config=cfg)
    with pytest.raises(FileNotFoundError, match="no demo checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors", kind="demo", version=2)
    with pytest.raises(CheckpointError, match="not a demo checkpoint: it holds a 'other' checkpoint"):
        checkpoint.load(checkpoint.save(tmp_path / "o.safetensors", {}, kind="other", version=2), kind="demo", version=2)
    old = checkpoint.save(tmp_path / "old.safetensors", {}, kind="demo", version=1)
    with pytest.raises(CheckpointError, match="format version 1; this streammoe reads version 2"):
        checkpoint.load(old, kind="demo", version=2)
    # fingerprint mismatch: names the section, the keys and both values, plus the hint
    with pytest.raises(CheckpointError, match=r"train differs in \['net.width', 'steps'\]: "
                                              r"net.width=8 in the checkpoint, net.width=16 in this run.*Use X"):
        checkpoint.load(good, kind="demo", version=2, hints={"train": "Use X."},
                        match={"train": {"lr": 0.1, "steps": 20, "net": {"width": 16}}})
    with pytest.raises(CheckpointError, match="seed differs: 0 in the checkpoint, 1 in this run"):
        checkpoint.load(good, kind="demo", version=2, match={"seed": 1})
    with pytest.raises(CheckpointError, match="holds no data"):
        checkpoint.load(good, kind="demo", version=2, match={"data": "abc"})
    assert checkpoint.load(good, kind="demo", version=2, match={"train": (cfg["train"])}).config == cfg
    # truncated, bit-flipped, foreign safetensors, pickle, torch.save, garbage
    raw = good.read_bytes()
    for name, data in [("truncated", raw[: len(raw) - 3]), ("header_cut", raw[:40]), ("garbage", b"not a checkpoint")]:
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError, match=f"cannot read demo checkpoint .*{name}.*truncated or corrupt"):
            checkpoint.load(tmp_path / name, kind="demo", version=2)
    flipped = bytearray(raw)
    flipped[-1] ^= 1
    (tmp_path / "flipped").write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupt .*digest"):
        checkpoint.load(tmp_path / "flipped", kind="demo", version=2)
    save_file({"w": torch.ones(2)}, tmp_path / "foreign.safetensors")
    with pytest.raises(CheckpointError, match="without streammoe's"):
        checkpoint.load(tmp_path / "foreign.safetensors", kind="demo", version=2)
    for how in ("pickle", "torch"):
        evil = _plant(tmp_path / f"evil_{how}.safetensors", marker, how)
        with pytest.raises(CheckpointError, match="pickle / torch.save file.*never unpickles"):
            checkpoint.load(evil, kind="demo", version=2)
    assert not marker.exists()


def test_atomic_write_keeps_the_previous_file_when_saving_fails(tmp_path: Path) -> None:
    path = checkpoint.save(tmp_path / "c.safetensors", {"v": 1}, kind="demo", version=1)
    with pytest.raises(TypeError):
        checkpoint.save(path, {"v": object()}, kind="demo", version=1)
    assert checkpoint.load(path, kind="demo", version=1).state == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


# ---------------------------------------------------------------------------- SkillBlender
@pytest.mark.parametrize("name", sorted(ENV_IDS))
def test_env_state_continues_bit_exactly(name: str) -> None:
    """``state_dict`` / ``load_state_dict`` (what a PPO checkpoint stores per env): an env restored
    into another instance (reset with another seed, stepped) continues identically, across resets."""
    actions = np.random.default_rng(0).uniform(-1, 1, size=(90, 6))
    a = gym.make(ENV_IDS[name]).unwrapped
    a.reset(seed=1)
    for t in range(13):
        a.step(actions[t])
    b = gym.make(ENV_IDS[name]).unwrapped
    b.reset(seed=99)
    b.step(actions[0])
    b.load_state_dict(a.state_dict())
    for t in range(13, 90):
        if t % 30 == 0:  # new episodes draw from the restored RNG
            oa, _ = a.reset()
            ob, _ = b.reset()
            assert np.array_equal(oa, ob), t
        ra, rb = a.step(actions[t]), b.step(actions[t])
        assert np.array_equal(ra[0], rb[0]) and ra[1] == rb[1] and ra[4] == rb[4], t
    with pytest.raises(ValueError, match="simulation state"):
        b.load_state_dict({**a.state_dict(), "sim": np.zeros(3)})
    with pytest.raises(RuntimeError, match="reset the env"):
        gym.make(ENV_IDS[name]).unwrapped.state_dict()


SB_FLAT = ["experiment=skillblend_smoke", "skillblend.video_episodes=0", "skillblend.method=flat"]


@pytest.mark.parametrize("how", ["pickle", "torch"])
def test_skillblend_resume_never_unpickles(make_config, tmp_path: Path, marker: Path, how: str) -> None:
    run = tmp_path / "run"
    _plant(run / "checkpoints" / "task_far_reach_flat_0000000064.safetensors", marker, how)
    with pytest.raises(CheckpointError, match="not a skillblend PPO checkpoint: it is a pickle"):
        run_experiment(make_config([*SB_FLAT, f"skillblend.resume={run}"]), tmp_path / "new")
    # an older streammoe's pickle checkpoint (*.ckpt) is refused by name, without being read
    legacy = tmp_path / "legacy"
    _plant(legacy / "checkpoints" / "task_far_reach_flat_0000000064.ckpt", marker, how)
    with pytest.raises(CheckpointError, match=r"\.ckpt is a skillblend PPO checkpoint of an older streammoe"):
        run_experiment(make_config([*SB_FLAT, f"skillblend.resume={legacy}"]), tmp_path / "new2")
    # skills: <skills_dir>/<name>.safetensors, and an old <name>.pt in its place
    _plant(tmp_path / "skills" / "walk.safetensors", marker, how)
    with pytest.raises(CheckpointError, match="not a skill checkpoint: it is a pickle"):
        load_skill(skill_path(tmp_path / "skills", "walk"))
    _plant(tmp_path / "skills" / "reach.pt", marker, how)
    with pytest.raises(CheckpointError, match="reach.pt is a skill checkpoint of an older streammoe"):
        skill_path(tmp_path / "skills", "reach")
    assert not marker.exists()


# ---------------------------------------------------------------------------- MacroHFT
def _tiny_macrohft(meta: dict) -> MacroHFT:
    layout = ObsLayout(n_state=3, n_context=2, n_market=2, n_levels=2)
    torch.manual_seed(0)
    subs = {f"s{i}": SubAgentQNet(layout, 2, 8, use_adapter=True) for i in range(2)}
    return MacroHFT(layout, 2, subs, UniformMixer(2), None, None, {"s0": 1.0, "s1": 0.0}, meta)


def test_macrohft_checkpoint_records_what_its_subagents_were_trained_with(tmp_path: Path) -> None:
    config = {"splits": {"train": 0.7, "val": 0.15}, "subagent": {"hidden": 8}, "hyper": {"epochs": 1},
              "alphas": [0.0, 1.0], "resume_from": None}
    model = _tiny_macrohft({"config": config, "data": {"name": "synthetic"}, "seed": 0})
    path = save_checkpoint(model, tmp_path / "macrohft.safetensors")
    same = subagent_config({**config, "hyper": {"epochs": 9}, "resume_from": str(path)}, {"name": "synthetic"}, 0)
    loaded = load_checkpoint(path, expect=same)  # hyper-agent settings may differ
    obs = torch.randn(5, model.layout.dim)
    torch.testing.assert_close(loaded.q_values(obs), model.q_values(obs), rtol=0, atol=0)
    other = subagent_config({**config, "subagent": {"hidden": 16}}, {"name": "synthetic"}, 0)
    with pytest.raises(CheckpointError, match=r"subagents differs in \['subagent.hidden'\].*trained with other"):
        load_checkpoint(path, expect=other)
    with pytest.raises(CheckpointError, match=r"subagents differs in \['seed'\]"):
        load_checkpoint(path, expect=subagent_config(config, {"name": "synthetic"}, 1))


@pytest.mark.parametrize("how", ["pickle", "torch"])
def test_macrohft_resume_from_never_unpickles(make_config, tmp_path: Path, marker: Path, how: str) -> None:
    evil = _plant(tmp_path / "macrohft.safetensors", marker, how)
    with pytest.raises(CheckpointError, match="not a MacroHFT checkpoint: it is a pickle"):
        run_experiment(make_config(["experiment=macrohft_smoke", f"macrohft.resume_from={evil}"]), tmp_path / "run")
    old_name = _plant(tmp_path / "macrohft.pt", marker, how)  # an older version's file name
    with pytest.raises(CheckpointError, match="never unpickles"):
        load_checkpoint(old_name)
    assert not marker.exists()


# ---------------------------------------------------------------------------- T2MIR
@pytest.mark.parametrize("where", ["checkpoints", "eval", "legacy"])
def test_t2mir_reused_run_folder_never_unpickles(make_config, tmp_path: Path, marker: Path, where: str) -> None:
    cfg = make_config(["experiment=t2mir_smoke", f"t2mir.data_dir={tmp_path / 'data'}", "device=cpu",
                       "t2mir.variants=[ad]"])
    run = tmp_path / "run"
    if where == "eval":  # training finished, evaluation state planted
        run_experiment(cfg, run)
        _plant(run / "eval" / "ad_mean.safetensors", marker)  # the deterministic evaluation's state
        match = "not a T2MIR evaluation state: it is a pickle"
    elif where == "checkpoints":
        _plant(run / "checkpoints" / "ad.safetensors", marker, "torch")
        match = "not a T2MIR checkpoint: it is a pickle"
    else:  # an older streammoe's run folder: refused by name, not read
        _plant(run / "checkpoints" / "ad.pt", marker, "torch")
        match = r"ad\.pt is a T2MIR checkpoint of an older streammoe.*fresh folder"
    with pytest.raises(CheckpointError, match=match):
        run_experiment(cfg, run)
    assert not marker.exists()


def test_a_header_length_starting_with_the_pickle_byte_is_still_read(tmp_path: Path) -> None:
    """A safetensors header whose length's first byte is 0x80 (the pickle opcode) is not a pickle
    (seen in CI: an RNG checkpoint of that size was refused as a pickle)."""
    found = set()
    for extra in range(1100):
        path = tmp_path / "f.safetensors"
        checkpoint.save(path, {"x": torch.zeros(1), "note": "a" * extra}, kind="pad", version=1)
        head = path.read_bytes()[:2]
        if head[0] == 0x80:  # b"\x80\x02".."\x80\x05" also open pickles of protocol 2-5
            found.add(head[1])
            assert checkpoint.load(path, kind="pad", version=1).state["note"] == "a" * extra
    assert {2, 3, 4, 5} <= found
