"""The Ray Serve deployment on a local two-node cluster (tests/ray_cluster.py), run in a
network namespace of its own that has only `lo`, so that Ray cannot reach or bind any other
interface."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ray_cluster.py")


def in_loopback_namespace(*command):
    """`command` inside a new network namespace with `lo` up (as root, or as a user with
    user namespaces)."""
    unshare = ["unshare", "-n"] if os.geteuid() == 0 else ["unshare", "-r", "-n"]
    inner = "ip link set lo up && exec " + " ".join(f"'{c}'" for c in command)
    return [*unshare, "sh", "-c", inner]


@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)")
def test_two_replicas_answer_32_concurrent_requests():
    pytest.importorskip("ray.serve")
    run = subprocess.run(
        in_loopback_namespace(sys.executable, str(SCRIPT), "check", "--requests", "32",
                              "--steps", "10"),
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, RAY_USAGE_STATS_ENABLED="0"),
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-8000:]
    assert '"ok": 32' in run.stdout
