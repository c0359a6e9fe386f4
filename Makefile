# The two commands that matter: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := outputs/demo

.PHONY: install test test-fast demo bench clean

install: $(STAMP)

# Rebuilt only when the dependency list changes; torch is pinned to the CPU wheel (see pyproject.toml).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q

# Everything except the multi-process / subprocess tests.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -m "not slow"

# Train the small model on the shipped photos, evaluate it, write pictures to outputs/demo/ (resumes if interrupted).
demo: install
	$(BIN)/python train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train ckpt_path=last
	$(BIN)/python -m dequant.demo --run $(DEMO_DIR)/train --out $(DEMO_DIR)

bench: install
	$(BIN)/python experiments/bench_color.py
	$(BIN)/python experiments/bench_masks.py
	$(BIN)/python experiments/bench_data.py
	$(BIN)/python experiments/bench_train.py

clean:
	rm -rf outputs multirun .pytest_cache
