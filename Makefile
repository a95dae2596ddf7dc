# The project's vocabulary: run, test, lint, bench. Each target installs what it needs on a fresh Debian (root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: run test lint bench bench-slow system-deps test-deps clean

$(STAMP): pyproject.toml
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { $(APT_GET) update && $(APT_GET) install python3-venv python3-dev; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

# nginx fronts the gateway in `make run`, the tests and the benchmarks; memcached and nutcracker (twemproxy) back
# the session tests. Each is started privately with its own config, never as the system service.
system-deps:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(APT_GET) update && { $(APT_GET) install nginx-light || $(APT_GET) install nginx; }; }

test-deps: system-deps
	@{ command -v memcached && command -v nutcracker; } >/dev/null || { $(APT_GET) update && $(APT_GET) install memcached nutcracker; }
	@# Debian starts the packaged memcached as a service; ours run on their own ports, so the system one may stay.

run: $(STAMP) system-deps
	$(PY) -m gateway.devstack $(ARGS)

test: $(STAMP) test-deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

# Tools run as modules of the venv's Python: a console script's shebang may name another interpreter when pip
# installs it from a prebuilt wheel (seen on these machines), and that interpreter lacks our dependencies.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

bench: $(STAMP) system-deps
	$(PY) -m benchmarks $(ARGS)

bench-slow: $(STAMP) system-deps
	$(PY) -m benchmarks --slow $(ARGS)

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache
