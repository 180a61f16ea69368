# Two commands do everything on a fresh clone: `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SUITE ?= quick
EXECUTOR ?= ray

.PHONY: run test install clean-venv

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Re-install when the project's dependencies change.
# jax (CPU) and torch 2.13.0 (the CPU build the wheel mirror holds; an unpinned torch pulls a
# multi-GB CUDA build) let the tests run the smoke suite on every Keras backend.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev,jax]" "torch==2.13.0"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/regbench run --suite $(SUITE) --executor $(EXECUTOR) --out results

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean-venv:
	rm -rf $(VENV)
