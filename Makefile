# Two entry points do all the set-up: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
OUT    ?= outputs/demo

.PHONY: demo test test-floors lint reliability install clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -U pip
	@# Machines without an NVIDIA GPU get the CPU build of torch (a plain `torch` pulls several GB
	@# of CUDA wheels). Machines with a GPU keep whatever torch they install themselves.
	@if ! command -v nvidia-smi >/dev/null 2>&1 && ! $(PY) -c "import torch" 2>/dev/null; then \
		$(PIP) install -q torch==2.13.0; fi
	$(PIP) install -q -e ".[test,web]"
	@touch $@

install: $(VENV)/.installed

# The first experiment of the research notes, on the tiny random-weight models: a run folder with
# images, comparison_grid.png, metadata.json and report.html (its path is printed last).
demo: $(VENV)/.installed
	$(VENV)/bin/llm-dit compare --experiment vl_only_vs_qwen3 --profile tiny --image examples/house.png \
		--prompt "A simple cartoon house with a red roof" --out $(OUT)/vl_only_vs_qwen3

# Lint and type checks first: zero findings from ruff over src, tests, bench and the seed scripts and
# from mypy over src (settings in pyproject.toml; .mypy_cache keeps mypy incremental, ~70 s cold).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check src tests bench experiments
	$(VENV)/bin/mypy src

test: lint
	$(PY) -m pytest -q

# The suite against the oldest versions pyproject.toml allows (constraints/floors.txt pins them), in
# its own .venv-floors so .venv is untouched. Not part of `test`: about 25 minutes on 2 CPU cores.
FLOORS_VENV := .venv-floors
FLOORS_PY   := $(FLOORS_VENV)/bin/python

$(FLOORS_VENV)/.installed: pyproject.toml constraints/floors.txt
	rm -rf $(FLOORS_VENV)
	$(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_PY) -m pip install -q -U pip
	@# As for .venv: the CPU build of torch first on machines without an NVIDIA GPU.
	@if ! command -v nvidia-smi >/dev/null 2>&1; then $(FLOORS_PY) -m pip install -q torch==2.13.0; fi
	$(FLOORS_PY) -m pip install -q -c constraints/floors.txt -e ".[test,web]"
	@touch $@

test-floors: $(FLOORS_VENV)/.installed
	$(FLOORS_PY) -m pytest -q

# RELIABILITY.md from the tests marked `reliability` (bad input, faults, reproducibility; tests/reliability.py).
reliability: $(VENV)/.installed
	LLM_DIT_RELIABILITY=RELIABILITY.md $(PY) -m pytest -q -m reliability

clean:
	rm -rf $(VENV) $(FLOORS_VENV) outputs .pytest_cache .mypy_cache .ruff_cache
