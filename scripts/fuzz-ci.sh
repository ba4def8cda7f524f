#!/usr/bin/env bash
# Builds every cargo-fuzz target of fuzz/ once (ASan, sancov) and runs each for N seconds.
#
# Usage, from anywhere (CI runs it as root on a fresh Debian 12 with rustup stable and
# `cargo install cargo-fuzz --locked`):
#
#   scripts/fuzz-ci.sh [SECONDS_PER_TARGET]     # default 30
#
# Exits non-zero if any target crashes, leaks, times out or runs out of memory. The input that
# failed is kept under fuzz/artifacts/<target>/ and printed (base64) in the log, so it can be
# replayed with `RUSTC_BOOTSTRAP=1 cargo +stable fuzz run <target> <file>`.
#
# Cost (measured, see docs/benchmarks-core.md): one ASan build of the crate and the eight
# targets (about 2.5 CPU-minutes from a cold target directory) plus 8 x N s of fuzzing
# (CI: N = 20, about 5 minutes in all on an idle 2-core runner).
#
# Only a stable toolchain is available, so libFuzzer's nightly-only flags (-Zsanitizer=address,
# sancov) are unlocked with RUSTC_BOOTSTRAP=1, as in fuzz/Cargo.toml.
set -euo pipefail

secs="${1:-30}"
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
export RUSTC_BOOTSTRAP=1

# libfuzzer-sys compiles libFuzzer (C++) in its build script.
if ! command -v "${CXX:-c++}" > /dev/null 2>&1; then
    echo "error: no C++ compiler (${CXX:-c++}) for libFuzzer; on Debian: apt-get install -y g++" >&2
    exit 2
fi
cargo_fuzz=(cargo +stable fuzz)

targets=$("${cargo_fuzz[@]}" list)
echo "fuzz targets: $(echo $targets)"

start=$(date +%s)
# One build for all targets; `fuzz run` below then only checks it is fresh.
"${cargo_fuzz[@]}" build
echo "build: $(( $(date +%s) - start )) s"

failed=()
for t in $targets; do
    echo "=== $t: ${secs} s"
    # -timeout: a single input taking over 10 s is a hang (the targets run in microseconds).
    if ! "${cargo_fuzz[@]}" run "$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
        for f in fuzz/artifacts/"$t"/*; do
            [ -f "$f" ] || continue
            echo "--- $f ($(wc -c < "$f") bytes), base64:"
            base64 -w 76 "$f"
        done
    fi
done

echo "total: $(( $(date +%s) - start )) s"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "all fuzz targets ran ${secs} s without a failure"
