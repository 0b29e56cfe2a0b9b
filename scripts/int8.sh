#!/usr/bin/env bash
# int8 against f32 on the shipped emoji model: exports its UNet in int8 (calibrated on the
# sampling trajectories of models/emoji-text.calibration.txt, 64 training captions), then
# benchmarks and evaluates both bundles with the same settings, back to back, and writes the
# comparison (speed ratios, KID, category accuracy, PSNR of the int8 samples against the f32
# samples of the same seeds).
#
#   bash scripts/int8.sh        OUT=eval/int8 SAMPLES=128 RUNS=10
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
out=${OUT:-eval/int8}
samples=${SAMPLES:-128}
runs=${RUNS:-10}
bash scripts/setup.sh
cargo build --release --features train
ldm=target/release/ldm
[ -f data/emoji/validation/metadata.jsonl ] || "$ldm" data emoji --out data/emoji

mkdir -p "$out"
"$ldm" export --run models/emoji-text --out "$out/emoji-text-int8" --fp16-weights \
    --int8-unet models/emoji-text.calibration.txt
for bundle in export/emoji-text "$out/emoji-text-int8"; do
    name=$(basename "$bundle")
    "$ldm" bench --bundle "$bundle" --runs "$runs" --out "$out/bench-$name"
    "$ldm" eval --bundle "$bundle" --data data/emoji/validation \
        --evaluator models/emoji-evaluator --samples "$samples" --out "$out/$name"
done
"$ldm" compare "$out/emoji-text" "$out/emoji-text-int8" --out "$out/compare"
.venv/bin/python - "$out" <<'EOF'
import json, sys
import numpy as np
from PIL import Image
out = sys.argv[1]
a = np.asarray(Image.open(f"{out}/emoji-text/samples.png"), dtype=np.float64)
b = np.asarray(Image.open(f"{out}/emoji-text-int8/samples.png"), dtype=np.float64)
# samples.png: the first 64 images, 64x64, 8 a row, 2 pixels apart.
mse = [((a[y:y + 64, x:x + 64] - b[y:y + 64, x:x + 64]) ** 2).mean()
       for y in range(2, a.shape[0] - 1, 66) for x in range(2, a.shape[1] - 1, 66)]
psnr = 10 * np.log10(255 ** 2 / np.maximum(mse, 1e-12))
print(f"int8 samples against f32 at the same seeds ({len(mse)} images): PSNR median "
      f"{np.median(psnr):.1f} dB, lowest {psnr.min():.1f} dB, pooled {10 * np.log10(255 ** 2 / np.mean(mse)):.1f} dB")
def rows(name):
    report = json.load(open(f"{out}/bench-{name}/bench.json"))
    return {(r["target"], r["engine"], r["threads"]): r for r in report["rows"] if r["median_ms"]}
f32, int8 = rows("emoji-text"), rows("emoji-text-int8")
print(f"{'graph':<14} {'engine':<10} {'threads':>7} {'f32 ms':>9} {'int8 ms':>9} {'int8/f32':>9} {'f32 MB':>7} {'int8 MB':>7}")
for key in sorted(set(f32) & set(int8)):
    if key[0] not in ("unet", "text-to-image") or key[1] == "tch-eager":
        continue
    x, y = f32[key], int8[key]
    print(f"{key[0]:<14} {key[1]:<10} {key[2]:>7} {x['median_ms']:>9.2f} {y['median_ms']:>9.2f} "
          f"{y['median_ms'] / x['median_ms']:>8.2f}x {x['peak_rss_mb']:>7.0f} {y['peak_rss_mb']:>7.0f}")
EOF
