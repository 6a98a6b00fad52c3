"""What both evaluations need from a model (gpt2lab/eval/common.py): the plain module under torch.compile and DDP,
its device, and the logits at the scored positions only."""

import torch
import torch.distributed as dist
import torch.nn as nn

from gpt2lab.eval.common import logits_at, model_device, plain_module

from tests.conftest import ODD, tiny_gpt


def _refuse_to_compile(graph_module, example_inputs):
    raise AssertionError("nothing here may compile the model")


def test_plain_module_unwraps_torch_compile_and_ddp(tmp_path):
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = tiny_gpt()
    assert plain_module(model) is model
    compiled = torch.compile(model, backend=_refuse_to_compile)  # compiles lazily: only if it is called
    assert compiled is not model and plain_module(compiled) is model
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert plain_module(DDP(compiled)) is model  # the trainer's order: compiled, then DDP-wrapped
    finally:
        dist.destroy_process_group()
    assert model_device(compiled) == torch.device("cpu")


class Stub(nn.Module):
    """A model without GPT-2's transformer.ln_f: its logits depend on the token only."""

    def __init__(self, vocab_size=50):
        super().__init__()
        self.table = nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx, targets=None):
        return self.table(idx), None


def test_logits_at_are_the_full_logits_at_those_positions_and_only_they_are_projected():
    model = tiny_gpt()
    inputs = torch.randint(0, ODD["vocab_size"], (2, 9), generator=torch.Generator().manual_seed(0))
    positions = torch.tensor([[0, 4, 8], [3, 3, 5]])
    projected = []
    model.lm_head.register_forward_hook(lambda module, args, out: projected.append(tuple(args[0].shape)))
    with torch.no_grad():
        full, _ = model(inputs)
        got = logits_at(model, inputs, positions)
        again, _ = model(inputs)
    expected = full.gather(1, positions[..., None].expand(-1, -1, ODD["vocab_size"]))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert projected == [(2, 9, ODD["n_embd"]), (2, 3, ODD["n_embd"]), (2, 9, ODD["n_embd"])]  # 3 positions a row
    assert torch.equal(again, full)  # the hook on ln_f is gone again


def test_logits_at_of_a_model_without_ln_f_picks_the_positions_from_all_logits():
    torch.manual_seed(0)
    stub = Stub()
    inputs = torch.randint(0, 50, (3, 6))
    positions = torch.tensor([[5], [0], [2]])
    with torch.no_grad():
        got = logits_at(stub, inputs, positions)
        expected = stub.table(inputs.gather(1, positions))
    assert got.shape == (3, 1, 50)
    torch.testing.assert_close(got, expected)
