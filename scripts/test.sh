#!/usr/bin/env bash
# Runs every test of the workspace: unit tests, property tests and the end-to-end tests in tests/,
# the long ones in full (AUXILIO_FULL_TESTS=1; a plain `cargo test` runs their short version).
# The end-to-end tests start the real `auxilio` binary, so it is built first; the browser test
# needs Chromium and one npm package, installed here when missing.
# Usage: bash scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests need a Rust toolchain recent enough for the workspace (edition 2024, rust-version in
# Cargo.toml) and a C compiler; crates come from cargo, the browser test's tools from below.
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

# The browser test (tests/tests/map_page.rs) drives Debian's chromium with playwright-core, the
# version pinned in tests/browser/package-lock.json. Both are installed here when missing, so a
# fresh machine passes; when present this costs two version checks.
chromium="${AUXILIO_CHROMIUM:-/usr/bin/chromium}"
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "error: '$*' needs root and sudo is not installed; run it as root, then this again" >&2
        exit 1
    fi
}
apt_install() {
    echo "==> installing $* (Debian packages) for the browser test"
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}
if [ ! -x "$chromium" ]; then
    apt_install chromium
fi
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "error: node $(node --version) is older than the 20 that playwright-core needs; install Node.js 20 or newer" >&2
    exit 1
fi
browser_dir=tests/browser
wanted=$(node -p "require('./$browser_dir/package-lock.json').packages['node_modules/playwright-core'].version")
have=$(node -p "require('./$browser_dir/node_modules/playwright-core/package.json').version" 2>/dev/null || true)
if [ "$wanted" != "$have" ]; then
    echo "==> npm ci in $browser_dir (playwright-core $wanted; it uses the system chromium, downloads no browser)"
    (cd "$browser_dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund)
fi

echo "==> building the workspace (the end-to-end tests run the auxilio binary)"
cargo build --workspace --bins --locked
echo "==> running all tests, the long sweeps in full (AUXILIO_FULL_TESTS=1)"
# A plain `cargo test` runs the long tests (cut-offset sweeps, SIGKILL loops, 2G simulations,
# property-test case counts) in a short version; this is the full run (tests/src/lib.rs, full_run).
export AUXILIO_FULL_TESTS=1
cargo test --workspace --locked "$@"
