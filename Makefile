# The two commands a newcomer needs are `make run` and `make test`; each sets itself up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
EXTRAS  ?= dev,default-model,coordinator
STAMP   := $(VENV)/.llamaherd-setup
PROTOS  := $(wildcard protos/llamaherd/v1/*.proto)
STUBS   := $(PROTOS:.proto=_pb2.py)
ARGS    ?=
PYTEST_ARGS ?=

.PHONY: setup run test unit lint bench clean
.DEFAULT_GOAL := run

setup: $(STAMP) $(STUBS)

$(STAMP): pyproject.toml setup.py deploy/setup-venv.sh deploy/llama-cpp/cmake-args.sh
	deploy/setup-venv.sh $(VENV) $(EXTRAS)
	@touch $@

# Installing generates the stubs too; this keeps them current while editing a .proto.
$(STUBS) &: $(PROTOS) $(STAMP)
	$(PY) protos/build_stubs.py

run: setup  ## a local cluster: Ray, coordinator, gateway on 127.0.0.1:8000, two workers
	$(VENV)/bin/llamaherd up $(ARGS)

test: setup  ## the whole suite: unit tests, then real workers, Ray and gateways on loopback
	$(PY) -m pytest $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup  ## ruff, mypy, and the import contracts in pyproject.toml
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy common worker orchestrator
	$(VENV)/bin/lint-imports

bench: setup  ## gRPC worker vs. llama-cpp-python in-process; figures for BENCHMARKS.md
	$(PY) tests/bench/bench_worker_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find protos -name '*_pb2*.py*' -delete
