# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv with this
# package installed in editable mode. A CPU machine gets torch==2.13.0 (the CPU build); where a torch is
# already importable (e.g. a GPU machine's, seen through --system-site-packages) it is kept.
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) examples/quickstart.py

test: $(VENV)/.installed
	$(PY) -m pytest -q tests
