# The two README commands. Both create (once) and reuse a local virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev
# Where torch comes from on a machine without a CUDA device: PyTorch's CPU wheels (~200 MB instead of the
# ~2.5 GB CUDA build PyPI serves for Linux). Empty, or unreachable, falls back to the default index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: train test lint setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@TORCH_INDEX="$(TORCH_INDEX)" PY="$(BIN)/python" sh tools/install-torch.sh
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

# the test suite's tools and the light optional extras whose tests run with it (see pyproject's dev extra)
$(DEVSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(DEVSTAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/cnnlab train

test: lint
	$(BIN)/python -m pytest -n 2 -q

# style and types: ruff (pyflakes, pycodestyle errors, bugbear) and mypy over the package
lint: $(DEVSTAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf $(VENV) runs
