"""Tiny random Stable Diffusion pipelines, written by the reference software itself.

    python tiny_sd.py OUT_DIR [--variant sd1|sd2|inpaint]

writes, with nothing downloaded:
  OUT_DIR/pipeline/          a diffusers folder (StableDiffusionPipeline.save_pretrained)
  OUT_DIR/reference.safetensors  inputs and outputs of every network, computed by diffusers and
                             transformers in float32: text_ids/text_context,
                             unet_sample/unet_timestep/unet_context/unet_eps,
                             vae_image/vae_moments, vae_latent/vae_decoded
  OUT_DIR/tokens.json        captions and the ids transformers' CLIPTokenizer gives them
  OUT_DIR/tokenizer/         the tokenizer's vocab.json and merges.txt

sd1: CLIP text encoder with quick-GELU, convolutional transformer projections, one head
count for every level, eps-prediction; sd2: GELU, linear projections, per-level head counts of
one width, v-prediction (as the 768-v models), and the timestep embedding scaling and
shifting the ResBlocks' second norm (`resnet_time_scale_shift`, the reference's
`use_scale_shift_norm`, which the paper's own LDMs use); inpaint: sd1 with a 9-channel UNet (latent,
mask, masked-image latent) in a StableDiffusionInpaintPipeline, whose reference also holds
`unet_concat` (the mask and masked-image latent given beside `unet_sample`).
"""

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline,
                       UNet2DConditionModel)
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
WORDS = ("a red apple green circle blue square on the top left of large small tiny star "
         "two three cats dog sitting under tree it's they're we've photo painting").split()


def byte_alphabet():
    """GPT-2's reversible map of the 256 byte values to printable characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def captions():
    """A few hundred captions: plain, punctuated, unicode, spaced oddly, over-long."""
    out = []
    for i in range(240):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(1 + i % 9)]
        text = " ".join(words)
        if i % 5 == 1:
            text = text.upper() + "!"
        if i % 7 == 2:
            text = text.replace(" ", "   \t", 1) + ", 1234 apples."
        if i % 11 == 3:
            text += " café naïve 東京 🍎 — «quoted»"
        if i % 13 == 4:
            text = " ".join([text] * 30)
        out.append(text)
    out += ["", " ", "it's a dog's life", "3.14159", "a\nnew line", "ÆØÅ åäö ß", "<|endoftext|> inside"]
    return out


def write_tokenizer(folder, corpus):
    """A CLIP-format vocabulary: bytes, bytes ending a word, merges learned on the corpus."""
    from collections import Counter

    alphabet = byte_alphabet()
    vocab = alphabet + [c + "</w>" for c in alphabet]
    enc = {b: alphabet[b] for b in range(256)}
    words = Counter()
    for text in corpus:
        for w in text.lower().split():
            symbols = [enc[b] for b in w.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    merges = []
    for _ in range(200):
        pairs = Counter()
        for w, n in words.items():
            for a, b in zip(w, w[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        vocab.append(a + b)
        merged = Counter()
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    vocab += [BOS, EOS]
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return len(vocab)


def randomise(module, generator):
    """Every parameter random (diffusers starts some at zero), norms' scales near one."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * 0.2
            is_norm_scale = p.ndim == 1 and name.endswith("weight") and "norm" in name
            p.copy_(1.0 + noise if is_norm_scale else noise)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--variant", choices=["sd1", "sd2", "inpaint"], default="sd1")
    args = parser.parse_args()
    sd2 = args.variant == "sd2"
    inpaint = args.variant == "inpaint"
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    corpus = captions()
    tokenizer_dir = os.path.join(args.out, "tokenizer")
    vocab_size = write_tokenizer(tokenizer_dir, corpus)
    pad = "!" if sd2 else EOS
    tokenizer = CLIPTokenizer(os.path.join(tokenizer_dir, "vocab.json"), os.path.join(tokenizer_dir, "merges.txt"),
                              pad_token=pad, model_max_length=77)
    width = 32
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=width, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=9 if inpaint else 4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, norm_num_groups=32,
        attention_head_dim=(2, 4) if sd2 else 2, use_linear_projection=sd2,
        resnet_time_scale_shift="scale_shift" if sd2 else "default")
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(32, 64), layers_per_block=1,
        latent_channels=4, norm_num_groups=32, sample_size=16)
    for m in (text_encoder, unet, vae):
        randomise(m, generator)
        m.eval()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if sd2 else "epsilon")
    pipeline_class = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = pipeline_class(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(os.path.join(args.out, "pipeline"), safe_serialization=True)

    tokens = tokenizer(corpus, padding="max_length", max_length=77, truncation=True).input_ids
    with open(os.path.join(args.out, "tokens.json"), "w", encoding="utf-8") as f:
        json.dump({"captions": corpus, "ids": tokens}, f, ensure_ascii=False)

    with torch.no_grad():
        ids = torch.tensor(tokens[:2], dtype=torch.int64)
        context = text_encoder(ids).last_hidden_state
        sample = torch.randn(2, 4, 8, 8, generator=generator)
        timestep = torch.tensor([999.0, 37.0])
        concat = torch.randn(2, 5, 8, 8, generator=generator) if inpaint else None
        unet_input = sample if concat is None else torch.cat([sample, concat], dim=1)
        eps = unet(unet_input, timestep, encoder_hidden_states=context).sample
        image = torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1
        posterior = vae.encode(image).latent_dist
        moments = torch.cat([posterior.mean, posterior.logvar], dim=1)
        latent = torch.randn(1, 4, 8, 8, generator=generator)
        decoded = vae.decode(latent).sample
    tensors = {
        "text_ids": ids, "text_context": context.contiguous(),
        "unet_sample": sample, "unet_timestep": timestep, "unet_context": context.clone(),
        "unet_eps": eps.contiguous(), "vae_image": image, "vae_moments": moments.contiguous(),
        "vae_latent": latent, "vae_decoded": decoded.contiguous(),
    }
    if concat is not None:
        tensors["unet_concat"] = concat
    save_file(tensors, os.path.join(args.out, "reference.safetensors"))


if __name__ == "__main__":
    main()
