"""A checkpoint of one of the paper's models in the reference layout, computed by diffusers.

    python paper_ldm.py CONFIG.yaml PARAMS.json OUT_DIR

CONFIG.yaml is a reference configuration (`LatentDiffusion` with its UNet, first stage and
conditioning stage); PARAMS.json names the tensors of the networks it describes as ldm names
them ({"unet": {name: shape}, "first_stage": {...}, "conditioner": {...}}), which are the
reference's names without their prefixes except where the reference differs: the plain
attention blocks' 1-D convolutions, the class table without the null class, and the text
transformer, which this script writes under x-transformers' names.

Every tensor gets fresh random values; the UNet an EMA copy (`model_ema.*`) too, with the
schedule's `betas` and, under `scale_by_std`, a `scale_factor` buffer. OUT_DIR/model.ckpt is
a Lightning checkpoint holding that state dict beside optimizer, scheduler and callback state,
numpy scalars and a hyper-parameter container; OUT_DIR/callable.ckpt is the same with a
callback whose unpickling would run `os.system` (creating OUT_DIR/payload-ran).

diffusers then builds its own networks from the configuration (its `convert_from_ckpt`
mapping of the reference layout: UNet2DConditionModel, or UNet2DModel with the plain
attention blocks split per head by its `assign_to_checkpoint`; AutoencoderKL or VQModel;
LDMBertModel from `convert_ldm_bert_checkpoint`) and computes each on random inputs, written
as OUT_DIR/reference.safetensors, and saves them in OUT_DIR/pipeline for paper_generate.py.
A text model also gets OUT_DIR/tokenizer.json (a small
WordPiece vocabulary) and OUT_DIR/tokens.json (captions and their ids as BertTokenizerFast
pads them).
"""

import json
import os
import sys
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import yaml
from diffusers import AutoencoderKL, UNet2DConditionModel, UNet2DModel, VQModel
from diffusers.pipelines.latent_diffusion.pipeline_latent_diffusion import LDMBertConfig
from diffusers.pipelines.stable_diffusion import convert_from_ckpt as convert
from safetensors.torch import save_file
from torch import nn

UNET = "model.diffusion_model."
FIRST_STAGE = "first_stage_model."
COND = "cond_stage_model."


def fresh(shape, name, generator):
    noise = torch.randn(shape, generator=generator) * 0.2
    return 1.0 + noise if len(shape) == 1 and name.endswith("weight") else noise


def x_transformer_name(name):
    """An ldm text-encoder name under x-transformers' TransformerWrapper names."""
    fixed = {"token_emb.weight": "token_emb.weight", "pos_emb.weight": "pos_emb.emb.weight",
             "norm.weight": "norm.weight", "norm.bias": "norm.bias"}
    if name in fixed:
        return "transformer." + fixed[name]
    _, block, rest = name.split(".", 2)
    block = int(block)
    for ours, (layer, theirs) in {"attn_norm.": (0, "0."), "ff_norm.": (1, "0."),
                                  "attn.to_out.0.": (0, "1.to_out."), "attn.": (0, "1."),
                                  "ff.0.": (1, "1.net.0.0."), "ff.2.": (1, "1.net.2.")}.items():
        if rest.startswith(ours):
            return f"transformer.attn_layers.layers.{2 * block + layer}.{theirs}{rest[len(ours):]}"
    raise ValueError(name)


class XAttention(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)


class XFeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU()), nn.Dropout(0.0),
                                 nn.Linear(4 * dim, dim))


class XPositions(nn.Module):
    def __init__(self, length, dim):
        super().__init__()
        self.emb = nn.Embedding(length, dim)


class XWrapper(nn.Module):
    """The module tree of the reference's BERTEmbedder (x-transformers' TransformerWrapper),
    which `convert_ldm_bert_checkpoint` reads by attribute."""

    def __init__(self, vocab, length, dim, depth):
        super().__init__()
        self.token_emb = nn.Embedding(vocab, dim)
        self.pos_emb = XPositions(length, dim)
        layers = []
        for _ in range(depth):
            layers.append(nn.ModuleList([nn.LayerNorm(dim), XAttention(dim, 8 * 64)]))
            layers.append(nn.ModuleList([nn.LayerNorm(dim), XFeedForward(dim)]))
        self.attn_layers = nn.Module()
        self.attn_layers.layers = nn.ModuleList(layers)
        self.norm = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, vocab)


def reference_state(params, model, generator):
    # model: the LatentDiffusion's params
    """The state dict of the reference's LatentDiffusion with fresh values, and the UNet's
    EMA values under the trained weights' names."""
    state, ema = {}, {}
    context = model["unet_config"]["params"].get("use_spatial_transformer", False)
    for name, shape in params["unet"].items():
        # The plain attention blocks' projections are 1-D convolutions in the reference.
        if not context and name.endswith((".qkv.weight", ".proj_out.weight")):
            shape = shape[:3]
        state[UNET + name] = fresh(shape, name, generator)
        ema[UNET + name] = fresh(shape, name, generator)
        state["model_ema." + ("diffusion_model." + name).replace(".", "")] = ema[UNET + name]
    for name, shape in params["first_stage"].items():
        state[FIRST_STAGE + name] = fresh(shape, name, generator)
    stage = model["cond_stage_config"]
    target = stage if isinstance(stage, str) else stage["target"]
    for name, shape in params.get("conditioner", {}).items():
        if target.endswith("ClassEmbedder"):
            shape = [shape[0] - 1, shape[1]]  # trained without the null class
            state[COND + name] = fresh(shape, name, generator)
        else:
            state[COND + x_transformer_name(name)] = fresh(shape, name, generator)
    if target.endswith("BERTEmbedder"):
        vocab, dim = params["conditioner"]["token_emb.weight"]
        state[COND + "transformer.to_logits.weight"] = fresh([vocab, dim], "to_logits.weight", generator)
        state[COND + "transformer.to_logits.bias"] = fresh([vocab], "to_logits.bias", generator)
    p = model
    betas = torch.linspace(p["linear_start"] ** 0.5, p["linear_end"] ** 0.5, p["timesteps"], dtype=torch.float64) ** 2
    state["betas"] = betas
    state["alphas_cumprod"] = torch.cumprod(1 - betas, 0)
    state["model_ema.decay"] = torch.tensor(0.9999)
    state["model_ema.num_updates"] = torch.tensor(1000, dtype=torch.int32)
    if p.get("scale_by_std"):
        state["scale_factor"] = torch.tensor(0.75)
    return state, ema


def lightning_dict(state):
    """What a Lightning checkpoint holds beside the state dict."""
    # Lightning itself is not needed: its module path is enough for pickle to name the class.
    for name in ("pytorch_lightning", "pytorch_lightning.utilities", "pytorch_lightning.utilities.parsing"):
        sys.modules.setdefault(name, types.ModuleType(name))
    parsing = sys.modules["pytorch_lightning.utilities.parsing"]

    class AttributeDict(dict):
        pass

    AttributeDict.__module__ = parsing.__name__
    AttributeDict.__qualname__ = "AttributeDict"
    parsing.AttributeDict = AttributeDict
    hyper = AttributeDict(base_learning_rate=2.0e-6, monitor="val/loss_simple_ema", ckpt_path=None)
    return {
        "epoch": 3, "global_step": 1234, "pytorch-lightning_version": "1.4.2", "state_dict": state,
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss_simple_ema', 'mode': 'min'}": {
            "monitor": "val/loss_simple_ema", "best_model_score": torch.tensor(0.25),
            "best_model_path": "logs/epoch=000003.ckpt", "current_score": np.float64(0.25),
            "best_k_models": {"logs/epoch=000003.ckpt": np.float32(0.25)}, "kth_value": np.int64(3)}},
        "optimizer_states": [{"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(4),
                                            "exp_avg_sq": torch.zeros(4)}},
                              "param_groups": [{"lr": 2e-6, "betas": (0.9, 0.999), "eps": 1e-8,
                                                "weight_decay": 0.0, "amsgrad": False, "params": [0]}]}],
        "lr_schedulers": [{"base_lrs": [2e-6], "last_epoch": 3, "_step_count": 4}],
        "hparams_name": "kwargs", "hyper_parameters": hyper,
    }


class Payload:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def plain_unet(p, image_size):
    """UNet2DModel of a reference UNet without cross-attention."""
    blocks, rate = [], 1
    for level in range(len(p["channel_mult"])):
        blocks.append(rate in p["attention_resolutions"])
        rate *= 2 if level + 1 < len(p["channel_mult"]) else 1
    return UNet2DModel(
        sample_size=image_size, in_channels=p["in_channels"], out_channels=p["out_channels"],
        down_block_types=["AttnDownBlock2D" if a else "DownBlock2D" for a in blocks],
        up_block_types=["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(blocks)],
        block_out_channels=[p["model_channels"] * m for m in p["channel_mult"]],
        layers_per_block=p["num_res_blocks"], attention_head_dim=p["num_head_channels"],
        norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
        resnet_time_scale_shift="scale_shift" if p.get("use_scale_shift_norm") else "default")


def split_plain_attention(converted, head_channels):
    """The plain attention blocks under UNet2DModel's names: q, k and v split per head by
    diffusers' own `assign_to_checkpoint`, 1-D convolutions as linear layers."""
    out = {}
    for key, value in converted.items():
        if ".attentions." not in key:
            out[key] = value
            continue
        base, leaf = key.rsplit(".", 2)[0], key.rsplit(".", 1)[1]
        module = key[len(base) + 1:-len(leaf) - 1]
        if module == "qkv":
            paths = {key: {"query": f"{base}.to_q.{leaf}", "key": f"{base}.to_k.{leaf}",
                           "value": f"{base}.to_v.{leaf}"}}
            convert.assign_to_checkpoint([], out, converted, attention_paths_to_split=paths,
                                         config={"num_head_channels": head_channels})
        elif module == "norm":
            out[f"{base}.group_norm.{leaf}"] = value
        elif module == "proj_out":
            out[f"{base}.to_out.0.{leaf}"] = value[:, :, 0] if value.ndim == 3 else value
        else:
            raise ValueError(key)
    return out


def unet_model(original, state, image_size):
    unet_params = dict(original["model"]["params"]["unet_config"]["params"])
    unet_params.setdefault("context_dim", None)
    unet_params.setdefault("transformer_depth", None)
    shaped = {"model": {"params": {**original["model"]["params"],
                                   "unet_config": {"params": unet_params}}}}
    config = convert.create_unet_diffusers_config(shaped, image_size=image_size)
    converted = convert.convert_ldm_unet_checkpoint(state, config)
    if unet_params["context_dim"] is None:
        model = plain_unet(unet_params, image_size)
        converted = split_plain_attention(converted, unet_params["num_head_channels"])
    else:
        model = UNet2DConditionModel(**config)
    model.load_state_dict(converted, strict=True)
    return model.eval()


def level_attention(converted, levels):
    """The first stage's attention inside its levels (the ImageNet LDM-8's VQ-f8 has it),
    which `convert_ldm_vae_checkpoint` passes through unrenamed, under diffusers' names: the
    decoder's levels count from the top in diffusers, from the bottom in the reference."""
    modules = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}
    out = {}
    for key, value in converted.items():
        parts = key.split(".")
        if len(parts) == 7 and parts[1] in ("down", "up") and parts[3] == "attn":
            network, side, level, _, block, module, leaf = parts
            level = int(level) if side == "down" else levels - 1 - int(level)
            key = f"{network}.{side}_blocks.{level}.attentions.{block}.{modules[module]}.{leaf}"
            value = value[:, :, 0, 0] if value.ndim == 4 else value
        out[key] = value
    return out


def first_stage_model(original, state, resolution):
    stage = original["model"]["params"]["first_stage_config"]
    config = convert.create_vae_diffusers_config(original, image_size=resolution)
    converted = convert.convert_ldm_vae_checkpoint(state, config)
    converted = level_attention(converted, len(config["block_out_channels"]))
    if stage["target"].endswith("AutoencoderKL"):
        model = AutoencoderKL(**config)
    else:
        p = stage["params"]
        model = VQModel(**config, num_vq_embeddings=p["n_embed"], vq_embed_dim=p["embed_dim"])
        converted["quantize.embedding.weight"] = state[FIRST_STAGE + "quantize.embedding.weight"]
    model.load_state_dict(converted, strict=True)
    return model.eval()


def bert_model(stage, state):
    p = stage["params"]
    vocab, length = p.get("vocab_size", 30522), p.get("max_seq_len", 77)
    tree = nn.Module()
    tree.transformer = XWrapper(vocab, length, p["n_embed"], p["n_layer"])
    tree.load_state_dict({k[len(COND):]: v for k, v in state.items() if k.startswith(COND)}, strict=True)
    config = LDMBertConfig(d_model=p["n_embed"], encoder_layers=p["n_layer"], encoder_ffn_dim=4 * p["n_embed"],
                           vocab_size=vocab, max_position_embeddings=length)
    return convert.convert_ldm_bert_checkpoint(tree, config).eval(), length


def write_tokenizer(out, length):
    """A small WordPiece vocabulary as BERT's tokenizer.json, and captions' ids as
    BertTokenizerFast pads and cuts them to the model's length."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "apple", "on", "the", "top",
             "left", "blue", "square", "##s", "circle", "green", "big", "small", ",", "."]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    path = os.path.join(out, "tokenizer.json")
    tokenizer.save(path)
    fast = BertTokenizerFast(tokenizer_file=path)
    captions = ["a red apple on the top left", "Big blue squares, small green circles.",
                "an unknown word", "", "a " * 40]
    ids = [fast(c, truncation=True, max_length=length, padding="max_length")["input_ids"] for c in captions]
    fast.save_pretrained(os.path.join(out, "pipeline", "tokenizer"))
    with open(os.path.join(out, "tokens.json"), "w") as f:
        json.dump({"captions": captions, "ids": ids}, f)
    return ids


def main():
    config_path, params_path, out = sys.argv[1:4]
    os.makedirs(out, exist_ok=True)
    with open(config_path) as f:
        original = yaml.safe_load(f)
    with open(params_path) as f:
        params = json.load(f)
    model = original["model"]["params"]
    generator = torch.Generator().manual_seed(3)
    state, ema = reference_state(params, model, generator)
    checkpoint = lightning_dict(state)
    torch.save(checkpoint, os.path.join(out, "model.ckpt"))
    checkpoint["callbacks"]["Payload"] = Payload(os.path.join(out, "payload-ran"))
    torch.save(checkpoint, os.path.join(out, "callable.ckpt"))

    dd = model["first_stage_config"]["params"]["ddconfig"]
    resolution = dd["resolution"]
    factor = 2 ** (len(dd["ch_mult"]) - 1)
    size = resolution // factor
    # The default import samples with the EMA weights.
    unet = unet_model(original, {**state, **ema}, size)
    first_stage = first_stage_model(original, state, resolution)
    unet_params = model["unet_config"]["params"]
    latent = model["first_stage_config"]["params"]["embed_dim"]
    r = {
        "unet_sample": torch.randn(2, latent, size, size, generator=generator),
        "unet_timestep": torch.tensor([3.0, 971.0]),
        "vae_image": torch.rand(1, 3, resolution, resolution, generator=generator) * 2 - 1,
        "vae_latent": torch.randn(1, latent, size, size, generator=generator),
    }
    unet_input = r["unet_sample"]
    extra = {}
    stage = model["cond_stage_config"]
    target = stage if isinstance(stage, str) else stage["target"]
    with torch.no_grad():
        if target.endswith("ClassEmbedder"):
            r["class_labels"] = torch.tensor([3, 7])
            table = state[COND + "embedding.weight"]
            r["class_context"] = table[r["class_labels"]][:, None, :].contiguous()
            extra["encoder_hidden_states"] = r["class_context"]
        elif target.endswith("BERTEmbedder"):
            bert, length = bert_model(stage, state)
            ids = write_tokenizer(out, length)
            bert.save_pretrained(os.path.join(out, "pipeline", "bert"))
            r["text_ids"] = torch.tensor(ids[:2])
            r["text_context"] = bert(r["text_ids"]).last_hidden_state.contiguous()
            extra["encoder_hidden_states"] = r["text_context"]
        elif unet_params["in_channels"] > latent:
            r["unet_concat"] = torch.rand(2, unet_params["in_channels"] - latent, size, size, generator=generator) * 2 - 1
            unet_input = torch.cat([unet_input, r["unet_concat"]], dim=1)
        r["unet_eps"] = unet(unet_input, r["unet_timestep"], **extra).sample
        if isinstance(first_stage, AutoencoderKL):
            posterior = first_stage.encode(r["vae_image"]).latent_dist
            r["vae_encoded"] = torch.cat([posterior.mean, posterior.logvar], dim=1)
        else:
            r["vae_encoded"] = first_stage.encode(r["vae_image"]).latents
        r["vae_decoded"] = first_stage.decode(r["vae_latent"]).sample
    save_file({k: v.float().contiguous() if v.is_floating_point() else v for k, v in r.items()},
              os.path.join(out, "reference.safetensors"))
    save_pipeline(os.path.join(out, "pipeline"), model, state, unet, first_stage)


def save_pipeline(folder, model, state, unet, first_stage):
    """The diffusers networks (and the class table, the BERT model and its tokenizer) as
    paper_generate.py loads them, with the reference's DDIM schedule: its linear betas, the
    leading timesteps offset by one, the last step ending on alpha_bar_0."""
    from diffusers import DDIMScheduler

    scale = float(state["scale_factor"]) if "scale_factor" in state else model.get("scale_factor", 1.0)
    first_stage.register_to_config(scaling_factor=scale)
    unet.save_pretrained(os.path.join(folder, "unet"))
    first_stage.save_pretrained(os.path.join(folder, "vqvae"))
    DDIMScheduler(num_train_timesteps=model["timesteps"], beta_start=model["linear_start"],
                  beta_end=model["linear_end"], beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading"
                  ).save_pretrained(os.path.join(folder, "scheduler"))
    if COND + "embedding.weight" in state:
        save_file({"table": state[COND + "embedding.weight"].contiguous()}, os.path.join(folder, "class_table.safetensors"))


if __name__ == "__main__":
    main()
