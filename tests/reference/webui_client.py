"""webuiapi, a Python client of the AUTOMATIC1111 web UI API, against `ldm serve`, with no
change on its side but the address.

    python webui_client.py BASE_URL API_KEY OUT_DIR

runs txt2img (two images), img2img with a mask, and lists models and samplers, logging in
with HTTP basic authentication (the key as the password) as the web UI's `--api-auth`
expects; the images go to OUT_DIR and a summary is printed as JSON.
"""

import json
import os
import sys

import webuiapi
from PIL import Image


def main():
    base, key, out = sys.argv[1:4]
    api = webuiapi.WebUIApi(baseurl=f"{base}/sdapi/v1", sampler="Euler a", steps=4,
                            username="ldm", password=key)
    summary = {"sizes": []}
    result = api.txt2img(prompt="a red apple on the top left", negative_prompt="", seed=5,
                         cfg_scale=3, width=64, height=64, batch_size=2)
    picture = result.images[0]
    for i, image in enumerate(result.images):
        image.save(os.path.join(out, f"txt2img-{i}.png"))
        summary["sizes"].append(list(image.size))
    summary["seeds"] = result.info["all_seeds"]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # white: redrawn
    result = api.img2img(images=[picture], mask_image=mask, prompt="a green circle",
                         denoising_strength=0.6, width=64, height=64, seed=5)
    result.images[0].save(os.path.join(out, "img2img.png"))
    summary["sizes"].append(list(result.images[0].size))
    summary["models"] = [m["model_name"] for m in api.get_sd_models()]
    summary["samplers"] = [s["name"] for s in api.get_samplers()]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
