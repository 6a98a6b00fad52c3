"""The products of CPU decoding (gpt2lab/model/cpu_decode.py): float32's split over threads and bf16's packed oneDNN
weight give the ordinary product's values, the packed copy follows changes to the weight, and decoding uses them."""

import pytest
import torch

from gpt2lab.model import cpu_decode
from gpt2lab.model.config import GPTConfig
from gpt2lab.model.gpt import GPT, Conv1D
from gpt2lab.sampling.decode import IncrementalDecoder, unembedding_for_decoding

needs_packing = pytest.mark.skipif(not cpu_decode.packing_available(),
                                   reason="this CPU or torch build has no native bf16 oneDNN inner product")


def bf16_reference(x, w_in_out, bias):
    """The exact product of the bf16 values, in float64."""
    return x.double() @ w_in_out.double() + bias.double()


@pytest.mark.parametrize("threads", [1, 2])
def test_float32_split_equals_the_plain_product(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, w = torch.randn(5, 96), torch.randn(96, 40)
        torch.testing.assert_close(cpu_decode.matmul_few_rows(x, w), x @ w, rtol=1e-5, atol=1e-5)
    finally:
        torch.set_num_threads(before)


@needs_packing
@pytest.mark.parametrize("rows", [1, 3, 16])
def test_packed_bf16_product_is_the_product_rounded_to_bf16(rows):
    torch.manual_seed(rows)
    w = torch.randn(128, 384).bfloat16()  # (in, out), as Conv1D stores it
    bias = torch.randn(384).bfloat16()
    x = torch.randn(rows, 128).bfloat16()
    packed = cpu_decode.PackedLinear(w.t(), w)
    got, exact = packed(x, bias).double(), bf16_reference(x, w, bias)
    # float32 accumulation, then one rounding to bf16 (8 bits of mantissa): ~2**-8 of each value
    assert ((got - exact).abs() <= 2**-7 * exact.abs() + 1e-2).all()


@needs_packing
def test_conv1d_decodes_bf16_through_a_packed_weight_that_follows_the_weight():
    torch.manual_seed(0)
    layer = Conv1D(64, 192).to(torch.bfloat16)
    torch.nn.init.normal_(layer.weight, std=0.1)  # Conv1D leaves its weight uninitialised (GPT inits it)
    torch.nn.init.normal_(layer.bias)
    x = torch.randn(2, 1, 64).bfloat16()
    with torch.no_grad():
        first = layer(x)
        packed = layer._packed_bf16  # made by the decode path
        assert ((first.double() - bf16_reference(x[:, 0], layer.weight, layer.bias)[:, None]).abs()
                <= 2**-7 * first.double().abs() + 1e-2).all()
        assert layer(x) is not None and layer._packed_bf16 is packed  # reused while the weight is unchanged
        layer.weight.mul_(-1)  # an in-place change (an optimizer step, a load_state_dict) ...
        flipped = layer(x)
    assert layer._packed_bf16 is not packed  # ... is packed again,
    torch.testing.assert_close(flipped.float(), (-first.float() + 2 * layer.bias.float()), rtol=0.02, atol=0.05)


def test_training_and_float32_never_take_the_packed_path():
    layer = Conv1D(64, 192).to(torch.bfloat16)
    layer(torch.randn(1, 64).bfloat16())  # autograd on: the ordinary addmm
    assert not hasattr(layer, "_packed_bf16")
    fp32 = Conv1D(64, 192)
    with torch.no_grad():
        fp32(torch.randn(1, 64))
    assert not hasattr(fp32, "_packed_bf16")


@needs_packing
def test_bf16_decoding_projects_onto_the_vocabulary_through_the_packed_embedding():
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=16, vocab_size=300)).to(torch.bfloat16).eval()
    unembed = unembedding_for_decoding(model)
    assert isinstance(unembed, cpu_decode.PackedLinear)
    hidden = torch.randn(3, 32).bfloat16()
    exact = hidden.double() @ model.lm_head.weight.double().t()
    assert ((unembed(hidden).double() - exact).abs() <= 2**-7 * exact.abs() + 1e-2).all()
    with torch.no_grad():
        decoder = IncrementalDecoder(model, torch.zeros(2, 3, dtype=torch.long), 4)
        logits, _ = model(torch.zeros(2, 3, dtype=torch.long))
    torch.testing.assert_close(decoder.logits, logits[:, -1].float(), rtol=0.02, atol=0.02)
