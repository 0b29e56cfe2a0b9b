#!/usr/bin/env bash
# The whole test suite: installs the engines if needed (scripts/setup.sh), then tests every
# crate with every feature (tch training code, tract, ONNX Runtime), then builds the Python
# package's wheel, installs it into the virtualenv and runs its pytest suite (the Ray Serve
# test among them). Extra arguments go to `cargo test` (for example a test name filter).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
# The suite plans hundreds of graph shapes: tract's plan cache (README, "Engines") stays off
# unless asked for; its own tests give it a folder of their own.
export LDM_PLAN_CACHE=${LDM_PLAN_CACHE:-off}
cargo test --workspace --all-features "$@"

venv=${LDM_VENV:-$root/.venv}
target=${CARGO_TARGET_DIR:-$root/target}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# The dev profile optimises dependencies (tract) as the cargo tests do (Cargo.toml).
"$venv/bin/maturin" build --quiet --profile dev --manifest-path crates/ldm-python/Cargo.toml --out "$wheels"
"$venv/bin/pip" install --quiet --force-reinstall --no-deps "$wheels"/ldm-*.whl
LDM_BIN="$target/debug/ldm" ORT_DYLIB_PATH="$root/.ldm/libonnxruntime.so" RAY_USAGE_STATS_ENABLED=0 \
  "$venv/bin/python" -m pytest -q -p no:cacheprovider crates/ldm-python/tests
