"""The training loop: one code path for a laptop CPU, one GPU, and many GPUs on many machines (torchrun + DDP).

    step = grad_accum micro-batches (forward, loss / grad_accum, backward; gradients sync on the last only)
           -> clip -> AdamW (or Muon + AdamW) with the scheduled LR -> log -> (val loss, samples, HellaSwag, checkpoint)

Everything that decides what the next step computes (weights, optimizer moments, loader position, RNG) is in the
checkpoint, so `--resume` continues with bit-identical losses on CPU. Each step trains on the same tokens whatever
the number of processes (for the same total batch), so a run may also resume with more or fewer processes: the
same token stream, losses equal up to float rounding.
"""

import contextlib
import dataclasses
import math
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gpt2lab.runtime import distributed
from gpt2lab.runtime import memory
from gpt2lab.storage.atomic import OutputError, reporting_refusals
from gpt2lab.runtime.device import autocast, autocast_dtype, keep_freed_memory, resolve_device
from gpt2lab.errors import GPT2LabError
from gpt2lab.model.gpt import GPT, load_model
from gpt2lab.runtime.perf import flops_per_token, peak_flops
from gpt2lab.storage.run_directory import MetricsLog, RunDirectory
from gpt2lab.train.checkpointing import Checkpointer, OptionalState, SameOnEveryRank
from gpt2lab.train import plan
from gpt2lab.train.config import AUTO, TrainConfig, incompatible_fields, read_run_config, resolve_config, to_toml
from gpt2lab.train.metrics import StepTimer
from gpt2lab.train.optim import describe_optimizer, make_optimizer, set_lr
from gpt2lab.train.trackers import check_trackers, make_sinks
from gpt2lab.train.plan import grad_accum_steps


# `peak_mem_mb` (the measured peak, to hold against `gpt2lab train --dry-run`'s estimate) is logged on the first
# steps of each invocation, where a CPU's heap settles (gpt2lab.runtime.memory.CPU_HEAP_SLACK), and with every val loss.
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


# ------------------------------------------------------------------------------------------------ pieces


def train_step(model, batches, grad_accum: int, amp_dtype, scaler, device, ddp: bool) -> torch.Tensor:
    """Forward/backward over `grad_accum` micro-batches; returns the mean loss (detached). Gradients accumulate.

    Each micro-loss is divided by grad_accum, so the summed gradient is the gradient of the mean loss over the
    whole step's tokens, exactly as one big batch would give. Under DDP the all-reduce of gradients is skipped
    (`no_sync`) for all but the last micro-step; the context is entered before that micro-step's forward pass,
    which is where DDP decides whether its backward hooks will synchronise.
    """
    loss_sum = torch.zeros((), device=device)
    for micro_step in range(grad_accum):
        x, y = next(batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        last = micro_step == grad_accum - 1
        sync = contextlib.nullcontext() if (last or not ddp) else model.no_sync()
        with sync:
            with autocast(device, amp_dtype):
                loss = model(x, y)[1]  # not the logits: nothing needs them, and they are the size of the vocabulary
            loss = loss / grad_accum
            loss_sum += loss.detach()
            (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss_sum


def batch_iterator(loader):
    while True:
        yield loader.next_batch()


# ------------------------------------------------------------------------------------------------ the trainer


class Trainer:
    def __init__(self, config: TrainConfig, run_dir, resume: bool = False, overwrite: bool = False, log=None,
                 progress: bool = True):
        self.config, self.run_dir = config, RunDirectory(run_dir)  # rank 0 locks it for the trainer's whole life
        self.resume, self.overwrite = resume, overwrite
        self.progress = progress
        self._log = log or print
        self.stop_signal = None
        self.ctx, self.step = distributed.DistContext(), 0
        self.metrics: MetricsLog | None = None  # set up by setup()

    def log(self, line: str) -> None:
        if self.ctx.is_main:
            self._log(line)

    # --- set-up ---------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        check_trackers(cfg.log)  # a missing tracker package is one line now, not an error after the first steps
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        device = resolve_device(cfg.runtime.device)
        self.ctx = distributed.setup(device)
        self.device = distributed.process_device(device, self.ctx)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~8x fp32 throughput, loss unaffected
            torch.backends.cudnn.allow_tf32 = True
            memory.cuda_context_bytes(self.device)  # taken now, before the model: the context alone
        else:
            keep_freed_memory()  # CPU: up to 2x faster steps (no page faults on every step's big buffers)

        self._lock_run_dir()
        checkpoint = self._checkpoint_to_resume()  # every rank checks before rank 0 writes anything
        cfg = self.config  # a resumed "auto" batch size is the run's own
        self._check_data()
        self.raw_model = self._make_model(checkpoint)
        self.amp_dtype = autocast_dtype(cfg.runtime.precision, self.device)
        if cfg.data.batch_size == AUTO:
            self.config = cfg = self._auto_batch_size()  # the resolved number is what config.toml and resume see
        self.grad_accum = grad_accum_steps(cfg.data.total_batch_tokens, cfg.data.batch_size, cfg.data.seq_len,
                                           self.ctx.world_size, cfg.data.grad_accum)
        self.train_loader, self.val_loader = self._make_loaders()
        self._check_memory()
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.optimizer = make_optimizer(self.raw_model, cfg.optim, self.device)
        self.checkpointer = self._make_checkpointer()
        self.step = 0
        if checkpoint is not None:
            self._restore(checkpoint)

        model = self.raw_model
        if cfg.runtime.compile:
            model = torch.compile(model)  # evaluation, sampling and checkpoints keep using self.raw_model
        if self.ctx.enabled:
            model = DDP(model, device_ids=[self.ctx.local_rank] if self.device.type == "cuda" else None)
        self.model = model
        self.hellaswag = self._load_hellaswag()
        distributed.barrier()
        if self.ctx.is_main:
            resumed_step = self.step if checkpoint is not None else None
            self.run_dir.prepare(to_toml(cfg), overwrite=self.overwrite, resumed_step=resumed_step)
        distributed.barrier()
        sinks = []  # dashboards: rank 0 only, like metrics.jsonl
        if self.ctx.is_main:
            resumed_step = self.step if checkpoint is not None else None
            sinks = make_sinks(cfg.log, self.run_dir, cfg.to_dict(), resumed_step)
        self.metrics = MetricsLog(self.run_dir.metrics_file, enabled=self.ctx.is_main, sinks=sinks)

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

    def _checkpoint_to_resume(self) -> Path | None:
        """The checkpoint to resume from (or None), once the run directory and the config allow it."""
        checkpoint = self.run_dir.checkpoint_to_resume(self.resume, self.overwrite)
        if checkpoint is not None:
            saved = resolve_config(base=read_run_config(self.run_dir.path))
            if self.config.data.batch_size == AUTO:  # chosen when the run started: the token stream depends on it
                self.config = dataclasses.replace(self.config, data=dataclasses.replace(
                    self.config.data, batch_size=saved.data.batch_size))
                self.log(f"data.batch_size auto: {saved.data.batch_size}, as the run chose when it started")
            differences = incompatible_fields(saved, self.config)
            if differences:
                raise GPT2LabError(f"--resume: the config differs from the run's saved config in "
                                   f"{'; '.join(differences)}; resume with the original values or start a new run")
        return checkpoint

    def _check_data(self) -> None:
        from gpt2lab.data import read_manifest

        manifest = read_manifest(self.config.data.dir)
        self.data_vocab_size = manifest["vocab_size"]
        if manifest["vocab_size"] > self.config.model.vocab_size and self.config.model.init == "scratch":
            raise GPT2LabError(f"{self.config.data.dir} has token ids up to {manifest['vocab_size'] - 1} but "
                               f"model.vocab_size is {self.config.model.vocab_size}; set model.vocab_size="
                               f"{manifest['vocab_size']} or more (50304 is the fast choice)")
        self.eot_token = manifest["eot_token"]

    def _make_loaders(self):
        from gpt2lab.data import TokenLoader

        data, ctx = self.config.data, self.ctx
        # The train loader knows the step size (processes x accumulation), so each step takes the same chunks
        # whatever the split between processes and micro-steps.
        train = TokenLoader(data.dir, "train", data.batch_size, data.seq_len, ctx.rank, ctx.world_size, data.seed,
                            data.shuffle, grad_accum=self.grad_accum)
        val = TokenLoader(data.dir, "val", data.batch_size, data.seq_len, ctx.rank, ctx.world_size, data.seed,
                          shuffle=False)
        return train, val

    def _make_model(self, checkpoint) -> GPT:
        cfg = self.config
        if checkpoint is not None:
            model = load_model(checkpoint, device=self.device)
        elif cfg.model.init == "scratch":
            torch.manual_seed(cfg.runtime.seed)  # same initial weights on every rank (DDP also broadcasts them)
            model = GPT(cfg.model.gpt_config()).to(self.device)
        else:
            model = load_model(cfg.model.init, device=self.device, dtype=torch.float32)  # fine-tuning
            if self.data_vocab_size > model.config.vocab_size:
                raise GPT2LabError(f"model {cfg.model.init} has a vocabulary of {model.config.vocab_size} but the "
                                   f"data uses {self.data_vocab_size} token ids")
        if cfg.data.seq_len > model.config.block_size:
            raise GPT2LabError(f"data.seq_len ({cfg.data.seq_len}) is longer than the model's context "
                               f"({model.config.block_size}); lower data.seq_len or raise model.block_size")
        torch.manual_seed(cfg.runtime.seed + self.ctx.rank)
        return model.train()

    def _auto_batch_size(self) -> TrainConfig:
        """data.batch_size = "auto": the largest micro-batch whose estimated step fits this device (plan.py), run
        once for real (forward + backward; on a GPU, smaller ones after an out-of-memory error), the same on every
        rank. The accumulation then follows from data.total_batch_tokens, which stays as it is."""
        cfg, arch, world = self.config, self.raw_model.config, self.ctx.world_size
        device = plan.device_spec(self.device, self.amp_dtype)
        params = plan.parameter_counts(arch, cfg.optim.name)
        resident = 4 * params.total if self.device.type == "cpu" else 0  # the model, already built
        model = plan.MemoryModel(arch, params, device, world, plan.runtime_bytes(device, cfg.optim.name) - resident)
        local = int(os.environ.get("LOCAL_WORLD_SIZE", 1)) if self.device.type == "cpu" else 1
        chosen = plan.choose_batch_size(model, cfg.data.total_batch_tokens, cfg.data.seq_len, local)
        choices = [b for b in plan.batch_size_choices(cfg.data.total_batch_tokens, cfg.data.seq_len, world)
                   if b <= chosen]
        hold_back = model.estimate(chosen, cfg.data.seq_len, 1).optimizer + (4 * params.total if world > 1 else 0)
        chosen = plan.confirm_batch_size(self.raw_model, choices, cfg.data.seq_len, self.device, self.amp_dtype,
                                         hold_back, log=self.log)
        chosen = min(distributed.all_gather_object(chosen))
        accum = cfg.data.total_batch_tokens // (chosen * cfg.data.seq_len * world)
        estimate = model.estimate(chosen, cfg.data.seq_len, accum).total
        self.log(f"data.batch_size auto: {chosen} ({accum} micro-step(s) per step of {cfg.data.total_batch_tokens:,} "
                 f"tokens; ~{estimate / 2**30:.2f} GiB per process estimated, "
                 f"{_size_or_unknown(device.memory_bytes)} {device.name} has; ran a forward + backward)")
        return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=chosen))

    def _check_memory(self) -> None:
        """On a CPU, refuse a micro-batch that cannot fit in memory before the first step tries (and the OOM
        killer ends it, or something else). A GPU reports its own out-of-memory error, so it is not checked."""
        if self.device.type != "cpu":
            return
        data, samples, arch = self.config.data, self.config.eval, self.raw_model.config
        per_process = memory.forward_bytes(arch, data.batch_size, data.seq_len, training=True,
                                           bytes_per_value=(self.amp_dtype or torch.float32).itemsize)
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", 1))  # torchrun: each process on this machine has one
        shape = f"x data.seq_len {data.seq_len}" + (f", x {processes} processes here" if processes > 1 else "")
        memory.check_fits(f"data.batch_size {data.batch_size} ({shape})", per_process * processes, self.device,
                          "for one training micro-step")
        if samples.sample_every and samples.sample_count:  # rank 0 samples all of them in one batch
            sampling = memory.forward_bytes(arch, samples.sample_count, arch.block_size, scored=1,
                                            cached=arch.block_size)
            memory.check_fits(f"eval.sample_count {samples.sample_count}", sampling, self.device,
                              "to sample during training")

    def _make_checkpointer(self) -> Checkpointer:
        """The trainer's pieces of state, by name: with the weights and each process's RNG (which the checkpointer
        saves itself), everything that decides what the next step computes."""
        return Checkpointer(self.run_dir, self.raw_model, self.ctx, self.device,
                            states={"optimizer": self.optimizer, "scaler": OptionalState(self.scaler)},
                            rank_states={"loader": SameOnEveryRank(self.train_loader)},
                            config=self.config.to_dict(), keep=self.config.checkpoint.keep,
                            seed=self.config.runtime.seed)

    def _restore(self, checkpoint: Path) -> None:
        saved = self.checkpointer.load(checkpoint)  # the weights came with the model (_make_model)
        self.step = int(saved["step"])
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

        return tokenize(load_examples(eval_cfg.hellaswag_data or None, limit=eval_cfg.hellaswag_limit or None))

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
        bar = self._progress_bar(max_steps)
        self.steps_logged, self.peak_seen = 0, 0
        loss = val_loss = math.nan
        previous = self._install_signal_handlers()
        try:
            while self.step < max_steps:
                it = self.step  # 0-based index of the step being computed; metrics use steps done (it + 1)
                lr = set_lr(self.optimizer, it, cfg.optim, cfg.schedule)  # every group, each from its own peak
                timer.start()
                self.optimizer.zero_grad(set_to_none=True)
                loss_t = train_step(self.model, batches, self.grad_accum, self.amp_dtype, self.scaler, self.device,
                                    self.ctx.enabled)
                distributed.all_reduce_mean(loss_t)
                if self.scaler is not None:
                    self.scaler.unscale_(self.optimizer)
                # Clipping scales all gradients (Muon's and AdamW's) by one factor, before either optimizer. Muon's
                # orthogonalised update is scale-free, so for its matrices clipping only changes how much this
                # step's gradient weighs in the momentum buffer, not the size of the step.
                clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
                norm = float(torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip))
                loss = float(loss_t)
                if not math.isfinite(loss) or (self.scaler is None and not math.isfinite(norm)):
                    raise self._diverged(it + 1, loss, norm)
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                timing = timer.stop(cfg.data.total_batch_tokens)
                self.step = it + 1
                self._log_step(bar, loss, lr, norm, timing)
                val = self._periodic(max_steps)
                val_loss = val if val is not None else val_loss
                if self._stop_requested():
                    self.checkpointer.save(self.step)
                    self.log(f"stopped by {self.stop_signal} at step {self.step}: checkpoint saved; continue with "
                             f"the same command plus --resume")
                    return TrainResult(self.step, loss, val_loss, timer.steady_tokens_per_s(), True, 130)
        except OutputError as e:  # the disk filled up (or went read-only) mid-run
            raise OutputError(f"{e}; training stopped at step {self.step}: {self._last_good_checkpoint()}, "
                              f"continue from it with --resume") from None
        finally:
            self._restore_signal_handlers(previous)
            if bar is not None:
                bar.close()
        self.log(f"done: step {self.step}, loss {loss:.4f}, val loss {val_loss:.4f}; "
                 f"model in {self.run_dir.checkpoint_dir(self.step)}")
        return TrainResult(self.step, loss, val_loss, timer.steady_tokens_per_s())

    def _periodic(self, max_steps: int):
        """Evaluation, samples and checkpoints due after the step just done; returns the val loss if computed."""
        eval_cfg, step, last = self.config.eval, self.step, self.step == max_steps
        due = lambda every: (every > 0 and step % every == 0) or last  # noqa: E731
        val_loss = None
        if due(eval_cfg.val_every) and eval_cfg.val_batches > 0:
            val_loss = self.validation_loss()
            self.metrics.write({"step": step, "val_loss": val_loss, **self._peak_memory()})
            self.log(f"step {step}: val loss {val_loss:.4f}")
        if eval_cfg.hellaswag_every and due(eval_cfg.hellaswag_every):
            self._hellaswag()
        if eval_cfg.sample_every and eval_cfg.sample_count and due(eval_cfg.sample_every) and self.ctx.is_main:
            self._write_samples()
        if due(self.config.checkpoint.every) or last:
            self.checkpointer.save(self.step)
        return val_loss

    def _peak_memory(self) -> dict:
        # The highest reading so far, not the last: Linux's VmHWM is max(recorded high-water mark, resident size now),
        # the kernel records the high-water mark only at some events (unmapping, exit), and the resident size is
        # read from per-CPU counters that lag by a few hundred KiB, so two readings can go down by that much.
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

    @torch.no_grad()
    def validation_loss(self) -> float:
        model = self.raw_model  # never the compiled/DDP wrapper: evaluation must not trigger gradient sync
        model.eval()
        self.val_loader.reset()  # the same fixed batches every time: comparable numbers across evaluations
        total = torch.zeros((), device=self.device)
        n = self.config.eval.val_batches
        for _ in range(n):
            x, y = self.val_loader.next_batch()
            with autocast(self.device, self.amp_dtype):
                _, loss = model(x.to(self.device), y.to(self.device))
            total += loss.float()
        model.train()
        return float(distributed.all_reduce_mean(total / n))

    def _hellaswag(self) -> None:
        from gpt2lab.eval.hellaswag import evaluate

        self.raw_model.eval()
        result = evaluate(self.raw_model, self.hellaswag, batch_size=8, device=self.device,
                          autocast_dtype=self.amp_dtype)
        self.raw_model.train()
        self.metrics.write({"step": self.step, "hellaswag_acc": result.acc, "hellaswag_acc_norm": result.acc_norm})
        self.log(f"step {self.step}: hellaswag acc {result.acc:.4f} acc_norm {result.acc_norm:.4f} (n={result.n})")

    @torch.no_grad()
    def _write_samples(self) -> None:
        from gpt2lab.sampling.decode import generate
        from gpt2lab.tokenizer import get_tokenizer

        eval_cfg, tok = self.config.eval, get_tokenizer()
        model = self.raw_model
        model.eval()
        prompt = tok.encode(eval_cfg.sample_prompt) or [self.eot_token]
        idx = torch.tensor([prompt] * eval_cfg.sample_count, dtype=torch.long, device=self.device)
        max_new = max(0, min(eval_cfg.sample_tokens, model.config.block_size - idx.size(1)))
        # generate uses its own seeded generator: the training RNG stream (and so exact resume) is untouched
        out = generate(model, idx, max_new, temperature=1.0, top_k=eval_cfg.sample_top_k or None,
                       seed=self.config.runtime.seed + self.step, vocab_size=min(tok.n_vocab, model.config.vocab_size))
        model.train()
        texts = [tok.decode([t for t in row.tolist() if t < tok.n_vocab]) for row in out]
        block = "".join(f"--- step {self.step}, sample {i + 1} ---\n{t}\n" for i, t in enumerate(texts))
        path = self.run_dir.samples_file
        with reporting_refusals(path), open(path, "a", encoding="utf-8") as f:
            f.write(block)
        self.metrics.write_text(self.step, "samples", block)
        self.log(f"step {self.step}: sample: {texts[0][:200]!r}")

    # --- console, signals ---------------------------------------------------------------------------------

    def _progress_bar(self, max_steps: int):
        if not (self.progress and self.ctx.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=max_steps, initial=self.step, unit="step", dynamic_ncols=True, leave=False)

    def _log_step(self, bar, loss, lr, norm, timing) -> None:
        record = {"step": self.step, "loss": loss, "lr": lr, "grad_norm": norm, **timing}
        self.steps_logged += 1
        if self.steps_logged <= PEAK_MEMORY_STEPS:
            record.update(self._peak_memory())
        self.metrics.write(record)
        if not self.ctx.is_main:
            return
        mfu = f" | mfu {timing['mfu'] * 100:.1f}%" if "mfu" in timing else ""
        line = (f"step {self.step:>6}/{self.config.schedule.max_steps} | loss {loss:.4f} | lr {lr:.2e} | "
                f"norm {norm:.3f} | {timing['ms_per_step']:.0f} ms | {timing['tokens_per_s']:,.0f} tok/s{mfu}")
        if bar is not None:
            bar.write(line)  # printed above the bar, which stays at the bottom
            bar.update(1)
        else:
            self._log(line)

    def _install_signal_handlers(self):
        def handler(signum, frame):
            if self.stop_signal is not None:  # a second Ctrl-C: stop now (a half checkpoint is discarded)
                raise KeyboardInterrupt
            self.stop_signal = signal.Signals(signum).name
            self.log(f"{self.stop_signal} received: finishing step {self.step + 1}, then saving a checkpoint "
                     f"(press Ctrl-C again to quit without saving)")

        previous = {}
        with contextlib.suppress(ValueError):  # not the main thread: no handlers
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    def _stop_requested(self) -> bool:
        flag = torch.tensor(1.0 if self.stop_signal else 0.0)
        if self.ctx.enabled:  # every rank must stop at the same step (the checkpoint is collective)
            if self.device.type == "cuda":
                flag = flag.to(self.device)
            distributed.all_reduce_sum(flag)
        if flag.item() > 0 and self.stop_signal is None:
            self.stop_signal = "a signal on another rank"
        return flag.item() > 0


def _size_or_unknown(n: int | None) -> str:
    return "unknown memory" if n is None else f"{n / 2**30:.1f} GiB"


def train(config: TrainConfig, run_dir, resume=False, overwrite=False, log=None, progress=True) -> TrainResult:
    return Trainer(config, run_dir, resume=resume, overwrite=overwrite, log=log, progress=progress).run()
