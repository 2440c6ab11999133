# Two commands on a fresh machine (see README):  make run   |   make test
# Both create .venv on first use. TORCH_SPEC pins the CPU build of torch that lies on this
# project's build machines; elsewhere use e.g. `make run TORCH_SPEC=torch` (pyproject.toml itself
# only asks for torch>=2.2).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
ARGS ?=

.PHONY: run test lint install clean

PIP = $(BIN)/python -m pip install --quiet --disable-pip-version-check

# Re-runs when pyproject.toml changes, into the existing venv. MuJoCo 4 ships as mujoco +
# mujoco-core + mujoco-studio, MuJoCo 3 as mujoco alone; switching between them in place (the `vla`
# extra's metaworld pins mujoco==3.3.0) leaves a stray or half-deleted mujoco-core and a broken
# `import mujoco`. So when mujoco does not import, the split packages are removed and mujoco is
# reinstalled, with its own dependencies, at the version pip resolved. The last line fails the
# install unless the venv works.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[dev,data,cluster,vla]"
	$(BIN)/python -c "import mujoco" 2>/dev/null || { \
	  version=$$($(BIN)/python -m pip show mujoco 2>/dev/null | sed -n 's/^Version: //p'); \
	  $(BIN)/python -m pip uninstall --yes --quiet mujoco-core mujoco-studio; \
	  $(PIP) --force-reinstall "mujoco==$$version"; }
	$(BIN)/python -c "import mujoco, metaworld, torch, streammoe, streammoe_envs, hydra_plugins.hydra_submitit_launcher"
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/streammoe-run $(ARGS)

lint: $(BIN)/.installed
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -n 2 --durations=15

clean:
	rm -rf $(VENV) outputs multirun
