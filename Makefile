# Tollgate — `make run` starts the demo stack, `make test` runs everything.
# Every target installs what it needs (scripts/setup.sh), so a fresh machine works.

CARGO_TARGET_DIR ?= $(CURDIR)/target
export CARGO_TARGET_DIR
WASM_DIR := $(CARGO_TARGET_DIR)/wasm32-wasip1/release

.PHONY: all setup build wasm native test test-core test-native test-host test-e2e run bench prices clean

all: build

setup:
	bash scripts/setup.sh

wasm:
	cargo build --release --target wasm32-wasip1 -p tollgate -p noop-filter

native:
	cargo build --release -p tollgate-counter -p tollgate-mock-upstream

build: setup wasm native

# Unit, property and API tests of every native crate (host-tests excluded: it needs the wasm).
test-native: setup
	cargo test --release --workspace --exclude tollgate-host-tests

# The real tollgate.wasm under a wasmtime proxy-wasm host.
test-host: wasm
	cargo test --release -p tollgate-host-tests

# Real Envoy (from the venv), the real filter, the mock upstream and the counter on loopback.
test-e2e: build
	bash scripts/test-e2e.sh

test: build test-native test-host test-e2e

run: build
	bash scripts/run-demo.sh

bench: build
	bash scripts/bench.sh

prices:
	bash scripts/refresh-prices.sh

clean:
	cargo clean
