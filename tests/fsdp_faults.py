"""`gpt2lab train` (the arguments) under torchrun, with one fault injected: rank 0 dies (SIGKILL) right after every
rank has written its shards of the checkpoint of step KILL_AT_STEP, before the checkpoint is complete (its
training_state.pt, config.json, the rename). What a kill at the worst moment of a sharded save leaves behind.

    torchrun --nproc_per_node=2 tests/fsdp_faults.py train --out RUN ...   (with KILL_AT_STEP=N)
"""

import os
import signal
import sys

from gpt2lab.cli import main
from gpt2lab.train import sharded_checkpoint

real_save = sharded_checkpoint.save_sharded


def save_then_die(directory, model, optimizer):
    real_save(directory, model, optimizer)
    if os.environ.get("RANK") == "0" and f"step_{int(os.environ['KILL_AT_STEP']):08d}" in str(directory):
        os.kill(os.getpid(), signal.SIGKILL)


sharded_checkpoint.save_sharded = save_then_die
sys.exit(main(sys.argv[1:]))
