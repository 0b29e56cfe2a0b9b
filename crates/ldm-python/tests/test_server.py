"""`ldm._ldm.Server`: the server's routes answered without a socket, as the Ray Serve
deployment uses them. Parsing, validation, batching and the answers are the Rust server's."""

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from ldm import _ldm

BUNDLE = str(Path(__file__).resolve().parents[3] / "export" / "emoji-text")
JSON = [("content-type", "application/json")]


@pytest.fixture(scope="module")
def server():
    return _ldm.Server([BUNDLE], threads=1, max_batch=4, api_key="k")


def post(server, path, body, key="k"):
    headers = JSON + ([("authorization", f"Bearer {key}")] if key else [])
    status, headers, answer = server.handle("POST", path, headers, json.dumps(body).encode())
    return status, dict(headers), json.loads(answer)


def test_openai_generations_answer_pngs_of_the_asked_size(server):
    assert server.models() == ["emoji-text"]
    status, headers, body = post(
        server,
        "/v1/images/generations",
        {"prompt": "red apple, twemoji style", "size": "64x64", "n": 2, "steps": 4,
         "response_format": "b64_json"},
    )
    assert status == 200, body
    assert "x-request-id" in headers
    images = [Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))) for d in body["data"]]
    assert [i.size for i in images] == [(64, 64), (64, 64)]


def test_refusals_are_the_servers_own(server):
    status, _, body = post(server, "/v1/images/generations", {"prompt": "x", "n": 100})
    assert status == 400
    assert "at most 8" in body["error"]["message"] and body["error"]["param"] == "n"
    status, _, body = post(server, "/v1/images/generations", {"prompt": "x"}, key="wrong")
    assert status == 401 and body["error"]["message"] == "the API key is wrong"
    status, _, body = post(server, "/v1/no-such-route", {})
    assert status == 404
    with pytest.raises(_ldm.LdmError, match="not an HTTP method"):
        server.handle("GE T", "/health", [], b"")


def test_concurrent_calls_share_unet_calls(server):
    request = {"prompt": "red apple, twemoji style", "size": "64x64", "steps": 8}
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(server, "/v1/images/generations", request),
                                range(4)))
    assert [a[0] for a in answers] == [200] * 4
    status, _, metrics = server.handle("GET", "/metrics", [("authorization", "Bearer k")], b"")
    assert status == 200
    sizes = [line for line in metrics.decode().splitlines()
             if line.startswith("ldm_batch_size_count")]
    largest = [line for line in metrics.decode().splitlines()
               if line.startswith("ldm_batch_size_bucket") and 'le="1"' in line]
    assert sizes and largest
    # Some UNet calls carried more than one image's rows.
    assert int(float(sizes[0].split()[-1])) > int(float(largest[0].split()[-1]))
