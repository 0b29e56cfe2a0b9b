#!/usr/bin/env bash
# Installs the engines the project builds against, into a project virtualenv:
#   torch==2.13.0        the libtorch that tch 0.26 links (training, export, reference outputs)
#   onnxruntime==1.31.1  the shared library that `ort` loads at run time (load-dynamic)
#   onnx                 the reference checker used by the export tests
#   diffusers, transformers  the reference software that writes and runs the checkpoints the
#                        import tests read (offline: tiny random models, nothing downloaded)
#   openai, webuiapi     clients of the OpenAI and AUTOMATIC1111 APIs, which the server tests
#                        talk to `ldm serve` with
#   playwright           drives the server's web page in Debian's chromium (installed with
#                        apt-get when missing; playwright downloads no browser)
#   schemathesis         checks the server against its /openapi.json
#   maturin, pytest      build the Python package's wheel (crates/ldm-python) and test it
#   ray[serve]           the cluster its Ray Serve deployment is tested on
# and, from Debian's packages when missing, valgrind (the C example's memory check)
# and links them under .ldm/ where .cargo/config.toml points cargo, so plain
# `cargo build` / `cargo test` work afterwards. Idempotent: a second run takes a second.
#
#   scripts/setup.sh [--gpu|--cpu]     --gpu installs onnxruntime-gpu (CUDA, TensorRT)
#   LDM_VENV=DIR scripts/setup.sh      put the virtualenv elsewhere (CI caches it)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LDM_VENV:-$root/.venv}
torch_version=2.13.0
ort_version=1.31.1
onnx_version=1.23.2
diffusers_version=0.42.1
transformers_version=5.23.0
openai_version=3.51.0
webuiapi_version=0.9.17
playwright_version=1.65.2
schemathesis_version=4.32.5
maturin_version=1.16.0
pytest_version=9.2.0
ray_version=2.60.0

flavour=cpu
case "${1:-auto}" in
  --gpu) flavour=gpu ;;
  --cpu) flavour=cpu ;;
  auto) command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && flavour=gpu ;;
  *) echo "setup.sh: unknown option '$1' (expected --gpu or --cpu)" >&2; exit 2 ;;
esac
ort_package=onnxruntime
[ "$flavour" = gpu ] && ort_package=onnxruntime-gpu

stamp="$venv/.ldm-setup-torch$torch_version-$ort_package$ort_version-onnx$onnx_version-diffusers$diffusers_version-transformers$transformers_version-openai$openai_version-webuiapi$webuiapi_version-playwright$playwright_version-schemathesis$schemathesis_version-maturin$maturin_version-pytest$pytest_version-ray$ray_version"
if [ ! -f "$stamp" ]; then
  command -v python3 >/dev/null || { echo "setup.sh: python3 is missing; install it (apt-get install python3 python3-venv)" >&2; exit 1; }
  echo "setup.sh: creating $venv (torch $torch_version, $ort_package $ort_version, onnx $onnx_version, diffusers $diffusers_version, transformers $transformers_version; about 5 GB, a few minutes)"
  python3 -m venv "$venv" || { echo "setup.sh: python3 cannot create a virtualenv; install venv support (apt-get install python3-venv) and run again" >&2; rm -rf "$venv"; exit 1; }
  "$venv/bin/pip" install --quiet --upgrade pip
  # onnxruntime and onnxruntime-gpu install the same module: keep exactly one.
  other=onnxruntime-gpu; [ "$ort_package" = onnxruntime-gpu ] && other=onnxruntime
  "$venv/bin/pip" uninstall --quiet --yes "$other" >/dev/null 2>&1 || true
  "$venv/bin/pip" install --quiet "torch==$torch_version" "$ort_package==$ort_version" "onnx==$onnx_version" numpy \
    "diffusers==$diffusers_version" "transformers==$transformers_version" "openai==$openai_version" \
    "webuiapi==$webuiapi_version" "playwright==$playwright_version" "schemathesis==$schemathesis_version" \
    "maturin==$maturin_version" "pytest==$pytest_version" "ray[serve]==$ray_version" pillow
  rm -f "$venv"/.ldm-setup-*
  touch "$stamp"
fi

py="$venv/bin/python"
torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))')
ort_lib=$("$py" -c 'import glob, os, onnxruntime as o; c = sorted(glob.glob(os.path.join(os.path.dirname(o.__file__), "capi", "libonnxruntime.so.*"))); print(c[-1] if c else "")')
[ -n "$ort_lib" ] || { echo "setup.sh: the $ort_package wheel has no capi/libonnxruntime.so.*; reinstall it: rm -rf $venv && scripts/setup.sh" >&2; exit 1; }

# Debian packages the tests need: the browser of the web page test, valgrind for the C example.
apt_install() {
  local command=$1 package=$2 why=$3
  command -v "$command" >/dev/null && return
  command -v apt-get >/dev/null || { echo "setup.sh: $command is missing and there is no apt-get to install it; install $package" >&2; exit 1; }
  local sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "setup.sh: installing $package (apt-get) for $why"
  $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null 2>&1 \
    || { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null; } \
    || { echo "setup.sh: apt-get could not install $package" >&2; exit 1; }
}
apt_install chromium chromium "the web page test"
apt_install valgrind valgrind "the C example's memory check"

# .cargo/config.toml reads these fixed, relative paths; only the links move.
mkdir -p "$root/.ldm"
ln -sfn "$torch_dir" "$root/.ldm/libtorch"
ln -sfn "$ort_lib" "$root/.ldm/libonnxruntime.so"
ln -sfn "$venv" "$root/.ldm/venv"
ln -sfn "$(command -v chromium)" "$root/.ldm/chromium"
echo "setup.sh: ready (libtorch: $torch_dir; onnxruntime: $ort_lib)"
