#!/usr/bin/env bash
# Builds wfs, mounts a small Keras model shipped in the repo, and looks inside it.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/setup.sh
cargo build --release --quiet
wfs=target/release/wfs
mnt=${1:-/tmp/wfs-demo}
"$wfs" mount tests/fixtures/h5/k2_functional.h5 "$mnt"
trap '"$wfs" umount "$mnt"' EXIT
set -x
cat "$mnt/info.json"
ls "$mnt/layers"
grep -r . "$mnt/layers" --include='*.shape'
head -n 5 "$mnt/tensors.tsv"
python3 -c "import numpy as np; print(np.load('$mnt/layers/dense_1/bias.npy'))"
python3 -c "import numpy as np; print(np.load('$mnt/layers/dense_1/kernel.npy', mmap_mode='r').shape)"
