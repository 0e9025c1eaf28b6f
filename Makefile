# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tinct-installed

.PHONY: install demo serve test lint clean redis-server debian-packages browser-packages

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

# The console and API on this machine: redis-server, one worker and tinct serve on loopback with a folder store
# (serve-data/); prints the URL and a token; Ctrl-C stops all three.
serve: install redis-server
	$(PY) -m tools serve-local

# The service tests run against a real redis-server (Debian package), started by the tests themselves.
redis-server:
	@command -v redis-server >/dev/null || { SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq redis-server; }

# Every Debian package the tests use, with one apt-get update: redis-server; chromium and firefox-esr for the
# console's browser test, and Node.js with npm to drive them (Puppeteer uses Debian's own builds of both browsers:
# downloading its own is neither needed nor possible here); exiftool, an independent reader, writer and validator of
# the metadata Tinct carries (EXIF, XMP, IPTC, in JPEG 2000 files too), and OpenJPEG's and libtiff's own tools, which
# write masters in archival layouts (JPEG 2000 tiles and layers; tiled, JPEG and PackBits TIFFs) and read back how
# copies are coded.
debian-packages:
	@missing=""; command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v exiftool >/dev/null || missing="$$missing libimage-exiftool-perl"; \
	command -v opj_dump >/dev/null || missing="$$missing libopenjp2-tools"; \
	command -v tiffcp >/dev/null || missing="$$missing libtiff-tools"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v firefox-esr >/dev/null || missing="$$missing firefox-esr"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -n "$$missing" ]; then SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; fi

# Puppeteer for the console's browser test, exactly as tests/browser/package-lock.json pins it (npm ci rewrites
# node_modules/.package-lock.json, so a changed lock file installs again).
browser-packages: tests/browser/node_modules/.package-lock.json
tests/browser/node_modules/.package-lock.json: tests/browser/package-lock.json | debian-packages
	npm ci --prefix tests/browser --silent --no-audit --no-fund

# Two test processes, a test file to each at a time (--dist loadfile): a file's module fixtures (tiny trained models,
# exports) are made once, and the recovery tests, which spend minutes waiting out the default liveness window, never
# run beside each other but beside the rest (on 2 cores: 9 minutes, where one process took 14.5). The ten slowest
# tests close the log: the suite is kept to about 15 minutes on 2 cores.
test: install debian-packages browser-packages
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=10

lint: install
	$(VENV)/bin/ruff check models worker tools tests

clean:
	rm -rf $(VENV) demo-out serve-data .pytest_cache tests/browser/node_modules
