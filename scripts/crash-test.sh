#!/usr/bin/env bash
# Crash safety under SIGKILL: kills `ldm train autoencoder`, `ldm train diffusion`,
# `ldm train release` and `ldm export` at random moments, KILLS times each (default 20), every
# other kill the moment a write or rename is under way (a staging folder or temporary file is
# on disk), and after each checks that what is on disk is the previous complete state or the
# new complete one, never a mix: a training run's latest checkpoint loads and resumes; a
# release or bundle folder is absent or byte-identical to one of the two complete versions it
# alternates between. Each training run is resumed after every kill until it completes, and
# its final weights must be bit-identical to an uninterrupted run's (CPU).
#
#   scripts/crash-test.sh [KILLS]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
kills=${1:-20}
bash scripts/setup.sh >/dev/null
cargo build --quiet --workspace --all-features
ldm="${CARGO_TARGET_DIR:-$root/target}/debug/ldm"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
config=models/tiny-text.toml
"$ldm" data shapes --out "$work/data" --count 64 --size 16 --seed 0 >/dev/null
common=(--config "$config" --data "$work/data/train" --batch-size 4 --checkpoint-every 2
  --log-every 2 --sample-every 6 --quiet)
ae_args=(train autoencoder "${common[@]}" --disc-start 8 --disc-layers 2)
ldm_args=(train diffusion "${common[@]}" --autoencoder "$work/ref-ae" --sample-steps 2)

fail() { echo "crash-test.sh: $*" >&2; exit 1; }
# Whether anything half-written lies in folder $1 (staging folders, temporary files).
partial_in() { compgen -G "$1/.*partial-*" >/dev/null || compgen -G "$1/*.tmp" >/dev/null; }

# References, uninterrupted: two first stages' worth of training, two releases, two bundles.
"$ldm" "${ae_args[@]}" --steps 24 --out "$work/ref-ae" >/dev/null
# WordPiece training breaks ties between equally frequent merges in hash-map order, so two
# trainings on the same captions may learn different vocabularies: every run here shares the
# first one's tokenizer (a resumed run always reuses its own).
"$ldm" "${ldm_args[@]}" --steps 12 --out "$work/ref-ldm" >/dev/null
ldm_args+=(--tokenizer "$work/ref-ldm/tokenizer.json")
"$ldm" "${ldm_args[@]}" --steps 10 --out "$work/ref-ldm-short" >/dev/null
# A bundle is named after its folder: the references carry the name the killed runs write.
for r in ref-ldm ref-ldm-short; do
  "$ldm" train release --run "$work/$r" --out "$work/$r-release" >/dev/null
  "$ldm" export --run "$work/$r-release" --out "$work/$r-bundle/export-out" >/dev/null
done

# Kills the command "$@" (run in the background) after a random delay, or, when $watch is a
# folder, as soon as something half-written appears in it. Sets $during when the kill left a
# half-written file behind, i.e. it landed during a write or rename.
kill_one() {
  local watch=$1 delay=$2; shift 2
  "$@" >/dev/null 2>&1 &
  local pid=$!
  if [ -n "$watch" ]; then
    local deadline=$((SECONDS + 60))
    until partial_in "$watch" || ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -gt $deadline ]; do :; done
  else
    sleep "$delay"
  fi
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  during=0
  if partial_in "$probe"; then during=1; fi
  # Leftovers of the killed write, so that the next kill's watch sees only its own.
  rm -rf "$probe"/.*partial-* "$probe"/*.tmp
}
random_delay() { awk -v r=$RANDOM -v m="$1" 'BEGIN { printf "%.2f", r / 32768 * m }'; }

# Training: kill, check the latest checkpoint resumes, repeat; the finished run must match.
train_under_kills() {
  local name=$1 ref=$2 max_delay=$3 total=$4; shift 4
  local run="$work/$name" done_kills=0 at_write=0 runs=0
  while [ $done_kills -lt "$kills" ]; do
    rm -rf "$run"; runs=$((runs + 1))
    while [ $done_kills -lt "$kills" ]; do
      local resume=(); [ -e "$run/checkpoints/latest" ] && resume=(--resume)
      probe="$run/checkpoints"
      if [ $((done_kills % 2)) -eq 0 ]; then watch="$run/checkpoints"; else watch=""; fi
      kill_one "$watch" "$(random_delay "$max_delay")" \
        "$ldm" "$@" --steps "$total" --out "$run" "${resume[@]}"
      done_kills=$((done_kills + 1)); at_write=$((at_write + during))
      if [ -e "$run/checkpoints/latest" ]; then
        local latest; latest=$(cat "$run/checkpoints/latest")
        [ -f "$run/checkpoints/$latest/state.json" ] || fail "$name: latest names $latest, which is incomplete"
      fi
      # The latest checkpoint loads: resuming with its own step count trains nothing.
      if [ -e "$run/checkpoints/latest" ]; then
        local step; step=$(sed 's/step-0*//' "$run/checkpoints/latest"); step=${step:-0}
        "$ldm" "$@" --out "$run" --resume --steps "$step" >/dev/null \
          || fail "$name: the latest checkpoint after kill $done_kills does not resume"
      fi
      if [ "$(cat "$run/checkpoints/latest" 2>/dev/null)" = "$(printf 'step-%08d' "$total")" ]; then break; fi
    done
    # Finish the run and compare its final weights with the uninterrupted one's.
    local resume=(); [ -e "$run/checkpoints/latest" ] && resume=(--resume)
    "$ldm" "$@" --steps "$total" --out "$run" "${resume[@]}" >/dev/null
    local final ref_final
    final="$run/checkpoints/$(cat "$run/checkpoints/latest")"
    ref_final="$ref/checkpoints/$(cat "$ref/checkpoints/latest")"
    for weights in "$ref_final"/*.safetensors; do
      cmp -s "$weights" "$final/$(basename "$weights")" \
        || fail "$name: $(basename "$weights") after kills differs from the uninterrupted run's"
    done
  done
  echo "$name: $done_kills kills ($at_write during a write or rename) over $runs runs; every latest checkpoint resumed; final weights bit-identical to an uninterrupted run"
}

# Folders written whole: kill, check the destination is absent or one complete version.
folder_under_kills() {
  local name=$1 max_delay=$2 out="$work/$1-out" done_kills=0 at_write=0; shift 2
  while [ $done_kills -lt "$kills" ]; do
    local version=$((done_kills % 2))
    probe="$work"
    if [ $((done_kills % 4)) -lt 2 ]; then watch="$work"; else watch=""; fi
    kill_one "$watch" "$(random_delay "$max_delay")" \
      "$@" "$version" "$out"
    done_kills=$((done_kills + 1)); at_write=$((at_write + during))
    if [ -e "$out" ]; then
      diff -rq "$out" "$(reference "$name" 0)" >/dev/null 2>&1 \
        || diff -rq "$out" "$(reference "$name" 1)" >/dev/null 2>&1 \
        || fail "$name: after kill $done_kills, $out is neither complete version"
    fi
  done
  echo "$name: $done_kills kills ($at_write during a write or rename); the folder was always absent or one complete version"
}
reference() { case "$1:$2" in
  release:0) echo "$work/ref-ldm-release" ;; release:1) echo "$work/ref-ldm-short-release" ;;
  export:0) echo "$work/ref-ldm-bundle/export-out" ;;
  export:1) echo "$work/ref-ldm-short-bundle/export-out" ;; esac; }
# exec: the background job is the ldm process itself, which the kill must reach.
release_version() { local runs=(ref-ldm ref-ldm-short); exec "$ldm" train release --run "$work/${runs[$1]}" --out "$2"; }
export_version() { local releases=(ref-ldm-release ref-ldm-short-release); exec "$ldm" export --run "$work/${releases[$1]}" --out "$2"; }

train_under_kills autoencoder "$work/ref-ae" 3 24 "${ae_args[@]}"
train_under_kills diffusion "$work/ref-ldm" 5 12 "${ldm_args[@]}"
folder_under_kills release 2 release_version
folder_under_kills export 4 export_version
