VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: dev test bench lint install chaos

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The dashboard tests drive Debian's Chromium through Playwright; never a downloaded browser build.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $$( [ "$$(id -u)" = 0 ] || echo sudo ) apt-get install -y -qq chromium

dev: $(STAMP)
	$(VENV)/bin/stepline dev

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) -m bench.run_all

# The chaos suite at length (docs/chaos.md): STEPLINE_CHAOS_SECONDS of faults per backend
# (default here 300; `make test` runs it for 40 s). STEPLINE_CHAOS_SEED repeats a run's sequence
# of faults. Each run's files stay under /tmp/stepline-chaos until the next `make chaos`.
STEPLINE_CHAOS_SECONDS ?= 300
chaos: $(STAMP)
	STEPLINE_CHAOS_SECONDS=$(STEPLINE_CHAOS_SECONDS) $(PY) -m pytest tests/chaos -s --basetemp=/tmp/stepline-chaos
