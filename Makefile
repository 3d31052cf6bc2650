# bench — see README.md. Every target installs what it needs into .venv first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS ?= test,cn-clip,elevater

MODEL   ?= demo
# `demo` runs the tiny bilingual model on both sides (Chinese and English) on the generated digits.
MODELS  := $(if $(filter demo,$(MODEL)),demo demo-en $(filter-out demo,$(MODEL)),$(MODEL))
DATASET ?= $(if $(filter demo,$(MODEL)),digits,all)
RUNS    ?= results/runs
REPORT  ?= results/report
FORMAT  ?= both
ARGS    ?=

.PHONY: install test bench report perf lint clean

install: $(STAMP)

# clip_benchmark: the peer the parity tests compare against; its own pins (a second open_clip) do not
# install cleanly, hence --no-deps.
$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	$(BIN)/python -m pip install -q --no-deps 'clip_benchmark==1.6.2'
	@touch $(STAMP)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/bench run $(foreach m,$(MODELS),--model $(m)) $(foreach d,$(DATASET),--dataset $(d)) --out $(RUNS) $(ARGS)
	$(if $(filter demo,$(MODEL)),$(BIN)/bench run --model demo --dataset digits-retrieval --task retrieval --out $(RUNS) $(ARGS))
	$(if $(filter demo,$(MODEL)),$(BIN)/bench study prompts --model demo --dataset digits --out $(RUNS) && $(BIN)/bench study labels --model demo --dataset digits --variant overlapping --out $(RUNS))
	$(BIN)/bench report $(RUNS) --out $(REPORT) --format $(FORMAT)

report: install
	$(BIN)/bench report $(RUNS) --out $(REPORT) --format $(FORMAT)

perf: install
	$(BIN)/python scripts/perf.py   # runs every other scripts/perf_*.py too

lint: install
	$(BIN)/python -m ruff check bench tests scripts

clean:
	rm -rf $(VENV) build *.egg-info
