# The two README commands. Both create (once) and reuse a local virtual environment in .venv.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEVSTAMP := $(VENV)/.installed-dev

.PHONY: train test setup clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e .
	touch $(STAMP)

# the test suite's tools and the light optional extras whose tests run with it (see pyproject's dev extra)
$(DEVSTAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(DEVSTAMP)

setup: $(STAMP)

train: $(STAMP)
	$(BIN)/cnnlab train

test: $(DEVSTAMP)
	$(BIN)/python -m pytest -n 2 -q

clean:
	rm -rf $(VENV) runs
