# Two entry points, each doing its own idempotent set-up on a fresh machine (Python 3.11, no torch needed):
#   make train  the main job          make test   the whole test suite          make demo   a conv beside torch's
# Set-up: a project virtualenv in .venv, the pinned torch/torchvision, the package built and installed editable.
# It is idempotent in time too: stamps in .venv record what is done, so pip installs only when the pins change,
# and the extension (84 s on an idle machine) is rebuilt only when csrc/, setup.py, the torch pin or the CUDA
# build settings change, or its library is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PINS := torch==2.14.1 torchvision==0.29.1
# opacus: the reference of benchmarks/per_sample_grad_bench.py, whose smoke test checks it against manual_conv
DEPS := pytest hypothesis ninja numpy tqdm matplotlib expecttest opacus
# What the compiled library depends on besides its sources: the torch it is built against, and setup.py's switches.
BUILD_SETTINGS := $(PINS) FORCE_CUDA=$(FORCE_CUDA) TORCH_CUDA_ARCH_LIST=$(TORCH_CUDA_ARCH_LIST)

.PHONY: setup train fashion-mnist test demo clean FORCE

# $(call write_if_changed,TEXT): a value as a file whose time moves only when the value does, so that what depends on
# it is redone exactly then (Git's Makefile keeps its build flags this way).
define write_if_changed
	@mkdir -p $(@D)
	@printf '%s\n' '$(1)' | cmp -s - $@ || printf '%s\n' '$(1)' >$@
endef

$(VENV)/.value-deps: FORCE
	$(call write_if_changed,$(PINS) $(DEPS))

$(VENV)/.value-build: FORCE
	$(call write_if_changed,$(BUILD_SETTINGS))

$(VENV)/.stamp-deps: $(VENV)/.value-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet $(PINS) $(DEPS)
	touch $@

# csrc itself is a prerequisite too: its time moves when a source is added, removed or renamed.
$(VENV)/.stamp-build: $(VENV)/.value-build setup.py csrc $(wildcard csrc/*) \
		$(if $(wildcard manual_conv/_C*.so),,FORCE) | $(VENV)/.stamp-deps
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $@

setup: $(VENV)/.stamp-build

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

# -rsx: each skipped or expected-to-fail test with its reason (e.g. no GPU; Fashion-MNIST missing when not root).
test: setup fashion-mnist
	$(PY) -m pytest -q -rsx tests

demo: setup
	$(PY) -m manual_conv.demo

clean:
	rm -rf build *.egg-info manual_conv/*.so runs $(VENV)/.stamp-build
