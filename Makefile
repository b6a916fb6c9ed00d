# rnnserve — every install step lives here, so a fresh clone needs nothing done by hand.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PROTO_DIR := protos
MODEL_REPOSITORY ?= models/repository

.PHONY: help serve venv venv-dev test test-fast lint typecheck proto proto-check data models bench fuzz abuse scale-deps container-test container-scale-test clean

help:
	@echo "make serve     fresh clone -> running server on the shipped models (+ a client demo)"
	@echo "make test      create the dev environment and run the whole test suite"
	@echo "make proto     regenerate the committed gRPC code from protos/"
	@echo "make data      fetch the pinned training data (sha256-checked) into .cache/data"
	@echo "make models    retrain and export the whole shipped model repository"
	@echo "make bench     run the benchmark (docs/benchmarks.md)"
	@echo "make fuzz      fuzz every request type for FUZZ_SECONDS (default 300 s)"
	@echo "make abuse     abusive requests vs another client's latency and the server's RSS"

$(VENV)/.server: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[server]"
	touch $@

$(VENV)/.dev: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[dev,train]"
	touch $(VENV)/.server $@

venv: $(VENV)/.server
venv-dev: $(VENV)/.dev

serve: $(VENV)/.server
	bash scripts/quickstart.sh

test: $(VENV)/.dev
	bash scripts/test.sh

test-fast: $(VENV)/.dev
	bash scripts/test.sh -m "not slow and not docker"

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.dev
	$(VENV)/bin/mypy service/rnnserve/server client/rnnserve/client bench/transport_only.py

proto: $(VENV)/.dev
	$(PY) scripts/gen_proto.py

proto-check: $(VENV)/.dev
	$(PY) scripts/gen_proto.py --check

data: $(VENV)/.dev
	$(PY) -m rnnserve.training data

models: $(VENV)/.dev
	$(PY) -m rnnserve.training build-repository --output $(MODEL_REPOSITORY)

bench: $(VENV)/.dev
	$(PY) bench/run.py

# The real servers scale-out needs (issue 11): Redis 7 and HAProxy 2.6 from Debian's packages.
# Needs root (CI runs as root); tests that need them skip without them unless
# RNNSERVE_REQUIRE_SCALE_DEPS=1 (set by .ci/run), which turns the skip into a failure.
scale-deps:
	@command -v redis-server >/dev/null && command -v haproxy >/dev/null || { \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server haproxy >/dev/null; }
	redis-server --version
	haproxy -v | head -1

# The request fuzzer's longer run (the suite runs 900 cases): fails on any INTERNAL, UNKNOWN,
# hang or server death. FUZZ_CASES / FUZZ_SECONDS bound it; the summary goes to FUZZ_OUT.
FUZZ_CASES ?= 20000
FUZZ_SECONDS ?= 300
FUZZ_OUT ?= $(or $(TMPDIR),/tmp)/rnnserve-fuzz.json
fuzz: $(VENV)/.dev
	$(PY) bench/fuzz.py --cases $(FUZZ_CASES) --duration $(FUZZ_SECONDS) --out $(FUZZ_OUT)

# One client's abusive requests vs another's latency and the server's RSS (docs/security/).
abuse: $(VENV)/.dev
	$(PY) bench/abuse.py

container-test: $(VENV)/.dev
	bash scripts/container_test.sh

# Only the compose `scale` profile (Redis, two replicas, HAProxy) and its kill -9 failover check.
container-scale-test: $(VENV)/.dev
	bash scripts/container_test.sh --scale-only

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
