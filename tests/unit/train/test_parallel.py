"""ParallelModel (gpt2lab/train/parallel.py): under DDP, gradients are all-reduced on the last micro-step only."""

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
