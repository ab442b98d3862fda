# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv with the standard venv module and installs the package with its extras on
# first use (re-installs when setup.cfg or pyproject.toml change).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast lint bench clean browser

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/evalmuse demo --out demo_output

# The HTML report is tested in a real headless browser: Debian's chromium, installed on first use.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null 2>&1 || \
	  { $$SUDO apt-get update >/dev/null && $$SUDO apt-get install -y --no-install-recommends chromium >/dev/null; }; }

test: $(STAMP) browser
	$(PY) -m pytest -n 2 --dist loadfile -q

test-fast: $(STAMP) browser
	$(PY) -m pytest -n 2 --dist loadfile -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests metric dataset_scripts train_scripts bench

bench: $(STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) demo_output .pytest_cache
