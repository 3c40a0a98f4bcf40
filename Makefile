# The two set-up commands of the README (and docs/index.md): `make repro` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
# Stage commands run `python`: make it the venv's, and keep DVC quiet and offline-friendly.
export PATH := $(abspath $(BIN)):$(PATH)
export VIRTUAL_ENV := $(abspath $(VENV))
export DVC_NO_ANALYTICS := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# gcsfs otherwise waits 60 s on a gRPC probe at every call (see docs/pull-requests.md, the remote).
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT := false

.PHONY: help install install-dev system-deps repro test test-all lint format bench serve drift-report clean report remote-check push pull verify-model pin-images docs docs-reference

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

$(BIN)/activate:
	python3 -m venv $(VENV)

$(VENV)/.installed: requirements.txt requirements-serve.txt pyproject.toml | $(BIN)/activate
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt requirements-monitor.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed  ## Create .venv and install the pipeline's requirements

install-dev: $(VENV)/.installed-dev  ## Also install test and lint tools

ENGINE_SCRIPT := ../shared/tools/container-engine.sh
system-deps:  ## Optional, as root: Chromium (browser test), qemu-user (cross-CPU test), podman (container test)
	@if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then \
	  echo "system-deps: needs root and apt-get; the browser/cross-CPU/container tests will skip (fail under CI=true)"; exit 0; fi; \
	command -v chromium >/dev/null && command -v chromedriver >/dev/null && command -v qemu-x86_64 >/dev/null || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver qemu-user >/dev/null; }; \
	if [ -f $(ENGINE_SCRIPT) ]; then bash $(ENGINE_SCRIPT) setup; fi

repro: install  ## Run the pipeline (dvc repro) on the current params
	$(BIN)/dvc repro

test: install-dev  ## ruff check, ruff format --check, the docs site (--strict), then the test suite (all but `heavy`, ≤ 15 min)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/pytest -m "not heavy"

test-all: install-dev  ## make test plus the `heavy` tests (about 8 minutes more on 2 cores)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/pytest

lint: install-dev  ## ruff check + format check only
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install-dev  ## Apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

BASE ?= main
report: install  ## Compare the workspace's model with BASE (default main) → report.md + report-images/
	$(PY) -m imgclf.cli report --base $(BASE) --out report.md --images report-images

remote-check: install  ## Is the DVC remote usable? (says: down, missing bucket or credentials)
	$(PY) -m imgclf.cli remote-check

push: install  ## dvc push, with a clear message when the remote is not usable
	$(PY) -m imgclf.cli push

pull: install  ## dvc pull, with a clear message when the remote is not usable
	$(PY) -m imgclf.cli pull

bench: install-dev  ## Run every benchmark (replaces each scenario's section of bench/RESULTS.md; best on an idle machine)
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_train.py
	$(PY) bench/bench_numerics.py
	$(PY) bench/bench_api.py
	$(PY) bench/bench_api.py --scenario photos
	$(PY) bench/bench_quantize.py
	$(PY) bench/bench_monitor.py
	$(PY) bench/bench_gpu.py
	$(PY) bench/bench_prepare.py --sizes 8000,32000
	$(PY) bench/bench_near_dups.py
	$(PY) bench/bench_label_issues.py
	$(PY) bench/bench_dvc_files.py

HOST ?= 127.0.0.1
PORT ?= 8000
# What is served is recorded here (docs/monitoring.md); `make serve IMGCLF_MONITOR_DB=` turns it off.
IMGCLF_MONITOR_DB ?= monitoring/requests.db
serve: install  ## Serve models/ (from `make repro` or `dvc pull`) on http://$(HOST):$(PORT), recording to $(IMGCLF_MONITOR_DB)
	@test -f models/model.onnx || { echo "models/model.onnx missing: run 'make repro' (or 'dvc pull') first" >&2; exit 2; }
	IMGCLF_MONITOR_DB="$(IMGCLF_MONITOR_DB)" $(BIN)/imgclf serve --host $(HOST) --port $(PORT) --model-dir models

drift-report: install-dev  ## Served traffic of the last day vs the evaluated test split (HTML + markdown in reports/drift)
	$(BIN)/imgclf drift-report --since $(or $(SINCE),1d) --db "$(IMGCLF_MONITOR_DB)"

verify-model: install  ## Is models/ the evaluated model? (sha256 vs the card and metrics/evaluate.json)
	$(BIN)/imgclf verify-model --model-dir models --evaluated metrics/evaluate.json

# The Dockerfiles' base image, pinned by digest. Needs network and `docker buildx`
# (or set DIGEST=sha256:… yourself, e.g. from `crane digest` or `skopeo inspect`).
PIN_IMAGE ?= python:3.11-slim
DOCKERFILES := dockerfiles/api.dockerfile dockerfiles/train.dockerfile
pin-images:  ## Re-pin the Dockerfiles' base image to the registry's current digest of PIN_IMAGE
	@digest="$${DIGEST:-$$(docker buildx imagetools inspect $(PIN_IMAGE) | awk '/^Digest:/ {print $$2; exit}')}"; \
	if ! [[ "$$digest" =~ ^sha256:[0-9a-f]{64}$$ ]]; then echo "pin-images: no digest for $(PIN_IMAGE) (got '$$digest')" >&2; exit 2; fi; \
	sed -i -E "s|^ARG PYTHON_IMAGE=.*|ARG PYTHON_IMAGE=$(PIN_IMAGE)@$$digest|" $(DOCKERFILES); \
	grep -H '^ARG PYTHON_IMAGE=' $(DOCKERFILES)

DOCS_ADDR ?= 127.0.0.1:8001
docs: install-dev  ## Serve the documentation site (MkDocs) on http://$(DOCS_ADDR), rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve --dev-addr $(DOCS_ADDR)

docs-reference: install  ## Regenerate the docs' tables of params keys and IMGCLF_* variables from the code
	$(PY) docs/gen_reference.py

clean:  ## Remove caches (not .venv, not DVC outputs)
	rm -rf .pytest_cache .ruff_cache
