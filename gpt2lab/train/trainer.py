"""The training loop: one code path for a laptop CPU, one GPU, and many GPUs on many machines (torchrun + DDP).

    set-up:  processes and device -> the run directory's lock -> the checkpoint to resume -> data, model, batch
             -> the step (step.py) and its optimizer -> the checkpointer of every piece of state -> restore
    loop:    step i (step.py: micro-steps, clip, optimizer) -> log -> val loss, samples, HellaSwag, checkpoint

Everything that decides what the next step computes (weights, optimizer moments, loader position, RNG, the step
counter) is in the checkpoint, so `--resume` continues with bit-identical losses on CPU. Each step trains on the
same tokens whatever the number of processes (for the same total batch), so a run may also resume with more or
fewer processes: the same token stream, losses equal up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from gpt2lab.errors import BadValue, GPT2LabError
from gpt2lab.eval.loss import fixed_batches_loss
from gpt2lab.model.gpt import GPT, load_model
from gpt2lab.runtime import distributed, memory
from gpt2lab.runtime.device import (autocast_dtype, keep_freed_memory, resolve_device,
                                    return_freed_memory)
from gpt2lab.runtime.hardware import peak_flops
from gpt2lab.runtime.perf import flops_per_token
from gpt2lab.storage.atomic import OutputError
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.hf.format import read_config
from gpt2lab.train.batch import (StepMemory, auto_batch_size, choose_strategy, grad_accum_steps, step_memory_of,
                                 with_batch_size)
from gpt2lab.train.checkpointing import (Checkpointer, NonFiniteState, OptionalState, SameOnEveryRank, StepCounter,
                                         model_source, resume_point)
from gpt2lab.train.config import AUTO, TrainConfig, to_toml
from gpt2lab.train.console import StepPrinter, StopSignals
from gpt2lab.train.ema import WeightAverage
from gpt2lab.train.metrics import MetricsLog, StepTimer
from gpt2lab.train.optim import describe_optimizer, make_optimizer
from gpt2lab.train.parallel import ParallelModel, check_strategy
from gpt2lab.train.schedule import batch_tokens_at, seq_len_at, set_lr
from gpt2lab.train.step import NonFiniteStep, TrainStep, in_rows_of
from gpt2lab.train.trackers import check_trackers, make_sinks

# `peak_mem_mb` (the measured peak, to hold against `gpt2lab train --dry-run`'s estimate) is logged on the first
# steps of each invocation, where a CPU's heap settles, and with every val loss.
PEAK_MEMORY_STEPS = 20


class TrainingDiverged(GPT2LabError, FloatingPointError):
    """The loss became NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    loss: float
    val_loss: float | None
    tokens_per_s: float | None  # mean over the steps of this invocation after the first (warm-up) steps
    interrupted: bool = False
    exit_code: int = 0


def batch_iterator(loader):
    while True:
        yield loader.next_batch()


class Trainer:
    def __init__(self, config: TrainConfig, run_dir, resume: bool = False, overwrite: bool = False, log=None,
                 progress: bool = True):
        self.config, self.run_dir = config, RunDirectory(run_dir)  # rank 0 locks it for the trainer's whole life
        self.resume, self.overwrite = resume, overwrite
        self.progress = progress
        self._log = log or print
        self.ctx = distributed.DistContext()
        self.counter = StepCounter()
        self.metrics: MetricsLog | None = None  # set up by setup()

    @property
    def step(self) -> int:
        """Optimizer steps done (the checkpointed counter)."""
        return self.counter.step

    def log(self, line: str) -> None:
        if self.ctx.is_main:
            self._log(line)

    # --- set-up ---------------------------------------------------------------------------------------------

    def setup(self) -> None:
        check_trackers(self.config.log)  # a missing tracker package is one line now, not after the first steps
        self.device = self._start_processes()
        self.amp_dtype = autocast_dtype(self.config.runtime.precision, self.device)
        check_strategy(self.config.parallel.strategy, self.device, self.amp_dtype)
        self._lock_run_dir()
        checkpoint, config = self._resume_point()  # every rank checks before rank 0 writes anything
        self.data_vocab_size, self.eot_token = self._check_data(config)
        self.raw_model = self._make_model(config, checkpoint)
        step_memory = self._step_memory(config)
        self.model = ParallelModel(self.raw_model, self.ctx, self.device, compile=config.runtime.compile,
                                   strategy=self._choose_strategy(config, step_memory), amp_dtype=self.amp_dtype,
                                   activation_checkpointing=config.runtime.activation_checkpointing)
        step_memory = step_memory.with_strategy(self.model.strategy)
        if self.model.sharded and self.device.type == "cpu":
            return_freed_memory()  # see there: a sharded model's freed blocks must not stay resident
        if config.data.batch_size == AUTO:
            config = with_batch_size(config, auto_batch_size(self.model, config.data, step_memory, self.device,
                                                             self.amp_dtype, self.ctx, log=self.log))
        self.config = cfg = config  # the resolved config: what config.toml records and a resume compares with
        self.grad_accum = grad_accum_steps(cfg.data.total_batch_tokens, cfg.data.batch_size, cfg.data.seq_len,
                                           self.ctx.world_size, cfg.data.grad_accum)
        self._check_batch_warmup()
        self.train_loader, self.val_loader = self._make_loaders()
        self._check_memory(step_memory)
        optimizer = make_optimizer(self.raw_model, cfg.optim, self.device)
        self.average = WeightAverage(self.raw_model, cfg.optim.ema) if cfg.optim.ema else None
        self.train_step = TrainStep(self.model, optimizer, device=self.device, amp_dtype=self.amp_dtype,
                                    grad_accum=self.grad_accum, grad_clip=cfg.optim.grad_clip,
                                    schedule=lambda i: set_lr(optimizer, i, cfg.optim, cfg.schedule),
                                    average=self.average)
        self.checkpointer = self._make_checkpointer(optimizer)
        if checkpoint is not None:
            self._restore(checkpoint)
        self.hellaswag = self._load_hellaswag()
        self._prepare_run_dir(resumed=checkpoint is not None or self.starts_over)

    def _start_processes(self) -> torch.device:
        """This process's device, in the process group when torchrun started it (FSDP needs one even alone), with
        the device's speed-ups."""
        runtime = self.config.runtime
        if runtime.threads:
            torch.set_num_threads(runtime.threads)
        device = resolve_device(runtime.device)
        self.joined_alone = not torch.distributed.is_initialized() and not distributed.launched_by_torchrun()
        self.ctx = distributed.setup(device, join_alone=self.config.parallel.strategy == "fsdp")
        self.joined_alone &= torch.distributed.is_initialized()  # a group of its own, to leave at the end
        device = distributed.process_device(device, self.ctx)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x fp32 throughput, loss unaffected
            torch.backends.cudnn.allow_tf32 = True
            memory.cuda_context_bytes(device)  # taken now, before the model: the context alone
        else:
            keep_freed_memory()  # CPU: up to 2x faster steps (no page faults on every step's big buffers)
        return device

    def _step_memory(self, config: TrainConfig) -> StepMemory:
        # The process's own memory is measured (a tiny step) only where a choice depends on it.
        chooses = config.data.batch_size == AUTO or (config.parallel.strategy == "auto" and self.ctx.enabled)
        return step_memory_of(self.raw_model, config, self.device, self.amp_dtype, self.ctx, measure_runtime=chooses)

    def _choose_strategy(self, config: TrainConfig, step_memory: StepMemory) -> str:
        if config.parallel.strategy != "auto":
            return config.parallel.strategy
        local = self.ctx.local_world_size if self.device.type == "cpu" else 1
        strategy, reason = choose_strategy(step_memory, config.data, local)
        if self.ctx.enabled:
            self.log(f"parallel.strategy auto: {strategy} ({reason})")
        return strategy

    def _lock_run_dir(self) -> None:
        """Rank 0 takes the run directory's lock (creating the directory) before anything else touches it; every
        rank learns whether it did, so a refused launch stops all of them with rank 0's one-line reason."""
        refusal = None
        if self.ctx.is_main:
            try:
                self.run_dir.acquire(what="gpt2lab train")
            except GPT2LabError as e:
                if not self.ctx.enabled:
                    raise
                refusal = str(e)
        refusal = distributed.broadcast_from_main(refusal)
        if refusal is not None:
            raise GPT2LabError(refusal)

    def _resume_point(self) -> tuple[Path | None, TrainConfig]:
        checkpoint, config, self.starts_over = resume_point(self.run_dir, self.config, self.resume, self.overwrite,
                                                            log=self.log)
        return checkpoint, config

    def _check_data(self, config: TrainConfig) -> tuple[int, int]:
        """(vocabulary size, <|endoftext|> id) of the prepared data, once its shards match their sha256 (unless
        data.verify is off) and it fits a model trained from scratch."""
        from gpt2lab.data import read_manifest
        from gpt2lab.data.manifest import check_vocabulary
        from gpt2lab.data.verify import verify_shards

        manifest = read_manifest(config.data.dir)
        verify_shards(config.data.dir, manifest, log=self.log) if config.data.verify else None
        if config.model.init == "scratch":
            check_vocabulary(config.data.dir, manifest, config.model.vocab_size, "model.vocab_size")
        return manifest["vocab_size"], manifest["eot_token"]

    def _make_model(self, config: TrainConfig, checkpoint) -> GPT:
        from gpt2lab.data.manifest import check_vocabulary

        if checkpoint is not None and model_source(checkpoint) is None:  # sharded: the checkpointer loads it
            model = GPT(read_config(checkpoint), init_weights=False).to(self.device)
        elif checkpoint is not None:
            model = load_model(checkpoint, device=self.device)
        elif config.model.init == "scratch":
            torch.manual_seed(config.runtime.seed)  # same initial weights on every rank (DDP also broadcasts them)
            model = GPT(config.model.gpt_config()).to(self.device)
            if config.model.zero_init_projections:  # after the usual init: every other weight is the same
                model.zero_residual_projections()
        else:
            model = load_model(config.model.init, device=self.device, dtype=torch.float32)  # fine-tuning
            check_vocabulary(config.data.dir, {"vocab_size": self.data_vocab_size}, model.config.vocab_size,
                             f"the vocabulary of {config.model.init}")
        model.config.check_context(config.data.seq_len, "data.seq_len", "lower it or raise model.block_size")
        torch.manual_seed(config.runtime.seed + self.ctx.rank)
        return model.train()

    def _make_loaders(self):
        from gpt2lab.data.loader import TokenLoader, validation_loader

        data, ctx, evals = self.config.data, self.ctx, self.config.eval
        # The train loader knows the step size (processes x accumulation), so each step takes the same chunks
        # whatever the split between processes and micro-steps.
        train = TokenLoader(data.dir, "train", data.batch_size, data.seq_len, ctx.rank, ctx.world_size, data.seed,
                            data.shuffle, grad_accum=self.grad_accum, align_to_documents=data.align_to_documents)
        if data.align_to_documents:
            self.log(f"data.align_to_documents: rows begin at document starts; {train.tokens_kept:.1%} of the train "
                     f"tokens are in rows (the rest are document tails skipped), {train.steps_per_epoch:,} "
                     f"steps per epoch")
        val = validation_loader(data.dir, data.batch_size, data.seq_len, ctx.rank, ctx.world_size, data.seed,
                                required=evals.val_every > 0, log=self.log) if evals.val_batches else None
        return train, val

    def _check_memory(self, step_memory: StepMemory) -> None:
        """On a CPU, refuse a micro-batch whose step cannot fit in memory before the first step tries (and the OOM
        killer ends it, or something else). A GPU reports its own out-of-memory error, so it is not checked."""
        if self.device.type != "cpu":
            return
        cfg, arch = self.config, self.raw_model.config
        processes = self.ctx.local_world_size  # torchrun: the processes on this machine share its memory
        estimate = step_memory.estimate(cfg.data.batch_size, cfg.data.seq_len, self.grad_accum)
        needed = estimate.total - estimate.weights - estimate.runtime  # the weights and the process are resident
        shape = f"(x data.seq_len {cfg.data.seq_len}" + (f", x {processes} processes here)" if processes > 1 else ")")
        memory.check_fits("data.batch_size", f"{cfg.data.batch_size} {shape}", needed * processes, self.device,
                          "for one training step")
        samples = cfg.eval
        if samples.sample_every and samples.sample_count:  # rank 0 samples all of them in one batch
            sampling = memory.inference_bytes(arch, samples.sample_count, arch.block_size, scored=1,
                                              cached=arch.block_size)
            memory.check_fits("eval.sample_count", samples.sample_count, sampling, self.device,
                              "to sample during training")

    def _make_checkpointer(self, optimizer) -> Checkpointer:
        """The trainer's pieces of state, by name: with the weights and each process's RNG (which the checkpointer
        saves itself), everything that decides what the next step computes."""
        return Checkpointer(self.run_dir, self.raw_model, optimizer, self.ctx, self.device, progress=self.counter,
                            states={"scaler": OptionalState(self.train_step.scaler),
                                    "ema": OptionalState(self.average)},
                            rank_states={"loader": SameOnEveryRank(self.train_loader)},
                            config=self.config.to_dict(), keep=self.config.checkpoint.keep,
                            seed=self.config.runtime.seed, sharded=self.model.sharded)

    def _restore(self, checkpoint: Path) -> None:
        saved = self.checkpointer.load(checkpoint)  # the weights came with the model (_make_model)
        self.log(f"resuming from {checkpoint} (step {self.step})")
        saved_world = int(saved["world_size"])
        if saved_world != self.ctx.world_size:
            self.log(f"process count changed: {saved_world} -> {self.ctx.world_size} ({self.grad_accum} micro-steps "
                     f"per step now); the total batch is the same, so the token stream continues unchanged")

    def _load_hellaswag(self):
        eval_cfg = self.config.eval
        if not eval_cfg.hellaswag_every:
            return None
        from gpt2lab.eval.hellaswag import load_examples, tokenize

        try:
            examples = load_examples(eval_cfg.hellaswag_data or None, limit=eval_cfg.hellaswag_limit or None)
        except BadValue as e:  # the library names its parameters; here they are config keys
            raise GPT2LabError(e.named(f"eval.hellaswag_{e.param}")) from None
        return tokenize(examples)

    def _prepare_run_dir(self, resumed: bool) -> None:
        """Rank 0 writes config.toml (and forgets the metrics a killed run logged past its checkpoint) and opens
        the metrics log with its dashboards; the other ranks wait for it."""
        distributed.barrier()
        resumed_step = self.step if resumed else None  # 0 when a run killed before its first checkpoint starts over
        sinks = []  # dashboards: rank 0 only, like metrics.jsonl
        if self.ctx.is_main:
            self.run_dir.prepare(to_toml(self.config), overwrite=self.overwrite, resumed_step=resumed_step)
            sinks = make_sinks(self.config.log, self.run_dir, self.config.to_dict(), resumed_step)
        distributed.barrier()
        self.metrics = MetricsLog(self.run_dir.metrics_file, enabled=self.ctx.is_main, sinks=sinks)

    # --- the loop -------------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        failed = True
        try:
            result = self._run()
            failed = False
            return result
        finally:
            if self.metrics is not None:
                self.metrics.close()  # the dashboards' last events are written, the W&B run is finished
            self.run_dir.release(failed)
            if getattr(self, "joined_alone", False):
                distributed.teardown()

    def _run(self) -> TrainResult:
        self.setup()
        cfg, max_steps = self.config, self.config.schedule.max_steps
        n_params = self.raw_model.num_parameters()
        arch = self.raw_model.config
        self.log(f"model: {n_params:,} parameters ({arch.n_layer} layers, {arch.n_embd} dims, {arch.n_head} "
                 f"heads), data {cfg.data.dir}: {self.train_loader.num_tokens:,} train tokens")
        self.log(f"batch: {cfg.data.total_batch_tokens:,} tokens/step = {cfg.data.batch_size} x {cfg.data.seq_len} "
                 f"x {self.ctx.world_size} process(es) x {self.grad_accum} micro-steps; device {self.device}, "
                 f"precision {self.amp_dtype or torch.float32}".replace("torch.", ""))
        self.log(describe_optimizer(self.raw_model, cfg.optim))
        if self.step >= max_steps:
            self.log(f"run already complete at step {self.step}/{max_steps}; nothing to do")
            return TrainResult(self.step, math.nan, None, None)

        timer = StepTimer(self.device, flops_per_token(n_params, arch.n_layer, arch.n_embd, cfg.data.seq_len),
                          peak_flops(self.device), self.ctx.world_size)
        batches = batch_iterator(self.train_loader)
        printer = StepPrinter(self.log, max_steps, self.step, self.progress, self.ctx.is_main)
        self.steps_logged, self.peak_seen = 0, 0
        loss = val_loss = math.nan
        try:
            with StopSignals(self.log, self.device, self.ctx, lambda: self.step) as signals:
                while self.step < max_steps:
                    timer.start()
                    try:
                        tokens = batch_tokens_at(self.step, cfg.data)
                        result = self.train_step(self.step, self._step_batches(batches), self._micro_steps(tokens))
                    except NonFiniteStep as e:
                        raise self._diverged(self.step + 1, e.loss, e.grad_norm) from None
                    timing = timer.stop(tokens)
                    self.counter.step += 1
                    loss = result.loss
                    self._log_step(printer, result, timing)
                    val = self._periodic(max_steps)
                    val_loss = val if val is not None else val_loss
                    if signals.requested():
                        self._save_checkpoint()
                        self.log(f"stopped by {signals.name} at step {self.step}: checkpoint saved; continue with "
                                 f"the same command plus --resume")
                        return TrainResult(self.step, loss, val_loss, timer.steady_tokens_per_s(), True, 130)
        except OutputError as e:  # the disk filled up (or went read-only) mid-run
            raise OutputError(f"{e}; training stopped at step {self.step}: {self._last_good_checkpoint()}, "
                              f"continue from it with --resume") from None
        finally:
            printer.close()
        self.log(f"done: step {self.step}, loss {loss:.4f}, val loss {val_loss:.4f}; "
                 f"model in {self.run_dir.checkpoint_dir(self.step)}")
        return TrainResult(self.step, loss, val_loss, timer.steady_tokens_per_s())

    def _check_batch_warmup(self) -> None:
        """A batch-size warm-up's first step must still be whole micro-steps on every process."""
        data = self.config.data
        per_micro_step = data.batch_size * data.seq_len * self.ctx.world_size
        if data.batch_warmup_steps and data.batch_start_tokens % per_micro_step:
            raise GPT2LabError(f"data.batch_start_tokens ({data.batch_start_tokens:,}) is not a multiple of "
                           f"data.batch_size x data.seq_len x world size ({data.batch_size} x {data.seq_len} x "
                           f"{self.ctx.world_size} = {per_micro_step:,}); raise it, or lower data.batch_size")

    def _micro_steps(self, tokens: int) -> int:
        """Micro-steps of a step of `tokens` tokens: all of them but early in a batch-size warm-up."""
        return self.grad_accum * tokens // self.config.data.total_batch_tokens

    def _step_batches(self, batches):
        """This step's micro-batches: in shorter rows during a sequence-length warm-up."""
        length = seq_len_at(self.step, self.config.data)
        return batches if length == self.config.data.seq_len else in_rows_of(batches, length)

    def _periodic(self, max_steps: int):
        """Evaluation, samples and checkpoints due after the step just done; returns the val loss if computed."""
        eval_cfg, step, last = self.config.eval, self.step, self.step == max_steps
        due = lambda every: (every > 0 and step % every == 0) or last  # noqa: E731
        val_loss = None
        if due(eval_cfg.val_every) and self.val_loader is not None:  # None: validation off (val_batches 0)
            val_loss = self.validation_loss()
            averaged = self._averaged_validation_loss()
            self.metrics.write({"step": step, "val_loss": val_loss, **averaged, **self._peak_memory()})
            self.log(f"step {step}: val loss {val_loss:.4f}" + "".join(f", {k} {v:.4f}" for k, v in averaged.items()))
        if eval_cfg.hellaswag_every and due(eval_cfg.hellaswag_every):
            self._hellaswag()
        # rank 0 samples; under FSDP every rank computes the (same) samples with it, each forward pass being collective
        if eval_cfg.sample_every and eval_cfg.sample_count and eval_cfg.sample_tokens and due(eval_cfg.sample_every) \
                and (self.ctx.is_main or self.model.sharded):
            self._write_samples()
        if due(self.config.checkpoint.every) or last:
            self._save_checkpoint(final=last)
        return val_loss

    def _save_checkpoint(self, final: bool = False) -> None:
        try:
            self.checkpointer.save(final=final)
        except NonFiniteState as e:
            raise TrainingDiverged(f"{e}: {self._last_good_checkpoint()}; lower optim.lr or raise "
                                   f"schedule.warmup_steps and resume or restart") from None

    def _peak_memory(self) -> dict:
        # The highest reading so far, not the last: Linux's VmHWM can read a few hundred KiB lower than a moment
        # before (its resident size comes from per-CPU counters that lag).
        peak = memory.peak_bytes(self.device)
        if peak is None:
            return {}
        self.peak_seen = max(self.peak_seen, peak)
        return {"peak_mem_mb": round(self.peak_seen / 2**20, 1)}

    def _diverged(self, step: int, loss: float, norm: float) -> TrainingDiverged:
        return TrainingDiverged(f"loss became {loss} (grad norm {norm}) at step {step}; stopped without saving: "
                                f"{self._last_good_checkpoint()}; lower optim.lr or raise schedule.warmup_steps "
                                f"and resume or restart")

    def _last_good_checkpoint(self) -> str:
        checkpoint = self.run_dir.latest_checkpoint()
        return f"the last good checkpoint is {checkpoint}" if checkpoint else "no checkpoint was written yet"

    # --- evaluation, samples, checkpoints ---------------------------------------------------------------

    def validation_loss(self) -> float:
        self.val_loader.reset()  # the same fixed batches every time: comparable numbers across evaluations
        batches = [self.val_loader.next_batch() for _ in range(self.config.eval.val_batches)]
        # the raw model, never the compiled/DDP wrapper: evaluation must not trigger gradient sync
        return fixed_batches_loss(self.raw_model, batches, self.device, self.amp_dtype)

    def _averaged_validation_loss(self) -> dict:
        if self.average is None:
            return {}
        with self.average.swapped_in():
            return {"val_loss_ema": self.validation_loss()}

    def _hellaswag(self) -> None:
        from gpt2lab.eval.hellaswag import evaluate

        self.raw_model.eval()
        result = evaluate(self.raw_model, self.hellaswag, batch_size=8, device=self.device,
                          autocast_dtype=self.amp_dtype)
        self.raw_model.train()
        self.metrics.write({"step": self.step, "hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm})
        self.log(f"step {self.step}: hellaswag acc {result.acc:.4f} acc_norm {result.acc_norm:.4f} (n={result.n})")

    def _write_samples(self) -> None:
        from gpt2lab.sampling.texts import SampleSettings, prompt_tokens, sample_tokens
        from gpt2lab.storage.atomic import reporting_refusals
        from gpt2lab.tokenizer import get_tokenizer

        eval_cfg, tokenizer, model = self.config.eval, get_tokenizer(), self.raw_model
        settings = SampleSettings(max_new_tokens=eval_cfg.sample_tokens, top_k=eval_cfg.sample_top_k or None,
                                  stop_at_end_of_text=False)
        prompt = prompt_tokens(tokenizer, eval_cfg.sample_prompt, model.config.block_size)
        model.eval()
        # each sample draws from a generator of its own: the training RNG stream (and so exact resume) is untouched
        rows = sample_tokens(model, tokenizer, prompt, settings, seed=self.config.runtime.seed + self.step,
                             count=eval_cfg.sample_count, batch_size=eval_cfg.sample_count)
        texts = [tokenizer.decode(prompt + row) for _, row in rows]
        model.train()
        if not self.ctx.is_main:
            return
        block = "".join(f"--- step {self.step}, sample {i + 1} ---\n{t}\n" for i, t in enumerate(texts))
        path = self.run_dir.samples_file
        with reporting_refusals(path), open(path, "a", encoding="utf-8") as f:
            f.write(block)
        self.metrics.write_text(self.step, "samples", block)
        self.log(f"step {self.step}: sample: {texts[0][:200]!r}")

    def _log_step(self, printer: StepPrinter, result, timing: dict) -> None:
        record = {"step": self.step, "loss": result.loss, "lr": result.lr, "grad_norm": result.grad_norm, **timing}
        self.steps_logged += 1
        if self.steps_logged <= PEAK_MEMORY_STEPS:
            record.update(self._peak_memory())
        self.metrics.write(record)
        if self.ctx.is_main:
            printer.step(self.step, result, timing)


def train(config: TrainConfig, run_dir, resume=False, overwrite=False, log=None, progress=True) -> TrainResult:
    return Trainer(config, run_dir, resume=resume, overwrite=overwrite, log=log, progress=progress).run()
