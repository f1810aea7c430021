# The two commands a newcomer needs: `make run` starts the service with embedded defaults,
# `make test` installs what the tests need (system packages included) and runs them.
PYTHON ?= python3
SYSTEM_PACKAGES := redis-server clamav-daemon clamav-testfiles chromium zip
PORT ?= 8080

.PHONY: run install web-deps test test-deps system-deps lint unit bench

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check .

run: system-deps-run install web-deps
	messenger serve --port $(PORT)

# The web app's third-party browser code (the official socket.io client) comes from the npm
# registry into web/node_modules, where `messenger serve` finds it; skipped when already current.
web-deps:
	@if ! command -v npm >/dev/null 2>&1; then \
		echo "npm not found: the web page will poll over REST; install Node.js and npm, then run: npm ci --prefix web"; \
	elif [ ! -f web/node_modules/.package-lock.json ] || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then \
		npm ci --prefix web --omit=dev --no-audit --no-fund --loglevel=error; \
	fi

test: test-deps
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy
	$(PYTHON) -m pytest

unit:
	$(PYTHON) -m pytest tests/unit

test-deps: system-deps
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	npm ci --prefix tests/e2e/js --no-audit --no-fund --loglevel=error
	npm ci --prefix web --no-audit --no-fund --loglevel=error  # with axe-core for the browser tests
	$(PYTHON) -m tests.integration.strict_s3

# clamd is a real part of the embedded default, so `make run` installs it too.
system-deps-run:
	@$(MAKE) --no-print-directory SYSTEM_PACKAGES="clamav-daemon" system-deps

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m mypy

bench:
	$(PYTHON) bench/chat.py
