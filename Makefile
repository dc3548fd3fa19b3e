# Each target sets itself up from nothing: a .venv with the CPU build of PyTorch
# (pinned: an unpinned torch pulls a multi-GB CUDA build), then the package.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test lint demo serve bench numbers setup browser clean mutants

# The venv and PyTorch, shared by every target; then the package with the extras a target needs.
TORCH_STAMP := $(VENV)/.installed-torch
$(TORCH_STAMP):
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==2.13.0"
	touch $(TORCH_STAMP)

$(STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

# The web demo's extra (Gradio) and, for its browser test, Playwright (in dev) driving a system
# Chromium (Playwright never downloads one here). `make serve` needs no dev tools.
DEMO_STAMP := $(VENV)/.installed-demo
$(DEMO_STAMP): pyproject.toml $(TORCH_STAMP)
	$(PY) -m pip install -q -e ".[demo]"
	touch $(DEMO_STAMP)

setup: $(STAMP)

# Optional, as root on Debian/Ubuntu: Chromium for the browser test, which skips without one (or set
# FRACTALGEN_CHROMIUM to a Chromium or Chrome of your own). `make test` never installs it.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] || { echo "make browser installs chromium with apt-get: run it as root (sudo make browser)" >&2; exit 1; }; apt-get update && apt-get install -y chromium; }

# The gates `make test` runs first: ruff (style, imports, likely bugs) over everything, mypy over the
# package (configuration of both in pyproject.toml; .pre-commit-config.yaml runs the same two).
# ruff's --config keeps a user-level ruff configuration out. Both come with the dev extra.
lint: $(STAMP) $(DEMO_STAMP)
	$(VENV)/bin/ruff check --config pyproject.toml .
	$(VENV)/bin/mypy

test: $(STAMP) $(DEMO_STAMP) lint
	$(PY) -m pytest

serve: $(DEMO_STAMP)
	$(PY) -m fractalgen serve

demo: $(STAMP)
	$(PY) -m fractalgen demo

bench: $(STAMP)
	$(PY) -m benchmarks.speed

# Re-measures the bundled models' README figures and prints each beside the README's (slow: minutes).
numbers: $(STAMP)
	$(PY) -m benchmarks.readme_numbers

# Opt-in and slow (not part of `make test`): mutation testing of sampling.py, levels/ and model.py
# (configuration in pyproject.toml, [tool.mutmut]); survivors are listed at the end.
mutants: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run || true
	$(VENV)/bin/mutmut results

clean:
	rm -rf $(VENV) build dist src/*.egg-info mutants
