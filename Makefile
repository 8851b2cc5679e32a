# Set-up and checks for cina-ext. Every target creates what it needs from the package registries.
PYTHON ?= python3
VENV ?= .venv
VENV_CUDA ?= .venv-cuda
# The CPU wheel of torch that the development / CI machines install (pinned: an unpinned torch pulls
# a multi-GB CUDA build).  The CUDA build check uses the CUDA 13.0 build of torch 2.14.1.
TORCH_CPU ?= torch==2.13.0
TORCH_CUDA ?= torch==2.14.1
BUILD_TOOLS = "scikit-build-core>=0.10" ninja "cmake>=3.26"
PY = $(VENV)/bin/python
PYC = $(VENV_CUDA)/bin/python
CUDA_HOME ?= /usr/local/cuda

.PHONY: venv build test test-all lint format demo bench cuda-check clean

$(VENV)/.ready:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_CPU) $(BUILD_TOOLS)
	touch $@

venv: $(VENV)/.ready

# --no-build-isolation: build against the torch installed above (isolation would fetch another one)
build: venv
	$(PY) -m pip install -q --no-build-isolation -e ".[test,plot,data]" -Cbuild-dir=build/cpu
# the ACIC 2016 files of causallib, without its dependencies (it pins pandas < 3; docs/building.md)
	$(PY) -m pip install -q --no-deps causallib==0.10.0

# The fast suite (minutes): everything but the tests marked slow (the CPU emulator of the CUDA
# kernels under the host sanitizers, the PTX check and the larger emulated cases).
test: build
	$(PY) -m pytest -q -m "not slow" tests

# Everything, the slow suites included (CI runs this).
test-all: build
	$(PY) -m pytest -q tests

# Lint and format checks: ruff (Python) and clang-format (C++/CUDA), the pinned versions.
LINT_TOOLS = ruff==0.17.6 clang-format==23.1.5
$(VENV)/.lint-ready: $(VENV)/.ready
	$(PY) -m pip install -q $(LINT_TOOLS)
	touch $@

lint: $(VENV)/.lint-ready
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	CLANG_FORMAT=$(VENV)/bin/clang-format tools/check_format.sh

format: $(VENV)/.lint-ready
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .
	CLANG_FORMAT=$(VENV)/bin/clang-format tools/check_format.sh --fix

demo: build
	$(VENV)/bin/cina demo

bench: build
	$(PY) benchmarks/bench_attention.py --quick

# Compile and link the CUDA kernels (no GPU needed): the recipe of docs/building.md.
cuda-check:
	$(PYTHON) -m venv $(VENV_CUDA)
	$(PYC) -m pip install -q --upgrade pip
	$(PYC) -m pip install -q $(TORCH_CUDA) $(BUILD_TOOLS) numpy
	CUDA_HOME=$(CUDA_HOME) TORCH_CUDA_ARCH_LIST=9.0a CINA_WITH_CUDA=ON \
	  $(PYC) -m pip install -q --no-build-isolation --no-deps -e . -Cbuild-dir=build/cuda \
	  -Ccmake.define.CUDA_TOOLKIT_ROOT_DIR=$(CUDA_HOME) \
	  -Ccmake.define.CUDA_nvrtc_LIBRARY=$$($(PYC) -c "import nvidia.cu13, os; print(os.path.join(list(nvidia.cu13.__path__)[0], 'lib', 'libnvrtc.so.13'))")
	cd /tmp && $(abspath $(PYC)) -c "import cina_ext.ops as o; assert o.has_extension() and o.has_cuda_kernels(), o.extension_error(); print('CUDA build OK: kernels compiled and linked')"

clean:
	rm -rf build $(VENV) $(VENV_CUDA)
