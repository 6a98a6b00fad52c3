"""The optimizer sweep behind the README's Muon vs AdamW table: the `shakespeare-cpu` demo setup (same model, data,
data order and 900 steps of 1,024 tokens for every arm), one arm per optimizer / learning rate / schedule / seed.

    python scripts/optimizer_sweep.py --list                 # the arms and the command each one runs
    python scripts/optimizer_sweep.py muon-0.01 adamw-1e-3   # run these (or all, with no names); safe to re-run
    python scripts/optimizer_sweep.py --table                # the table of whatever has finished so far

Each arm is a plain `gpt2lab train --preset shakespeare-cpu ...` into runs/sweep/ARM (an interrupted arm continues
with --resume), followed by `gpt2lab eval ARM --task loss --data data/shakespeare` for the loss over the whole
held-out split (121,324 tokens: Hamlet, The Tempest, Twelfth Night), saved as runs/sweep/ARM/val_full.json.
The logged val losses during training use the preset's 10 fixed val batches (10,240 tokens), which is noisier.

Every arm runs on one CPU thread (`runtime.threads=1`), `--jobs` of them at a time (default 2, one per core of the
2-core machine this was measured on): the same arithmetic for every arm, and no thread of a run left waiting for a
core that another run holds. Median ms/step is therefore a one-thread, shared-machine number; compare time per
step between optimizers with a quiet, alternating measurement instead (the README gives one).

Seeds: the default seed is the preset's (1337 for the weights and the data order); `-s2` arms use seed 2 for both,
so a second seed is a different initialisation and a different data order, the same for both optimizers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP_DIR = ROOT / "runs" / "sweep"
DATA = "data/shakespeare"
TABLE_STEPS = (100, 200, 300, 500, 700, 900)


# What the preset sets and an arm leaves as it was before the preset changed: issue 25's options (off then), stated
# so that every arm's command still trains what its table row measured.
SPEEDRUN_OFF = {"optim__muon_ns_coefficients": "quintic", "optim__muon_normuon": "false", "optim__ema": 0,
                "data__seq_len_warmup_steps": 0, "data__seq_len_start": 0}


def adamw(lr: float, schedule: str = "cosine", **extra) -> list[str]:
    return ["--set", "optim.name=adamw", "--set", f"optim.lr={lr:g}", "--set", f"optim.min_lr={lr / 10:g}",
            "--set", f"schedule.name={schedule}",
            *_sets({"optim__ema": 0, "data__seq_len_warmup_steps": 0, "data__seq_len_start": 0, **extra})]


def muon(muon_lr: float, adam_lr: float = 2e-3, split_qkv: bool = False, schedule: str = "cosine",
         **extra) -> list[str]:
    return ["--set", "optim.name=muon", "--set", f"optim.muon_lr={muon_lr:g}", "--set", f"optim.lr={adam_lr:g}",
            "--set", f"optim.min_lr={adam_lr / 10:g}", "--set", f"optim.muon_split_qkv={str(split_qkv).lower()}",
            "--set", f"schedule.name={schedule}", *_sets({**SPEEDRUN_OFF, **extra})]


def _sets(extra: dict) -> list[str]:
    flags = []
    for key, value in extra.items():
        flags += ["--set", f"{key.replace('__', '.')}={value}"]
    return flags


SEED2 = {"runtime__seed": 2, "data__seed": 2}
FINAL = dict(muon_lr=0.01, adam_lr=8e-3, split_qkv=True, schedule="wsd")  # the shakespeare-cpu preset since

# Every arm states its optimizer, learning rates, c_attn split and schedule, so it means the same whatever the
# preset's defaults are (the preset itself changed to the winner); the rest is the preset's.
ARMS: dict[str, list[str]] = {
    # AdamW alone, warmup + cosine; min_lr = lr / 10 throughout
    "adamw-5e-4": adamw(5e-4),
    "adamw-1e-3": adamw(1e-3),
    "adamw-2e-3": adamw(2e-3),  # the preset before this sweep
    "adamw-4e-3": adamw(4e-3),
    # Muon on the blocks' matrices + AdamW (2e-3) on embeddings/head, LayerNorm, biases; warmup + cosine
    "muon-0.005": muon(0.005),
    "muon-0.01": muon(0.01),
    "muon-0.02": muon(0.02),
    "muon-0.04": muon(0.04),
    # the AdamW part of a Muon run: the tied embedding/head is most of this small model's parameters
    "muon-0.01-adam-4e-3": muon(0.01, 4e-3),
    "muon-0.01-adam-8e-3": muon(0.01, 8e-3),
    "muon-0.01-adam-1.6e-2": muon(0.01, 1.6e-2),
    # c_attn orthogonalised as three matrices (q, k, v) instead of one
    "muon-0.01-split-qkv": muon(0.01, split_qkv=True),
    "muon-0.01-adam-4e-3-split-qkv": muon(0.01, 4e-3, split_qkv=True),
    # warmup-stable-decay (constant, then a linear cool-down over the last 20 % of steps)
    "adamw-5e-4-wsd": adamw(5e-4, "wsd"),
    "adamw-1e-3-wsd": adamw(1e-3, "wsd"),
    "adamw-2e-3-wsd": adamw(2e-3, "wsd"),
    "muon-0.01-wsd": muon(0.01, schedule="wsd"),
    # the best of each setting together (the preset since), and its Muon LR's neighbours
    "muon-0.01-adam-8e-3-split-qkv-wsd": muon(**FINAL),
    "muon-0.005-adam-8e-3-split-qkv-wsd": muon(**{**FINAL, "muon_lr": 0.005}),
    "muon-0.02-adam-8e-3-split-qkv-wsd": muon(**{**FINAL, "muon_lr": 0.02}),
    # a third (and 4/9) of the steps, each with its own schedule (warmup, constant, cool-down over the last 20 %)
    "muon-0.01-adam-8e-3-split-qkv-wsd-300-steps": muon(**FINAL, schedule__max_steps=300),
    "muon-0.01-adam-8e-3-split-qkv-wsd-400-steps": muon(**FINAL, schedule__max_steps=400),
    # the cool-down's length (WSD's decay_fraction; 0.2 above) for the short Muon run and for the best AdamW
    "muon-0.01-adam-8e-3-split-qkv-wsd-300-steps-decay-0.4": muon(**FINAL, schedule__max_steps=300,
                                                                  schedule__decay_fraction=0.4),
    "muon-0.01-adam-8e-3-split-qkv-wsd-300-steps-decay-0.6": muon(**FINAL, schedule__max_steps=300,
                                                                  schedule__decay_fraction=0.6),
    "adamw-1e-3-wsd-decay-0.4": adamw(1e-3, "wsd", schedule__decay_fraction=0.4),
    # a short run may want higher LRs
    "muon-0.02-adam-8e-3-split-qkv-wsd-300-steps-decay-0.6": muon(**{**FINAL, "muon_lr": 0.02}, schedule__max_steps=300,
                                                                  schedule__decay_fraction=0.6),
    "muon-0.02-adam-1.6e-2-split-qkv-wsd-300-steps-decay-0.6": muon(**{**FINAL, "muon_lr": 0.02, "adam_lr": 1.6e-2},
                                                                    schedule__max_steps=300,
                                                                    schedule__decay_fraction=0.6),
    # the 300-step run's warmup (the preset's 30 steps are 10 % of it), a cool-down over all of it, Muon 0.03, and
    # a smaller AdamW part; each from the 0.02 + 60 % arm above, one change at a time
    "muon-0.02-adam-8e-3-split-qkv-wsd-300-steps-decay-0.6-warmup-10": muon(
        **{**FINAL, "muon_lr": 0.02}, schedule__max_steps=300, schedule__decay_fraction=0.6,
        schedule__warmup_steps=10),
    "muon-0.02-adam-8e-3-split-qkv-wsd-300-steps-decay-1.0": muon(**{**FINAL, "muon_lr": 0.02}, schedule__max_steps=300,
                                                                  schedule__decay_fraction=1.0),
    "muon-0.03-adam-8e-3-split-qkv-wsd-300-steps-decay-0.6": muon(**{**FINAL, "muon_lr": 0.03}, schedule__max_steps=300,
                                                                  schedule__decay_fraction=0.6),
    "muon-0.02-adam-4e-3-split-qkv-wsd-300-steps-decay-0.6": muon(**{**FINAL, "muon_lr": 0.02, "adam_lr": 4e-3},
                                                                  schedule__max_steps=300,
                                                                  schedule__decay_fraction=0.6),
    # AdamW given at least Muon's wall time: 1,035 steps = 900 x 1.15, Muon's time per step over AdamW's at the
    # most measured (README); same schedule shape, so its cool-down comes at its own end
    "adamw-1e-3-wsd-1035-steps": adamw(1e-3, "wsd", schedule__max_steps=1035),
    # second seed (weights and data order) for the best settings
    "adamw-1e-3-s2": adamw(1e-3, **SEED2),
    "muon-0.01-adam-4e-3-s2": muon(0.01, 4e-3, **SEED2),
    "adamw-1e-3-wsd-s2": adamw(1e-3, "wsd", **SEED2),
    "muon-0.01-adam-8e-3-split-qkv-wsd-s2": muon(**FINAL, **SEED2),
    "muon-0.02-adam-8e-3-split-qkv-wsd-300-steps-decay-0.6-s2": muon(**{**FINAL, "muon_lr": 0.02},
                                                                     schedule__max_steps=300,
                                                                     schedule__decay_fraction=0.6, **SEED2),
    "muon-0.02-adam-8e-3-split-qkv-wsd-300-steps-decay-1.0-s2": muon(**{**FINAL, "muon_lr": 0.02},
                                                                     schedule__max_steps=300,
                                                                     schedule__decay_fraction=1.0, **SEED2),
    # issue 25, the speed-run era's architecture-neutral techniques, each added alone to today's preset (FINAL)
    # and the winners together; same seed and data order as every arm above
    "sr-base": muon(**FINAL),
    "sr-polar-express": muon(**FINAL, optim__muon_ns_coefficients="polar_express"),
    "sr-normuon": muon(**FINAL, optim__muon_normuon="true"),
    "sr-momentum-warmup": muon(**FINAL, optim__muon_momentum_warmup_steps=300, optim__muon_momentum_start=0.85),
    "sr-wd-0.1": muon(**FINAL, optim__muon_weight_decay=0.1),
    "sr-cautious-wd-0.1": muon(**FINAL, optim__muon_weight_decay=0.1, optim__cautious_wd="true"),
    # the weights' moving average: the same training as sr-base, evaluated (also) through the average
    "sr-ema-0.99": muon(**FINAL, optim__ema=0.99),
    "sr-ema-0.995": muon(**FINAL, optim__ema=0.995),
    # the three that were ahead of sr-base alone at 900 steps (seed 1), together, with the weights' average (which
    # changes no step: the table's first row is the run's own weights, the second its average)
    "sr-winners": muon(**FINAL, optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true",
                       optim__muon_momentum_warmup_steps=300, optim__muon_momentum_start=0.85, optim__ema=0.99),
    # the winners without the momentum warmup (whose step count must fit the run, so a preset holding it would refuse
    # a shortened `--steps` run): the shakespeare-cpu preset since issue 25
    "sr-polar-normuon-ema": muon(**FINAL, optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true",
                                 optim__ema=0.99),
    # fewer steps: the best 300-step recipe above (Muon 0.02, cool-down over all steps) in 250, alone and with the
    # techniques that won at 900 steps
    "sr-250-steps": muon(**{**FINAL, "muon_lr": 0.02}, schedule__max_steps=250, schedule__decay_fraction=1.0),
    "sr-250-steps-polar-express": muon(**{**FINAL, "muon_lr": 0.02}, schedule__max_steps=250,
                                       schedule__decay_fraction=1.0, optim__muon_ns_coefficients="polar_express"),
    "sr-250-steps-polar-express-ema-0.98": muon(**{**FINAL, "muon_lr": 0.02}, schedule__max_steps=250,
                                                schedule__decay_fraction=1.0,
                                                optim__muon_ns_coefficients="polar_express", optim__ema=0.98),
    # the data options (issue 25's second part): short contexts first (32 tokens for steps 0-149, 64 for 150-299,
    # then 128; the same tokens per step), and rows that begin at document starts (39 plays here: nearly a no-op)
    "sr-seq-len-warmup-32-300": muon(**FINAL, data__seq_len_warmup_steps=300, data__seq_len_start=32),
    "sr-align-to-documents": muon(**FINAL, data__align_to_documents="true"),
    # fewer tokens per step first: micro-batches of 4 x 128 (2 per full step of 1,024 tokens), one of them per step
    # for steps 0-299 (153,600 fewer tokens in all, 17 %)
    "sr-batch-warmup-512-300": muon(**FINAL, data__batch_size=4, data__batch_warmup_steps=300,
                                    data__batch_start_tokens=512),
    "sr-polar-normuon-ema-seq-len-warmup-32-300": muon(**FINAL, optim__muon_ns_coefficients="polar_express",
                                                       optim__muon_normuon="true", optim__ema=0.99,
                                                       data__seq_len_warmup_steps=300, data__seq_len_start=32),
}
# Round three: single changes to the preset as it is now (PRESET_NOW): AdamW's cautious decay (issue 25's "try it
# for the AdamW part") and no decay at all, the residual projections initialised at 0 (modded-nanogpt), a longer
# context warm-up from 16 tokens, higher LRs, a longer cool-down, half the batch for twice the steps; and the
# 250-step recipe with the options that won at 900 steps
PRESET_NOW = dict(optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true", optim__ema=0.99,
                  data__seq_len_warmup_steps=300, data__seq_len_start=32)
ARMS.update({
    "sr-now-adamw-cautious-wd": muon(**FINAL, **PRESET_NOW, optim__adamw_cautious_wd="true"),
    "sr-now-adamw-wd-0": muon(**FINAL, **PRESET_NOW, optim__weight_decay=0),
    "sr-now-seq-len-warmup-16-450": muon(**FINAL, **{**PRESET_NOW, "data__seq_len_warmup_steps": 450,
                                                     "data__seq_len_start": 16}),
    "sr-now-muon-0.015": muon(**{**FINAL, "muon_lr": 0.015}, **PRESET_NOW),
    "sr-now-adam-1.2e-2": muon(**{**FINAL, "adam_lr": 1.2e-2}, **PRESET_NOW),
    "sr-now-decay-0.3": muon(**FINAL, **PRESET_NOW, schedule__decay_fraction=0.3),
    "sr-now-zero-init-projections": muon(**FINAL, **PRESET_NOW, model__zero_init_projections="true"),
    # half the tokens per step (micro-batches of 4 x 128) for twice the steps: the same tokens, at about the same
    # time (a step's cost is nearly proportional to its tokens here); every step-counted setting doubled with it
    "sr-now-batch-512-1800-steps": muon(**FINAL, **{**PRESET_NOW, "data__seq_len_warmup_steps": 600,
                                                    "optim__ema": 0.995},
                                        data__batch_size=4, data__total_batch_tokens=512, schedule__max_steps=1800,
                                        schedule__warmup_steps=60, eval__val_every=200, eval__sample_every=600,
                                        checkpoint__every=600),
    "sr-250-steps-polar-normuon-seq-len-warmup-32-100": muon(
        **{**FINAL, "muon_lr": 0.02}, schedule__max_steps=250, schedule__decay_fraction=1.0,
        optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true", data__seq_len_warmup_steps=100,
        data__seq_len_start=32),
})
# The ladder's second rung (issue 25): the same data, steps and tokens with a model 8 layers x 256 wide (64-dim heads as
# GPT-2's; ~2.5x the demo's FLOPs per token), two LRs for each optimizer: AdamW alone around its demo best (1e-3),
# Muon at its demo best (0.01; its update is scaled by shape) with two LRs for its AdamW part (the embeddings'),
# with the preset's Polar Express and NorMuon; every arm keeps the weights' average (a second view, no other effect).


def ladder_arms(n_layer: int, n_embd: int) -> dict[str, list[str]]:
    """One rung: two LRs per optimizer at a size (64-dim heads), every arm with the weights' average."""
    size = {"model__n_layer": n_layer, "model__n_head": n_embd // 64, "model__n_embd": n_embd, "optim__ema": 0.99}
    with_options = {**size, "optim__muon_ns_coefficients": "polar_express", "optim__muon_normuon": "true"}
    name = f"ladder-{n_layer}x{n_embd}"
    return {f"{name}-adamw-5e-4-wsd": adamw(5e-4, "wsd", **size),
            f"{name}-adamw-1e-3-wsd": adamw(1e-3, "wsd", **size),
            f"{name}-muon-0.01-adam-4e-3": muon(**{**FINAL, "adam_lr": 4e-3}, **with_options),
            f"{name}-muon-0.01-adam-8e-3": muon(**FINAL, **with_options)}


ARMS.update(ladder_arms(8, 256))
# The third rung: 12 layers x 384 (GPT-2's depth, half its width; 6 heads of 64), the same two LRs per optimizer.
ARMS.update(ladder_arms(12, 384))
# the second seed of every issue-25 arm (weights and data order: SEED2), run for the arms worth keeping
ARMS.update({f"{arm}-s2": [*flags, *_sets(SEED2)] for arm, flags in list(ARMS.items()) if arm.startswith("sr-")})


def gpt2lab(*args: str) -> list[str]:
    return [sys.executable, "-m", "gpt2lab", *args]


def train_command(arm: str) -> list[str]:
    run = SWEEP_DIR / arm
    if (run / "checkpoints").is_dir():
        return gpt2lab("train", "--out", str(run), "--resume", "--no-progress")
    return gpt2lab("train", "--preset", "shakespeare-cpu", "--data.dir", DATA, "--out", str(run), "--no-progress",
                   "--set", "runtime.threads=1", *ARMS[arm])


def eval_command(arm: str, model: Path | None = None) -> list[str]:
    return gpt2lab("eval", str(model or SWEEP_DIR / arm), "--task", "loss", "--data", DATA, "--json")


def averaged(arm: str) -> bool:
    return any(flag.startswith("optim.ema=") and float(flag.partition("=")[2]) > 0 for flag in ARMS[arm])


def run_arm(arm: str) -> None:
    run = SWEEP_DIR / arm
    if (run / "val_full.json").is_file():
        print(f"== {arm}: done")
        return
    print(f"== {arm}: {' '.join(train_command(arm)[2:])}", flush=True)
    with open(SWEEP_DIR / f"{arm}.log", "a") as log:
        subprocess.run(train_command(arm), cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # as the training did (`gpt2lab eval` has no thread flag)
    if averaged(arm):  # the average's whole-split loss too, from its export
        if not (run / "ema" / "config.json").is_file():
            subprocess.run(gpt2lab("export", str(run), "--ema", "--out", str(run / "ema")), cwd=ROOT, check=True,
                           capture_output=True)
        result = subprocess.run(eval_command(arm, run / "ema"), cwd=ROOT, check=True, capture_output=True,
                                text=True, env=one_thread)
        (run / "val_full_ema.json").write_text(result.stdout)
    result = subprocess.run(eval_command(arm), cwd=ROOT, check=True, capture_output=True, text=True, env=one_thread)
    (run / "val_full.json").write_text(result.stdout)


def summary(arm: str) -> dict | None:
    run = SWEEP_DIR / arm
    if not (run / "metrics.jsonl").is_file():
        return None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    step_ms = [r["ms_per_step"] for r in records if "ms_per_step" in r]
    full, full_ema = (json.loads((run / name).read_text())["loss"] if (run / name).is_file() else None
                      for name in ("val_full.json", "val_full_ema.json"))
    val_ema = {r["step"]: r["val_loss_ema"] for r in records if "val_loss_ema" in r}
    return {"val": val, "val_ema": val_ema, "median_ms": statistics.median(step_ms) if step_ms else None,
            "full": full, "full_ema": full_ema}


def table(arms) -> str:
    head = "| arm | " + " | ".join(f"step {s}" for s in TABLE_STEPS) + " | whole val split | median ms/step |"
    lines = [head, "|---" * (len(TABLE_STEPS) + 3) + "|"]
    for arm in arms:
        s = summary(arm)
        if s is None:
            continue
        cells = [f"{s['val'][step]:.3f}" if step in s["val"] else "" for step in TABLE_STEPS]
        full = f"{s['full']:.3f}" if s["full"] is not None else ""
        ms = f"{s['median_ms']:.0f}" if s["median_ms"] else ""
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {full} | {ms} |")
        if s["val_ema"]:  # the same run seen through its weights' moving average
            cells = [f"{s['val_ema'][step]:.3f}" if step in s["val_ema"] else "" for step in TABLE_STEPS]
            full = f"{s['full_ema']:.3f}" if s["full_ema"] is not None else ""
            lines.append(f"| {arm}, its average | " + " | ".join(cells) + f" | {full} | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("arms", nargs="*", help="arms to run (default: all, in order)")
    parser.add_argument("--list", action="store_true", help="print every arm and its training command")
    parser.add_argument("--table", action="store_true", help="print the table of finished arms")
    parser.add_argument("--jobs", type=int, default=2, help="arms run at once, one thread each (default 2)")
    args = parser.parse_args()
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {', '.join(unknown)}; see --list")
    arms = args.arms or list(ARMS)
    if args.list:
        for arm in arms:
            print(f"{arm}: gpt2lab train --preset shakespeare-cpu --out runs/sweep/{arm} {' '.join(ARMS[arm])}")
        return
    if args.table:
        print(table(arms))
        return
    if not (ROOT / DATA / "manifest.json").is_file():
        subprocess.run(gpt2lab("prepare", "shakespeare", "--out", DATA), cwd=ROOT, check=True)
    SWEEP_DIR.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(run_arm, arms))  # list(): re-raise a failed arm's error
    print(table(arms))


if __name__ == "__main__":
    main()
