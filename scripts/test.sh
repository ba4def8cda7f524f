#!/usr/bin/env bash
# Every check of ftpct, as root (the kernel and end-to-end tests build network namespaces):
# formatting, clippy, unit/property/simulation tests, kernel tests, end-to-end tests with real
# FTP peers, and a short run of every fuzz target.
#   FTPCT_FUZZ_SECONDS=N   seconds per fuzz target (default 20; 0 skips fuzzing)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo test (unit, property, simulation, kernel, end-to-end)"
cargo test --workspace --all-targets
echo "== doc tests"
cargo test --workspace --doc
fuzz=${FTPCT_FUZZ_SECONDS:-20}
if [ "$fuzz" != 0 ] && [ -x scripts/fuzz-ci.sh ]; then
    echo "== fuzz ($fuzz s per target)"
    scripts/fuzz-ci.sh "$fuzz"
fi
echo "== all checks passed"
