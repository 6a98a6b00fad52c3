#!/usr/bin/env bash
# The GPU check (docs/gpus.md, "GPU check"): one command that proves every CUDA path of gpt2lab in under 8 minutes.
#
#   bash scripts/gpu_check.sh bundle [DIR]       # on a machine with internet: BPE ranks, Shakespeare shards and
#                                                # a HellaSwag-format file into DIR (default gpu-bundle/, <= 20 MB)
#   bash scripts/gpu_check.sh run [DIR] [OUT]    # on the GPU machine (no network, nothing installed): five
#                                                # time-boxed stages -> OUT/report.json, report.md, logs.txt
#                                                # (default OUT gpu-check-out/); exit 1 if a stage failed
#   bash scripts/gpu_check.sh run DIR OUT STAGE...  # a second try: only these stages (and the environment), of
#                                                # environment cuda_tests speed end_to_end memory
#
# The defaults are in the source tree (git-ignored); gpt2lab runs from this tree (PYTHONPATH), with the Python in
# $PYTHON (default python3) and its torch. Without a GPU, `run` does the same stages shrunk to a tiny model on the
# CPU (about a minute on an idle 2-core machine).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
case "${1:-}" in
  bundle) exec "$python" "$root/scripts/gpu_check.py" bundle "${2:-$root/gpu-bundle}" ;;
  run) exec "$python" "$root/scripts/gpu_check.py" run "${2:-$root/gpu-bundle}" "${3:-$root/gpu-check-out}" "${@:4}" ;;
  *) echo "usage: $0 bundle [DIR] | run [DIR] [OUT] [STAGE ...]" >&2; exit 2 ;;
esac
