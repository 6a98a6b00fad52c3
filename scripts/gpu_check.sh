#!/usr/bin/env bash
# The GPU check (docs/gpus.md, "GPU check"): one command that proves every CUDA path of gpt2lab in under 8 minutes.
#
#   bash scripts/gpu_check.sh bundle [DIR]       # on a machine with internet: BPE ranks, Shakespeare shards and
#                                                # a HellaSwag-format file into DIR (default gpu-bundle/, <= 20 MB)
#   bash scripts/gpu_check.sh run [DIR] [OUT]    # on the GPU machine (no network, nothing installed): five
#                                                # time-boxed stages -> OUT/report.json, report.md, logs.txt
#                                                # (default OUT gpu-check-out/); exit 1 if a stage failed
#
# gpt2lab runs from this source tree (PYTHONPATH), with the Python in $PYTHON (default python3) and its torch.
# Without a GPU, `run` does the same stages shrunk to a tiny model on the CPU (about a minute).
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-}"
case "$cmd" in
  bundle) exec "${PYTHON:-python3}" scripts/gpu_check.py bundle "${2:-gpu-bundle}" ;;
  run) exec "${PYTHON:-python3}" scripts/gpu_check.py run "${2:-gpu-bundle}" "${3:-gpu-check-out}" ;;
  *) echo "usage: $0 bundle [DIR] | run [DIR] [OUT]" >&2; exit 2 ;;
esac
