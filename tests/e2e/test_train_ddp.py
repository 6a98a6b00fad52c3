"""DDP: two gloo processes under torchrun give the per-step losses of one process with accumulation 2 (AdamW and
Muon), a run resumes with the other number of processes on the same token stream, and two ranks share Muon's
orthogonalisation and agree with one process."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from gpt2lab.model.gpt import load_model
from gpt2lab.train import muon as muon_module
from gpt2lab.train.muon import Muon

from tests.conftest import REPO, run_cli
from tests.train_utils import cli_flags, losses, write_dataset


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


def _shared_orthogonalisation_worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    calls = []
    real = muon_module.newton_schulz
    muon_module.newton_schulz = lambda G, *a, **k: calls.append(G.shape[:-2].numel()) or real(G, *a, **k)
    params = _toy_params_after_two_steps()
    torch.save({"calls": calls, "params": [p.detach() for p in params]}, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def _toy_params_after_two_steps():
    """Five toy matrices after two Muon steps on seeded gradients (the same on every rank)."""
    torch.manual_seed(0)
    shapes = [(8, 24), (8, 8), (8, 32), (32, 8), (8, 24)]
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    optimizer = Muon(params, lr=0.1, ns_dtype=torch.float32)
    for step in range(2):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(10 * step + i))
        optimizer.step()
    return params


def test_ranks_share_the_orthogonalisation_and_agree_with_one_process(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_shared_orthogonalisation_worker, args=(2, tmp_path / "init", tmp_path), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    # per step, matrices 0, 2, 4 on rank 0 (0 and 4 share a shape: one batch), 1 and 3 on rank 1
    assert [sorted(r["calls"]) for r in ranks] == [[1, 1, 2, 2], [1, 1, 1, 1]]
    params = _toy_params_after_two_steps()
    for r in ranks:
        assert len(r["params"]) == len(params)
        for got, expected in zip(r["params"], params):
            assert torch.equal(got, expected.detach())


# issue 25's options, all on: NorMuon's per-neuron statistics are computed by every rank from the broadcast
# updates; document-aligned rows and the sequence-length and batch-size warm-ups (8-token rows and 64-token steps
# for steps 0-1: 2 micro-steps of 32 alone, 1 on each of 2 processes) must give each step the same rows whatever
# the split between processes and micro-steps, so ranks and the one-process run must agree
SPEEDRUN = dict(optim__muon_ns_coefficients="polar_express", optim__muon_normuon="true", optim__cautious_wd="true",
                optim__muon_weight_decay=0.1, optim__muon_momentum_warmup_steps=2, optim__ema=0.9,
                optim__adamw_cautious_wd="true",
                data__align_to_documents="true", data__seq_len_warmup_steps=2, data__seq_len_start=8,
                data__total_batch_tokens=128, data__batch_warmup_steps=2, data__batch_start_tokens=64)


@pytest.mark.parametrize("options", [{}, SPEEDRUN], ids=["plain", "speedrun-options"])
def test_torchrun_two_processes_with_muon_match_one_process_with_accumulation(tmp_path, options):
    data = write_dataset(tmp_path / "data", train_tokens=11 * 32 + 1 if not options else 2_000, document_tokens=12)
    flags = cli_flags(data, **{"data__batch_size": 2, "data__total_batch_tokens": 64, "schedule__max_steps": 3,
                               "optim__name": "muon", **options})
    single = run_cli("train", "--out", tmp_path / "single", *flags)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "gpt2lab", "train", "--out", str(tmp_path / "ddp"), *map(str, flags)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    micro_steps = 2 if options else 1  # 128 or 64 tokens per full step
    assert f"x 2 process(es) x {micro_steps} micro-steps" in ddp.stdout and "optimizer: Muon" in ddp.stdout
    got, expected = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
    a, b = load_model(tmp_path / "single").state_dict(), load_model(tmp_path / "ddp").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
    if options:  # the weights' average (optim.ema), which every rank keeps of the same weights
        a, b = (torch.load(run / "checkpoints/step_00000003/training_state.pt", weights_only=True)["ema"]["average"]
                for run in (tmp_path / "single", tmp_path / "ddp"))
        assert sorted(a) == sorted(b) and len(a) > 0
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)
