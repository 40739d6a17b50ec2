# The two commands a newcomer needs are `make run` and `make test`; each sets itself up.
VENV    ?= .venv
PY      := $(VENV)/bin/python
EXTRAS  ?= dev,default-model,coordinator
STAMP   := $(VENV)/.llamaherd-setup
PROTOS  := $(wildcard protos/llamaherd/v1/*.proto)
STUBS   := $(PROTOS:.proto=_pb2.py)
ARGS    ?=
PYTEST_ARGS ?=

.PHONY: setup run test unit lint bench clean fleet fleet-lint fleet-tools fleet-image chaos fuzz browser convert-test
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
	# The llama.cpp stand-ins are checked against the engine's backend protocol too.
	MYPYPATH=tests $(VENV)/bin/mypy -p common -p worker -p orchestrator \
		-m support.fake_backend -m support.fake_model
	$(VENV)/bin/lint-imports

fuzz: setup  ## the property-based fuzzers (GGUF reader, OpenAI parsing) with thousands of examples
	LLAMAHERD_FUZZ=long $(PY) -m pytest -q -p no:cacheprovider \
		tests/unit/common/test_gguf_fuzz.py tests/unit/orchestrator/gateway/test_openai_fuzz.py

# Real coordinator and workers under load, killed, stopped, flooded and fed hostile input;
# one line per scenario and a non-zero exit when any request is lost (see RELIABILITY.md).
chaos: setup  ## the chaos and abuse suite (about 8 min on 2 cores)
	PYTHONPATH=tests $(PY) -m chaos $(ARGS)

# The dashboard in a real browser: Playwright drives Debian's chromium (installed here as root;
# never a browser a tool downloads) against real `llamaherd up` clusters; screenshots go to
# tests/browser/artifacts/. Without root and without chromium the tests skip, saying so.
browser: setup  ## the dashboard's browser tests in Chromium (about 4 min on 2 cores)
	@if [ ! -x /usr/bin/chromium ]; then \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
		else echo "browser: /usr/bin/chromium is missing and installing it needs root (apt-get install -y chromium): the tests will skip"; fi; \
	fi
	@$(PY) -c 'import playwright' 2>/dev/null || \
		PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install --quiet -e '.[browser]'
	LLAMAHERD_BROWSER=1 PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
		$(PY) -m pytest tests/browser -q -rs -p no:cacheprovider $(PYTEST_ARGS)

bench: setup  ## gRPC worker vs. llama-cpp-python in-process; figures for BENCHMARKS.md
	$(PY) tests/bench/bench_worker_overhead.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find protos -name '*_pb2*.py*' -delete

# Fleet provisioning (ansible/): lint the roles, then converge three systemd-nspawn hosts over
# SSH (root only; tests/fleet skips with the reason elsewhere). Tools and the bootstrapped
# root filesystem are cached outside the repository, keyed by what they are built from.
FLEET_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/llamaherd-fleet,$(HOME)/.cache/llamaherd-fleet)
FLEET_TOOLS := $(FLEET_CACHE)/tools-$(shell sha256sum tests/fleet/requirements-tools.txt | cut -c1-12)

fleet-tools: $(FLEET_TOOLS)/bin/ansible-playbook
	@for t in debootstrap systemd-nspawn buildah ssh; do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
		apt-get install -y -qq debootstrap systemd-container buildah openssh-client >/dev/null; fi

$(FLEET_TOOLS)/bin/ansible-playbook: tests/fleet/requirements-tools.txt
	python3 -m venv $(FLEET_TOOLS)
	$(FLEET_TOOLS)/bin/pip install --quiet -r $<
	@touch $@

fleet-lint: fleet-tools  ## yamllint and ansible-lint (production profile) on ansible/
	cd ansible && PATH=$(FLEET_TOOLS)/bin:$$PATH yamllint -s . && PATH=$(FLEET_TOOLS)/bin:$$PATH ansible-lint

fleet: setup fleet-lint  ## converge, re-converge and rolling-upgrade three real systemd hosts
	LLAMAHERD_FLEET_TOOLS=$(FLEET_TOOLS)/bin LLAMAHERD_FLEET_CACHE=$(FLEET_CACHE) \
		$(PY) -m pytest tests/fleet -x -q -s -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) fleet-image

fleet-image: setup  ## build the CPU worker image from the fleet's root filesystem and wheelhouse; check it serves
	tests/fleet/check_cpu_image.sh "$$(ls -d $(FLEET_CACHE)/rootfs-* | head -n 1)" \
		"$$(ls -td $(FLEET_CACHE)/wheelhouse/deps-* | head -n 1)"

# From a Hugging Face checkpoint to a served quant: a tiny random Llama made by transformers,
# `llamaherd models convert`, quantize, serve. The converter's dependencies (the convert extra:
# torch, transformers) go into a venv cached outside the repository, keyed by the extra.
# torch 2.13.0 is pinned there because pip finds a CPU build of it on this machine kind;
# elsewhere PyPI's x86_64 torch is a CUDA build of several GB (it works, only heavier).
CONVERT_CACHE ?= $(if $(filter 0,$(shell id -u)),/var/cache/llamaherd-convert,$(HOME)/.cache/llamaherd-convert)
CONVERT_TORCH ?= torch==2.13.0
CONVERT_VENV = $(CONVERT_CACHE)/venv-$(shell { sed -n '/^convert = \[/,/^\]/p' pyproject.toml; \
	echo '$(CONVERT_TORCH)'; } | sha256sum | cut -c1-12)

convert-test: setup  ## HF checkpoint -> models convert -> quantize -> a worker generates (~1 min cached)
	@if [ ! -f $(CONVERT_VENV)/.ready ]; then \
		rm -rf $(CONVERT_VENV) && $(PY) -m venv $(CONVERT_VENV) && \
		$(PY) -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['convert']))" \
			> $(CONVERT_VENV)/requirements.txt && \
		$(CONVERT_VENV)/bin/pip install --quiet '$(CONVERT_TORCH)' -r $(CONVERT_VENV)/requirements.txt && \
		touch $(CONVERT_VENV)/.ready; \
	fi
	LLAMAHERD_CONVERT_PYTHON=$(CONVERT_VENV)/bin/python $(PY) -m pytest -q -rs -p no:cacheprovider \
		tests/integration/orchestrator/test_models_convert.py $(PYTEST_ARGS)
