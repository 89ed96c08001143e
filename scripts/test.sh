#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests and the end-to-end tests in tests/.
# The end-to-end tests start the real `auxilio` binary, so it is built first.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The only thing the tests need is a Rust toolchain recent enough for the workspace
# (edition 2024, rust-version in Cargo.toml); everything else is a crate that cargo fetches.
required="1.90"
if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not installed; install Rust $required or newer (https://rustup.rs) and run this again" >&2
    exit 1
fi
if ! command -v cc >/dev/null 2>&1; then
    echo "error: no C compiler (cc); SQLite is compiled into the workspace: install gcc (e.g. apt-get install gcc) and run this again" >&2
    exit 1
fi
have=$(rustc --version | awk '{print $2}')
if [ "$(printf '%s\n%s\n' "$required" "$have" | sort -V | head -n1)" != "$required" ]; then
    echo "error: rustc $have is older than the $required this workspace needs; run 'rustup update' and try again" >&2
    exit 1
fi

echo "==> building the workspace (the end-to-end tests run the auxilio binary)"
cargo build --workspace --bins --locked
echo "==> running all tests"
cargo test --workspace --locked "$@"
