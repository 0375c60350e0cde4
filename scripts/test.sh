#!/usr/bin/env bash
# Installs what is needed and runs every check and test of vswitch:
#   rustfmt, clippy (warnings are errors), unit tests, benchmarks in test mode, and the
#   end-to-end tests (they need root: they create network namespaces, veths and TAPs, all
#   inside namespaces of their own, and remove them afterwards).
# Usage: sudo ./scripts/test.sh [extra arguments for `cargo test`, e.g. a test name]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

require_root
install_system_packages
ensure_rust yes

log "cargo fmt --all -- --check"
cargo fmt --all -- --check

log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings

log "cargo test --workspace --all-targets --no-fail-fast"
cargo test --workspace --all-targets --no-fail-fast "$@"

log "all checks and tests passed"
