#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests and the end-to-end tests in tests/.
# The end-to-end tests start the real `auxilio` binary, so it is built first.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust from your distribution or rustup first" >&2
    exit 1
fi

echo "==> building the workspace (the end-to-end tests run the auxilio binary)"
cargo build --workspace --bins --locked
echo "==> running all tests"
cargo test --workspace --locked "$@"
