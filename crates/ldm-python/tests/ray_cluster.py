"""A local Ray cluster serving the shipped bundle through `ldm.ray_serve`: a head and a worker
node as separate processes, the deployment on them, and concurrent OpenAI image requests
through Ray's HTTP proxy.

Every address must be loopback, so this refuses to run outside a network namespace whose
only interface is `lo`; `test_ray_serve.py` (and `scripts/bench-ray.sh`) start it inside one
with `unshare -n`. Every process it starts is stopped before it exits.

    python ray_cluster.py check [--requests 32]        both replicas answer every request
    python ray_cluster.py bench [--requests 32] [--rounds 3] [--steps 25] --out bench/ray.json
                                                       one replica against two, images/s
                                                       (the median of the rounds)
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BUNDLE = ROOT / "export" / "emoji-text"
GCS_PORT = 6380
HTTP_PORT = 8000


def cpu_model() -> str:
    with open("/proc/cpuinfo") as f:
        names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    return names[0] if names else platform.machine()


def interfaces():
    with open("/proc/net/dev") as f:
        return [line.split(":")[0].strip() for line in f.readlines()[2:]]


def ray(*args, env):
    subprocess.run([sys.executable, "-m", "ray.scripts.scripts", *args], check=True, env=env,
                   stdout=subprocess.DEVNULL)


class Cluster:
    """A head and a worker node of one CPU each, on 127.0.0.1, stopped on exit."""

    def __enter__(self):
        self.temp = tempfile.mkdtemp(prefix="ldm-ray-")
        self.env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        common = ["--node-ip-address=127.0.0.1", "--num-cpus=1",
                  "--object-store-memory=100000000", "--disable-usage-stats"]
        ray("start", "--head", f"--port={GCS_PORT}", "--include-dashboard=false",
            f"--temp-dir={self.temp}", *common, env=self.env)
        ray("start", f"--address=127.0.0.1:{GCS_PORT}", *common, env=self.env)
        import ray as ray_module

        ray_module.init(address=f"127.0.0.1:{GCS_PORT}", logging_level="ERROR")
        nodes = [n for n in ray_module.nodes() if n["Alive"]]
        assert len(nodes) == 2, nodes
        assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes), nodes
        return self

    def __exit__(self, *exc):
        import ray as ray_module
        from ray import serve

        try:
            serve.shutdown()
            ray_module.shutdown()
        finally:
            subprocess.run([sys.executable, "-m", "ray.scripts.scripts", "stop", "--force"],
                           env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def deploy(replicas: int):
    from ray import serve

    from ldm.ray_serve import deployment

    serve.start(http_options={"host": "127.0.0.1", "port": HTTP_PORT})
    serve.run(deployment([str(BUNDLE)], replicas=replicas, threads=1), route_prefix="/",
              name="ldm")


def generate(i: int, steps: int):
    """One OpenAI images request; its status, answering replica and image size."""
    body = json.dumps({"prompt": "red apple, twemoji style", "size": "64x64", "seed": i,
                       "steps": steps, "response_format": "b64_json"}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{HTTP_PORT}/v1/images/generations", data=body,
        headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
            replica = response.headers.get("x-ldm-replica")
            status = response.status
    except urllib.error.HTTPError as e:
        return e.code, None, None
    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(answer["data"][0]["b64_json"])))
    return status, replica, image.size


def load(requests: int, clients: int, steps: int):
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(lambda i: generate(i, steps), range(requests)))
    return answers, time.perf_counter() - started


def check(args):
    with Cluster():
        deploy(replicas=2)
        answers, seconds = load(args.requests, args.requests, args.steps)
    statuses = [a[0] for a in answers]
    replicas = {a[1] for a in answers}
    print(json.dumps({"requests": args.requests, "ok": statuses.count(200),
                      "replicas": sorted(r for r in replicas if r), "seconds": seconds}))
    assert statuses == [200] * args.requests, statuses
    assert all(a[2] == (64, 64) for a in answers), answers
    assert len(replicas) == 2, f"answered by {replicas}"


def bench(args):
    """Images per second of one replica and of two, each the median of `args.rounds` loads."""
    from ray import serve

    results = {}
    with Cluster():
        for replicas in (1, 2):
            deploy(replicas)
            load(2 * replicas, 2 * replicas, args.steps)  # warm: every replica has run one
            rates, used = [], set()
            for _ in range(args.rounds):
                answers, seconds = load(args.requests, args.clients, args.steps)
                assert [a[0] for a in answers] == [200] * args.requests, answers
                rates.append(args.requests / seconds)
                used |= {a[1] for a in answers}
            results[f"{replicas} replica(s)"] = {
                "images_per_s": statistics.median(rates), "rounds": rates,
                "replicas_used": len(used)}
            serve.delete("ldm")
    one, two = (results[k]["images_per_s"] for k in ("1 replica(s)", "2 replica(s)"))
    report = {"machine": cpu_model(), "cores": os.cpu_count(),
              "requests": args.requests, "clients": args.clients, "rounds": args.rounds,
              "steps": args.steps, "size": "64x64", "threads_per_replica": 1,
              "results": results, "ratio": two / one}
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["check", "bench"])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--out")
    args = parser.parse_args()
    if not (1 <= args.requests <= 1000 and 1 <= args.clients <= 64 and 1 <= args.rounds <= 20
            and 1 <= args.steps <= 1000):
        parser.error("--requests 1..1000, --clients 1..64, --rounds 1..20, --steps 1..1000")
    if interfaces() != ["lo"]:
        sys.exit(f"run inside a network namespace with only lo (found {interfaces()}): "
                 "unshare -n sh -c 'ip link set lo up && python ray_cluster.py ...'")
    (check if args.mode == "check" else bench)(args)


if __name__ == "__main__":
    main()
