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

# Re-runs when pyproject.toml changes, into the existing venv. An in-place upgrade of mujoco 3.x
# to 4.x (split into mujoco + mujoco-core + mujoco-studio) deletes files the new mujoco-core just
# wrote, leaving `import mujoco` broken; so when mujoco does not import, its distributions are
# reinstalled at the versions pip resolved. The last line fails the install unless the venv works.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) "$(TORCH_SPEC)"
	$(PIP) -e ".[dev,data,cluster]"
	$(BIN)/python -c "import mujoco" 2>/dev/null || $(PIP) --force-reinstall --no-deps \
	  $$($(BIN)/python -m pip list --format=freeze --disable-pip-version-check | grep -iE '^mujoco(-core|-studio)?==')
	$(BIN)/python -c "import mujoco, torch, streammoe, streammoe_envs, hydra_plugins.hydra_submitit_launcher"
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
