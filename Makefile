# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install the pinned versions of constraints.txt (about a minute) before doing anything else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?= -n 2 --dist worksteal

.PHONY: install demo test bench docs clean

install: $(STAMP)

# Byte code is written on import, into one folder of the venv (PYTHONPYCACHEPREFIX), for every
# command make runs: only what a command imports is compiled, once, and the source tree gets no
# __pycache__. Where PYTHONDONTWRITEBYTECODE is set (as on this project's machines) nothing would
# be compiled and every process would take seconds more to start. pip's own byte-compiling (one
# file at a time, about 60 s here) and compileall of all of site-packages (44 s on two cores,
# mostly code no command imports) are skipped.
export PYTHONDONTWRITEBYTECODE :=
export PYTHONPYCACHEPREFIX := $(abspath $(VENV))/pycache

# uv installs: it downloads and unpacks in parallel, 33 s here where pip took 115 s for the same
# pinned set (6 GB, most of it torch's CUDA build). pip stays in the venv (the packaging test
# builds a wheel with it).
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-compile -c constraints.txt uv
	$(BIN)/uv pip install --quiet --no-cache --python $(BIN)/python -c constraints.txt \
		-e '.[test,dynamo,openvino,hf,datasets]'
	touch $(STAMP)

DATA ?= ../shared/data/cifar10

# The product on real photographs, offline: the CIFAR-10 reference Swin pruned to half its MACs
# (data-free, then with one-shot recovery from 256 train photos), top-1 on the 10,000 test
# photos before and after, and a short onnxruntime latency comparison.
demo: install
	mkdir -p build/demo
	$(BIN)/dimap-compress reference-cifar10 --flops 1.0 --force --quiet -o build/demo/cifar_dense.onnx
	$(BIN)/dimap-compress reference-cifar10 --flops 0.5 --force -o build/demo/cifar_050.onnx
	@if [ -d "$(DATA)" ]; then \
		$(BIN)/dimap-compress reference-cifar10 --flops 0.5 --calib-data "$(DATA)" --force --quiet \
			-o build/demo/cifar_050_recovered.onnx; \
		echo "top-1 before pruning:"; $(BIN)/dimap-eval build/demo/cifar_dense.onnx --data "$(DATA)" --quiet; \
		echo "top-1 at half the MACs, data-free:"; $(BIN)/dimap-eval build/demo/cifar_050.onnx --data "$(DATA)" --quiet; \
		echo "top-1 at half the MACs, with one-shot recovery (256 train photos):"; \
		$(BIN)/dimap-eval build/demo/cifar_050_recovered.onnx --data "$(DATA)" --quiet; \
	else \
		echo "accuracy skipped: no data directory at $(DATA) (set DATA=... to a CIFAR-10 folder)"; \
	fi
	$(BIN)/dimap-bench build/demo/cifar_dense.onnx build/demo/cifar_050.onnx --batch 1 8 --warmup 0.5 --min-time 2

# lint-imports first: the import layers of pyproject.toml ([tool.importlinter]; README.md, Architecture)
test: install
	$(BIN)/lint-imports --no-logo
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks.compress_time

# docs/cli.md, generated from the commands' options (tests/test_cli_docs.py fails when it is stale)
docs: install
	$(BIN)/python -m dimap_struct.cli.reference -o docs/cli.md

clean:
	rm -rf build .pytest_cache
