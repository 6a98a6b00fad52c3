"""The CUDA paths against their CPU / eager / reference twins (marker `cuda`: skipped without a GPU; the GPU check,
scripts/gpu_check.sh, runs them first). Tiny models, seconds each.

GPT2LAB_CUDA_TESTS_ON=cpu runs these same tests with the CPU standing in for the GPU: that checks the tests' own
code on a machine without one (every "CUDA" comparison is then CPU against CPU), never the CUDA paths.
"""

import os

import pytest
import torch

from gpt2lab.model.gpt import load_model
from gpt2lab.runtime.device import autocast
from gpt2lab.sampling.decode import IncrementalDecoder
from gpt2lab.storage.run_directory import RunDirectory
from gpt2lab.train import train
from gpt2lab.train.config import OptimSection
from gpt2lab.train.optim import make_optimizer, param_groups

from tests.conftest import ODD, tiny_gpt
from tests.train_utils import losses, quiet, tiny_config, train_until_crash, write_dataset

DEVICE = torch.device(os.environ.get("GPT2LAB_CUDA_TESTS_ON", "cuda"))
CPU = torch.device("cpu")
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """TF32 off while a test compares CUDA with the CPU (the trainer turns it on for the whole process)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def batch(seed=0, B=3, T=ODD["block_size"]):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randint(0, ODD["vocab_size"], (B, T), generator=g) for _ in range(2))


def on(device, model):
    twin = tiny_gpt().to(device)
    twin.load_state_dict(model.state_dict())
    return twin


def test_fp32_logits_on_cuda_equal_the_cpus():
    model = tiny_gpt()
    x, y = batch()
    with torch.no_grad():
        cpu_logits, cpu_loss = model(x, y)
        gpu_logits, gpu_loss = on(DEVICE, model)(x.to(DEVICE), y.to(DEVICE))
    assert (gpu_logits.cpu() - cpu_logits).abs().max().item() <= 1e-5
    assert gpu_loss.item() == pytest.approx(cpu_loss.item(), abs=1e-5)


def test_bf16_autocast_loss_is_the_fp32_loss_within_bf16_rounding():
    model = on(DEVICE, tiny_gpt())
    x, y = (t.to(DEVICE) for t in batch())
    with torch.no_grad():
        fp32 = model(x, y)[1].item()
        with autocast(DEVICE, torch.bfloat16):
            logits, loss = model(x, y)
    assert logits.dtype == torch.bfloat16  # autocast did run the matmuls in bf16
    assert loss.item() == pytest.approx(fp32, rel=1e-2)  # bf16 keeps 8 bits of mantissa: ~0.4 % per value


def test_kv_cache_decoding_on_cuda_equals_recomputing_the_context():
    """Teacher-forced (random next tokens, so that no argmax near-tie decides the path): the cached logits at every
    step, past block_size where the window slides and the cache is rebuilt, against the context recomputed."""
    model = on(DEVICE, tiny_gpt(seed=1))
    seq = batch(B=2, T=10)[0].to(DEVICE)
    decoder = IncrementalDecoder(model, seq, max_new_tokens=2 * ODD["block_size"])
    g, worst = torch.Generator().manual_seed(3), 0.0
    with torch.no_grad():
        for _ in range(2 * ODD["block_size"]):
            recomputed = model(seq[:, -ODD["block_size"]:])[0][:, -1].float()
            worst = max(worst, (decoder.logits - recomputed).abs().max().item())
            token = torch.randint(0, ODD["vocab_size"], (2,), generator=g).to(DEVICE)
            seq = torch.cat([seq, token[:, None]], dim=1)
            decoder.append(token)
    assert seq.size(1) > ODD["block_size"] + 30 and worst <= 1e-4


def gradients_of(model, seed=0):
    x, y = batch(seed)
    device = next(model.parameters()).device
    model.zero_grad()
    model(x.to(device), y.to(device))[1].backward()


def test_fused_adamw_step_equals_foreach():
    """gpt2lab takes the fused AdamW on CUDA; three steps of it against foreach's on the same gradients."""
    fused_model, foreach_model = on(DEVICE, tiny_gpt()), on(DEVICE, tiny_gpt())
    settings = OptimSection()
    fused = make_optimizer(fused_model, settings, DEVICE)
    assert fused.defaults["fused"] is True
    foreach = torch.optim.AdamW(param_groups(foreach_model, settings.weight_decay), lr=settings.lr,
                                betas=(settings.beta1, settings.beta2), eps=settings.eps, foreach=True)
    for seed in range(3):
        for model, optimizer in ((fused_model, fused), (foreach_model, foreach)):
            gradients_of(model, seed)
            optimizer.step()
    for a, b in zip(fused_model.parameters(), foreach_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ns_dtype, atol", [("fp32", 1e-5), ("bf16", 2e-3)])
def test_one_muon_step_on_cuda_is_the_cpus(ns_dtype, atol):
    """The same gradients, one Muon + AdamW step on each device; Newton-Schulz in fp32 agrees to float rounding,
    in bf16 (the CUDA default) to bf16's (the update is lr x an orthogonal matrix: each entry ~ lr / sqrt(n))."""
    settings = OptimSection(name="muon", muon_ns_dtype=ns_dtype)
    cpu_model = tiny_gpt()
    gpu_model = on(DEVICE, cpu_model)
    gradients_of(cpu_model)
    for p, q in zip(gpu_model.parameters(), cpu_model.parameters()):  # exactly the CPU's: only the step is compared
        p.grad = q.grad.to(DEVICE)
    for model, device in ((cpu_model, CPU), (gpu_model, DEVICE)):
        make_optimizer(model, settings, device).step()
    for (name, a), b in zip(gpu_model.named_parameters(), cpu_model.parameters()):
        torch.testing.assert_close(a.cpu(), b, rtol=0, atol=atol, msg=name)


@pytest.mark.skipif(DEVICE.type == "cpu", reason="compiles for CUDA (inductor's C++ build on a CPU takes minutes)")
def test_compiled_logits_equal_eager():
    model = on(DEVICE, tiny_gpt())
    x, _ = batch()
    with torch.no_grad():
        eager = model(x.to(DEVICE))[0]
        compiled = torch.compile(model)(x.to(DEVICE))[0]
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


@pytest.fixture
def cuda_runs(tmp_path, monkeypatch):
    """A bf16 run of 8 steps on the GPU straight through, and the same run crashed at step 7 and resumed from its
    checkpoint at step 4."""
    data = write_dataset(tmp_path / "data")
    config = tiny_config(data, runtime__device=DEVICE.type, runtime__precision="bf16", schedule__max_steps=8,
                         checkpoint__every=4)
    train(config, tmp_path / "straight", log=quiet, progress=False)
    train_until_crash(monkeypatch, config, tmp_path / "killed", 7, log=quiet, progress=False)
    assert [step for step, _ in RunDirectory(tmp_path / "killed").checkpoints()] == [4]
    train(config, tmp_path / "killed", resume=True, log=quiet, progress=False)
    return tmp_path / "straight", tmp_path / "killed"


def test_a_cuda_checkpoint_resumes_bit_exact_on_cuda_and_loads_on_the_cpu(cuda_runs):
    straight, resumed = cuda_runs
    assert losses(resumed) == losses(straight)  # every step, floats compared exactly
    on_gpu = load_model(straight, device=DEVICE).state_dict()
    assert all(t.device.type == DEVICE.type for t in on_gpu.values())
    assert all(torch.equal(on_gpu[k], v.to(DEVICE)) for k, v in load_model(resumed, device=DEVICE).state_dict().items())
    on_cpu = load_model(straight, device="cpu")
    assert all(torch.equal(v, on_gpu[k].cpu()) for k, v in on_cpu.state_dict().items())
    state = torch.load(straight / "checkpoints/step_00000008/training_state.pt", map_location="cpu", weights_only=True)
    assert state["optimizer"]["state"]  # the optimizer's moments, readable on a machine without a GPU
    x, y = batch(T=16)
    with torch.no_grad():
        assert torch.isfinite(on_cpu(x, y)[1])
