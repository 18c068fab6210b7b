# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CI pins the CPU build that lies on disk; users bring their own (CUDA) build.
TORCH_SPEC ?= torch>=2.4,<3

.PHONY: install demo test lint clean

$(BIN)/marl-two-tower: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

install: $(BIN)/marl-two-tower

demo: install
	$(BIN)/marl-two-tower demo

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check marl_two_tower tests benchmarks

clean:
	rm -rf $(VENV) runs checkpoints
