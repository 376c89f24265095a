#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that mount real model files through FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo test --release "$@"
