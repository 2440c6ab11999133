"""The Hydra entry point: config composition, run outputs, unknown keys, sweeps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
from hydra.errors import ConfigCompositionException

from streammoe.cli import run_experiment
from tests.conftest import compose_config

ROOT = Path(__file__).resolve().parents[1]
FAST = ["demo.steps=60", "demo.log_every=20"]


def test_router_demo_run_writes_config_metrics_and_plot(tmp_path, capsys):
    cfg = compose_config(["experiment=router_demo", *FAST])
    metrics = run_experiment(cfg, tmp_path)
    assert {"moe_mse", "linear_mse", "routing_purity"} <= set(metrics)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == metrics
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,moe_mse") and len(rows) == 1 + 3
    assert (tmp_path / "config_resolved.yaml").exists() and (tmp_path / "region_expert.png").exists()
    assert "routing_purity" in capsys.readouterr().out  # the readable table


def test_same_seed_same_metrics(tmp_path):
    a = run_experiment(compose_config(["experiment=router_demo", "seed=3", *FAST]), tmp_path / "a")
    b = run_experiment(compose_config(["experiment=router_demo", "seed=3", *FAST]), tmp_path / "b")
    assert a == b


def test_unknown_keys_fail_clearly():
    with pytest.raises(ConfigCompositionException, match="no_such_key"):
        compose_config(["experiment=router_demo", "demo.no_such_key=1"])
    with pytest.raises(ConfigCompositionException, match="experiment"):
        compose_config(["experiment=no_such_experiment"])


def _run_cli(args, cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_key_exits_nonzero_with_message(tmp_path):
    proc = _run_cli(["experiment=router_demo", "demo.stepz=3"], tmp_path)
    assert proc.returncode != 0 and "stepz" in proc.stderr


def test_joblib_multirun_writes_one_dir_per_job(tmp_path):
    proc = _run_cli(["-m", "experiment=router_demo", "seed=0,1", "hydra/launcher=joblib",
                     "hydra.launcher.n_jobs=2", *FAST], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = sorted((tmp_path / "multirun").rglob("metrics.json"))
    assert len(metrics) == 2
    assert {p.parent.name.split("_")[0] for p in metrics} == {"0", "1"}


def test_default_experiment_is_driftmoe():
    cfg = compose_config([])
    assert cfg.experiment_name == "driftmoe" and cfg.entry == "streammoe.stream.experiment.run"


def test_every_experiment_composes():
    names = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    assert {"driftmoe", "driftmoe_smoke", "macrohft_smoke", "skillblend_smoke", "t2mir_smoke"} <= set(names)
    for name in names:
        cfg = compose_config([f"experiment={name}"])
        assert cfg.experiment_name and callable(hydra.utils.get_method(cfg.entry)), name
