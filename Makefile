# Two commands do everything on a fresh clone: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SUITE ?= quick
EXECUTOR ?= ray

.PHONY: run test install clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the project's dependencies change. `make run` needs only the project
# (TensorFlow, Keras, Ray, analysis); `make test` adds pytest, JAX (CPU), MLflow (the export is
# tested against its local stores) and torch 2.13.0 so the smoke suite runs on every Keras
# backend (torch is pinned to the CPU build on this platform's index: an unpinned torch pulls a
# multi-GB CUDA build).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install -q -e ".[dev,jax,mlflow]" "torch==2.13.0"
	touch $(TEST_STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/regbench run --suite $(SUITE) --executor $(EXECUTOR) --out results

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
