#!/usr/bin/env bash
# Long fuzzing runs of the libFuzzer targets in fuzz/ (cargo-fuzz, nightly toolchain): each
# target from a scratch copy of its committed corpus (fuzz/corpus/<target>, which stays
# small; the test suite replays it on stable), for a fixed number of executions, with memory
# and time limits. Crashes, hangs and out-of-memory inputs land in fuzz/artifacts/<target>/
# and fail the run. Prints one line per target: executions, seconds, executions per second.
#
#   scripts/fuzz.sh [RUNS]            RUNS executions per target (default 2,000,000)
#   TARGETS="manifest onnx" scripts/fuzz.sh 100000
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
runs=${1:-2000000}
targets=${TARGETS:-manifest tokenizer metadata image onnx pickle request}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
cargo +nightly fuzz build -O >/dev/null
total=0
for target in $targets; do
  work=$(mktemp -d)
  cp fuzz/corpus/"$target"/* "$work"/
  log="$work/log"
  start=$(date +%s)
  if ! cargo +nightly fuzz run -O "$target" "$work" -- -runs="$runs" -rss_limit_mb=2048 \
      -timeout=10 -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz.sh: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  seconds=$(( $(date +%s) - start ))
  executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  echo "$target: $executed executions in $seconds s ($rate per second), no crash, hang or out-of-memory"
  total=$(( total + executed ))
  rm -rf "$work"
done
echo "all targets: $total executions"
