"""Text-to-image with a diffusers pipeline from given initial noise.

    python generate.py PIPELINE NOISE OUT --sampler ddim|euler|plms --steps N --guidance G
        --prompt TEXT

NOISE is a safetensors file whose `noise` tensor [1, c, h, w] is the standard normal initial
latent; OUT gets the final `latents` (scaled, as the UNet sees them) and `image` [1, 3, H, W],
the decoded image as floats in [0, 1] before rounding.
DDIM runs with eta 0, PLMS as diffusers' PNDM with `skip_prk_steps`, Euler as
EulerDiscreteScheduler, each configured from the pipeline's scheduler configuration.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline
from safetensors.torch import load_file, save_file


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline")
    parser.add_argument("noise")
    parser.add_argument("out")
    parser.add_argument("--sampler", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--guidance", type=float, required=True)
    parser.add_argument("--prompt", required=True)
    args = parser.parse_args()
    pipe = StableDiffusionPipeline.from_pretrained(args.pipeline, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    config = pipe.scheduler.config
    pipe.scheduler = {
        "ddim": lambda: DDIMScheduler.from_config(config),
        "euler": lambda: EulerDiscreteScheduler.from_config(config),
        "plms": lambda: PNDMScheduler.from_config(config, skip_prk_steps=True),
    }[args.sampler]()
    noise = load_file(args.noise)["noise"]
    _, _, h, w = noise.shape
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    with torch.no_grad():
        latents = pipe(args.prompt, negative_prompt="", num_inference_steps=args.steps,
                       guidance_scale=args.guidance, latents=noise, height=h * factor, width=w * factor,
                       eta=0.0, output_type="latent").images
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = pipe.image_processor.postprocess(decoded, output_type="pt")
    save_file({"latents": latents.contiguous(), "image": image.contiguous()}, args.out)


if __name__ == "__main__":
    main()
