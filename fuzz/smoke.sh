#!/usr/bin/env bash
# Runs every fuzz target from its committed seeds for WFS_FUZZ_SECONDS (default 20), or, with
# WFS_FUZZ_RUNS, for that many inputs from a fixed seed (what CI does: the same inputs every
# time, so CI does not fail at random). Any crash, hang (> 10 s per input) or OOM (> 2 GiB)
# fails the script. A larger WFS_FUZZ_SECONDS gives the long runs of the README's Reliability
# section. cargo-fuzz needs nightly flags; the stable toolchain accepts them with
# RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
secs=${WFS_FUZZ_SECONDS:-20}
if [ -n "${WFS_FUZZ_RUNS:-}" ]; then
  budget=(-runs="$WFS_FUZZ_RUNS" -seed=1)
  span="$WFS_FUZZ_RUNS inputs"
else
  budget=(-max_total_time="$secs")
  span="${secs}s"
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -O
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  # New inputs go to a scratch corpus, so the committed seeds stay as they are.
  mkdir -p "$scratch/$target"
  if ! nice -n 19 cargo fuzz run -O "$target" "$scratch/$target" "corpus/$target" -- \
      "${budget[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$scratch/log" 2>&1; then
    tail -n 40 "$scratch/log"
    echo "fuzz: $target failed (crash input in fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/log")
  rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$scratch/log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "$scratch/log" | tail -n 1)
  echo "fuzz: $target: ${runs:-?} runs ($span), $cov, peak RSS ${rss:-?} MB"
done
