"""``ldm serve``'s APIs on a Ray Serve cluster.

Each replica holds the server's own Rust request handling (``ldm._ldm.Server``: the same
routes, limits, validation, batching and answers as ``ldm serve``) behind Ray's HTTP proxy;
this module only moves requests and responses between Starlette and it. So the OpenAI
``POST /v1/images/generations`` (and every other route of ``ldm serve`` that answers with a
whole body) is served unchanged by as many replicas as Ray schedules::

    from ray import serve
    from ldm.ray_serve import deployment

    serve.run(deployment(["export/emoji-text"], replicas=2, threads=1))

or from the command line (and in a KubeRay ``RayService``, see ``deploy/rayservice.yaml``)::

    serve run ldm.ray_serve:build_app bundles=export/emoji-text replicas=2 threads=1

Bundle paths are read by every replica: on a cluster they must exist on every node (baked
into the image, or on a shared volume).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List, Optional, Sequence

from ray import serve
from starlette.requests import Request
from starlette.responses import Response

from . import _ldm

#: The response header that names the replica which answered.
REPLICA_HEADER = "x-ldm-replica"
# Framing headers Starlette sets itself for the body it sends.
_FRAMING = {"content-length", "transfer-encoding", "connection"}


@serve.deployment(max_ongoing_requests=16, ray_actor_options={"num_cpus": 1})
class LdmServer:
    """One replica: the bundles loaded and warmed, answering as ``ldm serve`` does."""

    def __init__(
        self,
        bundles: Sequence[str],
        backend: str = "tract",
        threads: int = 1,
        max_batch: int = 8,
        api_key: Optional[str] = None,
    ):
        self._server = _ldm.Server(
            [os.fspath(b) for b in bundles],
            backend=backend,
            threads=threads,
            max_batch=max_batch,
            api_key=api_key,
        )
        self._replica = serve.get_replica_context().replica_id.unique_id

    async def __call__(self, request: Request) -> Response:
        body = await request.body()
        uri = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        headers = list(request.headers.items())
        # The server blocks its caller until the answer is whole, with the GIL released:
        # concurrent requests wait on threads and share the replica's UNet calls.
        status, answer_headers, answer = await asyncio.get_running_loop().run_in_executor(
            None, self._server.handle, request.method, uri, headers, body
        )
        kept = {k: v for (k, v) in answer_headers if k.lower() not in _FRAMING}
        kept[REPLICA_HEADER] = self._replica
        return Response(content=answer, status_code=status, headers=kept)


def deployment(
    bundles: Sequence[str],
    *,
    replicas: Optional[int] = None,
    autoscaling: Optional[Dict[str, Any]] = None,
    threads: int = 1,
    backend: str = "tract",
    max_batch: int = 8,
    max_ongoing_requests: int = 16,
    api_key: Optional[str] = None,
):
    """The bound application: ``replicas`` fixed replicas, or Ray's autoscaling between
    ``autoscaling["min_replicas"]`` and ``["max_replicas"]`` (for example with
    ``"target_ongoing_requests": 4``); each replica reserves ``threads`` CPUs and runs its
    engine on that many threads."""
    if replicas is not None and autoscaling is not None:
        raise ValueError("give replicas or autoscaling, not both")
    options: Dict[str, Any] = {
        "ray_actor_options": {"num_cpus": threads},
        "max_ongoing_requests": max_ongoing_requests,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = replicas if replicas is not None else 1
    absolute: List[str] = [os.path.abspath(os.fspath(b)) for b in bundles]
    return LdmServer.options(**options).bind(absolute, backend, threads, max_batch, api_key)


def build_app(args: Dict[str, str]):
    """``serve run ldm.ray_serve:build_app bundles=a,b replicas=2 threads=1 ...`` (and a
    RayService's ``import_path``): the arguments as strings. With ``min_replicas`` and
    ``max_replicas`` the deployment autoscales on ``target_ongoing_requests`` (default 4)."""
    bundles = [b for b in args.get("bundles", "export/emoji-text").split(",") if b]
    autoscaling = None
    if "max_replicas" in args:
        autoscaling = {
            "min_replicas": int(args.get("min_replicas", "1")),
            "max_replicas": int(args["max_replicas"]),
            "target_ongoing_requests": float(args.get("target_ongoing_requests", "4")),
        }
    return deployment(
        bundles,
        replicas=None if autoscaling else int(args.get("replicas", "1")),
        autoscaling=autoscaling,
        threads=int(args.get("threads", "1")),
        backend=args.get("backend", "tract"),
        max_batch=int(args.get("max_batch", "8")),
        api_key=args.get("api_key") or os.environ.get("LDM_API_KEY"),
    )
