"""The official OpenAI Python client against `ldm serve`, with no change on its side but the
base URL.

    python openai_client.py BASE_URL API_KEY OUT_DIR

generates two images as b64_json and one as a URL (then fetched), edits an image with a mask (transparent: redraw), lists the models, and checks
that a refused request raises the client's BadRequestError; the PNGs go to OUT_DIR and a
summary (sizes, model ids, error message) is printed as JSON.
"""

import base64
import io
import json
import os
import sys
import urllib.request

import openai
from PIL import Image


def main():
    base, key, out = sys.argv[1:4]
    client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    summary = {"sizes": []}

    def keep(name, data):
        image = Image.open(io.BytesIO(data))
        assert image.format == "PNG", image.format
        image.save(os.path.join(out, name))
        summary["sizes"].append(list(image.size))

    result = client.images.generate(model="emoji-text", prompt="a red apple on the top left", n=2,
                                    size="64x64", response_format="b64_json",
                                    extra_body={"steps": 4, "seed": 1})
    for i, item in enumerate(result.data):
        keep(f"generated-{i}.png", base64.b64decode(item.b64_json))
    result = client.images.generate(prompt="a blue square", response_format="url", extra_body={"steps": 2})
    fetch = urllib.request.Request(result.data[0].url, headers={"authorization": f"Bearer {key}"})
    with urllib.request.urlopen(fetch) as response:
        keep("url.png", response.read())

    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 32, 64))  # the left half is transparent: redrawn

    def png(image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()

    result = client.images.edit(image=("picture.png", png(picture), "image/png"),
                                mask=("mask.png", png(mask), "image/png"),
                                prompt="a green circle", response_format="b64_json", size="64x64")
    keep("edited.png", base64.b64decode(result.data[0].b64_json))
    summary["models"] = [m.id for m in client.models.list().data]
    try:
        client.images.generate(prompt="x", size="100000x100000")
        summary["refused"] = None
    except openai.BadRequestError as e:
        summary["refused"] = e.message
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
