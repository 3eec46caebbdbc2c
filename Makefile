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
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,dynamo,openvino]'
	touch $(STAMP)

DATA ?= ../shared/data/mnist

demo: install
	mkdir -p build/demo
	$(BIN)/dimap-compress reference --flops 0.5 --force -o build/demo/reference_050.onnx
	@if [ -d "$(DATA)" ]; then \
		echo "top-1 before pruning:"; $(BIN)/dimap-eval reference --data "$(DATA)" --quiet; \
		echo "top-1 after pruning (no fine-tuning):"; $(BIN)/dimap-eval build/demo/reference_050.onnx --data "$(DATA)" --quiet; \
	else \
		echo "accuracy skipped: no data directory at $(DATA) (set DATA=... to an MNIST directory)"; \
	fi

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: install
	$(BIN)/python benchmarks/compress_time.py

clean:
	rm -rf build .pytest_cache
