# Two entry points, each doing its own idempotent set-up on a fresh machine (Python 3.11, no torch needed):
#   make demo   the main job          make test   the whole test suite
# Set-up: a project virtualenv in .venv, the pinned torch/torchvision, the package built and installed editable.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PINS := torch==2.14.1 torchvision==0.29.1
DEPS := pytest hypothesis ninja numpy tqdm matplotlib expecttest

.PHONY: setup demo test clean

$(VENV)/.stamp-deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(PINS) $(DEPS)
	touch $@

setup: $(VENV)/.stamp-deps
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

demo: setup
	$(PY) -m manual_conv.demo

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info manual_conv/*.so
