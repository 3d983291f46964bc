# Two commands on a fresh machine: `make demo` (the whole pipeline on tiny models, CPU) and
# `make test`. Both first install what they need into the active Python.
PYTHON ?= python3
# torch is installed first and on its own: a bare `torch` requirement can pull a multi-GB CUDA build.
# Override for your platform, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu".
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install test demo

install:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q $(TORCH_SPEC)
	$(PYTHON) -m pip install -q -e ".[test]"

test: install
	$(PYTHON) -m pytest $(PYTEST_ARGS)

demo: install
	bash scripts/demo/run_demo.sh
