# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinct-installed

.PHONY: install demo test lint clean redis-server

install: $(STAMP)

# torch first, pinned, so pip takes the CPU wheel from local disk instead of resolving a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(VENV)/bin/tinct colorize samples -o demo-out
	@echo "colorized photos are in demo-out/"

# The service tests run against a real redis-server (Debian package), started by the tests themselves.
redis-server:
	@command -v redis-server >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

test: install redis-server
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check models worker tools tests

clean:
	rm -rf $(VENV) demo-out .pytest_cache
