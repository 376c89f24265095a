#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that mount real model files through FUSE.
# Ends with one summary line, "N passed, N failed", over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --release "$@" 2>&1 | tee "$log" || status=$?
# A short run of every fuzz target (fuzz/smoke.sh), when asked for: it builds the fuzz crate
# (HDF5 included) and needs cargo-fuzz, which tests/setup.sh installs under the same variable.
if [ "$status" = 0 ] && [ "${WFS_FUZZ_SMOKE:-0}" = 1 ]; then
  fuzz/smoke.sh || status=$?
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
