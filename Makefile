# The two set-up commands: `make demo` and `make test`. Both install into .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raymmr-installed
PYTEST_ARGS ?=

.PHONY: demo test install lint clean

install: $(STAMP)

# torch first (the CUDA build on local disk runs on CPU too), then DeepSpeed against it
# (it ships as source only, so no build isolation), then raymmr in editable mode.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -c "import deepspeed" 2>/dev/null || $(BIN)/pip install -q --no-build-isolation deepspeed
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check raymmr jobs tests

clean:
	rm -rf runs .pytest_cache
