#!/usr/bin/env bash
# Create .venv (if needed) and install gpt2lab into it, editable, with the extras named in $1 (e.g. "test").
#
# torch: a machine with an NVIDIA GPU gets pip's default (CUDA) build. A CPU-only machine gets torch 2.13.0;
# set TORCH_SPEC to choose another, or install torch into .venv yourself first: an installed torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@" 2>&1 | grep -v '^WARNING: Location' || true; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    spec="${TORCH_SPEC:-torch}"
  else
    spec="${TORCH_SPEC:-torch==2.13.0}"
  fi
  echo "setup: installing $spec"
  pip install "$spec"
fi
echo "setup: installing gpt2lab${extras:+[$extras]}"
pip install -e ".${extras:+[$extras]}"
.venv/bin/python -c "import gpt2lab, torch; print(f'setup: gpt2lab {gpt2lab.__version__}, torch {torch.__version__}')"
