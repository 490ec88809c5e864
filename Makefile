# Every capability is one target; `make help` lists them. Targets that need Python create .venv first.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

# The newest supported Python (3.11-3.13) found by RUNNING each candidate: pyenv's shims exist for
# versions that are not active and fail when run. Override with PYTHON_BASE=/path/to/python3.
PYTHON_CANDIDATES := python3.13 python3.12 python3.11 python3 \
  $(wildcard $(HOME)/.pyenv/versions/3.1[123]*/bin/python3 /opt/homebrew/bin/python3.1[123] /usr/local/bin/python3.1[123])
PYTHON_BASE ?= $(shell for p in $(PYTHON_CANDIDATES); do "$$p" -c 'import sys; v = sys.version_info; \
  (3, 11) <= v[:2] < (3, 14) and print(f"{v[0]}.{v[1]:02d}.{v[2]:03d} {sys.executable}")' 2> /dev/null || true; \
  done | sort -r | head -n 1 | cut -d" " -f2)
# The light host environment of `make run` on a GPU server (requirements-host.txt: MLflow, no TensorFlow):
# any Python >= 3.10, e.g. Ubuntu 22.04's python3. Used when the full .venv is absent.
HOST_PYTHON ?= $(shell for p in python3.13 python3.12 python3.11 python3.10 python3 \
  $(wildcard $(HOME)/.pyenv/versions/3.1[0123]*/bin/python3); do "$$p" -c 'import sys; v = sys.version_info; \
  (3, 10) <= v[:2] < (3, 14) and print(f"{v[0]}.{v[1]:02d}.{v[2]:03d} {sys.executable}")' 2> /dev/null || true; \
  done | sort -r | head -n 1 | cut -d" " -f2)
HOST_VENV ?= .venv-host
HOST_STAMP := $(HOST_VENV)/.installed
# make run / server / ui need only MLflow on the host: the full .venv when there is one, else the light one.
FULL_ENV = $(or $(IN_IMAGE),$(wildcard $(VENV)/bin/mlflow))
RUN_VENV = $(if $(FULL_ENV),$(VENV),$(HOST_VENV))
RUN_STAMP = $(if $(FULL_ENV),,$(HOST_STAMP))
# Inside the project image (devcontainer, ./run_script.bash make ...) its /opt/venv is the environment,
# also when the mounted checkout holds a host's .venv (its python is the host's, absent in the image).
IMAGE_MARKER ?= /opt/venv/.kerasflow-image
IN_IMAGE := $(wildcard $(IMAGE_MARKER))
VENV ?= $(if $(IN_IMAGE),/opt/venv,.venv)
PY := $(VENV)/bin/python
STAMP := $(if $(IN_IMAGE),,$(VENV)/.installed)
ARGS ?=
# make run ON=slurm: the run goes to a Slurm cluster (RUNTIME, SBATCH, GPUS=N, CLUSTER_IMAGES: docs/cluster.md)
ON ?=
STORE ?= store
# empty: each store's server keeps its own port (first free from 5000, in STORE/server-port)
PORT ?=
PORT_ARG = $(if $(PORT),--port $(PORT))
SERVE_PORT ?= 5001
MODEL ?=
NAME ?= kerasflow
METRIC ?= test_accuracy
FILTER ?=
FROM ?=
SPLITS ?= outputs/splits.json
TRIALS ?= 20
WORKERS ?= 1
STUDY ?= search
N_OUTER ?= 0
N_INNER ?= 0
# The offline demo (presets/demo.yaml): synthetic cell images and the small CNN, seconds an epoch on a CPU.
DEMO_SET := --preset demo --set run_name=demo-{time}  # {time}: an automatic name, never another run's

.PHONY: help env host-env lock lock-host team-server train demo data weights test lint bench \
        bench-pipeline bench-tracking bench-relocate bench-push bench-stores bench-speed bench-bigdata bench-run clean test-fast \
        test-all test-gpu-image track track-demo server server-stop serve predict runs reproduce promote versions ui pull push log-run relocate migrate \
        queue cancel doctor \
        mlproject splits cv tune analyze image cluster-image shell run-script run pictures

##@ Everyday
help: ## list the targets, by group
	@awk 'BEGIN {FS = ":.*## "} /^##@ / {printf "\n%s\n", substr($$0, 5); next} \
	  /^[a-zA-Z_-]+:.*## / {printf "  make %-15s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "  Options go in ARGS: make train ARGS='--set epochs=3'; make run ARGS='-P epochs=3'."
	@echo "  Every target: kerasflow --help (in .venv/bin) and docs/ (README.md links them)."

ifneq ($(STAMP),)
$(STAMP): requirements.txt
	@test -n "$(PYTHON_BASE)" && "$(PYTHON_BASE)" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 14)' \
	  2> /dev/null || { echo "error: no Python 3.11, 3.12 or 3.13 found$(if $(PYTHON_BASE), ($(PYTHON_BASE) is $$("$(PYTHON_BASE)" -V 2> /dev/null || echo "not runnable")),): install one (python.org, your package manager, pyenv) or run make PYTHON_BASE=/path/to/python3.12"; exit 2; }
	@echo "env: creating $(VENV) with $$("$(PYTHON_BASE)" -V) ($(PYTHON_BASE))"
	$(PYTHON_BASE) -m venv $(VENV)
	@# uv with your pip's settings (index, mirrors, certificate, constraints), else pip; then this
	@# checkout linked as the environment's kerasflow (+ the `kerasflow` command): kerasflow/env.py
	$(VENV)/bin/python -m kerasflow env requirements.txt
	touch $(STAMP)
endif

$(HOST_STAMP): requirements-host.txt
	@test -n "$(HOST_PYTHON)" || { echo "error: no Python 3.10-3.13 found: install python3 (>= 3.10) or run make HOST_PYTHON=/path/to/python3"; exit 2; }
	@echo "host-env: creating $(HOST_VENV) with $$("$(HOST_PYTHON)" -V) ($(HOST_PYTHON))"
	$(HOST_PYTHON) -m venv $(HOST_VENV)
	$(HOST_VENV)/bin/python -m kerasflow env requirements-host.txt
	touch $(HOST_STAMP)

demo: $(STAMP) ## the offline demo: a small CNN on synthetic cell images (~1 min on a CPU)
	$(PY) -m kerasflow train $(DEMO_SET) $(ARGS)

train: $(STAMP) ## train with config.yaml (VGG16 on TFDS malaria: `make data` first)
	$(PY) -m kerasflow train $(ARGS)

track: $(STAMP) ## train as one MLflow run into ./store (or MLFLOW_TRACKING_URI)
	$(PY) -m kerasflow track --store $(STORE) $(ARGS)

log-run: $(STAMP) ## log a finished run folder into the store afterwards: FOLDER=outputs/NAME
	@test -n "$(FOLDER)" || { echo "error: give the run folder: make log-run FOLDER=outputs/NAME"; exit 2; }
	$(PY) -m kerasflow log-run "$(FOLDER)" --store $(STORE) $(ARGS)

track-demo: $(STAMP) ## the offline demo, tracked; its model registered as demo@candidate
	$(PY) -m kerasflow track --store $(STORE) $(DEMO_SET) --register demo $(ARGS)

run: $(RUN_STAMP) ## train in the image (mlflow run + server, tmux over SSH); ON=slurm: Slurm job
	$(RUN_VENV)/bin/python -m kerasflow run $(if $(ON),--on $(ON) )$(ARGS)

doctor: $(RUN_STAMP) ## check this box before a run: engine, GPUs, driver, disk, data, store, port
	@$(RUN_VENV)/bin/python -m kerasflow doctor $(PORT_ARG) --store "$(STORE)" $(if $(ON),--on $(ON) )$(ARGS)

queue: $(RUN_STAMP) ## this machine's runs in line and running, every user's (ARGS=--watch)
	@$(RUN_VENV)/bin/python -m kerasflow queue $(ARGS)

cancel: $(RUN_STAMP) ## take your run out of the line, or stop it (MLflow: KILLED): NAME=...
	@test "$(origin NAME)" != file || { echo "error: give the run: make cancel NAME=<run name> (make queue lists them)"; exit 2; }
	@$(RUN_VENV)/bin/python -m kerasflow cancel "$(NAME)" $(ARGS)

ui: $(RUN_STAMP) ## the MLflow UI over a (copied) store, on its own port: STORE=...
	KERASFLOW_PYTHON="$(RUN_VENV)/bin/python" ./run_mlflow_ui.bash "$(STORE)" $(PORT_ARG) $(ARGS)

data: ## download TFDS malaria into data/tfds (internet; without .venv: in the image)
	@if [ -n "$(IN_IMAGE)" ] || [ -x "$(PY)" ] || ! command -v docker > /dev/null 2>&1; then \
	  $(if $(STAMP),$(MAKE) --no-print-directory $(STAMP) &&) $(PY) -m kerasflow data $(ARGS); \
	else \
	  echo "data: no full environment here (.venv): downloading inside the project image"; \
	  { [ -n "$${KERASFLOW_PYTHON:-}" ] || $(MAKE) --no-print-directory $(HOST_STAMP); } && \
	  ./run_script.bash make data ARGS="$(ARGS)"; \
	fi

weights: $(STAMP) ## cache the VGG16 ImageNet weights in ~/.keras/models (internet)
	$(PY) -m kerasflow weights $(ARGS)

##@ Tracking and models
server: $(RUN_STAMP) ## MLflow server over ./store on 127.0.0.1 (its own port; PORT=); AUTH=1, DB=...
	$(RUN_VENV)/bin/python -m kerasflow server "$(STORE)" $(PORT_ARG) $(if $(AUTH),--auth) $(ARGS)

server-stop: $(RUN_STAMP) ## stop this store's MLflow server (the one make run / server / ui left running)
	@$(RUN_VENV)/bin/python -m kerasflow server-stop "$(STORE)" $(ARGS)

runs: $(RUN_STAMP) ## table + curves of the best runs (outputs/best_runs.png): FILTER="..."
	mkdir -p outputs && $(RUN_VENV)/bin/python -m kerasflow runs --store $(STORE) --filter "$(FILTER)" \
	  --plot outputs/best_runs.png $(ARGS)

reproduce: $(STAMP) ## re-create a tracked run and compare: make reproduce RUN=<id>
	@test -n "$(RUN)" || { echo "error: give the run: make reproduce RUN=<run id> (make runs lists them)"; exit 2; }
	$(PY) -m kerasflow reproduce "$(RUN)" --store $(STORE) $(ARGS)

promote: $(RUN_STAMP) ## point @champion at the best version: NAME=demo METRIC=test_accuracy
	$(RUN_VENV)/bin/python -m kerasflow promote "$(NAME)" --metric "$(METRIC)" --store $(STORE) $(ARGS)

versions: $(RUN_STAMP) ## a registered model's versions, aliases, test metrics: NAME=demo
	$(RUN_VENV)/bin/python -m kerasflow versions "$(NAME)" --store $(STORE) $(ARGS)

serve: $(STAMP) ## serve a model on 127.0.0.1:5001: MODEL=models:/demo@candidate
	@test -n "$(MODEL)" || { echo "error: give the model: make serve MODEL=models:/NAME@ALIAS"; exit 2; }
	$(PY) -m kerasflow serve "$(MODEL)" --port $(SERVE_PORT) --store $(STORE) $(ARGS)

predict: $(STAMP) ## classify images with the served model: MODEL=... IMAGES='a.png b.png'
	$(PY) -m kerasflow predict --url http://127.0.0.1:$(SERVE_PORT) --model "$(MODEL)" --store $(STORE) $(ARGS) \
	  $(IMAGES)

##@ Stores
pull: $(RUN_STAMP) ## copy a store in use and fix its paths: FROM=user@server:path/store
	@test -n "$(FROM)" || { echo "error: give the source: make pull FROM=user@server:path/to/store"; exit 2; }
	$(RUN_VENV)/bin/python -m kerasflow pull "$(FROM)" "$(STORE)" $(ARGS)

push: $(RUN_STAMP) ## merge this store's runs into another: TO=http://host:port or TO=DIR
	@test -n "$(TO)" || { echo "error: give the destination: make push TO=http://host:port (or TO=path/to/store)"; exit 2; }
	$(RUN_VENV)/bin/python -m kerasflow push --store "$(STORE)" --to "$(TO)" $(ARGS)

relocate: $(RUN_STAMP) ## rewrite a moved store's artifact paths: make relocate STORE=...
	$(RUN_VENV)/bin/python -m kerasflow relocate "$(STORE)" $(ARGS)

migrate: $(RUN_STAMP) ## move a legacy file store onto sqlite: make migrate STORE=path/to/mlruns
	$(RUN_VENV)/bin/python -m kerasflow migrate "$(STORE)" $(ARGS)

team-server: ## team server (PostgreSQL + MLflow, docker/compose.yaml) on 127.0.0.1:5000
	@test -f docker/team.env || { echo "error: no docker/team.env: cp docker/team.env.example docker/team.env, then set its password"; exit 2; }
	@if docker compose version > /dev/null 2>&1; then compose=(docker compose); \
	elif command -v docker-compose > /dev/null; then compose=(docker-compose); \
	else echo "error: Docker Compose is not installed: install the docker compose plugin (v2)"; exit 2; fi; \
	"$${compose[@]}" --env-file docker/team.env -f docker/compose.yaml up -d --build

##@ Experiments
splits: $(STAMP) ## write the nested CV folds once: SPLITS=outputs/splits.json
	$(PY) -m kerasflow splits --out "$(SPLITS)" $(ARGS)

cv: $(STAMP) ## nested CV as MLflow runs over SPLITS: make cv N_OUTER=2 N_INNER=2
	test -f "$(SPLITS)" || $(PY) -m kerasflow splits --out "$(SPLITS)" $(ARGS)
	$(PY) -m kerasflow cv --store $(STORE) --set splits_file="$(SPLITS)" --n-outer $(N_OUTER) --n-inner $(N_INNER) $(ARGS)

tune: $(STAMP) ## Optuna search over search_space: make tune TRIALS=20 WORKERS=2
	$(PY) -m kerasflow tune --store $(STORE) --trials $(TRIALS) --workers $(WORKERS) --study "$(STUDY)" \
	  $(if $(ON),--on $(ON) )$(ARGS)

analyze: $(STAMP) ## Youden threshold + mlflow evaluate on runs' predictions: FILTER=...
	$(PY) -m kerasflow analyze --store $(STORE) --filter "$(FILTER)" $(ARGS)

##@ Containers
image: $(RUN_STAMP) ## build the project image for this commit, as your UID/GID
	$(RUN_VENV)/bin/python -m kerasflow image $(ARGS)

cluster-image: $(RUN_STAMP) ## the image for Slurm nodes: RUNTIME=docker|charliecloud|apptainer|enroot
	$(RUN_VENV)/bin/python -m kerasflow cluster-image $(ARGS)

shell: $(RUN_STAMP) ## a shell in the project image, this checkout at /workspace (GPU=auto|on|off)
	$(RUN_VENV)/bin/python -m kerasflow run-script bash $(ARGS)

run-script: $(RUN_STAMP) ## any command in the project image: make run-script ARGS='make test'
	@test -n "$(ARGS)" || { echo "error: give the command: make run-script ARGS='make demo'"; exit 2; }
	$(RUN_VENV)/bin/python -m kerasflow run-script $(ARGS)

##@ Maintenance
env: $(STAMP) ## create .venv from the pinned lock (requirements.txt)

host-env: $(HOST_STAMP) ## the light env for run/ui/pull/server (MLflow, no TF; Python >= 3.10)

# The tests run in TEST_JOBS pytest-xdist workers (0: one process), a test file to a worker and every
# tests/test_engine_*.py on one (they share a user, checkout and image); how long it takes is measured in
# docs/architecture.md, "Test time".
TEST_JOBS ?= 2
XDIST = $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile)

test: $(STAMP) ## the suite CI runs: real Docker engine, image, journeys (offline, CPU)
	$(PY) -m pytest $(XDIST) --durations=25 -m "not gpu_image and not heavy" $(ARGS)

test-all: $(STAMP) ## make test + heavy tests (stress, speed options, 2000 generated inputs)
	KERASFLOW_GENERATED_EXAMPLES=2000 $(PY) -m pytest $(XDIST) -m "not gpu_image" $(ARGS)

test-fast: $(STAMP) ## the quick loop: no engine, no image, no browser, nothing slow (~4 min)
	$(PY) -m pytest $(XDIST) -m "not slow and not engine and not gpu_image" $(ARGS)

test-gpu-image: $(STAMP) ## build the GPU variant (8 GB) and check its CUDA libraries
	$(PY) -m pytest -m gpu_image -s $(ARGS)

lint: $(STAMP) ## ruff, import rules (lint-imports), shellcheck and hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/hadolint docker/Dockerfile docker/server.Dockerfile
	$(VENV)/bin/shellcheck -x $$(git ls-files '*.bash' '*.sh' .ci/run)

pictures: $(STAMP) ## regenerate docs/images from a real tracked run (headless Chromium)
	$(PY) docs/make_pictures.py $(ARGS)

mlproject: $(STAMP) ## regenerate MLproject from config.yaml
	$(PY) -m kerasflow mlproject > MLproject

lock: ## re-pin requirements.txt from requirements.in
	rm -rf .venv-lock && $(PYTHON_BASE) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements.in
	{ echo '# Pinned lock generated from requirements.in by `make lock` (Python 3.11, linux x86_64).'; \
	  .venv-lock/bin/pip freeze; } > requirements.txt
	rm -rf .venv-lock

lock-host: ## re-pin requirements-host.txt (with HOST_PYTHON, the oldest you support)
	rm -rf .venv-lock && $(HOST_PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet -r requirements-host.in
	{ echo "# Pinned lock generated from requirements-host.in by \`make lock-host\` ($$($(HOST_PYTHON) -V), linux x86_64; installs on 3.10-3.13)."; \
	  .venv-lock/bin/pip freeze; } > requirements-host.txt
	rm -rf .venv-lock

bench: bench-pipeline bench-tracking bench-relocate bench-push bench-stores bench-speed bench-bigdata bench-run ## every benchmark

bench-pipeline: $(STAMP) ## input pipeline vs a generator, `train.py --help` time (~2 min)
	$(PY) bench/bench_pipeline.py $(ARGS)

bench-tracking: $(STAMP) ## MLflow tracking overhead and model-logging cost (~6 min)
	$(PY) bench/bench_tracking.py $(ARGS)

bench-relocate: $(STAMP) ## relocating 10,000-run stores, vs the sed one-liner (~3 min)
	$(PY) bench/bench_relocate.py $(ARGS)

bench-push: $(STAMP) ## pushing a 1,000-run store, then again with nothing new
	$(PY) bench/bench_push.py $(ARGS)

bench-stores: $(STAMP) ## concurrent writers: sqlite (embedded, server) vs PostgreSQL (~5 min)
	$(PY) bench/bench_stores.py $(ARGS)

bench-speed: $(STAMP) ## precision, XLA, steps_per_execution, 2 CPU devices (~6 min)
	$(PY) bench/bench_speed.py $(ARGS)

bench-run: $(STAMP) ## make run (foreground) vs a bare docker run of the same training, warm image
	$(PY) bench/bench_run.py $(ARGS)

bench-bigdata: $(STAMP) ## decoded data larger than the RAM budget: cache file vs RAM (~10 min)
	$(PY) bench/bench_bigdata.py $(ARGS)

clean: ## remove caches (keeps outputs/ with your models, .venv, data/ and stores)
	rm -rf .cache .pytest_cache .ruff_cache bench/results
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	@if [ -d outputs ]; then echo "clean: kept outputs/ ($$(du -sh outputs | cut -f1): run folders and their" \
	  "models, tracked or not); remove it yourself once they are logged: rm -rf outputs (docs/lifecycle.md)"; fi
