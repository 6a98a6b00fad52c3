"""torchrun's set-up (gpt2lab/runtime/distributed.py): the backend and the device of each process."""

import pytest
import torch


@pytest.mark.parametrize("device, backend", [("cpu", "gloo"), ("cuda", "nccl")])
def test_torchrun_processes_join_with_nccl_on_gpus_and_gloo_on_cpus(monkeypatch, device, backend):
    """The set-up a torchrun worker does (rank 1 of 2), with the collective and CUDA calls recorded, not made."""
    from gpt2lab.runtime import distributed

    calls = []
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: calls.append(backend))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(f"cuda:{index}"))
    ctx = distributed.setup(torch.device(device))
    assert (ctx.rank, ctx.local_rank, ctx.world_size, ctx.is_main) == (1, 1, 2, False)
    assert calls == ([backend] if device == "cpu" else ["cuda:1", backend])
    expected_device = torch.device("cuda", 1) if device == "cuda" else torch.device("cpu")  # the GPU of LOCAL_RANK
    assert distributed.process_device(torch.device(device), ctx) == expected_device
