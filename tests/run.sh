#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that mount real model files through FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --release "$@"
# A short run of every fuzz target (fuzz/smoke.sh), when asked for: it builds the fuzz crate
# (HDF5 included) and needs cargo-fuzz, which tests/setup.sh installs under the same variable.
if [ "${WFS_FUZZ_SMOKE:-0}" = 1 ]; then
  fuzz/smoke.sh
fi
