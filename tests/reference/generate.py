"""Text-to-image (or inpainting) with a diffusers pipeline from given initial noise.

    python generate.py PIPELINE NOISE OUT --sampler ddim|euler|plms --steps N --guidance G
        --prompt TEXT [--image IMAGE.png --mask MASK.png]

NOISE is a safetensors file whose `noise` tensor [1, c, h, w] is the standard normal initial
latent; OUT gets the final `latents` (scaled, as the UNet sees them) and `image` [1, 3, H, W],
the decoded image as floats in [0, 1] before rounding.
DDIM runs with eta 0, PLMS as diffusers' PNDM with `skip_prk_steps`, Euler as
EulerDiscreteScheduler, each configured from the pipeline's scheduler configuration.
With --image and --mask the pipeline is StableDiffusionInpaintPipeline at strength 1. The
masked image is encoded to its posterior's mean (the pipeline would draw a sample from it)
and handed to the pipeline as `masked_image_latents`.
"""

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, StableDiffusionInpaintPipeline,
                       StableDiffusionPipeline)
from PIL import Image
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
    parser.add_argument("--image")
    parser.add_argument("--mask")
    args = parser.parse_args()
    inpaint = args.image is not None
    pipeline_class = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = pipeline_class.from_pretrained(args.pipeline, local_files_only=True, safety_checker=None,
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
    extra = {}
    with torch.no_grad():
        if inpaint:
            image, mask = Image.open(args.image).convert("RGB"), Image.open(args.mask)
            pixels = pipe.image_processor.preprocess(image)
            binary = pipe.mask_processor.preprocess(mask)
            masked = pixels * (binary < 0.5)
            mean = pipe.vae.encode(masked).latent_dist.mean
            extra = {"image": image, "mask_image": mask,
                     "masked_image_latents": mean * pipe.vae.config.scaling_factor, "strength": 1.0}
        latents = pipe(args.prompt, negative_prompt="", num_inference_steps=args.steps,
                       guidance_scale=args.guidance, latents=noise, height=h * factor, width=w * factor,
                       eta=0.0, output_type="latent", **extra).images
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
        image = pipe.image_processor.postprocess(decoded, output_type="pt")
    save_file({"latents": latents.contiguous(), "image": image.contiguous()}, args.out)


if __name__ == "__main__":
    main()
