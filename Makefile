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
# make demo: demo (the audits + one real model end to end, ~15 min on 2 CPU cores), smoke (every notebook, CI-sized) or full (GPU)
DEMO_PROFILE ?= demo
RUN ?=
GT ?= data/generated/bccd
SPLIT ?= val
OUT ?=
# make demo ONLY="01 04": only these notebooks (numbers, names or demo job slugs)
ONLY ?=
# make lab: the port JupyterLab tries first, and the address it listens on (0.0.0.0 in a container)
LAB_PORT ?= 8888
LAB_IP ?= localhost
# jupyter refuses to run as root without --allow-root (containers run as root)
ALLOW_ROOT := $(shell [ "$$(id -u)" = 0 ] && echo --allow-root)

.PHONY: demo test lab audit inspect env results clean-outputs help
help:
	@echo "make demo [DEMO_PROFILE=smoke|full] [ONLY=nb,...] [OUT=dir] | make test | make lab [LAB_PORT=8888] [LAB_IP=0.0.0.0] | make audit DATASET=bccd|monuseg|mnfinder | make inspect RUN=... | make env"

env: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from the pinned wheels (an unpinned torch would pull several GB)
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e .
	# napari runs on PyQt6 now; a PyQt5 left by an older .venv would be picked first by qtpy
	$(PY) -m pip uninstall --quiet --yes PyQt5 PyQt5-Qt5 PyQt5-sip 2>/dev/null || true
	$(PY) -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Cell Workbench (.venv)" >/dev/null
	@touch $(STAMP)

demo: $(STAMP)
	WORKBENCH_DEMO_ONLY="$(ONLY)" $(PY) -m workbench demo --profile $(DEMO_PROFILE) $(if $(OUT),--out $(OUT))

test: $(STAMP)
ifneq ($(XVFB),)
	$(XVFB) -a -s "-screen 0 1280x1024x24" $(PY) -m pytest -q
else
	@echo "xvfb-run not found: GUI tests will be skipped (apt-get install xvfb; see README)."
	$(PY) -m pytest -q
endif

lab: $(STAMP)
	@echo "JupyterLab on notebooks/ with the kernel \"Cell Workbench (.venv)\": open the URL with the token printed"
	@echo "below (port $(LAB_PORT), or the next free one). In a container: make lab LAB_IP=0.0.0.0 and publish"
	@echo "the port (docker run -p $(LAB_PORT):$(LAB_PORT) ...). Ctrl-C stops it."
	$(PY) -m jupyter lab --no-browser --ip=$(LAB_IP) --port=$(LAB_PORT) $(ALLOW_ROOT) --ServerApp.root_dir=notebooks

audit: $(STAMP)
	$(PY) -m workbench notebook 01_dataset_audit -p dataset=$(DATASET) -p profile=$(PROFILE) $(if $(OUT),--out $(OUT))

# the studies' cpu profiles (hours on 2 cores), published to outputs/results/ (committed): make results [ONLY="03 04"]
results: $(STAMP)
	$(PY) -m workbench results --profile cpu $(if $(ONLY),--only $(ONLY),)

# napari on the hard cases of a run: make inspect RUN=outputs/runs/<id> [GT=dataset folder] [SPLIT=val]
inspect: $(STAMP)
	@test -n "$(RUN)" || (echo "usage: make inspect RUN=outputs/runs/<run_id> [GT=$(GT)] [SPLIT=$(SPLIT)]"; exit 2)
	$(PY) -m workbench inspect $(RUN) --gt $(GT) --split $(SPLIT)

clean-outputs:
	rm -rf outputs/demo outputs/notebooks outputs/audit
