# The two set-up commands: `make demo` and `make test`. Both install into .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.raymmr-installed
PYTEST_ARGS ?=

.PHONY: demo test install lint clean

install: $(STAMP)

# torch first (the CUDA build on local disk runs on CPU too), then DeepSpeed against it
# (it ships as source only, so no build isolation), then raymmr in editable mode; every step
# within the tested versions of constraints.txt.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt torch torchvision
	$(BIN)/python -c "import deepspeed" 2>/dev/null || $(BIN)/pip install -q -c constraints.txt --no-build-isolation deepspeed
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check raymmr jobs tests

clean:
	rm -rf runs .pytest_cache
