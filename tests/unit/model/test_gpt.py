"""The network (gpt2lab/model/gpt.py): GPT-2's parameter count and init, the tied head, the forward pass and its loss,
the context check, the KV cache, GELU's tanh form, the decoding product and the explicit attention of bf16 on a CPU."""

import pytest
import torch

from gpt2lab import GPT, GPTConfig
from gpt2lab.model.config import ContextLengthError

from tests.conftest import ODD, tiny_gpt


def test_gpt2_parameter_count():
    with torch.device("meta"):
        model = GPT(GPTConfig.from_preset("gpt2"))
        padded = GPT(GPTConfig.from_preset("gpt2", vocab_size=50304))
    assert model.num_parameters() == 124_439_808
    assert padded.num_parameters() == 124_475_904
    assert model.num_parameters(exclude_embeddings=True) == 124_439_808 - 50257 * 768 - 1024 * 768


def test_lm_head_shares_storage_with_wte():
    model = tiny_gpt()
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()


def test_init_statistics():
    torch.manual_seed(0)
    config = GPTConfig(n_layer=8, n_head=4, n_embd=256, block_size=128, vocab_size=4096)
    model = GPT(config)
    residual_std = 0.02 / (2 * config.n_layer) ** 0.5
    for block in model.transformer.h:
        assert block.attn.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.mlp.c_proj.weight.std().item() == pytest.approx(residual_std, rel=0.05)
        assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert block.mlp.c_fc.weight.std().item() == pytest.approx(0.02, rel=0.05)
        assert torch.count_nonzero(block.attn.c_attn.bias) == 0
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert model.transformer.wpe.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_forward_shapes_and_loss():
    model = tiny_gpt()
    idx = torch.randint(0, ODD["vocab_size"], (2, 10))
    logits, loss = model(idx)
    assert logits.shape == (2, 10, ODD["vocab_size"]) and loss is None
    # Random targets: a freshly initialised model is close to uniform, loss ~ ln(vocab).
    logits, loss = model(idx, targets=torch.randint(0, ODD["vocab_size"], (2, 10)))
    assert loss.ndim == 0 and loss.item() == pytest.approx(torch.log(torch.tensor(1011.0)).item(), rel=0.05)
    last, _ = model(idx, last_logits_only=True)
    torch.testing.assert_close(last[:, 0], logits[:, -1])


def test_targets_minus_100_are_ignored():
    model = tiny_gpt()
    idx = torch.randint(0, ODD["vocab_size"], (1, 8))
    targets = idx.clone()
    targets[0, 4:] = -100
    _, partial = model(idx, targets)
    logits, _ = model(idx)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], idx[0, :4])
    torch.testing.assert_close(partial, expected)


def test_too_long_sequence_is_a_clear_value_error():
    model = tiny_gpt()
    with pytest.raises(ValueError, match="longer than the model's context of 37"):
        model(torch.zeros(1, 38, dtype=torch.long))
    with pytest.raises(ContextLengthError):
        model(torch.zeros(1, 38, dtype=torch.long))


@pytest.mark.parametrize("contiguous", [True, False], ids=["contiguous", "transposed-weight"])
@pytest.mark.parametrize("rows", [1, 3, 16, 17])
def test_decoding_matmul_split_over_threads_equals_addmm(rows, contiguous):
    """Conv1D's few-rows path (inference, CPU, several threads) gives x @ W + b like the plain one."""
    from gpt2lab.model.gpt import Conv1D

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        layer = Conv1D(96, 40)
        torch.nn.init.normal_(layer.weight)
        if not contiguous:  # a weight assigned from a transposed tensor: the split must follow its strides
            layer.weight = torch.nn.Parameter(layer.weight.detach().t().contiguous().t())
        torch.nn.init.normal_(layer.bias)
        x = torch.randn(rows, 1, 96)
        with torch.no_grad():
            got = layer(x)
        expected = (x.double() @ layer.weight.double() + layer.bias.double()).float()
        assert got.shape == (rows, 1, 40)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-5)
    finally:
        torch.set_num_threads(before)


def test_gelu_is_the_tanh_approximation_at_trained_model_magnitudes(tmp_path):
    """At random init the MLP's pre-activations are ~0.14, where exact GELU and its tanh approximation agree to
    ~1e-8: parity there cannot tell them apart. Scale c_fc so they are O(1..3), as in a trained GPT-2, and
    compare with transformers in float64, where the only differences left are rounding (~1e-15) while exact
    GELU differs by ~1e-4."""
    import torch.nn.functional as F

    from tests.conftest import hf_gpt2

    hf = hf_gpt2(seed=4).double()
    with torch.no_grad():
        for block in hf.transformer.h:
            block.mlp.c_fc.weight.mul_(12)
            block.mlp.c_proj.weight.mul_(12)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path, dtype=torch.float64)
    idx = torch.randint(0, ODD["vocab_size"], (2, ODD["block_size"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        block = ours.transformer.h[0]
        x = ours.transformer.wte(idx) + ours.transformer.wpe(torch.arange(idx.size(1)))
        pre = block.mlp.c_fc(block.ln_2(x + block.attn(block.ln_1(x))))
        expected, got = hf(idx).logits, ours(idx)[0]
    assert 1.0 < pre.std() < 3.0 and pre.abs().max() > 4.0  # the range where the two GELUs differ most
    assert (F.gelu(pre) - F.gelu(pre, approximate="tanh")).abs().max() > 1e-4
    assert (got - expected).abs().max().item() < 1e-10


def test_kv_cache_takes_several_tokens_after_a_cached_prefix():
    """A chunk of new tokens after a cached prefix (the masked branch of attention: query i sees keys up to
    prefix + i), as when a prompt is fed in pieces; decoding itself only feeds the prompt, then one token."""
    from gpt2lab.model.gpt import KVCache

    model = tiny_gpt(seed=3)
    idx = torch.randint(0, ODD["vocab_size"], (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache(model.config, batch_size=2)
        pieces = [model(idx[:, a:b], cache=cache)[0] for a, b in ((0, 7), (7, 8), (8, 15), (15, 20))]
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


def test_explicit_attention_is_sdpas_causal_attention():
    """In float32 the written-out form equals SDPA's (forward and every gradient) to float rounding; in bf16 it stays
    within bf16 rounding of the float32 result, as SDPA's own bf16 kernel does."""
    import torch.nn.functional as F

    from gpt2lab.model.gpt import explicit_causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 16, dtype=torch.float64) for _ in range(3))
    grad = torch.randn(2, 3, 37, 16, dtype=torch.float64)

    def run(fn, dtype):
        inputs = [t.detach().to(dtype).clone().requires_grad_() for t in (q, k, v)]
        out = fn(*inputs)
        out.backward(grad.to(dtype))
        return [out.double(), *(t.grad.double() for t in inputs)]

    def sdpa(*qkv):
        return F.scaled_dot_product_attention(*qkv, is_causal=True)

    exact = run(sdpa, torch.float64)
    for got, want in zip(run(explicit_causal_attention, torch.float32), exact):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for got, want in zip(run(explicit_causal_attention, torch.bfloat16), exact):
        assert (got - want).abs().max() <= 0.03 * want.abs().max()  # bf16: 8 bits of mantissa
    flash_error = max((g - w).abs().max() for g, w in zip(run(sdpa, torch.bfloat16), exact))
    ours_error = max((g - w).abs().max() for g, w in zip(run(explicit_causal_attention, torch.bfloat16), exact))
    assert ours_error <= 2 * flash_error  # no less accurate than the kernel it replaces


def test_bf16_cpu_training_lengths_take_the_explicit_attention(monkeypatch):
    """Up to EXPLICIT_ATTENTION_MAX_T positions (and only in bf16 on a CPU) the model calls the written-out form."""
    from gpt2lab.model import gpt as model_module

    calls = []
    real = model_module.explicit_causal_attention
    monkeypatch.setattr(model_module, "explicit_causal_attention", lambda *qkv: calls.append(qkv[0].shape) or real(*qkv))
    model = tiny_gpt()
    idx = torch.randint(0, ODD["vocab_size"], (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, _ = model(idx)
    assert len(calls) == model.config.n_layer and calls[0][-2] == 9
    calls.clear()
    model(idx)  # float32: SDPA
    monkeypatch.setattr(model_module, "EXPLICIT_ATTENTION_MAX_T", 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(idx)  # longer than the limit: SDPA
    assert calls == []
