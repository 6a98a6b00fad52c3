"""What the training loop (gpt2lab/train/trainer.py) really applies, watched from outside (in-process, tiny model):
the scheduled LR is the one the optimizer steps with, clipping bounds the gradient the optimizer sees, the logged
metrics are the values computed (the peak memory too), the global RNG continues across a resume, bf16/fp16 autocast
and runtime.compile take effect, the loss falls, and a checkpoint that cannot be written names the last good one.

Each test observes the optimizer through its public step hooks and the micro-steps by wrapping `TrainStep.forward_backward`: no
seam in the trainer, so a feature computed and logged but not applied fails here.
"""

import json
import math
import os

import pytest
import torch

from gpt2lab.data import TokenLoader
from gpt2lab.eval import hellaswag
from gpt2lab.model.gpt import GPT, GPTConfig, load_model
from gpt2lab.storage.atomic import OutputError
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train, trainer as trainer_module
from gpt2lab.train.schedule import lr_at
from gpt2lab.train.step import TrainStep

from tests.train_utils import (cli_flags, losses, metrics, quiet, run_main, step_records, tiny_config, write_dataset,
                               write_hellaswag)


REAL_FORWARD_BACKWARD = TrainStep.forward_backward


def grad_norm(params) -> float:
    """The total gradient norm as clip_grad_norm_ computes it (float32 norms of the tensors, then their norm)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    return float(torch.stack([g.norm() for g in grads]).norm())


class OptimizerSpy:
    """Records, at every optimizer step, each group's LR, the norm of the gradients it is about to apply, and
    (after the step) the largest change of a parameter that has no weight decay."""

    def __init__(self, monkeypatch):
        self.steps = []
        real = trainer_module.make_optimizer

        def make_optimizer(model, optim, device):
            optimizer = real(model, optim, device)
            optimizer.register_step_pre_hook(self._before)
            optimizer.register_step_post_hook(self._after)
            return optimizer

        monkeypatch.setattr(trainer_module, "make_optimizer", make_optimizer)

    def _before(self, optimizer, args, kwargs):
        params = [p for g in optimizer.param_groups for p in g["params"]]
        no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
        self._old = [p.detach().clone() for p in no_decay]
        self.steps.append({"lr": [g["lr"] for g in optimizer.param_groups], "applied_norm": grad_norm(params)})

    def _after(self, optimizer, args, kwargs):
        no_decay = [p for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]]
        self.steps[-1]["max_change"] = max(float((p.detach() - old).abs().max()) for p, old in zip(no_decay, self._old))


def spy_micro_steps(monkeypatch, before_step=None):
    """Wrap TrainStep.forward_backward; returns the list of gradient norms right after each step's backward
    passes."""
    norms = []
    real = REAL_FORWARD_BACKWARD

    def forward_backward(step, batches, micro_steps=None):
        if before_step is not None:
            before_step(len(norms))
        loss = real(step, batches, micro_steps)
        norms.append(grad_norm(step.model.parameters()))
        return loss

    monkeypatch.setattr(TrainStep, "forward_backward", forward_backward)
    return norms


def test_the_optimizer_steps_with_the_scheduled_lr(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    spy = OptimizerSpy(monkeypatch)
    config = tiny_config(data, schedule__max_steps=8, schedule__warmup_steps=3, optim__lr=3e-3, optim__min_lr=3e-4)
    train(config, tmp_path / "run", log=quiet)

    expected = [lr_at(i, config.optim, config.schedule) for i in range(8)]
    assert len(set(expected)) == 8  # warmup and cosine: every step a different LR
    assert [s["lr"] for s in spy.steps] == [[lr, lr] for lr in expected]  # both groups, every step
    assert [r["lr"] for r in step_records(tmp_path / "run")] == expected  # what is logged is what was applied
    # and the optimizer really moves by it: Adam's first update is lr * g / (|g| + eps), i.e. lr for any
    # parameter with a gradient well above eps (the no-decay group: biases and LayerNorm gains)
    assert spy.steps[0]["max_change"] == pytest.approx(expected[0], rel=1e-3)
    assert expected[0] == pytest.approx(config.optim.lr / 3)  # a third of the peak, not the peak


@pytest.mark.parametrize("clip", [0.05, 0.0, 1e6], ids=["clipping", "off", "above-the-norm"])
def test_clipping_bounds_the_gradient_the_optimizer_applies(tmp_path, monkeypatch, clip):
    data = write_dataset(tmp_path / "data")
    spy = OptimizerSpy(monkeypatch)
    raw_norms = spy_micro_steps(monkeypatch)
    train(tiny_config(data, schedule__max_steps=4, optim__grad_clip=clip), tmp_path / "run", log=quiet)

    logged = [r["grad_norm"] for r in step_records(tmp_path / "run")]
    applied = [s["applied_norm"] for s in spy.steps]
    assert len(raw_norms) == len(logged) == len(applied) == 4
    assert logged == pytest.approx(raw_norms, rel=1e-5)  # the log shows the norm before clipping
    assert min(raw_norms) > 0.05 * 10  # so a clip of 0.05 has real work to do
    if clip == 0.05:
        assert applied == pytest.approx([clip] * 4, rel=1e-3)
    else:  # no clipping (0 = off) or a limit above the norm: the gradient is applied as computed
        assert applied == pytest.approx(raw_norms, rel=1e-5)


def test_logged_metrics_are_the_values_computed(tmp_path):
    data = write_dataset(tmp_path / "data")
    examples_file = write_hellaswag(tmp_path / "hellaswag.jsonl")
    run = tmp_path / "run"
    # 2 x 16 tokens per micro-batch, 64 per step: 2 micro-steps, so the logged loss is a mean of two
    config = tiny_config(data, data__batch_size=2, schedule__max_steps=4, eval__val_every=2, eval__val_batches=3,
                         eval__hellaswag_every=4, eval__hellaswag_data=examples_file, checkpoint__every=2,
                         checkpoint__keep=5)
    train(config, run, log=quiet)
    records = metrics(run)
    steps = step_records(run)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"step", "loss", "lr", "grad_norm", "ms_per_step", "tokens_per_s"} <= set(r)
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("loss", "lr", "grad_norm", "ms_per_step"))
        assert r["tokens_per_s"] * r["ms_per_step"] / 1000 == pytest.approx(64, rel=1e-6)  # tokens of one step

    # step 1's loss: the initial model's mean loss over the step's two micro-batches, from the same loader
    d = config.data
    torch.manual_seed(config.runtime.seed)
    m = config.model
    initial = GPT(GPTConfig(block_size=m.block_size, vocab_size=m.vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                            n_embd=m.n_embd))
    loader = TokenLoader(d.dir, "train", d.batch_size, d.seq_len, 0, 1, d.seed, d.shuffle)
    with torch.no_grad():
        micro = [initial(*loader.next_batch())[1].item() for _ in range(2)]
    assert steps[0]["loss"] == pytest.approx(sum(micro) / 2, rel=1e-5)

    # val_loss at steps 2 and 4: that checkpoint's mean loss over the first val_batches batches of the val split,
    # the same batches every time
    val = {r["step"]: r["val_loss"] for r in records if "val_loss" in r}
    assert sorted(val) == [2, 4]
    for step, value in val.items():
        model = load_model(run / "checkpoints" / f"step_{step:08d}")
        loader = TokenLoader(d.dir, "val", d.batch_size, d.seq_len, 0, 1, d.seed, shuffle=False)
        with torch.no_grad():
            expected = sum(model(*loader.next_batch())[1].item() for _ in range(3)) / 3
        assert value == pytest.approx(expected, rel=1e-5), step

    # HellaSwag at step 4: what `gpt2lab eval` computes for that checkpoint
    (logged,) = [r for r in records if "hellaswag_acc" in r]
    result = hellaswag.evaluate(load_model(run / "checkpoints" / "step_00000004"),
                                hellaswag.load_examples(examples_file))
    assert logged["step"] == 4
    assert result.acc != result.acc_norm  # otherwise swapping them would go unnoticed
    assert (logged["hellaswag_acc"], logged["hellaswag_acc_norm"]) == (result.acc, result.acc_norm)


class Crash(Exception):
    """Stands in for a kill -9 between two steps."""


def test_resume_continues_the_global_rng_stream(tmp_path, monkeypatch):
    """Nothing in gpt2lab's own loop draws from the global RNG, but a user's model may (dropout in a fine-tuning
    model, say): after a resume it must continue the uninterrupted run's stream, not restart from the seed.
    (In-process, so the crash can come at an exact step; test_train_resume kills a real process.)"""
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, schedule__max_steps=8, checkpoint__every=4)
    draws = []

    def draw_like_dropout(step_index):
        draws.append(torch.rand(4))  # from the global RNG, as nn.Dropout does

    spy_micro_steps(monkeypatch, before_step=draw_like_dropout)
    train(config, tmp_path / "straight", log=quiet)
    straight, draws[:] = list(draws), []

    def crash_at_step_7(step_index):
        if step_index == 6:
            raise Crash
        draw_like_dropout(step_index)

    spy_micro_steps(monkeypatch, before_step=crash_at_step_7)
    with pytest.raises(Crash):
        train(config, tmp_path / "killed", log=quiet)
    assert [step for step, _ in RunDirectory(tmp_path / "killed").checkpoints()] == [4]
    draws[:] = []
    spy_micro_steps(monkeypatch, before_step=draw_like_dropout)
    train(config, tmp_path / "killed", resume=True, log=quiet)

    # what the killed run logged after its checkpoint (steps 5 and 6) was dropped and redone: one record per step
    assert [r["step"] for r in step_records(tmp_path / "killed")] == list(range(1, 9))
    resumed_losses = [r["loss"] for r in step_records(tmp_path / "killed")]
    assert resumed_losses == [r["loss"] for r in step_records(tmp_path / "straight")]
    assert len(straight) == 8 and len(draws) == 4
    assert not torch.equal(straight[0], straight[4])  # the stream does move: restarting it would show
    for step, (got, expected) in enumerate(zip(draws, straight[4:]), start=5):
        assert torch.equal(got, expected), f"step {step}: the resumed run drew other random numbers"


def test_autocast_precisions_run_the_forward_in_that_dtype_and_fp16_unscales(tmp_path, monkeypatch):
    """bf16 / fp16 autocast on the CPU (the code path GPUs take): the logits come out in that dtype, and the
    logged loss and gradient norm stay those of fp32; fp16's GradScaler is unscaled before clipping (else the
    norm would read 65,536 times too large) and its state goes into the checkpoint."""
    data = write_dataset(tmp_path / "data")
    seen = {}

    def run(precision):
        logits_dtypes = seen.setdefault(precision, set())
        real = REAL_FORWARD_BACKWARD

        def forward_backward(step, batches, micro_steps=None):
            handle = step.model.raw.lm_head.register_forward_hook(lambda m, i, out: logits_dtypes.add(out.dtype))
            try:
                return real(step, batches, micro_steps)
            finally:
                handle.remove()

        monkeypatch.setattr(TrainStep, "forward_backward", forward_backward)
        run_dir = tmp_path / precision
        train(tiny_config(data, schedule__max_steps=3, runtime__precision=precision), run_dir, log=quiet)
        state = torch.load(run_dir / "checkpoints" / "step_00000003" / "training_state.pt", weights_only=True)
        return step_records(run_dir), state

    reference, fp32_state = run("fp32")
    assert seen["fp32"] == {torch.float32} and not fp32_state["scaler"]
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        records, state = run(precision)
        assert seen[precision] == {dtype}, precision
        for got, expected in zip(records, reference):
            assert got["loss"] == pytest.approx(expected["loss"], rel=1e-3), precision
            assert got["grad_norm"] == pytest.approx(expected["grad_norm"], rel=2e-2), precision
        assert bool(state["scaler"]) == (precision == "fp16"), precision
    assert state["scaler"]["scale"] > 1  # fp16: the loss really was scaled


def test_runtime_compile_trains_through_the_compiled_module(tmp_path, monkeypatch):
    """runtime.compile: the training forward passes go through what torch.compile returned (faked here: real
    compilation takes a minute on a CPU), while evaluation and checkpoints use the plain module."""
    data = write_dataset(tmp_path / "data")
    compiled = []

    class Compiled(torch.nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod, self.calls = module, 0

        def forward(self, *args, **kwargs):
            self.calls += 1
            return self._orig_mod(*args, **kwargs)

    def fake_compile(module, *args, **kwargs):
        compiled.append(Compiled(module))
        return compiled[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    # 2 micro-steps per step, 3 steps, validation at the end
    train(tiny_config(data, data__batch_size=2, schedule__max_steps=3, eval__val_every=3, runtime__compile="true"),
          tmp_path / "run", log=quiet)
    assert len(compiled) == 1 and compiled[0].calls == 3 * 2
    assert load_model(tmp_path / "run").state_dict().keys() == compiled[0]._orig_mod.state_dict().keys()

    compiled.clear()
    train(tiny_config(data, schedule__max_steps=1), tmp_path / "plain", log=quiet)
    assert compiled == []  # off by default


def test_loss_decreases_over_a_few_dozen_steps(tmp_path):
    data = write_dataset(tmp_path / "data")
    hellaswag = tmp_path / "hellaswag.jsonl"  # four tiny examples in the official format: the in-loop hook runs
    hellaswag.write_text("".join(json.dumps({"ctx": f"A man {i}", "endings": ["runs.", "sits.", "eats.", "is."],
                                             "label": i}) + "\n" for i in range(4)))
    result = train(tiny_config(data, schedule__max_steps=40, eval__val_every=40, eval__hellaswag_every=20,
                               eval__hellaswag_data=hellaswag), tmp_path / "run", log=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "hellaswag_acc_norm" in r] == [20, 40]
    by_step = losses(tmp_path / "run")
    assert sorted(by_step) == list(range(1, 41))
    first, last = sum(by_step[s] for s in range(1, 4)) / 3, sum(by_step[s] for s in range(38, 41)) / 3
    assert first > 10.0 and last < first - 3.0, (first, last)
    assert math.isfinite(result.val_loss) and result.val_loss < first - 2.5


def test_an_explicit_accumulation_that_agrees_trains_and_logs_the_peak_memory(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=2, data__batch_size=2, data__grad_accum=2)
    result = run_main(capsys, "train", "--out", run, *flags)
    assert result.returncode == 0, result.stderr
    assert "64 tokens/step = 2 x 16 x 1 process(es) x 2 micro-steps" in result.stdout
    assert list(losses(run)) == [1, 2]
    # the measured peak is logged on the first steps and with the val loss (here: this test process's peak RSS)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("peak_mem_mb", 0) > 100] == [1, 2, 2]
    assert "val_loss" in records[-1]


def test_the_logged_peak_memory_never_goes_down(tmp_path, capsys, monkeypatch):
    # Linux's VmHWM can read a few hundred KiB lower than a moment before (lagging per-CPU counters); the log keeps
    # the highest reading, which is what a peak is
    readings = iter([300, 500, 499, 600, 550] * 2)
    monkeypatch.setattr("gpt2lab.runtime.memory.peak_bytes", lambda device: next(readings) * 2**20)
    run = tmp_path / "run"
    result = run_main(capsys, "train", "--out", run, *cli_flags(write_dataset(tmp_path / "data"),
                                                                   schedule__max_steps=4))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["peak_mem_mb"] for r in records if "peak_mem_mb" in r] == [300, 500, 500, 600, 600]


def test_disk_filling_up_mid_checkpoint_names_the_last_good_one(tmp_path, monkeypatch):
    """The tmpfs test's path without a mount: a simulated disk whose free space is what the run directory leaves of
    its capacity fills up while torch.save writes the second checkpoint, and fails as torch does (no errno). Only
    the partial checkpoint still on the disk shows it is full: it must be judged before it is removed."""
    from gpt2lab.train import checkpointing
    from gpt2lab.train.trainer import train

    data, run = write_dataset(tmp_path / "data"), tmp_path / "run"
    disk = {"capacity": None}  # None: the real disk, until it fills up

    def used() -> int:
        return sum(f.stat().st_size for f in run.rglob("*") if f.is_file())

    real_statvfs, real_save, saves = os.statvfs, torch.save, []

    def statvfs(path):
        real = real_statvfs(path)
        if disk["capacity"] is None:
            return real
        free = max(disk["capacity"] - used(), 0)
        return os.statvfs_result((real.f_bsize, 1, real.f_blocks, free, free, *real[5:]))

    def save_until_full(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) < 2:
            return real_save(obj, f, *args, **kwargs)
        f.write(b"\0" * (2 << 20))  # 2 MiB reached the disk, then it was full
        f.flush()
        disk["capacity"] = used() + (256 << 10)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(checkpointing.torch, "save", save_until_full)
    monkeypatch.setattr(os, "statvfs", statvfs)
    config = tiny_config(data, schedule__max_steps=6, checkpoint__every=2, checkpoint__keep=3)
    with pytest.raises(OutputError) as stopped:
        train(config, run, progress=False, log=lambda line: None)
    assert "No space left on device" in str(stopped.value)
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_00000002'}" in str(stopped.value)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002"]


def test_zero_init_projections_start_every_block_as_the_identity_and_keep_the_other_weights(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    initial = {}
    real = trainer_module.make_optimizer

    def make_optimizer(model, optim, device):  # the weights as the first step will see them
        initial[len(initial)] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return real(model, optim, device)

    monkeypatch.setattr(trainer_module, "make_optimizer", make_optimizer)
    train(tiny_config(data, schedule__max_steps=2, model__zero_init_projections=True), tmp_path / "zero", log=quiet)
    train(tiny_config(data, schedule__max_steps=2), tmp_path / "plain", log=quiet)
    zeroed, plain = initial[0], initial[1]
    projections = [n for n in plain if n.endswith("c_proj.weight")]
    assert len(projections) == 2 * tiny_config(data).model.n_layer
    for name in plain:
        if name in projections:
            assert zeroed[name].abs().max() == 0 < plain[name].abs().max()
        else:  # the same random init otherwise: only the projections differ
            assert torch.equal(zeroed[name], plain[name])
    trained = dict(load_model(tmp_path / "zero").named_parameters())
    assert all(trained[name].abs().max() > 0 for name in projections)  # and they learn from there
