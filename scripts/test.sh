#!/usr/bin/env bash
# The whole test suite: installs the engines if needed (scripts/setup.sh), then tests every
# crate with every feature (tch training code, tract, ONNX Runtime). Extra arguments go to
# `cargo test` (for example a test name filter).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
cargo test --workspace --all-features "$@"
