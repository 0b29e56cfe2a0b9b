#!/usr/bin/env bash
# The compression trade-off study (paper Sec. 4.1, Fig. 6/7, Table 6) at small scale: first
# stages with f in {2, 4, 8, 16} on emoji (f = 1 diffuses on pixels), then one class-conditional
# latent diffusion model per f from models/tradeoff-f*.toml with the same training budget: equal
# steps and batch size, UNets within 15 % of each other in parameters. Every run resumes where it
# stopped; finished steps are skipped.
#
#   bash scripts/tradeoff.sh [train|evaluate|report|all]    (default: all)
#
# Environment: RUNS (run folders, default runs/tradeoff), OUT (eval/tradeoff), AE_STEPS (600),
# LDM_STEPS (1000), SAMPLES (384 held-out rows per eval), FACTORS ("1 2 4 8 16"),
# LDM (an ldm binary built with --features train,ort; built here when unset).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
phase=${1:-all}
case $phase in
    train | evaluate | report | all) ;;
    *) echo "unknown phase '$phase': train, evaluate, report or all" >&2; exit 2 ;;
esac
runs=${RUNS:-runs/tradeoff}
out=${OUT:-eval/tradeoff}
ae_steps=${AE_STEPS:-600}
ldm_steps=${LDM_STEPS:-1000}
samples=${SAMPLES:-384}
factors=${FACTORS:-"1 2 4 8 16"}
data=data/emoji/train
validation=data/emoji/validation
if [ -z "${LDM:-}" ]; then
    bash scripts/setup.sh
    cargo build --release --features train,ort -p ldm-cli
    LDM=target/release/ldm
fi

[ -f "$data/metadata.jsonl" ] || "$LDM" data emoji --out data/emoji

finished() { [ -d "$1/checkpoints/step-$(printf %08d "$2")" ]; }

# train KIND RUN STEPS ARGS...: a fresh run, or the rest of an interrupted one.
train() {
    local kind=$1 run=$2 steps=$3
    shift 3
    if finished "$run" "$steps"; then
        echo "$run: done"
    elif [ -d "$run/checkpoints" ]; then
        "$LDM" train "$kind" --out "$run" --resume --steps "$steps" --data "$data" "$@"
    else
        "$LDM" train "$kind" --out "$run" --steps "$steps" --data "$data" \
            --config "models/tradeoff-f$f.toml" "$@"
    fi
}

train_all() {
    for f in $factors; do
        if [ "$f" != 1 ]; then
            train autoencoder "$runs/ae-f$f" "$ae_steps" --disc-start $((ae_steps * 2 / 3)) \
                --checkpoint-every 200 --sample-every "$ae_steps"
        fi
    done
    for f in $factors; do
        local first_stage=()
        [ "$f" != 1 ] && first_stage=(--autoencoder "$runs/ae-f$f")
        train diffusion "$runs/ldm-f$f" "$ldm_steps" "${first_stage[@]}" --warmup 100 \
            --checkpoint-every 250 --sample-every "$ldm_steps"
    done
}

evaluate_all() {
    for f in $factors; do
        "$LDM" train release --run "$runs/ldm-f$f" --out "$runs/release-f$f"
        "$LDM" export --run "$runs/release-f$f" --out "$runs/bundle-f$f"
        "$LDM" eval --bundle "$runs/bundle-f$f" --run "$runs/ldm-f$f" --data "$validation" \
            --evaluator models/emoji-evaluator --samples "$samples" --backend ort-cpu \
            --out "$out/LDM-$f"
    done
}

report() {
    local dirs=()
    for f in $factors; do dirs+=("$out/LDM-$f"); done
    "$LDM" compare --out "$out" "${dirs[@]}"
}

case $phase in
    train) train_all ;;
    evaluate) evaluate_all ;;
    report) report ;;
    all) train_all && evaluate_all && report ;;
esac
