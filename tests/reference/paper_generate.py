"""Sampling with diffusers' latent diffusion pipelines from given initial noise.

    python paper_generate.py PIPELINE NOISE OUT --steps N
        [--prompt TEXT --guidance G | --low-res IMAGE.safetensors | --class-label K]

PIPELINE is the folder paper_ldm.py saved (unet/, vqvae/, scheduler/, and bert/ + tokenizer/
or class_table.safetensors); NOISE a safetensors file whose `noise` tensor [1, c, h, w] is the
standard normal initial latent. DDIM with eta 0 runs through LDMPipeline (unconditional),
LDMSuperResolutionPipeline (with --low-res, an `image` tensor [1, 3, h, w] in [-1, 1]) or
LDMTextToImagePipeline (with --prompt); diffusers has no class-conditional LDM pipeline, so
with --class-label its components run in the same loop, the class table's row as the
context. OUT gets the final `latents` (scaled, as the UNet sees them) and `image`
[1, 3, H, W], the decoded image as floats in [0, 1].
"""

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, LDMPipeline, LDMSuperResolutionPipeline,
                       LDMTextToImagePipeline, UNet2DConditionModel, UNet2DModel, VQModel)
from diffusers.pipelines.deprecated.latent_diffusion_uncond import pipeline_latent_diffusion_uncond
from diffusers.pipelines.latent_diffusion import pipeline_latent_diffusion_superresolution
from safetensors.torch import load_file, save_file

MODELS = {cls.__name__: cls for cls in (AutoencoderKL, VQModel, UNet2DModel, UNet2DConditionModel)}


def load(folder, name):
    """The model saved in folder/name, of the class its config.json names."""
    path = os.path.join(folder, name)
    with open(os.path.join(path, "config.json")) as f:
        cls = MODELS[json.load(f)["_class_name"]]
    return cls.from_pretrained(path, local_files_only=True).eval()


def recording(scheduler):
    """The scheduler, keeping the last step's sample (the final latents)."""
    step = scheduler.step
    last = {}

    def keep(*args, **kwargs):
        out = step(*args, **kwargs)
        last["latents"] = out.prev_sample
        return out

    scheduler.step = keep
    return scheduler, last


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("pipeline")
    parser.add_argument("noise")
    parser.add_argument("out")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--prompt")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--low-res")
    parser.add_argument("--class-label", type=int)
    args = parser.parse_args()
    folder = args.pipeline
    noise = load_file(args.noise)["noise"]
    scheduler, last = recording(DDIMScheduler.from_pretrained(os.path.join(folder, "scheduler")))
    vqvae = load(folder, "vqvae")
    with torch.no_grad():
        if args.prompt is not None:
            from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertModel
            from transformers import BertTokenizerFast

            unet = load(folder, "unet")
            bert = LDMBertModel.from_pretrained(os.path.join(folder, "bert"), local_files_only=True).eval()
            tokenizer = BertTokenizerFast.from_pretrained(os.path.join(folder, "tokenizer"), local_files_only=True)
            pipe = LDMTextToImagePipeline(vqvae=vqvae, bert=bert, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
            # The pipeline sizes latents for f = 8.
            side = noise.shape[-1] * 8
            image = pipe(args.prompt, height=side, width=side, num_inference_steps=args.steps,
                         guidance_scale=args.guidance, eta=0.0, latents=noise, output_type="pt").images
        elif args.class_label is not None:
            unet = load(folder, "unet")
            table = load_file(os.path.join(folder, "class_table.safetensors"))["table"]
            context = table[args.class_label][None, None, :]
            scheduler.set_timesteps(args.steps)
            latents = noise
            for t in scheduler.timesteps:
                eps = unet(latents, t, encoder_hidden_states=context).sample
                latents = scheduler.step(eps, t, latents, eta=0.0).prev_sample
            decoded = vqvae.decode(latents / vqvae.config.scaling_factor).sample
            image = (decoded / 2 + 0.5).clamp(0, 1)
        else:
            # Both pipelines draw their own noise: they are handed the given one instead.
            draw = lambda *a, **k: noise.clone()
            pipeline_latent_diffusion_uncond.randn_tensor = draw
            pipeline_latent_diffusion_superresolution.randn_tensor = draw
            unet = load(folder, "unet")
            if args.low_res is not None:
                low_res = load_file(args.low_res)["image"]
                pipe = LDMSuperResolutionPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler)
                image = pipe(low_res, num_inference_steps=args.steps, eta=0.0, output_type="np").images
            else:
                pipe = LDMPipeline(vqvae=vqvae, unet=unet, scheduler=scheduler)
                image = pipe(num_inference_steps=args.steps, eta=0.0, output_type="np").images
            image = torch.from_numpy(image).permute(0, 3, 1, 2)
    save_file({"latents": last["latents"].contiguous(), "image": image.float().contiguous()}, args.out)


if __name__ == "__main__":
    main()
