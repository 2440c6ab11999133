"""T2MIR's hot path: inputs validated once per batch (not per token), bf16 training, precision in
the config, device RNG state in checkpoints (resume equals no-stop on a GPU), CPU/GPU agreement,
and the timing script."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from streammoe import checkpoint as ckpt
from streammoe.config import ConfigError
from streammoe.control.t2mir.config import T2MIRTrainSettings
from streammoe.control.t2mir.data import ContextSampler, History
from streammoe.control.t2mir.model import VARIANTS, ICRLTransformer, ModelConfig
from streammoe.control.t2mir.train import TrainConfig, Trainer, read_checkpoint, set_normalisation

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CPU = torch.device("cpu")
OBS, ACT, H = 3, 2, 5


def _model(variant: str = "t2mir") -> ICRLTransformer:
    token, task, _ = VARIANTS[variant]
    return ICRLTransformer(ModelConfig(obs_dim=OBS, act_dim=ACT, horizon=H, d_model=16, n_layers=2, n_heads=2,
                                       expert_hidden=16, token_moe=token, task_moe=task, seed=0))


def _steps(b: int = 2, s: int = 10, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, s, OBS, generator=g), torch.rand(b, s, ACT, generator=g) * 2 - 1,
            torch.randn(b, s, generator=g), torch.arange(s).remainder(H).expand(b, s))


def _histories(n_tasks: int = 4, episodes: int = 4, seed: int = 0) -> list[History]:
    rng = np.random.default_rng(seed)
    shape = (episodes, H)
    return [History(rng.standard_normal((*shape, OBS)).astype(np.float32),
                    rng.uniform(-1, 1, (*shape, ACT)).astype(np.float32),
                    -rng.random(shape).astype(np.float32), np.zeros(1, np.float32)) for _ in range(n_tasks)]


MCFG = ModelConfig(obs_dim=OBS, act_dim=ACT, horizon=H, d_model=16, n_layers=2, n_heads=2, expert_hidden=16)
TCFG = TrainConfig(steps=8, batch_size=4, context_episodes=2, warmup_steps=2)


def _trainer(variant: str = "t2mir", device: torch.device = CPU, mcfg: ModelConfig = MCFG,
             tcfg: TrainConfig = TCFG, hist: list[History] | None = None) -> Trainer:
    hist = hist if hist is not None else _histories()
    trainer = Trainer(variant, mcfg, tcfg, device, ContextSampler(hist, tcfg.context_episodes, tcfg.batch_size, 0),
                      seed=0)
    set_normalisation(trainer.model, hist)
    return trainer


# ---------------------------------------------------------------- input checks
def test_check_inputs_names_the_bad_input():
    model = _model()
    obs, act, rew, t = _steps()
    model.check_inputs(obs, act, rew, t)  # fine
    model.check_inputs(obs=obs[:, :1], t=t[:, :1])  # any subset (an env step in evaluation)
    model.check_inputs(t=torch.zeros(2, 1, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"observations has 4 features, the model expects 3"):
        model.check_inputs(obs=torch.zeros(2, 10, 4))
    with pytest.raises(ValueError, match=r"actions has 3 features, the model expects 2"):
        model.check_inputs(act=torch.zeros(2, 10, 3))
    with pytest.raises(ValueError, match=r"observations and rewards disagree on \(batch, steps\)"):
        model.check_inputs(obs=obs, rew=rew[:, :4])
    for name, arg in (("observations", "obs"), ("actions", "act"), ("rewards", "rew")):
        bad = dict(zip(("obs", "act", "rew"), (obs.clone(), act.clone(), rew.clone())))
        bad[arg].view(-1)[3] = float("inf") if arg == "rew" else float("nan")
        with pytest.raises(ValueError, match=f"{name} contains NaN or inf"):
            model.check_inputs(**bad, t=t)
    with pytest.raises(ValueError, match=r"timesteps must be in \[0, 5\) \(the model's horizon\), got \[0, 9\]"):
        model.check_inputs(obs, act, rew, torch.arange(10).expand(2, 10))
    with pytest.raises(ValueError, match=r"got \[-1, 3\]"):
        model.check_inputs(t=torch.tensor([[-1, 3]]))
    with pytest.raises(ValueError, match="timesteps must be integers"):
        model.check_inputs(t=t.float())
    with pytest.raises(ValueError, match="do not broadcast"):
        model.check_inputs(obs=obs, t=t[:, :3])


def test_check_inputs_reads_the_device_once(monkeypatch):
    model = _model()
    obs, act, rew, t = _steps()
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda *a, _n=name, _o=original, **k: reads.append(_n) or _o(*a, **k))
    model.check_inputs(obs, act, rew, t)
    monkeypatch.undo()
    assert reads == ["tolist"]  # finiteness of three inputs and the timestep range: one copy


def test_embedders_do_not_check_and_forward_checks_once_unless_told_not_to(monkeypatch):
    model = _model().eval()
    obs, act, rew, t = _steps()
    bad = obs.clone()
    bad[0, 2, 1] = float("nan")
    # the per-step embedders read nothing back: NaN goes through (no error, no host sync)
    assert torch.isnan(model.embed_state(bad, t)).any()
    assert torch.isnan(model.embed_steps(bad, act, rew, t)).any()
    with pytest.raises(ValueError, match="observations contains NaN"):
        model(bad, act, rew, t)
    mean, _, _ = model(bad, act, rew, t, check=False)
    assert torch.isnan(mean).any()
    calls = []
    original = ICRLTransformer.check_inputs
    monkeypatch.setattr(ICRLTransformer, "check_inputs",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    model(obs, act, rew, t)
    assert calls == [1]  # one check per whole-context pass
    # training skips it: its batches come from checked files
    trainer = _trainer()
    trainer.train_step()
    assert calls == [1]


# ---------------------------------------------------------------- precision
def test_bf16_train_step_runs_and_its_loss_is_close_to_fp32():
    hist = _histories()
    out = {}
    for precision in ("fp32", "bf16"):
        tcfg = TrainConfig(**{**vars(TCFG), "precision": precision})
        mcfg = ModelConfig(**{**MCFG.to_dict(), "dropout": 0.0})
        trainer = _trainer(tcfg=tcfg, mcfg=mcfg, hist=hist)
        out[precision] = [trainer.train_step() for _ in range(2)]
    for a, b in zip(out["fp32"], out["bf16"]):
        assert all(np.isfinite(v) for v in b.values())
        assert set(a) == set(b)
        # bf16 keeps 8 bits of mantissa: the losses agree to a few percent, not to fp32's digits
        assert b["loss"] == pytest.approx(a["loss"], rel=0.05)
        assert b["nll"] == pytest.approx(a["nll"], rel=0.05)
    assert out["fp32"][0]["loss"] != out["bf16"][0]["loss"]  # bf16 did run in lower precision


def test_precision_is_checked_in_the_config_and_the_trainer():
    assert TrainConfig().precision == "fp32"
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        TrainConfig.from_mapping({"precision": "fp16"})
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer("ad", MCFG, TrainConfig(precision="half"), CPU, None, seed=0)
    settings = T2MIRTrainSettings(**{k: v for k, v in vars(TrainConfig(precision="fp16")).items()
                                     if k in T2MIRTrainSettings.__dataclass_fields__})
    with pytest.raises(ConfigError, match="precision"):
        settings.check("t2mir.train.")


# ---------------------------------------------------------------- checkpoint state
def test_cpu_checkpoint_state_has_no_cuda_rng_and_plain_generator_names(tmp_path):
    trainer = _trainer()
    trainer.train_step()
    st = trainer.state()
    assert st["cuda_rng"] is None
    assert set(st["router_generators"]) == {"blocks.1.ffn.token.router", "blocks.1.ffn.task.router"}
    # a GPU run's device generator (its name has '@' and ':') survives the checkpoint file ...
    gpu_state = torch.Generator().manual_seed(5).get_state()
    st["router_generators"]["blocks.1.ffn.token.router@cuda:0"] = gpu_state
    path = ckpt.save(tmp_path / "ck.safetensors", st, kind="test", version=1)
    back = ckpt.load(path, kind="test", version=1).state
    assert torch.equal(back["router_generators"]["blocks.1.ffn.token.router@cuda:0"], gpu_state)
    # ... and is left out when resuming on a CPU (no KeyError), the CPU generators restored
    resumed = _trainer()
    resumed.load_state(back)
    for name, gen in resumed.model.router_generators().items():
        assert torch.equal(gen.get_state(), st["router_generators"][name]), name


# ---------------------------------------------------------------- GPU
def test_building_the_model_leaves_the_global_rngs_alone():
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() else None
    a, b = _model(), _model()
    assert torch.equal(torch.get_rng_state(), cpu)
    if cuda is not None:  # torch.manual_seed would have reseeded the GPU's generator too
        assert torch.equal(torch.cuda.get_rng_state(), cuda)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)  # and the weights are still seeded


@CUDA
def test_cuda_train_step_matches_the_cpu():
    """Same seed, same batches, no dropout. The token router's noise comes from each device's own
    generator (different streams: Philox on the GPU), so it is switched off on both; the GPU runs
    fp32 with TF32 matmuls (~1e-3 relative), hence the tolerances."""
    hist = _histories()
    mcfg = ModelConfig(**{**MCFG.to_dict(), "dropout": 0.0})
    losses, params = {}, {}
    for dev in ("cpu", "cuda"):
        trainer = _trainer(device=torch.device(dev), mcfg=mcfg, hist=hist)
        trainer.model.blocks[-1].ffn.token.router.noisy = False
        losses[dev] = [trainer.train_step() for _ in range(2)]
        params[dev] = {k: v.detach().cpu() for k, v in trainer.model.state_dict().items()}
    for a, b in zip(losses["cpu"], losses["cuda"]):
        for key in ("loss", "nll", "balance", "contrastive"):
            assert b[key] == pytest.approx(a[key], rel=1e-2, abs=1e-4), key
    for name, p in params["cpu"].items():
        torch.testing.assert_close(params["cuda"][name], p, rtol=1e-2, atol=2e-3, msg=name)


@CUDA
def test_cuda_resume_equals_uninterrupted(tmp_path):
    """Dropout masks come from the GPU's default generator and the token router's noise from its
    own GPU generator: both states are in the checkpoint, so a resumed run draws exactly what the
    uninterrupted one drew (the RNG states are compared exactly; the losses with a tolerance
    because index_add_ and attention backward on a GPU may sum in another order)."""
    dev = torch.device("cuda")
    hist = _histories()
    torch.manual_seed(7)
    straight = _trainer(device=dev, hist=hist)
    gens = straight.model.router_generators()
    assert "blocks.1.ffn.token.router@cuda:0" in gens
    cpu_gen = gens["blocks.1.ffn.token.router"].get_state()
    for _ in range(2):
        straight.train_step()
    path = tmp_path / "ck.safetensors"
    straight.save(path)
    after = [straight.train_step() for _ in range(3)]
    cuda_rng = torch.cuda.get_rng_state(dev)
    gen_states = {k: g.get_state() for k, g in straight.model.router_generators().items()}
    # the noise was drawn on the GPU: the CPU generator never moved
    assert torch.equal(gen_states["blocks.1.ffn.token.router"], cpu_gen)

    torch.manual_seed(999)  # whatever happened in between must not matter
    resumed = _trainer(device=dev, hist=hist)
    resumed.load_state(read_checkpoint(path, match=resumed.config_sections()))
    again = [resumed.train_step() for _ in range(3)]
    assert torch.equal(torch.cuda.get_rng_state(dev), cuda_rng)
    for name, state in resumed.model.router_generators().items():
        assert torch.equal(state.get_state(), gen_states[name]), name
    for a, b in zip(after, again):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)


# ---------------------------------------------------------------- timing script
def test_timing_script_runs_on_the_tiny_preset(tmp_path, monkeypatch):
    path = Path(__file__).resolve().parents[1] / "scripts" / "time_t2mir.py"
    spec = importlib.util.spec_from_file_location("time_t2mir", path)
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, mod)
    spec.loader.exec_module(mod)
    out = tmp_path / "timing.json"
    res = mod.main(["--preset", "tiny", "--device", "cpu", "--rounds", "1", "--warmup", "0", "--out", str(out)])
    assert out.is_file()
    assert set(res["train_step_ms"]["16"]) == {"ad", "t2mir"}
    assert set(res["train_step_ms"]["16"]["t2mir"]) == {"fp32", "bf16"}
    assert res["sparse_dispatch"]["max_abs_diff"] < 1e-5  # the old loop and the new dispatch agree
    assert res["threads"] == torch.get_num_threads() and res["shapes"]["tokens_per_context"] == 30
    for name in ("t2mir_train_step_over_ad", "cached_eval_speedup"):
        assert isinstance(res["targets"][name]["met"], bool)
