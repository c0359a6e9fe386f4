# The two commands that matter: `make demo` and `make test` (each sets up .venv first).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR := outputs/demo

.PHONY: install test test-fast demo bench clean sweep-demo app

install: $(STAMP)

# The locked versions (requirements.lock, pip-tools; README: Install), rebuilt when the lock or pyproject.toml changes.
# torch comes first, pinned: the lock leaves it out because its build (CPU or CUDA) depends on the machine; here the
# CPU wheel (pip's find-links), elsewhere `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu` (or cu128).
TORCH := 2.13.0
TORCH_INDEX ?=
$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip setuptools wheel
	$(BIN)/python -m pip install -q torch==$(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

# The suite on TEST_WORKERS processes (pytest-xdist), each running whole test files (module fixtures such as the
# trained runs of test_faults.py are built once); one thread each. TEST_WORKERS=0: one process, in file order.
TEST_WORKERS ?= 2
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# Everything except the multi-process / subprocess tests.
test-fast: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# Photos no demo run trains on: the 10 held-out package photos and the shipped split's validation and test photos.
HELD_OUT := [$${dq.assets:heldout_photos},$${dq.assets:images}/coffee.jpg,$${dq.assets:images}/flower.jpg,$${dq.assets:images}/china.jpg]

# Train the small model on the shipped photos (resumes if interrupted), evaluate it on the held-out photos
# (all five tests, with the checkpoint's own sampler; every baseline but optimal transport, whose exact solver takes
# longer than the rest of the evaluation: drop baselines.ot=null to add it), write pictures to outputs/demo/ and the
# README's two small pictures to docs/images/.
demo: install
	$(BIN)/python train.py experiment=demo hydra.run.dir=$(DEMO_DIR)/train ckpt_path=last
	$(BIN)/python evaluate.py ckpt_path=$(DEMO_DIR)/train/checkpoints/last.ckpt tests=rhtpm \
		'data.paths=$(HELD_OUT)' data.image_size=64 baselines.ot=null hydra.run.dir=$(DEMO_DIR)/evaluate
	$(BIN)/python -m dequant.demo --run $(DEMO_DIR)/train --out $(DEMO_DIR) --docs docs/images

# A real ablation on the CPU (about an hour on 2 idle cores): the four texture cues (T, G, L, none), each the demo's
# recipe (bridge formulation, small_conv, 600 steps: at 300 the bridge has not yet left its input) evaluated at 64x64
# on the reconstruction test on the held-out photos; prints the sweep report, per N beside the quantized input
# (multirun/<date>/cue_modes_*).
sweep-demo: install
	$(BIN)/python -m dequant.sweep -m --config-dir sweeps --config-name cue_modes experiment=demo \
		+sweep.evaluate_overrides.data.image_size=64 \
		'+sweep.evaluate_overrides.data.paths=$${dq.assets:heldout_photos}'

# The palette editor in the browser (docs/app.md), at http://127.0.0.1:7860 only. By default it serves the model
# shipped in the package (src/dequant/assets/pretrained: no training needed); any checkpoint or dequant-export folder
# with e.g. `make app APP_CKPT=$(DEMO_DIR)/train/checkpoints/last.ckpt` (after `make demo`). dequant-app itself
# refuses a path that names nothing, or a missing or damaged shipped model, in one line with exit code 2.
APP_CKPT ?=
app: install
	$(BIN)/dequant-app $(if $(strip $(APP_CKPT)),--ckpt '$(strip $(APP_CKPT))')

bench: install
	$(BIN)/python experiments/bench_color.py
	$(BIN)/python experiments/bench_masks.py
	$(BIN)/python experiments/bench_data.py
	$(BIN)/python experiments/bench_data.py --unique
	$(BIN)/python experiments/bench_train.py

clean:
	rm -rf outputs multirun .pytest_cache
