"""Dashboards for a training run: TensorBoard event files and Weights & Biases, both optional.

RUN/metrics.jsonl stays the record of a run; a tracker is a sink that `MetricsLog` hands each record to after
writing it (and the samples, as text). Only rank 0 has sinks. Each tracker is an optional extra, imported only
when its key is on, and checked before training starts (`check_trackers`), so that a missing package is one line
naming the pip command rather than a failure after the first steps.

The same names in both: train/loss, train/lr, train/grad_norm, train/tokens_per_s, train/ms_per_step (train/mfu
on known GPUs), val/loss, hellaswag/acc, hellaswag/acc_norm, and samples (text), against the optimizer step.

Resuming: TensorBoard is told to drop events logged after the checkpoint (`purge_step`), as metrics.jsonl drops
its records, since those steps are computed again. W&B continues the same run, whose id is kept in
RUN/wandb_run_id; W&B's history only goes forward, so metrics are logged against a "step" metric of their own
rather than W&B's internal step, and steps logged again after a resume are added beside the first ones.
"""

from __future__ import annotations

from gpt2lab.storage.atomic import atomic_write_text
from gpt2lab.errors import GPT2LabError, first_line
from gpt2lab.storage.run_directory import RunDirectory

EXTRAS = {"tensorboard": "pip install 'gpt2lab[tensorboard]'", "wandb": "pip install 'gpt2lab[wandb]'"}
TAGS = {"loss": "train/loss", "lr": "train/lr", "grad_norm": "train/grad_norm", "tokens_per_s": "train/tokens_per_s",
        "ms_per_step": "train/ms_per_step", "mfu": "train/mfu", "val_loss": "val/loss",
        "hellaswag_acc": "hellaswag/acc", "hellaswag_acc_norm": "hellaswag/acc_norm"}


def tag(key: str) -> str:
    return TAGS.get(key, f"train/{key}")


def check_trackers(log) -> None:
    """Refuse, before any work, a tracker whose package is not installed. log: the config's LogSection."""
    wanted = [("tensorboard", "log.tensorboard = true", "torch.utils.tensorboard")] if log.tensorboard else []
    if log.wandb:
        wanted.append(("wandb", f"log.wandb = {log.wandb!r}", "wandb"))
    for extra, key, module in wanted:
        try:
            __import__(module)
        except ImportError:
            raise GPT2LabError(f"{key} needs the {extra} package, which is not installed: {EXTRAS[extra]} "
                               f"(or turn the key off)") from None


def make_sinks(log, run_dir: RunDirectory, config: dict, resumed_step: int | None) -> list:
    """The trackers the config turns on, for rank 0. resumed_step: the checkpoint's step when resuming."""
    sinks = []
    if log.tensorboard:
        sinks.append(TensorBoardSink(run_dir, resumed_step))
    if log.wandb:
        sinks.append(WandbSink(log, run_dir, config, resumed=resumed_step is not None))
    return sinks


class TensorBoardSink:
    def __init__(self, run_dir: RunDirectory, resumed_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_step is None else resumed_step + 1
        self.writer = SummaryWriter(log_dir=str(run_dir.tensorboard_dir), purge_step=purge)

    def scalars(self, step: int, values: dict) -> None:
        for key, value in values.items():
            self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()  # a dashboard open during training shows each step as it is done

    def text(self, step: int, name: str, text: str) -> None:
        # TensorBoard renders text as Markdown: indenting each line makes it a code block, shown as written
        self.writer.add_text(name, "\n".join("    " + line for line in text.splitlines()), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    def __init__(self, log, run_dir: RunDirectory, config: dict, resumed: bool):
        import wandb

        ids = run_dir.wandb_id_file
        run_id = ids.read_text().strip() if resumed and ids.is_file() else None  # None: W&B makes a new one
        try:
            self.run = wandb.init(project=log.wandb, entity=log.wandb_entity or None,
                                  name=log.wandb_run_name or run_dir.path.resolve().name, id=run_id,
                                  resume="allow", dir=str(run_dir.path), config=config)
        except Exception as e:  # not logged in, no network, a project it may not write to, ...
            raise GPT2LabError(f"Weights & Biases did not start: {first_line(e)}; run `wandb login`, set "
                               f"WANDB_MODE=offline (sync later with `wandb sync`), or turn log.wandb off") from None
        atomic_write_text(ids, self.run.id + "\n")  # what --resume continues
        self.wandb = wandb
        self.run.define_metric("step")
        for group in ("train/*", "val/*", "hellaswag/*", "samples"):
            self.run.define_metric(group, step_metric="step")

    def scalars(self, step: int, values: dict) -> None:
        self.run.log({"step": step, **{tag(key): value for key, value in values.items()}})

    def text(self, step: int, name: str, text: str) -> None:
        self.run.log({"step": step, name: self.wandb.Table(columns=["step", "text"], data=[[step, text]])})

    def close(self) -> None:
        self.run.finish()
