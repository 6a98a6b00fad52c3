"""ParallelModel (gpt2lab/train/parallel.py): under DDP, gradients are all-reduced on the last micro-step only."""

import pytest
import torch


def test_gradients_are_all_reduced_only_on_the_last_micro_step(tmp_path):
    """In-process, one gloo rank: a DDP communication hook counts the all-reduces of each micro-step. Syncing on
    every micro-step would give the same numbers (only slower), so only counting can tell."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gpt2lab.model.gpt import GPT, GPTConfig
    from gpt2lab.runtime.distributed import DistContext
    from gpt2lab.train.parallel import ParallelModel
    from tests.train_utils import forward_backward

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = DDP(GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)))
        synced_at, current = [], {"micro_step": None}

        def count_all_reduce(state, bucket):
            synced_at.append(current["micro_step"])
            future = torch.futures.Future()
            future.set_result(bucket.buffer())  # one rank: the "average" is the gradient itself
            return future

        model.register_comm_hook(None, count_all_reduce)
        x, y = torch.randint(0, 128, (8, 16)), torch.randint(0, 128, (8, 16))

        def batches():
            for micro_step in range(4):
                current["micro_step"] = micro_step
                yield x[2 * micro_step: 2 * micro_step + 2], y[2 * micro_step: 2 * micro_step + 2]

        parallel = ParallelModel(model.module, DistContext())
        parallel.module = model  # one rank: the trainer would not wrap it, the test does to count the syncs
        forward_backward(model.module, batches(), 4, parallel=parallel)
        assert synced_at and set(synced_at) == {3}  # the last micro-step only (once per gradient bucket)
        assert all(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_activation_checkpointing_changes_no_number(tmp_path):
    """Per block, recomputed in the backward pass: the same losses, bit for bit, on one process."""
    from gpt2lab.train import train
    from tests.train_utils import losses, quiet, tiny_config, write_dataset

    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=5), tmp_path / "plain", log=quiet)
    train(tiny_config(data, schedule__max_steps=5, runtime__activation_checkpointing="true"), tmp_path / "ac",
          log=quiet)
    assert losses(tmp_path / "ac") == losses(tmp_path / "plain")


def test_activation_checkpointing_keeps_only_the_blocks_inputs(monkeypatch):
    """What is saved for the backward pass: with checkpointing, far fewer tensors (each block's input)."""
    from gpt2lab.model.gpt import GPT, GPTConfig
    from gpt2lab.train.parallel import ParallelModel

    def saved_tensors(activation_checkpointing: bool) -> int:
        torch.manual_seed(0)
        model = GPT(GPTConfig(n_layer=3, n_head=2, n_embd=32, block_size=16, vocab_size=64))
        parallel = ParallelModel(model, activation_checkpointing=activation_checkpointing)
        count = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: count.append(t) or t, lambda t: t):
            parallel(torch.zeros(2, 16, dtype=torch.long), torch.zeros(2, 16, dtype=torch.long))
        return len(count)

    assert saved_tensors(True) < saved_tensors(False) / 3


def test_strategies_a_device_cannot_run_are_refused_up_front():
    from gpt2lab.errors import BadValue
    from gpt2lab.train.parallel import check_strategy

    check_strategy("fsdp", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(BadValue, match="parallel.strategy must be ddp, fsdp or auto, got 'zero3'"):
        check_strategy("zero3", torch.device("cpu"), None)
    with pytest.raises(BadValue, match="fsdp does not take fp16"):
        check_strategy("fsdp", torch.device("cpu"), torch.float16)
    with pytest.raises(BadValue, match="fsdp runs on CUDA GPUs and CPUs, not mps"):
        check_strategy("fsdp", torch.device("mps"), None)
    check_strategy("ddp", torch.device("cpu"), torch.float16)  # DDP has its GradScaler


def test_fsdp_shards_every_parameter_and_computes_the_whole_model_s_numbers():
    from tests.train_utils import one_process_group, tiny_sharded

    with one_process_group():
        parallel, whole = tiny_sharded()
        assert parallel.sharded and all(hasattr(p, "to_local") for p in parallel.parameters())
        assert parallel.raw.lm_head.weight is parallel.raw.transformer.wte.weight  # still tied
        x = torch.randint(0, 128, (2, 2, 16))
        for micro_step in range(2):  # gradients reduced (into the shards) on the last micro-step only
            parallel.sync_gradients(micro_step == 1)
            loss = parallel(x[micro_step], x[micro_step])[1]
            assert torch.allclose(loss, whole(x[micro_step], x[micro_step])[1], atol=1e-6)
            loss.backward()
            whole(x[micro_step], x[micro_step])[1].backward()
            if micro_step == 0:
                assert all(p.grad is None for p in parallel.parameters())  # not reduced yet
        norm = parallel.clip_grad_norm(float("inf"))
        assert norm == pytest.approx(float(torch.nn.utils.clip_grad_norm_(whole.parameters(), float("inf"))))

