"""DDP: two gloo processes under torchrun give the per-step losses of one process with accumulation 2, and a run
resumes with the other number of processes on the same token stream."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from gpt2lab.model.gpt import load_model
from train_utils import cli_flags, losses, write_dataset


def one_process(*args):
    return run_cli("train", *args)


def two_processes(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "gpt2lab", "train", *map(str, args)], env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6 steps on 1 process x 2 micro-steps and on 2 processes x 1, checkpoints at steps 3 and 6."""
    tmp = tmp_path_factory.mktemp("ddp")
    # 11 chunks of 2 x 16 tokens: an odd number, so neither process count divides the epoch's chunks; 2 chunks a
    # step gives epochs of 5 steps, so step 6 is in the second epoch.
    data = write_dataset(tmp / "data", train_tokens=11 * 32 + 1)
    flags = cli_flags(data, data__batch_size=2, data__total_batch_tokens=64, schedule__max_steps=6,
                      eval__val_every=3, checkpoint__every=3)
    single = one_process("--out", tmp / "single", *flags)
    assert single.returncode == 0, single.stderr
    assert "x 1 process(es) x 2 micro-steps" in single.stdout
    ddp = two_processes("--out", tmp / "ddp", *flags, "--set", "log.tensorboard=true")
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "x 2 process(es) x 1 micro-steps" in ddp.stdout
    assert ddp.stdout.count("step      1/6") == 1  # only rank 0 logs
    assert len(list((tmp / "ddp" / "tensorboard").glob("events.out.tfevents.*"))) == 1  # and has the dashboards
    return tmp, flags


def assert_same_losses(run, reference):
    got, expected = losses(run), losses(reference)
    assert sorted(got) == sorted(expected) == list(range(1, 7))
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])


def test_torchrun_two_processes_match_one_process_with_accumulation(runs):
    tmp, _ = runs
    assert_same_losses(tmp / "ddp", tmp / "single")
    a, b = load_model(tmp / "single").state_dict(), load_model(tmp / "ddp").state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    # the rank-1 loader position and RNG are in the checkpoint too
    state = torch.load(tmp / "ddp/checkpoints/step_00000006/training_state.pt", weights_only=True)
    assert len(state["loader"]) == len(state["rng"]) == 2 and state["world_size"] == 2


def test_resume_with_another_number_of_processes_continues_the_same_stream(runs):
    tmp, flags = runs
    for saved, resumed, relaunch, change in [("ddp", "shrunk", one_process, "2 -> 1"),
                                             ("single", "grown", two_processes, "1 -> 2")]:
        shutil.copytree(tmp / saved, tmp / resumed)
        shutil.rmtree(tmp / resumed / "checkpoints/step_00000006")  # as if stopped after the step-3 checkpoint
        result = relaunch("--out", tmp / resumed, "--resume", *flags)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "step_00000003" in result.stdout and f"process count changed: {change}" in result.stdout
        assert_same_losses(tmp / resumed, tmp / saved)  # steps 4-6 as the uninterrupted run computed them


def test_gradients_are_all_reduced_only_on_the_last_micro_step(tmp_path):
    """In-process, one gloo rank: a DDP communication hook counts the all-reduces of each micro-step. Syncing on
    every micro-step would give the same numbers (only slower), so only counting can tell."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gpt2lab.model.gpt import GPT, GPTConfig
    from gpt2lab.runtime.distributed import DistContext
    from gpt2lab.train.parallel import ParallelModel
    from train_utils import forward_backward

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
