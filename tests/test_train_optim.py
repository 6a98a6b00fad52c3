"""Optimizer groups, LR schedule, gradient accumulation, and that training learns (tiny models, CPU)."""

import json
import math

import pytest
import torch

from gpt2lab.model.gpt import GPT, GPTConfig
from gpt2lab.train import train
from gpt2lab.train.config import OptimSection, ScheduleSection
from gpt2lab.train.batch import grad_accum_steps
from gpt2lab.train.optim import make_optimizer, param_groups
from gpt2lab.train.schedule import lr_at
from train_utils import forward_backward, losses, tiny_config, write_dataset

TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)


def test_lr_schedule_warmup_decay_and_floor():
    optim, schedule = OptimSection(lr=6e-4, min_lr=6e-5), ScheduleSection(max_steps=1000, warmup_steps=100)
    assert lr_at(0, optim, schedule) == pytest.approx(6e-4 / 100)  # never 0 at step 0
    assert lr_at(49, optim, schedule) == pytest.approx(6e-4 * 50 / 100)
    assert lr_at(99, optim, schedule) == pytest.approx(6e-4)  # end of warmup: the peak
    assert lr_at(100, optim, schedule) == pytest.approx(6e-4)
    assert lr_at(550, optim, schedule) == pytest.approx((6e-4 + 6e-5) / 2)  # half-way through the cosine
    assert lr_at(999, optim, schedule) == pytest.approx(6e-5, rel=1e-3)
    assert lr_at(1000, optim, schedule) == 6e-5  # after the end: the floor
    assert lr_at(5000, optim, schedule) == 6e-5
    values = [lr_at(s, optim, schedule) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decay never goes back up


def test_weight_decay_groups_are_exactly_the_matrices():
    model = GPT(GPTConfig(**TINY_GPT))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = sorted(names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    expected = sorted(n for n, p in model.named_parameters() if p.dim() == 2)
    assert decayed == expected
    assert "transformer.wte.weight" in decayed and "transformer.wpe.weight" in decayed
    assert all(n.endswith(("bias", ".weight")) and "ln_" in n or n.endswith("bias")
               for n in (names[id(p)] for p in no_decay["params"]))
    # every parameter exactly once (the tied lm_head/wte tensor included once)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    optimizer = make_optimizer(model, OptimSection(), torch.device("cpu"))
    assert optimizer.defaults["fused"] and optimizer.defaults["betas"] == (0.9, 0.95)


def test_grad_accumulation_of_4_equals_one_4x_batch():
    """Compare the gradients themselves, every element: after Adam's first step the weights hide a scale error
    (its update is ~lr * sign(grad)), so a missing division by the accumulation steps would pass there."""
    torch.manual_seed(0)
    x = torch.randint(0, 128, (8, 16))
    y = torch.randint(0, 128, (8, 16))

    def gradients(batches, grad_accum):
        torch.manual_seed(1)
        model = GPT(GPTConfig(**TINY_GPT))
        loss = forward_backward(model, batches, grad_accum)
        return loss, {name: p.grad.clone() for name, p in model.named_parameters()}

    loss_big, grads_big = gradients([(x, y)], 1)
    loss_acc, grads_acc = gradients([(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)], 4)
    assert float(loss_acc) == pytest.approx(float(loss_big), abs=1e-6)
    assert grads_acc.keys() == grads_big.keys() and len(grads_big) == len(list(GPT(GPTConfig(**TINY_GPT)).parameters()))
    for name, grad in grads_big.items():
        assert grad.abs().max() > 0, name  # every parameter gets a gradient (a zero one would compare trivially)
        # float32 summation order differs between one batch and four (by ~5e-7 of the largest element on an
        # AVX-512 CPU); a missing or doubled division by the accumulation steps is off by a factor of 2-4
        torch.testing.assert_close(grads_acc[name], grad, rtol=1e-4, atol=2e-6 * float(grad.abs().max()), msg=name)


def test_grad_accum_steps_from_the_token_budget():
    assert grad_accum_steps(524288, 64, 1024, 8) == 1
    assert grad_accum_steps(524288, 16, 1024, 1) == 32
    with pytest.raises(Exception, match="not divisible"):
        grad_accum_steps(1000, 4, 16, 1)


def test_a_single_batch_can_be_overfit():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT))
    optimizer = make_optimizer(model, OptimSection(lr=1e-2, weight_decay=0.0), torch.device("cpu"))
    x = torch.randint(0, 128, (2, 16))
    y = torch.roll(x, -1, dims=1)
    first = None
    for _ in range(80):
        optimizer.zero_grad()
        loss = forward_backward(model, [(x, y)])
        first = first if first is not None else float(loss)
        optimizer.step()
    assert first > 4.0 and float(loss) < 0.1


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


def test_make_optimizer_takes_every_setting_from_the_config():
    model = GPT(GPTConfig(**TINY_GPT))
    optim = OptimSection(lr=7e-4, weight_decay=0.05, beta1=0.8, beta2=0.97, eps=1e-6)
    optimizer = make_optimizer(model, optim, torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    for group in (decay, no_decay):
        assert (group["lr"], group["betas"], group["eps"]) == (7e-4, (0.8, 0.97), 1e-6)
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}
