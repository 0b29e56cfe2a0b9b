"""A single-file checkpoint in the reference layout, read back by diffusers' own loader.

    python single_file.py RELEASE PIPELINE REFERENCE OUT_DIR [clip|open_clip]

takes the tensor names and shapes of an ldm release of the tiny pipeline (RELEASE, whose
networks use the reference names), gives every tensor fresh random values under the reference
prefixes (`model.diffusion_model.`, `first_stage_model.`,
`cond_stage_model.transformer.text_model.`) with an EMA copy of the UNet (`model_ema.*`, names
without dots) and the schedule's `betas`, and writes it as OUT_DIR/model.safetensors and as a
Lightning-shaped OUT_DIR/model.ckpt. diffusers' `from_single_file` then loads it with the
PIPELINE folder's configuration (its own mapping of the reference names, not ours) and computes
every network on the inputs of REFERENCE, written as OUT_DIR/reference.safetensors; the EMA
copy under the trained weights' names is OUT_DIR/ema_unet.safetensors. With `open_clip` the
text encoder is written in OpenCLIP's layout under `cond_stage_model.model.` (2.x).

A separate first stage, as people share them, goes to OUT_DIR/vae.ckpt: the autoencoder's
Lightning checkpoint with fresh values under the reference names without a prefix, its loss's
tensors beside them; diffusers' `AutoencoderKL.from_single_file` computes it on REFERENCE's
inputs into OUT_DIR/vae_reference.safetensors (vae_moments, vae_decoded).
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import AutoencoderKL, StableDiffusionInpaintPipeline, StableDiffusionPipeline
from safetensors.torch import load_file, save_file

PREFIXES = {
    "unet.safetensors": "model.diffusion_model.",
    "autoencoder.safetensors": "first_stage_model.",
    "text_encoder.safetensors": "cond_stage_model.transformer.text_model.",
}


def fresh(t, name, generator):
    noise = torch.randn(t.shape, generator=generator) * 0.2
    return 1.0 + noise if t.ndim == 1 and name.endswith("weight") else noise


def open_clip(text, generator):
    """CLIP-named text encoder weights under OpenCLIP's names (Stable Diffusion 2.x's files):
    fused attention projections, and one more block after the last, which 2.x never uses (it
    conditions on the penultimate layer's output)."""
    layers = 1 + max(int(k.split(".")[2]) for k in text if k.startswith("encoder.layers."))
    out = {
        "token_embedding.weight": text["embeddings.token_embedding.weight"],
        "positional_embedding": text["embeddings.position_embedding.weight"],
        "ln_final.weight": text["final_layer_norm.weight"],
        "ln_final.bias": text["final_layer_norm.bias"],
    }
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "self_attn.out_proj": "attn.out_proj",
             "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
    for i in range(layers + 1):
        source = f"encoder.layers.{min(i, layers - 1)}."
        block = {k[len(source):]: v for k, v in text.items() if k.startswith(source)}
        if i == layers:
            block = {k: fresh(v, k, generator) for k, v in block.items()}
        for leaf in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(
                [block[f"self_attn.{p}_proj.{leaf}"] for p in "qkv"])
            for ours, theirs in names.items():
                out[f"transformer.resblocks.{i}.{theirs}.{leaf}"] = block[f"{ours}.{leaf}"]
    return out


def write_vae(state, pipeline, reference, out, generator):
    prefix = PREFIXES["autoencoder.safetensors"]
    vae = {k[len(prefix):]: fresh(v, k, generator) for k, v in state.items() if k.startswith(prefix)}
    loss = {"loss.logvar": torch.zeros(()), "loss.discriminator.main.0.weight": torch.randn(8, 3, 4, 4),
            "loss.perceptual_loss.lin0.model.1.weight": torch.randn(1, 8, 1, 1)}
    path = os.path.join(out, "vae.ckpt")
    torch.save({"state_dict": {**vae, **loss}, "global_step": 840000}, path)
    model = AutoencoderKL.from_single_file(path, config=pipeline, subfolder="vae", local_files_only=True)
    r = load_file(reference)
    with torch.no_grad():
        posterior = model.encode(r["vae_image"]).latent_dist
        moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
        decoded = model.decode(r["vae_latent"]).sample
    save_file({"vae_image": r["vae_image"], "vae_moments": moments.contiguous(), "vae_latent": r["vae_latent"],
               "vae_decoded": decoded.contiguous()}, os.path.join(out, "vae_reference.safetensors"))


def main():
    release, pipeline, reference, out = sys.argv[1:5]
    layout = sys.argv[5] if len(sys.argv) > 5 else "clip"
    os.makedirs(out, exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    state = {}
    ema = {}
    for file, prefix in PREFIXES.items():
        for name, t in sorted(load_file(os.path.join(release, file)).items()):
            state[prefix + name] = fresh(t.float(), name, generator)
            if file == "unet.safetensors":
                ema[name] = fresh(t.float(), name, generator)
    if layout == "open_clip":
        prefix = PREFIXES["text_encoder.safetensors"]
        text = {k[len(prefix):]: state.pop(k) for k in list(state) if k.startswith(prefix)}
        for k, v in open_clip(text, generator).items():
            state["cond_stage_model.model." + k] = v
    for name, t in ema.items():
        state["model_ema." + ("diffusion_model." + name).replace(".", "")] = t
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    state["betas"] = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    save_file(state, os.path.join(out, "model.safetensors"))
    save_file(ema, os.path.join(out, "ema_unet.safetensors"))
    torch.save({"state_dict": state, "global_step": 1000, "epoch": 2,
                "pytorch-lightning_version": "1.4.2", "optimizer_states": [], "lr_schedulers": []},
               os.path.join(out, "model.ckpt"))

    write_vae(state, pipeline, reference, out, generator)
    r = load_file(reference)
    concat = r.get("unet_concat")
    pipeline_class = StableDiffusionPipeline if concat is None else StableDiffusionInpaintPipeline
    pipe = pipeline_class.from_single_file(
        os.path.join(out, "model.safetensors"), config=pipeline, local_files_only=True,
        safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        context = pipe.text_encoder(r["text_ids"]).last_hidden_state
        unet_input = r["unet_sample"] if concat is None else torch.cat([r["unet_sample"], concat], dim=1)
        eps = pipe.unet(unet_input, r["unet_timestep"], encoder_hidden_states=context).sample
        posterior = pipe.vae.encode(r["vae_image"]).latent_dist
        moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
        decoded = pipe.vae.decode(r["vae_latent"]).sample
    tensors = {
        "text_ids": r["text_ids"], "text_context": context.contiguous(),
        "unet_sample": r["unet_sample"], "unet_timestep": r["unet_timestep"],
        "unet_context": context.clone(), "unet_eps": eps.contiguous(),
        "vae_image": r["vae_image"], "vae_moments": moments.contiguous(),
        "vae_latent": r["vae_latent"], "vae_decoded": decoded.contiguous(),
    }
    if concat is not None:
        tensors["unet_concat"] = concat
    save_file(tensors, os.path.join(out, "reference.safetensors"))


if __name__ == "__main__":
    main()
