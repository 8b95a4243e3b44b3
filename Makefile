# Two entry points, each doing its own idempotent set-up on a fresh machine (Python 3.11, no torch needed):
#   make train  the main job          make test   the whole test suite
# Set-up: a project virtualenv in .venv, the pinned torch/torchvision, the package built and installed editable.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PINS := torch==2.14.1 torchvision==0.29.1
DEPS := pytest hypothesis ninja numpy tqdm matplotlib expecttest

.PHONY: setup train fashion-mnist test clean

$(VENV)/.stamp-deps: Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(PINS) $(DEPS)
	touch $@

setup: $(VENV)/.stamp-deps
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .

# The main job: train_mnist.py with every layer from manual_conv. DATASET=mnist downloads MNIST when the network
# allows; the default, Fashion-MNIST, comes from Debian's dataset-fashion-mnist (installed here when root), so the
# job also runs on machines that cannot download (ours). Extra flags: make train TRAIN_ARGS="--epochs 2".
DATASET ?= fashion-mnist
TRAIN_ARGS ?=
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

train: setup $(if $(filter fashion-mnist,$(DATASET)),fashion-mnist)
	mkdir -p runs
	$(PY) train_mnist.py --dataset $(DATASET) --metrics runs/metrics.json --plot runs/curves.png \
		--save-model runs/checkpoint.pt $(TRAIN_ARGS)

fashion-mnist:
	test -d $(FASHION_MNIST_DIR) || test "$$(id -u)" != 0 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; }

test: setup
	$(PY) -m pytest -q tests

clean:
	rm -rf build *.egg-info manual_conv/*.so runs
