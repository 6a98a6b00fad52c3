"""The training step (gpt2lab/train/step.py): accumulating 4 micro-batches gives one 4x batch's gradients."""

import pytest
import torch

from gpt2lab.model.gpt import GPT, GPTConfig

from tests.train_utils import forward_backward

TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)


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
