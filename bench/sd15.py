"""Stable Diffusion 1.5 at full size (random weights, 1.07 B parameters): `ldm import` to a
bundle, then 512x512 text-to-image on tract and on ONNX Runtime, beside diffusers on PyTorch
on the same weights.

    python bench/sd15.py WORK_DIR [--ldm target/release/ldm] [--steps 5] [--threads 2]

writes WORK_DIR/pipeline (a diffusers folder in f32 written by diffusers itself, nothing
downloaded: SD 1.5's UNet, VAE and CLIP ViT-L/14 text encoder configurations, PyTorch's
default initialisation; a small BPE vocabulary stands in for CLIP's, whose files are not
here), imports it (`ldm import --bundle`: the UNet's weights go to external data and each
engine checks its parity in a child process), and times each engine as whole processes:
load time, time per guided sampling step (batch 2) and peak resident memory (GNU time's
maximum RSS). The results go to WORK_DIR/sd15.json and, as a Markdown table, to stdout.
Takes about half an hour and 12 GB of disk on a 2-core machine.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "a photograph of an astronaut riding a horse"
HERE = os.path.dirname(os.path.abspath(__file__))


def make_pipeline(folder):
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    sys.path.insert(0, os.path.join(HERE, "..", "tests", "reference"))
    from tiny_sd import captions, write_tokenizer

    torch.manual_seed(0)
    tokenizer_dir = folder + "-vocabulary"
    write_tokenizer(tokenizer_dir, captions())
    tokenizer = CLIPTokenizer(os.path.join(tokenizer_dir, "vocab.json"),
                              os.path.join(tokenizer_dir, "merges.txt"), model_max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_hidden_layers=12, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
        layers_per_block=2, latent_channels=4, sample_size=512)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)


def timed(command):
    """Runs `command` under GNU time: (seconds, peak RSS in MB, stderr)."""
    run = subprocess.run(["/usr/bin/time", "-f", "PEAK %M"] + command, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{run.stdout}\n{run.stderr}")
    peak = int(re.findall(r"PEAK (\d+)", run.stderr)[-1]) / 1024
    return run, peak


def ldm_generate(ldm, bundle, backend, args, out):
    started = time.time()
    run, peak = timed([ldm, "generate", PROMPT, "--bundle", bundle, "--backend", backend, "--threads",
                       str(args.threads), "--size", "512", "--steps", str(args.steps), "--guidance", "7.5",
                       "--sampler", "plms", "--out", out])
    total = time.time() - started
    load = float(re.search(r"in ([\d.]+) s\n", run.stderr.split("loaded", 1)[1]).group(1))
    step = float(re.search(r"([\d.]+) s per sampling step", run.stderr).group(1))
    return {"load_s": load, "step_s": step, "total_s": total, "peak_mb": peak}


def diffusers_child(pipeline, steps, threads):
    """In a child process: load, then generate, printing the timings as JSON."""
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(threads)
    started = time.time()
    pipe = StableDiffusionPipeline.from_pretrained(pipeline, local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False)
    load = time.time() - started
    ends = []

    def on_step(pipe, step, timestep, kwargs):
        ends.append(time.time())
        return kwargs

    with torch.no_grad():
        pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.5, height=512, width=512,
             callback_on_step_end=on_step, generator=torch.Generator().manual_seed(0))
    print(json.dumps({"load_s": load, "step_s": (ends[-1] - ends[0]) / (len(ends) - 1)}))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("work")
    parser.add_argument("--ldm", default=os.path.join(HERE, "..", "target", "release", "ldm"))
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--diffusers-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    pipeline = os.path.join(args.work, "pipeline")
    if args.diffusers_child:
        return diffusers_child(pipeline, args.steps, args.threads)

    os.makedirs(args.work, exist_ok=True)
    results = {"steps": args.steps, "threads": args.threads}
    if not os.path.isfile(os.path.join(pipeline, "model_index.json")):
        print("writing the pipeline", file=sys.stderr)
        make_pipeline(pipeline)
    bundle, release = os.path.join(args.work, "bundle"), os.path.join(args.work, "release")
    started = time.time()
    run, peak = timed([args.ldm, "import", pipeline, "--out", release, "--bundle", bundle,
                       "--tokenizer", pipeline + "-vocabulary"])
    results["import"] = {"total_s": time.time() - started, "peak_mb": peak}
    results["parameters_m"] = float(re.search(r"\(([\d.]+) M parameters", run.stdout).group(1))
    print(run.stdout, file=sys.stderr)
    for backend in ("tract", "ort-cpu"):
        print(f"generating on {backend}", file=sys.stderr)
        results[backend] = ldm_generate(args.ldm, bundle, backend, args,
                                        os.path.join(args.work, f"{backend}.png"))
    print("generating with diffusers", file=sys.stderr)
    started = time.time()
    run, peak = timed([sys.executable, os.path.abspath(__file__), args.work, "--steps", str(args.steps),
                       "--threads", str(args.threads), "--diffusers-child"])
    results["diffusers"] = {**json.loads(run.stdout.strip().splitlines()[-1]),
                            "total_s": time.time() - started, "peak_mb": peak}
    with open(os.path.join(args.work, "sd15.json"), "w") as f:
        json.dump(results, f, indent=2)
    base = results["diffusers"]["step_s"]
    print(f"| engine ({args.threads} threads) | load | per guided step (512x512) | vs diffusers | peak memory |")
    print("|---|---|---|---|---|")
    for name, key in (("tract", "tract"), ("ONNX Runtime (CPU)", "ort-cpu"), ("diffusers on PyTorch", "diffusers")):
        r = results[key]
        print(f"| {name} | {r['load_s']:.1f} s | {r['step_s']:.2f} s | {base / r['step_s']:.2f}x "
              f"| {r['peak_mb'] / 1024:.1f} GB |")
    print(f"\n{results['parameters_m']:.0f} M parameters; import + export + parity: "
          f"{results['import']['total_s']:.0f} s, "
          f"peak {results['import']['peak_mb'] / 1024:.1f} GB")


if __name__ == "__main__":
    main()
