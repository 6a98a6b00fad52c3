"""Muon (optim.name = muon) and the WSD schedule: Newton-Schulz orthogonalises, the parameter grouping, training
learns and differs from AdamW, exact resume, the state_dict round trip, bad input, plain GPT-2 checkpoints, and
the distributed share of the orthogonalisation (tiny models, CPU)."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli
from gpt2lab.model.gpt import GPT, GPTConfig, load_model
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train
from gpt2lab.train import muon as muon_module
from gpt2lab.train.step import TrainStep
from gpt2lab.train.config import ConfigError, OptimSection, ScheduleSection, resolve_config
from gpt2lab.train.muon import CombinedOptimizer, Muon, newton_schulz, orthogonalised_update
from gpt2lab.train.optim import describe_optimizer, make_optimizer, muon_parameter_names
from gpt2lab.train.schedule import lr_at, set_lr
from train_utils import cli_flags, losses, tiny_config, write_dataset

TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)
CPU = torch.device("cpu")


def quiet(line):
    pass


def with_spectrum(rows, cols, seed=0):
    """A matrix with singular values spread over [0.05, 1] (a random square one has some near 0, which 5
    Newton-Schulz steps deliberately leave small: they are not directions a gradient update cares about)."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=g))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=g))
    s = torch.logspace(-1.3, 0, k)
    return u @ torch.diag(s) @ v.T, u @ v.T


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (48, 48)])
def test_newton_schulz_output_is_near_orthogonal(shape):
    G, polar = with_spectrum(*shape)
    X = newton_schulz(G * 123.0, steps=5, dtype=torch.float32)  # the input's scale does not matter
    assert X.shape == G.shape and X.dtype == torch.float32
    s = torch.linalg.svdvals(X)
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25, s
    cosine = float((X * polar).sum() / (X.norm() * polar.norm()))
    assert cosine > 0.97  # ~U Vᵀ itself: the same singular vectors, not just any near-orthogonal matrix
    assert float(torch.linalg.svdvals(G).min()) < 0.06  # while the input was far from orthogonal
    bf16 = newton_schulz(G, steps=5, dtype=torch.bfloat16)  # the GPU path
    assert bf16.dtype == torch.bfloat16 and 0.5 < float(torch.linalg.svdvals(bf16.float()).min())


def test_update_scale_follows_the_in_out_layout_and_qkv_split():
    # stored (fan_in, fan_out): c_fc-like 16 -> 64 gets sqrt(64 / 16) = 2, c_proj-like 64 -> 16 gets 1
    for (fan_in, fan_out), scale in [((16, 64), 2.0), ((64, 16), 1.0), ((16, 48), 3 ** 0.5)]:
        G, _ = with_spectrum(fan_in, fan_out)
        s = torch.linalg.svdvals(orthogonalised_update(G, 5, 1, torch.float32))
        assert 0.6 * scale < float(s.min()) and float(s.max()) < 1.25 * scale, (fan_in, fan_out, s)
    # c_attn split in three: each (16, 16) block orthogonal on its own, scale 1
    blocks = [with_spectrum(16, 16, seed=i)[0] * (10 ** i) for i in range(3)]  # very different sizes
    update = orthogonalised_update(torch.cat(blocks, dim=1), 5, 3, torch.float32)
    for i, block in enumerate(update.split(16, dim=1)):
        s = torch.linalg.svdvals(block)
        assert 0.6 < float(s.min()) and float(s.max()) < 1.25, (i, s)


@pytest.mark.parametrize("split", [1, 3])
def test_a_batch_of_matrices_is_orthogonalised_each_on_its_own(split):
    """Muon batches the matrices of one shape: each result is the one it gets alone (not mixed with the others')."""
    from gpt2lab.train.muon import orthogonalised_updates

    batch = torch.stack([with_spectrum(16, 48, seed=i)[0] * (10 ** i) for i in range(3)])
    together = orthogonalised_updates(batch, 5, split, torch.float32)
    for i in range(3):
        torch.testing.assert_close(together[i], orthogonalised_update(batch[i], 5, split, torch.float32),
                                   rtol=1e-5, atol=1e-5)


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


def test_wsd_schedule_and_each_group_from_its_own_peak():
    optim = OptimSection(lr=1e-3, min_lr=1e-4, name="muon", muon_lr=0.02)
    wsd = ScheduleSection(name="wsd", max_steps=100, warmup_steps=10, decay_fraction=0.2)
    assert lr_at(0, optim, wsd) == pytest.approx(1e-4)
    assert lr_at(9, optim, wsd) == lr_at(10, optim, wsd) == lr_at(79, optim, wsd) == 1e-3  # stable
    assert lr_at(80, optim, wsd) == pytest.approx(1e-3)  # cool-down starts at step 100 - 20
    assert lr_at(90, optim, wsd) == pytest.approx((1e-3 + 1e-4) / 2)
    assert lr_at(99, optim, wsd) == pytest.approx(1e-4 + 0.05 * 9e-4)
    assert lr_at(100, optim, wsd) == lr_at(500, optim, wsd) == 1e-4
    assert lr_at(90, optim, wsd, peak=0.02) == pytest.approx((0.02 + 0.002) / 2)  # Muon: same curve, scaled
    whole = ScheduleSection(name="wsd", max_steps=100, warmup_steps=10, decay_fraction=1.0)
    assert lr_at(55, optim, whole) == pytest.approx(1e-4 + 0.5 * 9e-4)  # fraction 1: linear from the warmup
    cosine = ScheduleSection(max_steps=100, warmup_steps=10)
    assert lr_at(55, optim, cosine, peak=0.02) == pytest.approx((0.02 + 0.002) / 2)
    optimizer = make_optimizer(GPT(GPTConfig(**TINY_GPT)), optim, CPU)
    logged = set_lr(optimizer, 90, optim, wsd)
    assert logged == lr_at(90, optim, wsd)
    assert [g["lr"] for g in optimizer.param_groups] == [lr_at(90, optim, wsd, peak=0.02)] * 2 + [logged] * 2


def test_muon_trains_a_tiny_model_and_differs_from_adamw(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    calls = []
    real = muon_module.newton_schulz
    # each call: the matrices of one shape, batched (their count: the leading dims)
    monkeypatch.setattr(muon_module, "newton_schulz", lambda G, *a, **k: calls.append(G.shape[:-2].numel()) or real(G, *a, **k))
    logged = []
    # the tiny model's loss is mostly the embeddings' (AdamW's in both runs): a higher AdamW lr makes 20 steps enough
    fast = dict(optim__lr=1e-2, optim__min_lr=1e-3)
    train(tiny_config(data, optim__name="muon", **fast), tmp_path / "muon", log=logged.append)
    assert sum(calls) == 20 * (6 + 2 * 3)  # every step orthogonalised all 8 matrices (c_attn's as q, k, v),
    assert len(calls) == 20 * 4  # in one batch per shape (c_attn, attn c_proj, c_fc, mlp c_proj)
    assert any(line.startswith("optimizer: Muon (lr 0.02") for line in logged)
    train(tiny_config(data, **fast), tmp_path / "adamw", log=quiet)
    m, a = losses(tmp_path / "muon"), losses(tmp_path / "adamw")
    assert m[1] == a[1]  # the same start...
    first, last = sum(m[s] for s in (1, 2, 3)) / 3, sum(m[s] for s in (18, 19, 20)) / 3
    assert first > 10.0 and last < first - 3.0, (first, last)
    assert all(abs(m[s] - a[s]) > 1e-3 for s in range(5, 21))  # ... then another trajectory


def test_a_muon_step_moves_each_block_matrix_by_lr_times_an_orthogonal_matrix():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT))
    optim = OptimSection(name="muon", muon_lr=0.01)
    optimizer = make_optimizer(model, optim, CPU)
    set_lr(optimizer, 10**6, optim, ScheduleSection())  # past the end: the floor, muon_lr * min_lr / lr
    lr = 0.01 * optim.min_lr / optim.lr
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    x = torch.randint(0, 128, (4, 16))
    model(x, x)[1].backward()
    optimizer.step()
    after = dict(model.named_parameters())
    for name, scale in [("attn.c_attn", 3 ** 0.5), ("attn.c_proj", 1.0), ("mlp.c_fc", 2.0), ("mlp.c_proj", 1.0)]:
        key = f"transformer.h.1.{name}.weight"
        s = torch.linalg.svdvals((before[key] - after[key].detach()) / lr)
        # a real gradient is not full rank (c_attn's key part loses a direction to the softmax), so the bottom of
        # the spectrum may stay small; the bulk sits in Newton-Schulz's band times the shape scale
        assert 0.6 * scale < float(s.median()) and float(s.max()) < 1.25 * scale, (name, s)


def test_muon_momentum_nesterov_and_weight_decay():
    g1, g2 = torch.randn(8, 24), torch.randn(8, 24)
    for nesterov in (True, False):
        w0 = torch.randn(8, 24)
        p = torch.nn.Parameter(w0.clone())
        optimizer = Muon([p], lr=0.1, momentum=0.9, nesterov=nesterov, weight_decay=0.5, ns_dtype=torch.float32)
        p.grad = g1.clone()
        optimizer.step()
        w1 = w0 * (1 - 0.05) - 0.1 * orthogonalised_update(1.9 * g1 if nesterov else g1, 5, 1, torch.float32)
        torch.testing.assert_close(p.detach(), w1)
        p.grad = g2.clone()
        optimizer.step()
        buf = 0.9 * g1 + g2
        w2 = w1 * (1 - 0.05) - 0.1 * orthogonalised_update(g2 + 0.9 * buf if nesterov else buf, 5, 1, torch.float32)
        torch.testing.assert_close(p.detach(), w2)
        assert torch.equal(p.grad, g2)  # the gradient itself is left alone


class Crash(Exception):
    """Stands in for a kill -9 between two steps."""


def test_muon_run_resumes_bit_identically(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, optim__name="muon", schedule__name="wsd", schedule__max_steps=8, checkpoint__every=4)
    train(config, tmp_path / "straight", log=quiet)
    real = TrainStep.forward_backward
    count = []

    def crash_at_step_7(*args, **kwargs):
        count.append(1)
        if len(count) == 7:
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(TrainStep, "forward_backward", crash_at_step_7)
    with pytest.raises(Crash):
        train(config, tmp_path / "killed", log=quiet)
    monkeypatch.setattr(TrainStep, "forward_backward", real)
    assert [step for step, _ in RunDirectory(tmp_path / "killed").checkpoints()] == [4]
    state = torch.load(tmp_path / "killed/checkpoints/step_00000004/training_state.pt", weights_only=True)
    assert len(state["optimizer"]["muon"]["state"]) == 8  # the momentum buffers are saved
    train(config, tmp_path / "killed", resume=True, log=quiet)
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    a, b = load_model(tmp_path / "straight").state_dict(), load_model(tmp_path / "killed").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_state_dict_round_trips_through_torch_save_weights_only(tmp_path):
    def fresh():
        torch.manual_seed(0)
        model = GPT(GPTConfig(**TINY_GPT))
        return model, make_optimizer(model, OptimSection(name="muon", muon_weight_decay=0.1), CPU)

    def step(model, optimizer, seed):
        torch.manual_seed(seed)
        x = torch.randint(0, 128, (2, 16))
        optimizer.zero_grad()
        model(x, x)[1].backward()
        optimizer.step()

    model, optimizer = fresh()
    for seed in (1, 2):
        step(model, optimizer, seed)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, tmp_path / "s.pt")
    step(model, optimizer, 3)
    saved = torch.load(tmp_path / "s.pt", weights_only=True)
    model2, optimizer2 = fresh()
    model2.load_state_dict(saved["model"])
    optimizer2.load_state_dict(saved["optimizer"])
    assert optimizer2.state_dict()["muon"]["param_groups"] == saved["optimizer"]["muon"]["param_groups"]
    step(model2, optimizer2, 3)
    for (name, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), name


def test_bad_optimizer_and_schedule_settings_are_refused():
    def refused(overrides, needle):
        with pytest.raises(ConfigError, match=needle):
            resolve_config(overrides=overrides)

    refused([("optim.name", "sgd")], "optim.name must be adamw or muon, got 'sgd'")
    refused([("optim.muon_lr", "0.05")], "optim.muon_lr is a Muon setting but optim.name is adamw")
    refused([("optim.muon_split_qkv", "true")], "optim.muon_split_qkv is a Muon setting")
    refused([("schedule.name", "linear")], "schedule.name must be cosine or wsd")
    for fraction in ("0", "-0.1", "1.5"):
        refused([("schedule.decay_fraction", fraction)], r"schedule.decay_fraction must be in \(0, 1\]")
    refused([("optim.name", "muon"), ("optim.muon_momentum", "1")], "optim.muon_momentum must be in")
    assert resolve_config(overrides=[("optim.name", "muon"), ("optim.muon_lr", "0.05")]).optim.muon_lr == 0.05
    assert resolve_config(overrides=[("schedule.decay_fraction", "1")]).schedule.decay_fraction == 1.0
    # a saved run config lists every key, Muon's included: resuming an AdamW run from it is not refused
    saved = resolve_config().to_dict()
    assert resolve_config(base=saved).optim.name == "adamw"


def test_bad_input_on_the_command_line_and_resume_into_muon(tmp_path, capsys):
    from test_train_cli import one_line_error, run_main

    data = write_dataset(tmp_path / "data")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data), "--optim.name", "adam"),
                   "optim.name must be adamw or muon, got 'adam'")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data), "--optim.muon_lr", "0.1"),
                   "optim.muon_lr is a Muon setting but optim.name is adamw")
    one_line_error(run_main(capsys, "train", "--out", tmp_path / "r", *cli_flags(data),
                            "--schedule.decay_fraction", "2"), "schedule.decay_fraction must be in (0, 1]")
    assert not (tmp_path / "r").exists()
    run = tmp_path / "run"
    flags = cli_flags(data, schedule__max_steps=2)
    assert run_main(capsys, "train", "--out", run, *flags).returncode == 0
    written = lambda: {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.name != ".gpt2lab.lock"}  # noqa: E731
    files = written()
    one_line_error(run_main(capsys, "train", "--out", run, "--resume", *flags, "--optim.name", "muon"),
                   "optim.name ('adamw' -> 'muon')")
    assert written() == files  # nothing written (only the run's lock was taken and released)


def test_a_muon_trained_checkpoint_is_plain_gpt2_for_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, optim__name="muon", schedule__max_steps=3), tmp_path / "run", log=quiet)
    checkpoint = RunDirectory(tmp_path / "run").latest_checkpoint()
    hf, info = GPT2LMHeadModel.from_pretrained(checkpoint, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = load_model(checkpoint).eval()
    idx = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert (hf.eval()(idx).logits - ours(idx)[0]).abs().max() < 1e-4


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


def test_torchrun_two_processes_with_muon_match_one_process_with_accumulation(tmp_path):
    data = write_dataset(tmp_path / "data", train_tokens=11 * 32 + 1)
    flags = cli_flags(data, data__batch_size=2, data__total_batch_tokens=64, schedule__max_steps=3,
                      optim__name="muon")
    single = run_cli("train", "--out", tmp_path / "single", *flags)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "gpt2lab", "train", "--out", str(tmp_path / "ddp"), *map(str, flags)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    assert "x 2 process(es) x 1 micro-steps" in ddp.stdout and "optimizer: Muon" in ddp.stdout
    got, expected = losses(tmp_path / "ddp"), losses(tmp_path / "single")
    assert sorted(got) == sorted(expected) == [1, 2, 3]
    for step in expected:
        assert abs(got[step] - expected[step]) < 1e-5, (step, got[step], expected[step])
    a, b = load_model(tmp_path / "single").state_dict(), load_model(tmp_path / "ddp").state_dict()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-4)


def test_a_muon_preset_switched_to_adamw_drops_its_muon_settings_but_the_user_s_are_still_refused():
    """The demo preset trains with Muon; `--optim.name adamw` on it means "this preset with AdamW": the preset's
    Muon settings return to their defaults (and so do not reach the saved config) instead of being refused."""
    demo = resolve_config("shakespeare-cpu")
    assert demo.optim.name == "muon" and demo.optim.muon_lr == 0.01
    adamw = resolve_config("shakespeare-cpu", overrides=[("optim.name", "adamw")])
    assert adamw.optim.name == "adamw" and adamw.optim.muon_lr == OptimSection().muon_lr
    assert (adamw.model, adamw.data, adamw.schedule) == (demo.model, demo.data, demo.schedule)
    with pytest.raises(ConfigError, match="optim.muon_lr is a Muon setting but optim.name is adamw"):
        resolve_config("shakespeare-cpu", overrides=[("optim.name", "adamw"), ("optim.muon_lr", "0.02")])
