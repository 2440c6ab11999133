"""The README's cluster path, run for real on one machine: a 2-job sweep of the installed
``streammoe-run`` through Hydra's submitit launcher (its local executor: the same code path as
``submitit_slurm`` up to the scheduler) and through the Ray launcher on a local Ray instance.

The Ray test needs the ``ray`` extra (``pip install "streammoe[ray]"``), which ``make`` leaves out:
hydra-ray-launcher pins cloudpickle<3 and so downgrades cloudpickle and joblib in the whole
environment. CI runs it in its own venv from ``scripts/check_wheel.sh``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["demo.steps=60", "demo.log_every=20"]


def _has_plugin(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _streammoe_run() -> list[str]:
    """The console script of the environment running the tests (as installed: editable or wheel)."""
    script = Path(sys.executable).parent / "streammoe-run"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "streammoe.cli"]


def _sweep(tmp_path: Path, launcher_args: list[str], timeout: int = 240) -> list[Path]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
           # Ray: no auth token written to ~/.ray, no usage-stats report
           "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [*_streammoe_run(), "-m", "experiment=router_demo", "seed=0,1", *launcher_args, *FAST]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    metrics = sorted((tmp_path / "multirun" / "router_demo").glob("*/*/metrics.json"))
    assert len(metrics) == 2, [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")][:50]
    # one directory per job, named <job number>_<overrides>, each with the job's own seed
    for job, path in enumerate(metrics):
        assert path.parent.name.startswith(f"{job}_") and f"seed={job}" in path.parent.name
        assert {"moe_mse", "routing_purity"} <= set(json.loads(path.read_text()))
        assert re.search(rf"^seed: {job}$", (path.parent / "config_resolved.yaml").read_text(), re.M)
    return metrics


def test_submitit_local_sweep_writes_one_run_per_job(tmp_path):
    # Not skipped: `make` installs the cluster extra, so CI always runs this test.
    assert _has_plugin("hydra_plugins.hydra_submitit_launcher"), \
        "hydra-submitit-launcher is missing: pip install 'streammoe[cluster]' (`make` installs it)"
    metrics = _sweep(tmp_path, ["hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5"])
    # submitit kept each job's logs and pickled result next to the runs
    assert len(list((metrics[0].parents[1] / ".submitit").rglob("*_result.pkl"))) == 2


@pytest.mark.skipif(not _has_plugin("hydra_plugins.hydra_ray_launcher"),
                    reason="hydra-ray-launcher is not installed (pip install 'streammoe[ray]'); `make` "
                           "leaves it out because it pins cloudpickle<3, which downgrades cloudpickle "
                           "and joblib for everything else; scripts/check_wheel.sh runs this test in "
                           "its own venv")
def test_ray_local_sweep_writes_one_run_per_job(tmp_path):
    _sweep(tmp_path, ["hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2",
                      "+hydra.launcher.ray.init.include_dashboard=false"])
