# `make demo` and `make test` set everything up on a fresh machine: FFmpeg (Debian package, when missing and we
# may install it), the virtual environment .venv, and this package with its pinned dependencies.
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup ffmpeg browser demo test test-fast bench gpu-check clean transformers-tests

setup: ffmpeg $(INSTALLED) transformers-tests

ffmpeg:
	@if command -v ffmpeg >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; \
	else echo "note: no system FFmpeg (and no root to install it): maest decodes audio files with PyAV's own FFmpeg; only datasets' Audio feature (examples/finetune.py) needs the system one"; fi

# The HEAR 2021 validator (tests/test_hear.py) declares TensorFlow but needs it only to recognise TensorFlow models:
# it is installed without dependencies; the test runs it with a stand-in module (tests/fixtures/hear_stand_in).
$(INSTALLED): setup.cfg pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install -q --upgrade pip
	$(PYTHON) -m pip install -q -e ".[test]"
	$(PYTHON) -m pip install -q --no-deps hearvalidator==2021.0.2
	touch $(INSTALLED)

# transformers' common test mixins (tests/test_transformers_common.py) ship in its source distribution, not in the
# wheel: the tests/ folder of the installed version's sdist, extracted into the git-ignored .transformers-tests/.
TRANSFORMERS_TESTS := .transformers-tests

transformers-tests: $(INSTALLED)
	@version=$$($(PYTHON) -c "import transformers; print(transformers.__version__)"); \
	if [ "$$(cat $(TRANSFORMERS_TESTS)/VERSION 2>/dev/null)" != "$$version" ]; then \
		rm -rf $(TRANSFORMERS_TESTS) && mkdir -p $(TRANSFORMERS_TESTS)/download && \
		$(PYTHON) -m pip download -q --no-deps --no-binary :all: -d $(TRANSFORMERS_TESTS)/download "transformers==$$version" && \
		tar -xzf $(TRANSFORMERS_TESTS)/download/transformers-$$version.tar.gz -C $(TRANSFORMERS_TESTS) \
			--strip-components=1 transformers-$$version/tests && \
		touch $(TRANSFORMERS_TESTS)/tests/__init__.py && rm -rf $(TRANSFORMERS_TESTS)/download && \
		echo "$$version" > $(TRANSFORMERS_TESTS)/VERSION; \
	fi

demo: setup
	$(VENV)/bin/maest demo --output-dir demo_output

# A headless browser for the web app's test (tests/test_app_browser.py): Debian's Chromium, driven by Playwright.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	else echo "WARNING: Chromium is missing and cannot be installed without root: the browser test will be skipped (apt-get install chromium)"; fi

test: setup browser
	$(PYTHON) -m pytest -q -p no:cacheprovider --durations=15

test-fast: setup
	$(PYTHON) -m pytest -q -p no:cacheprovider -m "not slow"

bench: setup
	$(VENV)/bin/maest bench --output benchmarks/results/results.json --markdown benchmarks/results/results.md

# The CUDA tests and `maest bench --device cuda` on short inputs, on one GPU (a few minutes): gpu-check.json. With
# no .venv (a machine with only the wheel and its dependencies) it runs under python3.
GPU_PYTHON := $(if $(wildcard $(PYTHON)),$(PYTHON),python3)
gpu-check:
	$(GPU_PYTHON) -m maest.benchmarks.gpu_check --output gpu-check.json

clean:
	rm -rf $(VENV) demo_output build *.egg-info $(TRANSFORMERS_TESTS)
