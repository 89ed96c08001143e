#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ (one per decoder of network input) for a fixed number of
# inputs each, starting from the committed seeds in fuzz/corpus/<target>/. Exits non-zero on the
# first crash and prints the file that reproduces it.
#
# Usage: bash scripts/fuzz.sh [RUNS] [TARGET...]
#   RUNS     inputs per target (default 20000; CI runs fewer, see .ci/run)
#   TARGET   only these targets (default: all of `cargo fuzz list`)
# Environment: FUZZ_MAX_LEN (largest input, default 16384 bytes),
#              FUZZ_SANITIZER (address, the default, or none: faster, finds panics only),
#              FUZZ_SEED (libFuzzer's random seed: fixed in CI, so a run explores the same
#              inputs each time and fails only when the code changes; random by default).
#
# cargo-fuzz drives libFuzzer, which needs nightly compiler flags. This machine has the stable
# toolchain, so RUSTC_BOOTSTRAP=1 lets it take them (a nightly toolchain works as well).
# Reproduce a crash: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz TARGET fuzz/artifacts/TARGET/crash-...
set -euo pipefail
cd "$(dirname "$0")/.."

runs="${1:-20000}"
shift || true
if ! [[ "$runs" =~ ^[0-9]+$ ]]; then
    echo "error: RUNS must be a number of inputs, not '$runs' (usage: bash scripts/fuzz.sh [RUNS] [TARGET...])" >&2
    exit 2
fi
max_len="${FUZZ_MAX_LEN:-16384}"
sanitizer="${FUZZ_SANITIZER:-address}"
seed_option=()
if [ -n "${FUZZ_SEED:-}" ]; then
    seed_option=(-seed="$FUZZ_SEED")
fi
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz (from crates.io)"
    cargo install cargo-fuzz --locked
fi

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

echo "==> building ${#targets[@]} fuzz targets (sanitizer: $sanitizer)"
build_started=$SECONDS
cargo fuzz build --fuzz-dir fuzz --sanitizer "$sanitizer"
echo "    built in $((SECONDS - build_started)) s"

for target in "${targets[@]}"; do
    seeds="fuzz/corpus/$target"
    if [ ! -d "$seeds" ]; then
        echo "error: no seed corpus $seeds for target $target; make one with: cargo run -p auxilio-core --example fuzz_seeds -- fuzz/corpus" >&2
        exit 2
    fi
    # New inputs the fuzzer finds go to a scratch folder; the committed seeds stay as they are.
    work="fuzz/target/corpus-work/$target"
    rm -rf "$work"
    mkdir -p "$work" "fuzz/artifacts/$target"
    echo "==> $target: $runs inputs"
    started=$SECONDS
    if ! cargo fuzz run --fuzz-dir fuzz --sanitizer "$sanitizer" "$target" "$work" "$seeds" -- \
        -runs="$runs" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${seed_option[@]}" \
        >"fuzz/target/$target.log" 2>&1; then
        tail -n 40 "fuzz/target/$target.log" >&2
        reproducer=$(ls -t "fuzz/artifacts/$target"/* 2>/dev/null | head -n 1 || true)
        echo "error: fuzz target $target failed after $((SECONDS - started)) s" >&2
        if [ -n "$reproducer" ]; then
            echo "reproducer: $reproducer" >&2
            echo "run it again with: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz $target $reproducer" >&2
        fi
        exit 1
    fi
    executed=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "fuzz/target/$target.log" | grep -o '[0-9]*$' || echo "?")
    echo "    $executed inputs, no crash, $((SECONDS - started)) s"
done
echo "fuzz: ${#targets[@]} passed, 0 failed"
