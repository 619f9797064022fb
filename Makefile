# Tollgate — `make run` starts the demo stack, `make test` runs everything.
# Every target installs what it needs (scripts/setup.sh), so a fresh machine works.

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
WASM_DIR := $(CARGO_TARGET_DIR)/wasm32-wasip1/release
# Native binaries and tests build without LTO: their test binaries (wasmtime is large) then link in
# seconds instead of minutes. The wasm keeps the release profile's full LTO (Cargo.toml).
NATIVE := CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16

.PHONY: all setup build wasm wasm-baseline simulator native component test test-core test-native test-clock test-shifted test-host test-component test-e2e test-deploy test-console oci run bench prices clean

all: build

setup:
	bash scripts/setup.sh

# Built with WebAssembly SIMD (simd128: .cargo/config.toml), which Envoy's V8 and wasmtime run.
wasm:
	cargo build --release --target wasm32-wasip1 -p tollgate -p noop-filter

# The filter without SIMD, for a host that lacks simd128 (e.g. an interpreter built without it):
# the same behaviour, the word-at-a-time searches; in its own target directory, so neither build
# undoes the other (the no-op filter beside it, as `make wasm` does, so host-tests run there too:
# TOLLGATE_WASM=<the printed path>). Prints where the module is.
BASELINE_DIR := $(CARGO_TARGET_DIR)/baseline
wasm-baseline:
	RUSTFLAGS="-C target-feature=-simd128" CARGO_TARGET_DIR=$(BASELINE_DIR) cargo build --release --target wasm32-wasip1 -p tollgate -p noop-filter
	@echo "$(BASELINE_DIR)/wasm32-wasip1/release/tollgate.wasm"

# The policy simulator for the console (core's routing and pricing, wasm-bindgen for the browser);
# the counter embeds it, so it is built first.
simulator:
	cargo rustc --release --target wasm32-unknown-unknown -p tollgate-simulator --crate-type cdylib
	wasm-bindgen --target web --no-typescript --out-dir $(CARGO_TARGET_DIR)/simulator-pkg \
	  $(CARGO_TARGET_DIR)/wasm32-unknown-unknown/release/tollgate_simulator.wasm

native: simulator
	$(NATIVE) cargo build --release -p tollgate-counter -p tollgate-mock-upstream

# The policy as a WebAssembly component (wit/tollgate.wit): tollgate_component.wasm, wasm32-wasip2.
component:
	cargo build --release --target wasm32-wasip2 -p tollgate-component

build: setup wasm native

# Unit, property and API tests of every native crate (host-tests excluded: it needs the wasm).
test-native: setup
	$(NATIVE) cargo test --release --workspace --exclude tollgate-host-tests

# No clock reads outside the clock modules (file and line named otherwise): tests that read the
# real date instead of the injected clock break on a later day. And no import circles among the
# modules of core and plugin (ARCHITECTURE.md's invariant; the circle is printed otherwise).
test-clock:
	bash scripts/check-clock-reads.sh --self-test
	bash scripts/check-clock-reads.sh
	python3 scripts/check-import-cycles.py

# core's and the counter's native suites again with the clock shifted by faketime: ~400 days ahead,
# and 2 s before midnight UTC at the end of a leap February.
test-shifted: setup
	$(NATIVE) bash scripts/test-time-shifted.sh

# The real tollgate.wasm under a wasmtime proxy-wasm host (tests/scenarios); the policy component
# under wasmtime's component model, on the case table core and Node also run (tests/component.rs).
test-host: wasm component
	$(NATIVE) cargo test --release -p tollgate-host-tests

# The policy component from Node through jco, on the case table core and wasmtime also run.
test-component: setup component
	bash component/node/run.sh

# Real Envoy (from the venv), the real filter, the mock upstream and the counter on loopback.
test-e2e: build
	bash scripts/test-e2e.sh

# Packaging and manifests (deploy/, docs/deploy.md): the OCI image of tollgate.wasm, and every
# manifest rendered from envoy/filter-config.json and validated against the platforms' schemas.
test-deploy: setup wasm
	.venv/bin/python -m pytest -q deploy/tests


# tollgate.wasm as an OCI image layout (directory + tarball) in $(CARGO_TARGET_DIR)/oci, without
# docker; prints the manifest sha256 to pin (docs/deploy.md).
OCI_TAG ?= $(shell sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
oci: wasm
	python3 scripts/oci-image.py --wasm $(WASM_DIR)/tollgate.wasm --out $(CARGO_TARGET_DIR)/oci --tag $(OCI_TAG)

# The console in a real browser (Debian's chromium, selenium): every page against the report API,
# the simulator page against `tollgate-counter simulate`; screenshots in $(CARGO_TARGET_DIR)/console-shots.
test-console: build
	bash scripts/test-console.sh

test: test-clock build test-native test-shifted test-host test-component test-e2e test-deploy test-console

run: build
	bash scripts/run-demo.sh

bench: build
	bash scripts/bench.sh

prices:
	bash scripts/refresh-prices.sh

clean:
	cargo clean
