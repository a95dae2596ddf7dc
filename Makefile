# The project's vocabulary: run, test, lint, bench. Each target installs what it needs on a fresh Debian (root).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BUILT := $(VENV)/.built
# setup.py compiles these with mypyc; a change to one rebuilds them before anything runs. HOT_SOURCES: the per-request
# path of a worker and of the loop, as gateway/compiled.py lists it (tests/test_build.py checks the two agree).
CODEC_SOURCES := $(filter-out %/__init__.py,$(wildcard protocols/*.py protocols/*/*.py))
HOT_SOURCES := gateway/contract/channel.py gateway/worker/frames.py gateway/worker/process.py gateway/worker/threads.py \
	gateway/worker/wsgi.py gateway/loop/front.py gateway/loop/fastcgi_front.py gateway/loop/uwsgi_front.py \
	gateway/loop/http_front.py gateway/loop/dispatch.py gateway/loop/relay.py gateway/loop/request.py \
	gateway/loop/scheduler.py gateway/loop/session_hook.py gateway/loop/spool.py
APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -y -q

.PHONY: run test lint build bench bench-slow fuzz system-deps bench-deps test-deps peers clean

# Installed uncompiled (GATEWAY_PURE_PYTHON=1); $(BUILT) then compiles the codecs in place with the venv's mypyc.
$(STAMP): pyproject.toml
	@python3 -c 'import venv, ensurepip' 2>/dev/null || { $(APT_GET) update && $(APT_GET) install python3-venv python3-dev; }
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	GATEWAY_PURE_PYTHON=1 $(PY) -m pip install -q -e '.[test]'
	touch $@

# mypyc needs a C compiler and the Python headers.
$(BUILT): $(STAMP) setup.py gateway/compiled.py $(CODEC_SOURCES) $(HOT_SOURCES)
	@{ command -v cc && $(PY) -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; } >/dev/null \
		|| { $(APT_GET) update && $(APT_GET) install gcc python3-dev; }
	$(PY) setup.py -q build_ext --inplace --force  # also when mypyc writes the same C again
	touch $@

build: $(BUILT)

# nginx fronts the gateway in `make run`, the tests and the benchmarks; memcached and nutcracker (twemproxy) back
# the session tests. Each is started privately with its own config, never as the system service.
system-deps:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || { $(APT_GET) update && { $(APT_GET) install nginx-light || $(APT_GET) install nginx; }; }

# wrk drives the benchmarks and their smoke tests; the curves' session rows use a private memcached.
bench-deps: system-deps
	@{ command -v wrk && command -v memcached; } >/dev/null || { $(APT_GET) update && $(APT_GET) install wrk memcached; }

test-deps: bench-deps
	@command -v nutcracker >/dev/null || { $(APT_GET) update && $(APT_GET) install nutcracker; }
	@# The generated web-server rules (python -m gateway rules) are run by the real Apache (mod_proxy_fcgi,
	@# mod_proxy_uwsgi) and lighttpd, each started privately by the tests, never as the system service.
	@{ [ -x /usr/sbin/apache2 ] && [ -e /usr/lib/apache2/modules/mod_proxy_uwsgi.so ] && [ -x /usr/sbin/lighttpd ]; } \
		|| { $(APT_GET) update && $(APT_GET) install --no-install-recommends apache2 lighttpd; }
	@# Debian starts the packaged memcached as a service; ours run on their own ports, so the system one may stay.

run: $(BUILT) system-deps
	$(PY) -m devstack $(ARGS)

# The peers the benchmark smoke tests run (PyPI, into benchmarks/.peers-venv): installed before the suite, so that
# no test spends its timeout on pip. Already installed packages cost one `pip list`.
peers: $(STAMP)
	$(PY) -m benchmarks.peers

# The whole suite on the compiled build, then the codec, worker and loop unit tests again on their interpreted sources.
test: $(BUILT) test-deps peers lint
	$(PY) -m pytest $(PYTEST_ARGS)
	$(PY) -m pytest -q -p tests.pure_python tests/test_fastcgi_codec.py tests/test_uwsgi_codec.py tests/test_build.py \
		tests/test_wsgi.py tests/test_channel.py tests/test_scheduler.py tests/test_front_fastcgi.py tests/test_front_uwsgi.py \
		tests/test_front_http.py tests/test_spool.py tests/test_sessions_units.py tests/test_budget.py

# Tools run as modules of the venv's Python: a console script's shebang may name another interpreter when pip
# installs it from a prebuilt wheel (seen on these machines), and that interpreter lacks our dependencies.
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

bench: $(BUILT) bench-deps
	$(PY) -m benchmarks $(ARGS)
	$(PY) -m benchmarks --realapp $(REALAPP_ARGS)

bench-slow: $(BUILT) bench-deps
	$(PY) -m benchmarks --slow $(ARGS)

# Fuzzing, bounded: each codec target for FUZZ_SECONDS under atheris (coverage-guided), then the mutation fuzzer
# against a running gateway with its byte-exact checker, FUZZ_REQUESTS mutated requests per protocol (fuzz/).
FUZZ_SECONDS ?= 60
FUZZ_REQUESTS ?= 100000
fuzz: $(BUILT)
	mkdir -p .run
	for target in fastcgi uwsgi channel; do \
		$(PY) -m fuzz.codecs $$target -max_total_time=$(FUZZ_SECONDS) -artifact_prefix=.run/fuzz-$$target- || exit 1; \
	done
	$(PY) -m fuzz.gateway --requests $(FUZZ_REQUESTS) --seconds 1200

clean:
	rm -rf $(VENV) .run .pytest_cache .mypy_cache .ruff_cache build gateway/protocols__mypyc.*.so protocols__mypyc.*.so
	find protocols -name '*.so' -delete
