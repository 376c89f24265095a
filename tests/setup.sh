#!/usr/bin/env bash
# Installs what building and testing wfs needs on a Debian or Ubuntu machine (run as root):
# FUSE 3 (the kernel side is built in), a C toolchain and CMake >= 3.26 for the bundled static
# HDF5 2.x, and numpy and safetensors for the tests that read the mount the way users do.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

missing=()
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v cc >/dev/null || missing+=(build-essential)
command -v python3 >/dev/null || missing+=(python3 python3-pip)
command -v getfattr >/dev/null || missing+=(attr)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

pip_install() {
  python3 -m pip install --quiet --disable-pip-version-check "$@" 2>/dev/null ||
    python3 -m pip install --quiet --disable-pip-version-check --break-system-packages "$@"
}

# HDF5 2.x needs CMake 3.26+; Debian 12 ships 3.25, so take it from PyPI when too old.
cmake_ok() {
  local v
  v=$(cmake --version 2>/dev/null | awk 'NR==1{print $3}') || return 1
  [ -n "$v" ] && [ "$(printf '%s\n3.26\n' "$v" | sort -V | head -n1)" = "3.26" ]
}
cmake_ok || { pip_install 'cmake>=3.26'; hash -r; }
cmake_ok || { echo "setup: CMake >= 3.26 is required" >&2; exit 1; }

python3 -c 'import numpy' 2>/dev/null || pip_install numpy
# tests/export.rs reads model.safetensors with the reference reader.
python3 -c 'import safetensors' 2>/dev/null || pip_install safetensors

command -v cargo >/dev/null || { echo "setup: Rust (cargo) is required: https://rustup.rs" >&2; exit 1; }
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (load the fuse module or run with --device /dev/fuse)" >&2; exit 1; }

# The fuzz smoke run (WFS_FUZZ_SMOKE=1, see tests/run.sh) needs cargo-fuzz.
if [ "${WFS_FUZZ_SMOKE:-0}" = 1 ] && ! command -v cargo-fuzz >/dev/null; then
  cargo install --locked cargo-fuzz
fi
