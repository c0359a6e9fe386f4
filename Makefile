# The two commands that matter: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := outputs/demo

.PHONY: install test test-fast demo bench clean sweep-demo

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

# Train the small model on the shipped photos (resumes if interrupted), evaluate it on the held-out photos
# (all five tests, 10-step DPM-Solver++ to keep it short), write pictures to outputs/demo/.
demo: install
	$(BIN)/python train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train ckpt_path=last
	$(BIN)/python evaluate.py ckpt_path=$(DEMO_DIR)/train/checkpoints/last.ckpt tests=rhtpm \
		sampler=dpmsolver sampler.steps=10 hydra.run.dir=$(DEMO_DIR)/evaluate
	$(BIN)/python -m dequant.demo --run $(DEMO_DIR)/train --out $(DEMO_DIR)

# A real ablation on the CPU (~10 min): the four texture cues (T, G, L, none), each a tiny UNet trained 1000 steps on
# the shipped photos and evaluated on the reconstruction test; prints the sweep report (multirun/<date>/cue_modes_*).
sweep-demo: install
	OMP_NUM_THREADS=1 $(BIN)/python -m dequant.sweep -m --config-dir sweeps --config-name cue_modes experiment=tiny \
		trainer.max_steps=1000 trainer.val_check_interval=1000 callbacks.model_checkpoint.every_n_train_steps=500 \
		data.batch_size=8 data.n_test=2 module.lr=1e-3 module.warmup_steps=50 module.ema_decay=0.995 \
		module.prediction_type=v_prediction sampler=ddim sampler.steps=20 sweep.evaluate_overrides.tests=r

bench: install
	$(BIN)/python experiments/bench_color.py
	$(BIN)/python experiments/bench_masks.py
	$(BIN)/python experiments/bench_data.py
	$(BIN)/python experiments/bench_train.py

clean:
	rm -rf outputs multirun .pytest_cache
