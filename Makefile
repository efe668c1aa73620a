# One-command entry points. `make demo` and `make test` set up .venv on first use.
VENV ?= .venv
PY := $(VENV)/bin/python
# the CPU wheel; on a GPU box use e.g. `make setup TORCH=torch` for the CUDA build
TORCH ?= torch==2.13.0
PYTEST_WORKERS ?= 2

.PHONY: setup demo test test-quick

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev]"
# pin the notebooks' kernel (`python3`) to this venv's interpreter
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (hebrew-sentence-embeddings)"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(PY) -m src.train +experiment=demo

test: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS)

# everything but the tests marked slow (real-model trainings)
test-quick: setup
	$(PY) -m pytest -n $(PYTEST_WORKERS) -m "not slow"
