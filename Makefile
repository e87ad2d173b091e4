# The two set-up commands of the README: `make demo` and `make test`.
# Each creates (or reuses) .venv and installs the package; `test` adds the dev extras.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export OMP_NUM_THREADS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo test bench ablation notebooks docs lint install install-dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade "pip>=23"

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev]"
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(PY) -m vlpkit demo

# VLPKIT_QUICK=1 shortens the notebooks' training runs (every cell still runs); benchmarks run their quick grid.
test: $(VENV)/.installed-dev
	VLPKIT_QUICK=1 $(PY) -m pytest -q --durations=15 tests benchmarks --nbmake notebooks

# The full grid of every benchmark, then docs/benchmarks.md from its JSON.
bench: $(VENV)/.installed-dev
	mkdir -p .benchmarks
	VLPKIT_BENCH_FULL=1 $(PY) -m pytest benchmarks -q --benchmark-json=.benchmarks/full.json
	$(PY) benchmarks/report.py .benchmarks/full.json --output docs/benchmarks.md

# The visual-learning ablation beside the paper's Table 3 (6 variants x 3 seeds, about 50 minutes on 2 CPU cores);
# writes .benchmarks/ablation.json and the table of docs/paper_fidelity.md. An interrupted run continues.
ablation: $(VENV)/.installed-dev
	$(PY) benchmarks/ablation.py --output .benchmarks/ablation.json --write-docs docs/paper_fidelity.md

# Every tutorial notebook at full length (about 90 minutes on 2 CPU cores), written back with its outputs.
notebooks: $(VENV)/.installed-dev
	$(PY) notebooks/execute.py

docs: $(VENV)/.installed-dev
	$(VENV)/bin/mkdocs build --strict

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check vlpkit tests benchmarks

clean:
	rm -rf $(VENV) site .pytest_cache .benchmarks
