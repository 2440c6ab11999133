#!/usr/bin/env bash
# A plain (non-editable) install works from any directory (issue #14, item 2), and the README's
# cluster launchers run (item 7). Builds the wheel from the files git would ship (tracked plus
# untracked-but-not-ignored; no stale build/), installs it with its dependencies into a fresh venv
# (torch first: TORCH_SPEC, as in the Makefile), and from a folder outside the checkout:
#   1. checks that streammoe, its configs and streammoe_envs come from the installed wheel,
#   2. runs `streammoe-run experiment=router_demo` (500 steps), `experiment=driftmoe_smoke` and
#      `experiment=mergevla_smoke` (the `vla` extra: Meta-World on MuJoCo 3.3.0, PEFT, h5py), each
#      of which must write metrics.json,
#   3. runs tests/test_cluster_launchers.py against the installed package: a 2-job sweep through
#      hydra/launcher=submitit_local and one through hydra/launcher=ray on a local Ray instance.
#      Ray lives only in this venv: the `ray` extra pins cloudpickle<3, which would downgrade
#      cloudpickle and joblib in the development venv.
# Fails on any error. pip's cache is reused; about 2-4 minutes with a warm cache on 2 cores.
# Usage: bash scripts/check_wheel.sh   (PYTHON=python3.11, TORCH_SPEC=torch, KEEP=1 to keep the folder)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/streammoe-wheel.XXXXXX")
if [[ "${KEEP:-0}" == 1 ]]; then trap 'echo "kept $WORK"' EXIT; else trap 'rm -rf "$WORK"' EXIT; fi
step() { echo "== check_wheel: $* ($SECONDS s)"; }

step "copy the sources to $WORK/src"
"$PYTHON" - "$ROOT" "$WORK/src" <<'EOF'
import shutil, subprocess, sys
from pathlib import Path
root, dst = Path(sys.argv[1]), Path(sys.argv[2])
try:
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], check=True, capture_output=True).stdout
except (OSError, subprocess.CalledProcessError):  # not a git checkout: copy, leaving artefacts out
    shutil.copytree(root, dst, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "*.egg-info", "__pycache__", "outputs", "multirun", "data_cache"))
else:
    for rel in filter(None, out.decode().split("\0")):
        if (root / rel).is_file():  # a tracked file deleted in the work tree is not shipped
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, dst / rel)
EOF

step "fresh venv, $TORCH_SPEC"
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
PIP=("$PY" -m pip install --quiet --disable-pip-version-check)
"${PIP[@]}" "$TORCH_SPEC"

step "build the wheel"
(cd "$WORK/src" && "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps . -w "$WORK/dist")
WHEEL=$(ls "$WORK"/dist/streammoe-*.whl)

step "install $(basename "$WHEEL")[cluster,ray,vla] and pytest"
"${PIP[@]}" "$WHEEL[cluster,ray,vla]" pytest
"$PY" -m pip check --disable-pip-version-check

mkdir -p "$WORK/run"
cd "$WORK/run"
export MUJOCO_GL=${MUJOCO_GL:-egl} OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
unset PYTHONPATH STREAMMOE_CONF

step "imports come from the wheel"
"$PY" - <<'EOF'
import mujoco, metaworld, peft  # the vla extra resolved in one pip call: MuJoCo imports
import streammoe, streammoe_envs, hydra_plugins.hydra_ray_launcher, hydra_plugins.hydra_submitit_launcher
from streammoe.cli import CONF_DIR
from streammoe_envs.skillblend.base import ASSETS
for what, path in (("streammoe", streammoe.__file__), ("streammoe_envs", streammoe_envs.__file__),
                   ("configs", CONF_DIR), ("MuJoCo assets", ASSETS)):
    assert "site-packages" in str(path), f"{what} not from the installed wheel: {path}"
    print(f"{what:14s} {path}")
assert (CONF_DIR / "experiment" / "driftmoe.yaml").is_file() and (ASSETS / "robot.xml").is_file()
EOF

# router_demo at 500 steps instead of 2000: the same code path, seconds even on a busy machine
for run in "router_demo demo.steps=500" driftmoe_smoke mergevla_smoke; do
  exp=${run%% *}
  step "streammoe-run experiment=$run"
  # shellcheck disable=SC2086  # $run is the experiment plus its overrides
  "$WORK/venv/bin/streammoe-run" experiment=$run hydra.run.dir="outputs/$exp"
  test -s "outputs/$exp/metrics.json" || { echo "check_wheel: $exp wrote no metrics.json" >&2; exit 1; }
done

step "cluster launchers (submitit_local, ray) against the installed package"
# --noconftest: the suite's conftest may need the dev extra; this file needs only pytest
"$PY" -m pytest -q -p no:cacheprovider --noconftest -rs "$ROOT/tests/test_cluster_launchers.py"
step "ok"
