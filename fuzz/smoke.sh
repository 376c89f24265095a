#!/usr/bin/env bash
# Runs every fuzz target for WFS_FUZZ_SECONDS (default 20) from its committed seeds; any crash,
# hang (> 10 s per input) or OOM (> 2 GiB) fails the script. CI's smoke run, and with a larger
# WFS_FUZZ_SECONDS the long runs of the README's Reliability section. cargo-fuzz needs nightly flags; the
# stable toolchain accepts them with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${WFS_FUZZ_SECONDS:-20}
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  # New inputs go to a scratch corpus, so the committed seeds stay as they are.
  mkdir -p "$scratch/$target"
  if ! nice -n 19 cargo fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/log" 2>&1; then
    tail -n 40 "$scratch/log"
    echo "fuzz: $target failed (crash input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/log")
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$scratch/log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$scratch/log" | tail -n 1)
  echo "fuzz: $target: ${runs:-?} runs in ${secs}s, $cov, peak RSS ${rss:-?} MB"
done
