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

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev,data]"
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
