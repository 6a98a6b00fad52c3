"""Muon (gpt2lab/train/muon.py, optim.name = muon): Newton-Schulz orthogonalises, training learns and differs from
AdamW, exact resume, the state_dict round trip, plain GPT-2 checkpoints (tiny models, CPU). (Its parameter grouping:
test_optim.py; WSD: test_schedule.py; its settings: test_config.py; across processes: tests/e2e/test_train_ddp.py.)"""

import pytest
import torch

from gpt2lab.model.gpt import GPT, GPTConfig, load_model
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import muon as muon_module, train
from gpt2lab.train.config import OptimSection, ScheduleSection
from gpt2lab.train.muon import Muon, newton_schulz, orthogonalised_update
from gpt2lab.train.optim import make_optimizer
from gpt2lab.train.schedule import set_lr

from tests.train_utils import losses, quiet, tiny_config, train_until_crash, write_dataset

TINY_GPT = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128)
CPU = torch.device("cpu")


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


SPEEDRUN = dict(optim__muon_ns_coefficients="polar_express", optim__muon_normuon=True, optim__cautious_wd=True,
                optim__muon_weight_decay=0.1, optim__muon_momentum_warmup_steps=6)


@pytest.mark.parametrize("options", [{}, SPEEDRUN], ids=["plain", "speedrun-options"])
def test_muon_run_resumes_bit_identically(tmp_path, monkeypatch, options):
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, optim__name="muon", schedule__name="wsd", schedule__max_steps=8, checkpoint__every=4,
                         **options)
    train(config, tmp_path / "straight", log=quiet)
    train_until_crash(monkeypatch, config, tmp_path / "killed", 7, log=quiet)
    assert [step for step, _ in RunDirectory(tmp_path / "killed").checkpoints()] == [4]
    state = torch.load(tmp_path / "killed/checkpoints/step_00000004/training_state.pt", weights_only=True)
    assert len(state["optimizer"]["muon"]["state"]) == 8  # the momentum buffers are saved
    assert all(("normuon_v" in s) == bool(options) for s in state["optimizer"]["muon"]["state"].values())
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


@pytest.mark.parametrize("normuon", [False, True])
def test_the_sharded_path_gathers_orthogonalises_and_scatters_the_same_updates(normuon):
    """FSDP's Muon (the owner gathers a matrix's row shards, orthogonalises it whole, scatters the update's rows
    back), here over one process: the same step as the whole model's, for matrices of several shapes; with NorMuon
    and cautious decay too (whose column sums are all-reduced over the row shards)."""
    from gpt2lab.train.config import OptimSection
    from gpt2lab.train.optim import make_optimizer
    from gpt2lab.train.parallel import ParallelModel
    from gpt2lab.train.step import TrainStep, repeat
    from tests.train_utils import one_process_group, tiny_sharded

    settings = OptimSection(name="muon", muon_ns_dtype="fp32", grad_clip=0.0, muon_normuon=normuon,
                            cautious_wd=normuon, muon_weight_decay=0.5 if normuon else 0.0)
    with one_process_group():
        sharded, whole = tiny_sharded(n_embd=48, n_head=3)
        steps = [TrainStep(model, make_optimizer(model.raw, settings, torch.device("cpu")), device="cpu")
                 for model in (sharded, ParallelModel(whole))]
        x = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(0))
        for i in range(3):
            for step in steps:
                step(i, repeat((x[:, :-1], x[:, 1:])))
        for name, p in whole.named_parameters():
            q = dict(sharded.raw.named_parameters())[name].full_tensor()
            assert torch.allclose(p, q, atol=1e-6), name


def quintic_passes(s: torch.Tensor, passes: int) -> torch.Tensor:
    """What `passes` Newton-Schulz steps do to each singular value (after the Frobenius normalisation):
    s <- a s + b s^3 + c s^5, in float64."""
    a, b, c = muon_module.NS_COEFFICIENTS
    s = s.double() / s.double().norm()
    for _ in range(passes):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


def test_newton_schulz_runs_exactly_five_quintic_passes_by_default_and_in_the_optimizer():
    """The singular values after the iteration are the scalar quintic applied exactly 5 times: 4 or 6 passes land
    far outside the tolerance (small singular values grow ~3.4x per pass)."""
    s = torch.tensor([1.0, 0.6, 0.2, 0.05, 0.01, 0.003], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    u, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    G = (u @ torch.diag(s) @ v.T).float()
    expected = quintic_passes(s, 5)
    for wrong in (4, 6):
        assert (quintic_passes(s, wrong) - expected).abs().max() > 0.05  # the pin can tell them apart

    def spectrum(X):
        return torch.linalg.svdvals(X.double()).sort(descending=True).values

    assert torch.allclose(spectrum(newton_schulz(G, dtype=torch.float32)), expected.sort(descending=True).values,
                          atol=2e-3)

    # the optimizer built from the default config: one Muon step of a square block matrix (shape scale 1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(**{**TINY_GPT, "n_embd": 6, "n_head": 2}))
    optimizer = make_optimizer(model, OptimSection(name="muon", muon_ns_dtype="fp32"), CPU)
    weight = model.transformer.h[0].attn.c_proj.weight
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    weight.grad = G.clone()
    before = weight.detach().clone()
    lr = next(group["lr"] for group in optimizer.param_groups if any(p is weight for p in group["params"]))
    optimizer.step()
    assert torch.allclose(spectrum((before - weight.detach()) / lr), expected.sort(descending=True).values, atol=2e-3)


# --- the speed-run era's refinements (issue 25) ---------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_polar_express_lands_the_singular_values_closer_to_one_than_the_fixed_quintic(dtype):
    g, _ = with_spectrum(64, 32)
    spread = {}
    for name in ("quintic", "polar_express"):
        s = torch.linalg.svdvals(newton_schulz(g, 5, dtype=dtype, coefficients=name).float())
        spread[name] = float((s - 1).abs().max())
    # the quintic deliberately leaves a band around 1 (~0.7-1.2); Polar Express's per-iteration coefficients close in
    # (in bf16 too, where Muon runs it on GPUs and native-bf16 CPUs)
    assert spread["polar_express"] < 0.5 * spread["quintic"], spread
    assert muon_module.ns_schedule("polar_express", 3) == muon_module.POLAR_EXPRESS[:3]
    with pytest.raises(ValueError):
        muon_module.ns_schedule("polar_express", 6)  # its table has 5 iterations
    with pytest.raises(ValueError):
        Muon([torch.nn.Parameter(torch.randn(4, 4))], ns_coefficients="cubic")


def test_normuon_gives_every_output_neuron_the_same_size_at_the_orthogonal_updates_norm():
    torch.manual_seed(0)
    g = torch.randn(16, 24) * torch.linspace(0.1, 3, 24)  # output neurons (columns) of very different sizes
    plain = orthogonalised_update(g, 5, 1, torch.float32)
    p = torch.nn.Parameter(torch.zeros(16, 24))
    optimizer = Muon([p], lr=1.0, momentum=0.0, ns_dtype=torch.float32, normuon_beta2=0.95)
    p.grad = g.clone()
    optimizer.step()
    update = -p.detach()
    columns = update.norm(dim=0)
    # the first step's EMA is (1 - beta2) * each column's mean square: dividing by it equalises the columns exactly
    torch.testing.assert_close(columns, columns.mean().expand(24))
    assert not torch.allclose(plain.norm(dim=0), plain.norm(dim=0).mean().expand(24), rtol=0.05)
    torch.testing.assert_close(update.norm(), plain.norm())
    torch.testing.assert_close(optimizer.state[p]["normuon_v"], 0.05 * plain.square().mean(dim=0))


def test_cautious_weight_decay_only_decays_where_the_update_and_the_weight_agree_in_sign():
    torch.manual_seed(0)
    w0, g = torch.randn(8, 24), torch.randn(8, 24)
    results = {}
    for cautious in (False, True):
        p = torch.nn.Parameter(w0.clone())
        optimizer = Muon([p], lr=0.1, momentum=0.0, weight_decay=0.5, cautious_wd=cautious, ns_dtype=torch.float32)
        p.grad = g.clone()
        optimizer.step()
        results[cautious] = p.detach()
    u = orthogonalised_update(g, 5, 1, torch.float32)
    agree = (u * w0 > 0).float()
    assert 0 < agree.mean() < 1
    torch.testing.assert_close(results[True], w0 - 0.1 * u - 0.1 * 0.5 * w0 * agree)
    torch.testing.assert_close(results[False], w0 * (1 - 0.05) - 0.1 * u)


def test_muon_momentum_warms_up_from_its_start_value_with_the_step():
    from gpt2lab.train.schedule import muon_momentum_at

    optim = OptimSection(name="muon", muon_momentum=0.95, muon_momentum_start=0.85, muon_momentum_warmup_steps=10)
    assert [round(muon_momentum_at(s, optim), 6) for s in (0, 5, 10, 50)] == [0.85, 0.9, 0.95, 0.95]
    assert muon_momentum_at(0, OptimSection(name="muon")) == 0.95  # off by default
    model = GPT(GPTConfig(**TINY_GPT))
    optimizer = make_optimizer(model, optim, CPU)
    set_lr(optimizer, 5, optim, ScheduleSection())
    momenta = {round(g["momentum"], 6) for g in optimizer.param_groups if Muon.owns(g)}
    assert momenta == {0.9}
    assert all("momentum" not in g for g in optimizer.param_groups if not Muon.owns(g))
