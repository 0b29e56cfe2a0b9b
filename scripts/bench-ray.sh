#!/usr/bin/env bash
# Ray Serve throughput: one single-threaded replica against two, on a local two-node cluster
# in a network namespace with only lo (see crates/ldm-python/tests/ray_cluster.py). Needs the
# wheel installed (scripts/test.sh does it) and root or user namespaces for `unshare -n`.
#   scripts/bench-ray.sh [REQUESTS] [CLIENTS] [ROUNDS] [STEPS]     writes bench/ray.json
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${LDM_VENV:-$root/.venv}/bin/python
unshare=(unshare -n); [ "$(id -u)" = 0 ] || unshare=(unshare -r -n)
RAY_USAGE_STATS_ENABLED=0 "${unshare[@]}" sh -c 'ip link set lo up && exec "$@"' sh \
  "$python" "$root/crates/ldm-python/tests/ray_cluster.py" bench \
  --requests "${1:-32}" --clients "${2:-8}" --rounds "${3:-3}" --steps "${4:-25}" \
  --out "$root/bench/ray.json"
