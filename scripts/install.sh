#!/usr/bin/env bash
# The one install step of recstack: tests/run.sh (CI), Dockerfile.gpu and the README's install
# line all come down to the pip commands below (tests/test_dockerfile.py checks that they agree).
#
#   scripts/install.sh [--editable] [--extras LIST] [--gpu] [--quiet] [--dry-run] VENV
#
# Creates the virtual environment VENV with $PYTHON (default python3.11) unless it exists, then
# installs this checkout into it with torch pinned by constraints.txt (torch==2.13.0: the CPU
# build where the index or a local wheel dir offers one, else PyPI's default Linux x86_64 wheel,
# which is the CUDA 13 build).
#   --editable  pip install -e (a development checkout); default: a regular install (the image)
#   --extras    pyproject extras, comma-separated: dev (tests, ruff, hadolint), postgres
#   --gpu       replace onnxruntime (CPU) by onnxruntime-gpu, then check that torch is a CUDA
#               build and onnxruntime has the CUDA provider (no GPU needed for the check)
#   --quiet     pip -q
#   --dry-run   print the commands instead of running them
set -euo pipefail
cd "$(dirname "$0")/.."

# onnxruntime-gpu 1.28+ on PyPI is built for CUDA 13 and cuDNN 9, like torch 2.13's default
# wheel and Dockerfile.gpu's base image; pinned so that the image's CUDA major cannot drift.
ORT_GPU="onnxruntime-gpu==1.31.1"
GPU_CHECK='import onnxruntime as ort, torch; p = ort.get_available_providers(); '
GPU_CHECK+='assert torch.version.cuda, f"torch {torch.__version__} is not a CUDA build"; '
GPU_CHECK+='assert "CUDAExecutionProvider" in p, f"onnxruntime has no CUDA provider: {p}"; '
GPU_CHECK+='print(f"torch {torch.__version__}, CUDA {torch.version.cuda}; onnxruntime {ort.__version__}: {p}")'

editable=0 extras="" gpu=0 dry_run=0 venv="" quiet=()
usage() { sed -n '5p' "$0" | sed 's/^#   /usage: /' >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --editable) editable=1 ;;
    --extras) [ $# -gt 1 ] || usage; extras="$2"; shift ;;
    --gpu) gpu=1 ;;
    --quiet) quiet=(--quiet) ;;
    --dry-run) dry_run=1 ;;
    -*) echo "install.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$venv" ] || usage; venv="$1" ;;
  esac
  shift
done
[ -n "$venv" ] || usage

run() {
  if [ "$dry_run" = 1 ]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

target="."
[ -z "$extras" ] || target=".[$extras]"
install_project=("$venv/bin/python" -m pip install "${quiet[@]}" -c constraints.txt)
[ "$editable" = 1 ] && install_project+=(-e)
install_project+=("$target")

[ -x "$venv/bin/python" ] || run "${PYTHON:-python3.11}" -m venv "$venv"
run "$venv/bin/python" -m pip install "${quiet[@]}" --upgrade pip
run "${install_project[@]}"
if [ "$gpu" = 1 ]; then
  # onnxruntime and onnxruntime-gpu install the same `onnxruntime` module: with both installed
  # each has overwritten the other's files and uninstalling either breaks the other. So take
  # both out (a rerun has just put the CPU build back over the GPU one), then add the GPU
  # build alone. `pip check` then reports recstack's onnxruntime requirement as missing; the
  # module it needs is there.
  run "$venv/bin/python" -m pip uninstall "${quiet[@]}" --yes onnxruntime onnxruntime-gpu
  run "$venv/bin/python" -m pip install "${quiet[@]}" -c constraints.txt "$ORT_GPU"
  run "$venv/bin/python" -c "$GPU_CHECK"
fi
