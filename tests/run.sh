#!/usr/bin/env bash
# The test command (README): installs what the tests need on a fresh Debian machine, then runs
# formatting and lint checks and the whole test suite. Safe to run again; skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

# No incremental compilation: a run builds each crate once, and incremental's caches would more
# than double the target directory (a CI machine once ran out of disk linking the test binaries).
# Set CARGO_INCREMENTAL=1 to keep them for quicker reruns while developing.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

log() { printf '\n== %s\n' "$*" >&2; }

# Build prerequisites of rdkafka's bundled librdkafka (./configure build) and of zstd.
need=()
# chromium and poppler-utils: the invoice's HTML document is rendered by a real browser to PDF
# and read back with pdftotext.
for pkg in build-essential pkg-config python3 perl chromium poppler-utils; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  log "installing ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

# LiteLLM's real price catalog for tests/it/litellm.rs: the PyPI wheel ships it. Installed
# without dependencies and never imported; the version is pinned (keep LITELLM_VERSION in
# tests/it/litellm.rs equal).
LITELLM_VERSION="1.109.1"
if ! python3 -c "import importlib.metadata as m, sys; sys.exit(m.version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
  log "installing litellm==$LITELLM_VERSION (its price catalog)"
  python3 -m pip install --quiet --no-deps "litellm==$LITELLM_VERSION"
fi

# DuckDB (PyPI) for `tokenmeter bench`, whose quick mode runs in the tests.
benches/setup.sh

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

log "services: tansu (Kafka-compatible broker) and clickhouse-server on loopback"
trap 'tests/services.sh down' EXIT
eval "$(tests/services.sh up)"

log "cargo test"
cargo test --workspace --locked --no-fail-fast
