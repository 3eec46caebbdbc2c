# Two entry points for a fresh machine: `make demo` and `make test`. Both create .venv and
# install the pinned versions of constraints.txt (torch 2.14.1 + torchvision 0.29.1 come from
# the local wheel cache, about 90 s) before doing anything else.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install demo test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dynamo]'
	touch $(STAMP)

CIFAR ?= ../shared/data/cifar10
DEMO := build/demo

# The product on the CIFAR-10 reference Swin: half its MACs, top-1 on the 10,000 test photos
# before and after (no fine-tuning), and onnxruntime latency before and after. Offline.
demo: install
	mkdir -p $(DEMO)
	$(BIN)/dimap-compress reference-cifar10 --flops 1.0 --force --quiet -o $(DEMO)/cifar10_dense.onnx > /dev/null
	$(BIN)/dimap-compress reference-cifar10 --flops 0.5 --force -o $(DEMO)/cifar10_050.onnx
	@if [ -d "$(CIFAR)/test" ]; then \
		echo "top-1 before pruning:"; $(BIN)/dimap-eval $(DEMO)/cifar10_dense.onnx --data "$(CIFAR)" --quiet; \
		echo "top-1 after pruning to half the MACs (no fine-tuning):"; \
		$(BIN)/dimap-eval $(DEMO)/cifar10_050.onnx --data "$(CIFAR)" --quiet; \
	else \
		echo "accuracy skipped: no CIFAR-10 at $(CIFAR) (set CIFAR=... to a folder with train/ and test/)"; \
	fi
	$(BIN)/dimap-bench $(DEMO)/cifar10_dense.onnx $(DEMO)/cifar10_050.onnx --batch 1 8 --warmup 0.5 --min-time 2

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/compress_time.py

clean:
	rm -rf build .pytest_cache
