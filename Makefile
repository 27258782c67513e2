# Every target sets up what it needs on a fresh clone: .venv (the project and its
# dev extras), .venv-triton (PyTriton's bundled tritonserver, numpy<2, kept apart)
# and Debian's chromium for the browser test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
TRITON_VENV := .venv-triton
STAMP := $(VENV)/.installed
TRITON_STAMP := $(TRITON_VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv triton-venv chromium js node nginx redis demo-scale lint typecheck test test-fast demo bench fuzz soak protos clean

venv: $(STAMP)

# Debian's python3 makes no venv without python3-venv (ensurepip): install it then.
VENV_PKG := (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv) >/dev/null

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV) || { $(VENV_PKG) && $(PYTHON) -m venv --clear $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

triton-venv: $(TRITON_STAMP)

$(TRITON_STAMP): tests/triton/requirements.txt
	test -x $(TRITON_VENV)/bin/python || $(PYTHON) -m venv $(TRITON_VENV) || \
	  { $(VENV_PKG) && $(PYTHON) -m venv --clear $(TRITON_VENV); }
	$(TRITON_VENV)/bin/python -m pip install -q -r tests/triton/requirements.txt
	touch $(TRITON_STAMP)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser test"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null; }

# js/: the npm package truss-stream (TypeScript): install its dev tools from the lock
# file, build it, run its Node unit tests. tests/test_js_interop.py then runs it against
# the Python side (and in Chromium, with the browser tests).
JS_STAMP := js/node_modules/.installed

node:
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian's nodejs and npm for js/"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm) >/dev/null; }

$(JS_STAMP): js/package.json js/package-lock.json
	$(MAKE) node
	cd js && npm ci --no-audit --no-fund --loglevel=error
	touch $(JS_STAMP)

js: $(JS_STAMP)
	cd js && npm run --silent build && node --test test/

nginx:
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || { \
	  echo "installing Debian's nginx for the reverse-proxy tests"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx) >/dev/null; }

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing Debian's redis-server for the Redis tests"; \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server) >/dev/null; }

lint: venv
	$(VENV)/bin/ruff check truss_stream transports examples tests benchmarks
	$(VENV)/bin/ruff format --check truss_stream transports examples tests benchmarks

typecheck: venv
	$(VENV)/bin/mypy truss_stream transports
	$(VENV)/bin/mypy tests/typing/ok_usage.py
	$(PY) tests/typing/check_errors.py

test: venv triton-venv chromium nginx redis js lint typecheck
	TRUSS_STREAM_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python \
	  $(PY) -m pytest -q -m "not soak" $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not soak and not triton and not browser" $(PYTEST_ARGS)

demo: venv
	$(PY) -m examples.demo

demo-scale: venv redis
	$(PY) -m examples.scale_out

bench: venv triton-venv
	TRUSS_STREAM_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python \
	  $(PY) -m benchmarks.run

fuzz: venv
	TRUSS_STREAM_FUZZ_EXAMPLES=20000 $(PY) -m pytest -q tests/test_fuzz.py
	PYTHONPATH=. $(PY) tests/reliability/fuzz_reader.py -max_total_time=$${FUZZ_SECONDS:-120} -rss_limit_mb=2048

soak: venv triton-venv
	TRUSS_STREAM_TRITON_PYTHON=$(abspath $(TRITON_VENV))/bin/python \
	  $(PY) -m pytest -q -m soak

protos: venv
	$(PY) -m transports.triton.protocol._protogen

clean:
	rm -rf js/node_modules js/dist js/*.tgz
	rm -rf $(VENV) $(TRITON_VENV) .mypy_cache .pytest_cache .ruff_cache build dist *.egg-info
