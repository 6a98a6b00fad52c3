"""The optimizer (gpt2lab/train/optim.py): AdamW's weight-decay groups and settings from the config, Muon's block
matrices and AdamW for the rest, and a single batch overfit (tiny models, CPU)."""

import torch

from gpt2lab.model.gpt import GPT, GPTConfig
from gpt2lab.train.config import OptimSection
from gpt2lab.train.muon import CombinedOptimizer
from gpt2lab.train.optim import (CautiousAdamW, describe_optimizer, make_optimizer, muon_parameter_names,
                                 param_groups)

from tests.train_utils import forward_backward

TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)


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


def test_make_optimizer_takes_every_setting_from_the_config():
    model = GPT(GPTConfig(**TINY_GPT))
    optim = OptimSection(lr=7e-4, weight_decay=0.05, beta1=0.8, beta2=0.97, eps=1e-6)
    optimizer = make_optimizer(model, optim, torch.device("cpu"))
    decay, no_decay = optimizer.param_groups
    assert (decay["weight_decay"], no_decay["weight_decay"]) == (0.05, 0.0)
    for group in (decay, no_decay):
        assert (group["lr"], group["betas"], group["eps"]) == (7e-4, (0.8, 0.97), 1e-6)
    assert {id(p) for p in decay["params"]} == {id(p) for p in model.parameters() if p.dim() >= 2}


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


CPU = torch.device("cpu")


def test_grouping_blocks_matrices_to_muon_the_rest_to_adamw():
    model = GPT(GPTConfig(**TINY_GPT))
    expected = [f"transformer.h.{i}.{m}.weight" for i in range(2)
                for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert muon_parameter_names(model) == expected
    optimizer = make_optimizer(model, OptimSection(name="muon"), CPU)
    assert isinstance(optimizer, CombinedOptimizer)
    names = {id(p): n for n, p in model.named_parameters()}
    muon_params = [names[id(p)] for g in optimizer.optimizers["muon"].param_groups for p in g["params"]]
    adamw_params = [names[id(p)] for g in optimizer.optimizers["adamw"].param_groups for p in g["params"]]
    assert sorted(muon_params) == sorted(expected)
    assert "transformer.wte.weight" in adamw_params and "transformer.wpe.weight" in adamw_params
    assert sorted(muon_params + adamw_params) == sorted(names.values())  # each exactly once (tied head once)
    assert {n for g in optimizer.optimizers["adamw"].param_groups if g["weight_decay"] for n in
            (names[id(p)] for p in g["params"])} == {"transformer.wte.weight", "transformer.wpe.weight"}
    # c_attn as three matrices (q, k, v) by default, as one if asked
    assert [(g["split"], len(g["params"])) for g in optimizer.optimizers["muon"].param_groups] == [(1, 6), (3, 2)]
    fused = make_optimizer(model, OptimSection(name="muon", muon_split_qkv=False), CPU)
    assert [g["split"] for g in fused.optimizers["muon"].param_groups] == [1, 1]
    line = describe_optimizer(model, OptimSection(name="muon"))
    n_muon = sum(p.numel() for n, p in model.named_parameters() if n in expected)
    assert f"on 8 block matrices ({n_muon:,} parameters" in line and "AdamW (lr 0.0006) on 20 tensors" in line


# ------------------------------------------------------------------------- cautious weight decay for AdamW


def _adamw_steps(cls, p0: torch.Tensor, grads, fused: bool, weight_decay: float) -> torch.Tensor:
    p = torch.nn.Parameter(p0.clone())
    optimizer = cls([{"params": [p], "weight_decay": weight_decay}], lr=0.1, betas=(0.9, 0.95), fused=fused)
    for grad in grads:
        p.grad = grad.clone()
        optimizer.step()
    return p.detach()


def test_cautious_adamw_decays_only_where_the_step_and_the_weight_agree_in_sign():
    """One step against the formula p0 - lr*u - lr*wd*p0*[u*p0 > 0], u read from a step of AdamW without decay;
    about half of the entries agree, so a plain decay, or none, would differ; fused and unfused alike."""
    generator = torch.Generator().manual_seed(0)
    p0, grad = torch.randn(64, 32, generator=generator), torch.randn(64, 32, generator=generator)
    for fused in (False, True):
        undecayed = _adamw_steps(torch.optim.AdamW, p0, [grad], fused, 0.0)
        lr_u = p0 - undecayed
        agree = lr_u * p0 > 0
        assert 0.3 < agree.float().mean() < 0.7
        expected = undecayed - p0 * agree * (0.1 * 0.5)
        cautious = _adamw_steps(CautiousAdamW, p0, [grad], fused, 0.5)
        torch.testing.assert_close(cautious, expected, rtol=0, atol=1e-6)
        plain = _adamw_steps(torch.optim.AdamW, p0, [grad], fused, 0.5)
        # a plain decay shrinks the disagreeing entries too, by lr * wd * p0, which the cautious one does not
        torch.testing.assert_close((cautious - plain)[~agree], p0[~agree] * (0.1 * 0.5), rtol=0, atol=1e-6)
        torch.testing.assert_close(cautious[agree], plain[agree], rtol=0, atol=1e-6)


def test_cautious_adamw_is_adamw_where_every_entry_agrees_and_keeps_adamws_state():
    """Gradients of the weights' own sign make every step agree: then it is torch's AdamW with decay, step after
    step, and its state_dict (moments, step count, the groups' weight_decay) is AdamW's."""
    generator = torch.Generator().manual_seed(1)
    p0 = torch.randn(16, 8, generator=generator).sign() * (1 + torch.rand(16, 8, generator=generator))  # |p0| > 1:
    # no sign changes in 3 steps of at most about lr = 0.1 each
    grads = [p0.sign() * torch.rand(16, 8, generator=generator) for _ in range(3)]
    torch.testing.assert_close(_adamw_steps(CautiousAdamW, p0, grads, True, 0.5),
                               _adamw_steps(torch.optim.AdamW, p0, grads, True, 0.5), rtol=0, atol=1e-6)
    p = torch.nn.Parameter(p0.clone())
    optimizer = CautiousAdamW([{"params": [p], "weight_decay": 0.5}], lr=0.1, fused=True)
    p.grad = grads[0]
    optimizer.step()
    state = optimizer.state_dict()
    assert state["param_groups"][0]["weight_decay"] == 0.5 and sorted(state["state"][0]) == [
        "exp_avg", "exp_avg_sq", "step"]
    plain = torch.optim.AdamW([torch.nn.Parameter(p0.clone())], lr=0.1, fused=True)
    plain.load_state_dict(state)


def test_adamw_cautious_wd_reaches_both_optimizers_and_the_memory_plan():
    from gpt2lab.train.batch import parameter_counts
    from gpt2lab.train.optim import cautious_copy_parameters

    model = GPT(GPTConfig(**TINY_GPT))
    assert type(make_optimizer(model, OptimSection(adamw_cautious_wd=True), CPU)) is CautiousAdamW
    combined = make_optimizer(model, OptimSection(name="muon", adamw_cautious_wd=True), CPU)
    assert type(combined.optimizers["adamw"]) is CautiousAdamW
    assert type(make_optimizer(model, OptimSection(), CPU)) is torch.optim.AdamW
    named = dict(model.named_parameters())
    embeddings = named["transformer.wte.weight"].numel() + named["transformer.wpe.weight"].numel()
    matrices = sum(p.numel() for p in model.parameters() if p.dim() >= 2)
    assert cautious_copy_parameters(model, OptimSection(name="muon", adamw_cautious_wd=True)) == embeddings
    assert cautious_copy_parameters(model, OptimSection(adamw_cautious_wd=True)) == matrices
    assert cautious_copy_parameters(model, OptimSection()) == 0
    optim = OptimSection(adamw_cautious_wd=True)
    assert parameter_counts(model.config, "adamw", optim=optim).step_copied == matrices
