# Cell Workbench — every entry point creates the local .venv first if it is missing.
#   make demo   run the studies on the vendored real data (CPU), index at outputs/demo/index.html
#   make test   the test suite (GUI tests under xvfb-run when available)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The stamp depends on the pins, so editing pyproject.toml reinstalls; otherwise this is instant.
STAMP := $(VENV)/.installed
KERNEL := workbench
XVFB := $(shell command -v xvfb-run 2>/dev/null)
DATASET ?= bccd
PROFILE ?= smoke
RUN ?=
GT ?= data/generated/bccd
SPLIT ?= val

.PHONY: demo test lab audit inspect env clean-outputs help
help:
	@echo "make demo | make test | make lab | make audit DATASET=bccd|monuseg|mnfinder | make inspect RUN=... | make env"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pinned wheels (an unpinned torch would pull several GB)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e .
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Cell Workbench (.venv)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m workbench demo --profile $(PROFILE)

test: $(STAMP)
ifneq ($(XVFB),)
	$(XVFB) -a -s "-screen 0 1280x1024x24" $(PY) -m pytest -q
else
	@echo "xvfb-run not found: GUI tests will be skipped (apt-get install xvfb; see README)."
	$(PY) -m pytest -q
endif

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

audit: $(STAMP)
	$(PY) -m workbench notebook 01_dataset_audit -p dataset $(DATASET) -p profile $(PROFILE)

# napari on the hard cases of a run: make inspect RUN=outputs/runs/<id> [GT=dataset folder] [SPLIT=val]
inspect: $(STAMP)
	@test -n "$(RUN)" || (echo "usage: make inspect RUN=outputs/runs/<run_id> [GT=$(GT)] [SPLIT=$(SPLIT)]"; exit 2)
	$(PY) -m workbench inspect $(RUN) --gt $(GT) --split $(SPLIT)

clean-outputs:
	rm -rf outputs/demo outputs/notebooks outputs/audit
