"""Typed configs: every experiment composes against its schema, bad values fail naming their key
(at composition or at the entry, before anything is written), ``device=cuda`` without a GPU is an
error in every system, and the smoke configs inherit from the real ones."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import hydra
import pytest
import torch
import yaml
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from streammoe.cli import SCHEMAS, run_experiment
from streammoe.config import ConfigError, RootConfig, validate
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
SMOKES = {"driftmoe_smoke": "driftmoe", "macrohft_smoke": "macrohft",
          "skillblend_smoke": "skillblend", "t2mir_smoke": "t2mir_pointrobot",
          "mergevla_smoke": "mergevla_state"}


def _message(err: BaseException) -> str:
    """The error and its causes (Hydra wraps the OmegaConf error that names the full key)."""
    parts = []
    while err is not None:
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _nodes(d: Any, prefix: str = "") -> dict[str, Any]:
    """Every node of a nested dict by its dotted key (inner nodes too)."""
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out[f"{prefix}{k}"] = v
            out.update(_nodes(v, f"{prefix}{k}."))
    return out


# --------------------------------------------------------------------------- composition
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_typed_and_valid(name):
    cfg = compose_config([f"experiment={name}"])
    schema = OmegaConf.get_type(cfg)
    assert schema in SCHEMAS.values(), f"{name}: no schema in its defaults list"
    obj = validate(cfg)
    assert isinstance(obj, RootConfig) and obj.experiment_name == name
    assert callable(hydra.utils.get_method(cfg.entry))


def test_every_experiment_file_names_a_registered_schema():
    """The schema comes first (directly or through the experiment it extends)."""
    for name in EXPERIMENTS:
        text = yaml.safe_load((ROOT / "conf" / "experiment" / f"{name}.yaml").read_text())
        first = text["defaults"][0]
        assert first.startswith("/schema/") or first in EXPERIMENTS, (name, first)
        if first.startswith("/schema/"):
            assert first.split("/")[2].split("@")[0] in SCHEMAS, (name, first)


def test_root_keys_keep_their_config_yaml_values():
    """Experiment schemas are merged after conf/config.yaml: they must not reset its values."""
    cfg = compose_config(["experiment=router_demo"])
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.tensorboard is True and cfg.objective == "moe_mse"
    assert compose_config(["experiment=skillblend_smoke"]).device == "cpu"  # an experiment's own value wins


# ------------------------------------------------------------------------- bad values
# (experiment, override, the key the error must name)
AT_COMPOSITION = [
    ("driftmoe", "seed=abc", "seed"),
    ("router_demo", "demo.top_k=1.5", "demo.top_k"),
    ("router_demo", "demo.hidden=[a]", "demo.hidden"),
    ("macrohft_smoke", "macrohft.regimes.chunk_length=abc", "macrohft.regimes.chunk_length"),
    ("skillblend_smoke", "skillblend.n_envs=1.5", "skillblend.n_envs"),
    ("t2mir_smoke", "t2mir.model.d_model=1.5", "t2mir.model.d_model"),
    ("router_demo", "tensorboard=maybe", "tensorboard"),
    ("router_demo", "demo.stepz=3", "demo.stepz"),
    ("mergevla_smoke", "mergevla.model.d_model=abc", "mergevla.model.d_model"),
    ("mergevla_smoke", "mergevla.vision=maybe", "mergevla.vision"),
    ("mergevla_smoke", "mergevla.base.aux_weight=abc", "mergevla.base.aux_weight"),
]

AT_ENTRY = [
    ("driftmoe_smoke", "driftmoe.model.params.top_k=1.5", "driftmoe.model.params.top_k"),
    ("driftmoe_smoke", "driftmoe.model.params.top_k=5", "driftmoe.model.params.top_k"),  # > n_experts
    ("driftmoe_smoke", "driftmoe.model.params.n_experts=0", "driftmoe.model.params.n_experts"),
    ("driftmoe_smoke", "driftmoe.model.params.hidden_sizes=[0]", "driftmoe.model.params.hidden_sizes[0]"),
    ("driftmoe_smoke", "driftmoe.model.params.batch_size=0", "driftmoe.model.params.batch_size"),
    ("driftmoe_smoke", "driftmoe.stream.n_instances=0", "driftmoe.stream.n_instances"),
    ("driftmoe_smoke", "driftmoe.window=0", "driftmoe.window"),
    ("driftmoe_smoke", "driftmoe.baselines=[arf,nope]", "driftmoe.baselines[1]"),
    ("driftmoe_smoke", "+driftmoe.model.params.n_expert=3", "driftmoe.model.params.n_expert"),
    ("driftmoe_smoke", "+driftmoe.model.params.max_features=all", "driftmoe.model.params.max_features"),
    ("driftmoe_smoke", "+driftmoe.model.params.drift_detector=adwn",
     "driftmoe.model.params.drift_detector"),
    ("driftmoe_smoke", "driftmoe.model.params.mode=task", "driftmoe.model.params.n_experts"),  # data-only
    ("driftmoe_smoke", "driftmoe.model.params.mode=expert", "driftmoe.model.params.mode"),
    ("macrohft_smoke", "macrohft.regimes.chunk_length=0", "macrohft.regimes.chunk_length"),
    ("macrohft_smoke", "macrohft.subagent.batch_size=0", "macrohft.subagent.batch_size"),
    ("macrohft_smoke", "macrohft.alphas=[]", "macrohft.alphas"),
    ("macrohft_smoke", "macrohft.mixing=average", "macrohft.mixing"),
    ("macrohft", "data=csv", "data.path"),
    ("skillblend_smoke", "skillblend.n_envs=0", "skillblend.n_envs"),
    ("skillblend_smoke", "skillblend.ppo.batch_size=0", "skillblend.ppo.batch_size"),
    ("skillblend_smoke", "skillblend.skills.ppo.net_arch=[0]", "skillblend.skills.ppo.net_arch[0]"),
    ("skillblend_smoke", "skillblend.method=soft", "skillblend.method"),
    ("skillblend_skills", "skillblend.skills.n_envs=0", "skillblend.skills.n_envs"),
    ("skillblend_skills", "skillblend.skills.names=[walk,fly]", "skillblend.skills.names[1]"),
    ("t2mir_smoke", "t2mir.model.d_model=0", "t2mir.model.d_model"),
    ("t2mir_smoke", "t2mir.train.batch_size=0", "t2mir.train.batch_size"),
    ("t2mir_smoke", "t2mir.model.token_k=9", "t2mir.model.token_k"),
    ("t2mir_smoke", "t2mir.variants=[ad,nope]", "t2mir.variants[1]"),
    ("mergevla_smoke", "mergevla.suites=[drawer,kitchen]", "mergevla.suites[1]"),
    ("mergevla_smoke", "mergevla.suites=[drawer]", "mergevla.suites"),
    ("mergevla_smoke", "mergevla.model.d_model=0", "mergevla.model.d_model"),
    ("mergevla_smoke", "mergevla.expert.lora_rank=0", "mergevla.expert.lora_rank"),
    ("mergevla_smoke", "mergevla.expert.targets=noisy", "mergevla.expert.targets"),
    ("mergevla_smoke", "mergevla.eval.episodes_per_task=5", "mergevla.eval.episodes_per_task"),
    ("mergevla_smoke", "mergevla.eval.variants=[ties+mask/psychic]", "mergevla.eval.variants[0]"),
    ("mergevla_smoke", "mergevla.eval.video_variant=ties/router", "mergevla.eval.video_variant"),
    ("mergevla_smoke", "mergevla.router.k=17", "mergevla.router.k"),  # > d_model
    ("mergevla_smoke", "mergevla.merge.ties_density=0", "mergevla.merge.ties_density"),
    ("mergevla_smoke", "mergevla.base.aux_weight=0", "mergevla.base.aux_weight"),
    ("mergevla_smoke", "mergevla.model.keypoints=-1", "mergevla.model.keypoints"),
    ("mergevla_smoke", "mergevla.jobs=0", "mergevla.jobs"),
    ("mergevla_smoke", "mergevla.router.tokens=words", "mergevla.router.tokens"),
    ("mergevla_smoke", "mergevla.router.discriminative=3", "mergevla.router.discriminative"),  # > k
    ("mergevla_smoke", "mergevla.router.discriminative=-1", "mergevla.router.discriminative"),
    ("mergevla_smoke", "mergevla.router.ridge=0", "mergevla.router.ridge"),
    ("router_demo", "demo.batch_size=0", "demo.batch_size"),
    ("router_demo", "demo.hidden=[0]", "demo.hidden[0]"),
    ("router_demo", "demo.top_k=5", "demo.top_k"),  # > n_experts
    ("router_demo", "seed=-1", "seed"),
    ("router_demo", "device=tpu", "device"),
    ("router_demo", "+demo.stepz=3", "demo.stepz"),  # + adds a key the schema lacks: refused
    ("router_demo", "+foo=1", "foo"),
]


@pytest.mark.parametrize(("experiment", "override", "key"), AT_COMPOSITION)
def test_wrong_type_or_unknown_key_fails_at_composition(experiment, override, key):
    with pytest.raises(ConfigCompositionException) as info:
        compose_config([f"experiment={experiment}", override])
    assert key in _message(info.value)


@pytest.mark.parametrize(("experiment", "override", "key"), AT_ENTRY)
def test_bad_value_fails_before_any_work_naming_the_key(experiment, override, key, tmp_path):
    cfg = compose_config([f"experiment={experiment}", override])
    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError) as info:  # the entry alone (as tests and benchmarks call it)
        hydra.utils.get_method(cfg.entry)(cfg, run_dir)
    assert key in str(info.value)
    assert not run_dir.exists() or not any(run_dir.iterdir())
    with pytest.raises(ConfigError, match=key.replace("[", r"\[")):  # the CLI path: nothing written
        run_experiment(cfg, run_dir)
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_a_key_missing_from_a_hand_made_config_is_an_error_not_a_default(tmp_path):
    """The entries no longer fall back to ``.get(key, default)``: SkillBlender without
    ``checkpoint_every`` (it used to read 0) or ``blender_sees_rates`` (it used to read true)."""
    for key in ("checkpoint_every", "blender_sees_rates"):
        raw = OmegaConf.to_container(compose_config(["experiment=skillblend_smoke"]))
        del raw["skillblend"][key]
        from streammoe.control.skillblend.experiment import run

        with pytest.raises(ConfigError, match=f"skillblend.{key}"):
            run(OmegaConf.create(raw), tmp_path / key)
        assert not (tmp_path / key).exists()


def test_cli_names_the_key_of_a_wrong_type(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), "experiment=router_demo", "seed=abc"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "seed" in proc.stderr
    assert not (tmp_path / "outputs").exists()


# ----------------------------------------------------------------------------- device
DEVICE_EXPERIMENTS = ["driftmoe_smoke", "macrohft_smoke", "skillblend_smoke", "skillblend_skills",
                      "t2mir_smoke", "router_demo", "mergevla_smoke"]


@pytest.mark.parametrize("experiment", DEVICE_EXPERIMENTS)
def test_cuda_without_a_gpu_fails_before_any_work(experiment, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = compose_config([f"experiment={experiment}", "device=cuda"])
    run_dir = tmp_path / "run"
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        hydra.utils.get_method(cfg.entry)(cfg, run_dir)
    assert not run_dir.exists() or not any(run_dir.iterdir())
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        run_experiment(cfg, run_dir)
    assert not run_dir.exists() or not any(run_dir.iterdir())


@pytest.mark.parametrize("experiment", ["driftmoe_smoke", "macrohft_smoke"])
def test_cpu_only_systems_refuse_cuda_even_with_a_gpu(experiment, tmp_path, monkeypatch):
    """DriftMoE and MacroHFT run on the CPU: an explicit cuda is refused, auto means the CPU."""
    from streammoe.control.macrohft.config import macrohft_device
    from streammoe.stream.config import driftmoe_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_config([f"experiment={experiment}", "device=cuda"])
    with pytest.raises(ConfigError, match="CPU only"):
        hydra.utils.get_method(cfg.entry)(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()
    for pick in (driftmoe_device, macrohft_device):
        assert pick("auto") == torch.device("cpu") and pick("cpu") == torch.device("cpu")


# ------------------------------------------------------------------------------ smokes
SIZE_KEYS = {  # what a smoke config may change: sizes and budgets (and its name, its data cache)
    "experiment_name", "scale", "baselines", "window", "memory_checkpoints", "n_experts", "top_k",
    "hidden_sizes", "batch_size", "alphas", "shrinkage", "margins", "context_window", "market_window", "chunk_length",
    "hidden", "epochs", "eps_decay_epochs", "memory_capacity", "steps_per_round",
    "updates_per_round", "timesteps", "n_envs", "episode_steps", "eval_episodes", "checkpoint_every",
    "video_episodes", "n_steps", "n_epochs", "net_arch", "n_train_tasks", "n_test_tasks", "horizon",
    "n_episodes", "data_dir", "d_model", "n_heads", "expert_hidden", "steps", "warmup_steps",
    "log_every", "ckpt_every",
    "jobs",    # mergevla_smoke: in-process (worker processes cost more than the smoke run)
    "device",  # skillblend_smoke: the tests' SB3 runs stay on the CPU on a GPU machine
    "curve_at",  # skillblend_smoke: learning-curve points are budgets, below the smoke's timesteps
    "data",    # macrohft_smoke: the synthetic market instead of a download
    # mergevla_smoke: fewer suites, held-out variations, layers and variants; the object state
    # instead of images (the fast path for tests)
    "suites", "pretrain_tasks", "vision", "episodes_per_task", "n_heldout", "n_layers", "lora_rank", "k", "variants",
    "ablation_variants", "video_size",
}


@pytest.mark.parametrize(("smoke", "real"), sorted(SMOKES.items()))
def test_smoke_configs_inherit_from_the_real_one_and_change_only_sizes(smoke, real):
    text = yaml.safe_load((ROOT / "conf" / "experiment" / f"{smoke}.yaml").read_text())
    assert text["defaults"][0] == real
    s_cfg, r_cfg = compose_config([f"experiment={smoke}"]), compose_config([f"experiment={real}"])
    assert OmegaConf.get_type(s_cfg) is OmegaConf.get_type(r_cfg)
    s_nodes, r_nodes = _nodes(OmegaConf.to_container(s_cfg)), _nodes(OmegaConf.to_container(r_cfg))
    assert set(r_nodes) <= set(s_nodes), sorted(set(r_nodes) - set(s_nodes))
    changed = [k for k, v in r_nodes.items() if not isinstance(v, dict) and s_nodes[k] != v]
    assert changed
    for key in changed:
        assert SIZE_KEYS & set(key.split(".")), f"{smoke} changes {key}, not a size"


def test_smoke_group_options_inherit_their_defaults():
    for group in ("skills", "ppo"):
        text = yaml.safe_load((ROOT / "conf" / "skillblend" / group / "smoke.yaml").read_text())
        assert text["defaults"][0] == "default"


# ------------------------------------------------------------------- schema vs runtime
def test_schemas_mirror_the_runtime_dataclasses():
    from streammoe.control.macrohft.config import DQNSettings, HyperSettings
    from streammoe.control.macrohft.train import DQNConfig, HyperConfig
    from streammoe.control.t2mir.config import T2MIRModelSettings, T2MIRTrainSettings
    from streammoe.control.t2mir.model import ModelConfig
    from streammoe.control.t2mir.train import TrainConfig

    def names(cls: type) -> set[str]:
        return {f.name for f in fields(cls)}

    assert names(DQNSettings) == names(DQNConfig)
    assert names(HyperSettings) == names(HyperConfig)
    assert names(T2MIRTrainSettings) == names(TrainConfig)
    set_elsewhere = {"obs_dim", "act_dim", "horizon", "token_moe", "task_moe", "seed"}
    assert names(T2MIRModelSettings) == names(ModelConfig) - set_elsewhere


def test_synthetic_market_defaults_equal_its_yaml():
    """The one schema block with defaults (see SyntheticMarket): they must be synthetic.yaml's."""
    from streammoe.control.macrohft.config import SyntheticMarket

    yaml_block = yaml.safe_load((ROOT / "conf" / "data" / "synthetic.yaml").read_text())["synthetic"]
    assert OmegaConf.to_container(OmegaConf.structured(SyntheticMarket)) == yaml_block
