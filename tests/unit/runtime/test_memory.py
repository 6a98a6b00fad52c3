"""The memory guard (gpt2lab/runtime/memory.py): its estimates against measured peaks and term by term, the one-line
refusal (available memory patched, so that nothing depends on this machine's RAM), and sizes written one way. (The
training estimate against real runs: tests/e2e/test_memory_estimate.py.)"""

import os

import pytest

from gpt2lab import GPT
from gpt2lab.model.config import GPTConfig
from gpt2lab.runtime import memory
from gpt2lab.train import batch
from gpt2lab.train.config_files import resolve_config

GPT2 = GPTConfig.from_preset("gpt2")


def test_the_inference_guard_is_somewhat_below_a_measured_peak_of_gpt2():
    # Measured on the 2-core development VM (CPU, float32, VmHWM above the resident weights): a forward pass with
    # the loss on all of 4 x 256 positions (an evaluation batch) peaked 0.41 GB higher. The guard errs on the side
    # of allowing.
    assert 0.5 * 0.41e9 < memory.inference_bytes(GPT2, 4, 256) < 0.41e9


def test_the_reported_sampling_typo_is_far_beyond_a_24_gib_machine_and_the_default_batch_is_small():
    # `--num-samples 100000 --max-new-tokens 2` used to be one batch of 100,000 rows (an 8-token prompt)
    assert memory.inference_bytes(GPT2, 100_000, 8, scored=1, cached=10) > 2 * 24 * memory.GIB
    assert memory.inference_bytes(GPT2, 8, 8, scored=1, cached=10) < 0.01 * memory.GIB


def test_the_training_estimate_counts_the_optimizer_state_once_per_formula():
    params, muon = 1_000_000, 400_000
    assert memory.optimizer_state_bytes(params) == 8 * params  # AdamW: two moments
    assert memory.optimizer_state_bytes(params, muon) == 8 * (params - muon) + 4 * muon  # Muon: one buffer
    estimate = memory.estimate_training(GPT2, 1, 8, params=params, cast_params=params, muon_params=muon)
    assert estimate.optimizer == memory.optimizer_state_bytes(params, muon)


def test_check_fits_refuses_in_one_line_naming_the_parameter_its_value_and_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 3 * memory.GIB)
    memory.check_fits("batch_size", 8, 3 * memory.GIB, "cpu")  # just fits: no error
    with pytest.raises(memory.MemoryLimitError, match="batch_size 9 would need ~3.00 GiB"):
        memory.check_fits("batch_size", 9, 3 * memory.GIB + 1, "cpu")
    with pytest.raises(memory.MemoryLimitError) as refused:
        memory.check_fits("batch_size", 100000, 40 * memory.GIB, "cpu")
    assert str(refused.value) == ("batch_size 100000 would need ~40.0 GiB for one forward pass, more than the "
                                  "3.00 GiB available; lower it")
    assert refused.value.named("--batch-size").startswith("--batch-size 100000 would need")  # as the CLI says it
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: never refuse
    memory.check_fits("batch_size", 100000, 40 * memory.GIB, "cpu")


def test_sizes_are_written_one_way():
    assert memory.format_bytes(300 * 2**20) == "300 MiB"
    assert memory.format_bytes(3 * memory.GIB) == "3.00 GiB"
    assert memory.format_bytes(40 * memory.GIB) == "40.0 GiB"
    assert memory.format_bytes(None) == "unknown"


def test_available_memory_of_a_cpu_is_memavailable(tmp_path, monkeypatch):
    # MemAvailable, not MemTotal nor MemFree (which leaves out the page cache the kernel can drop)
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       24684096 kB\nMemFree:         1002300 kB\nMemAvailable:   22866172 kB\n")
    monkeypatch.setattr(memory, "MEMINFO", str(fake))
    assert memory.available_bytes("cpu") == 22866172 * 1024
    assert memory.available_bytes("meta") is None  # a device whose free memory cannot be known


@pytest.mark.skipif(not os.path.exists("/proc/meminfo"), reason="Linux only")
def test_available_memory_of_this_machine_is_plausible():
    with open("/proc/meminfo") as f:
        fields = dict(line.split(":", 1) for line in f)
    assert 0 < memory.available_bytes("cpu") <= int(fields["MemTotal"].split()[0]) * 1024


def test_the_memory_terms_follow_the_optimizer_precision_accumulation_and_processes():
    arch = resolve_config("shakespeare-cpu").model.gpt_config()
    counts = batch.parameter_counts(arch, "muon")
    assert 0 < counts.muon < counts.cast < counts.total == GPT(arch).num_parameters()
    assert counts.muon == 6 * 12 * 128 * 128  # the blocks' four matrices: 3C^2 + C^2 + 4C^2 + 4C^2 per layer

    def step(**changes):
        kwargs = dict(params=counts.total, cast_params=counts.cast, muon_params=0, amp_bytes=None, grad_accum=1,
                      world_size=1)
        return memory.estimate_training(arch, 8, 128, **{**kwargs, **changes})

    adamw, muon = step(), step(muon_params=counts.muon)
    assert adamw.optimizer - muon.optimizer == 4 * counts.muon  # Muon: one momentum buffer; AdamW: two moments
    assert step(grad_accum=2).gradients == 4 * counts.total and adamw.gradients == 0  # accumulated across micro-steps
    bf16 = step(amp_bytes=2)
    assert bf16.autocast_weights == 2 * counts.cast and adamw.autocast_weights == 0
    assert bf16.activations < adamw.activations and bf16.logits == adamw.logits  # the loss stays float32
    assert step(world_size=8).ddp_buckets == 4 * counts.total and adamw.ddp_buckets == 0
    assert step().total < memory.estimate_training(arch, 16, 128, params=counts.total, cast_params=counts.cast).total
    # optim.adamw_cautious_wd's copies live during the optimizer step, the peak of a 1-token step
    plain, cautious = (step(muon_params=counts.muon, step_copies=n) for n in (0, 1000))
    tiny_plain, tiny_cautious = (memory.estimate_training(arch, 1, 1, params=counts.total, cast_params=counts.cast,
                                                          step_copies=n) for n in (0, 1000))
    assert tiny_cautious.optimizer - tiny_plain.optimizer == 4000 == tiny_cautious.total - tiny_plain.total
    assert cautious.total == plain.total  # the backward pass's peak (8 x 128 tokens) is higher than the step's


def test_fsdp_divides_the_states_by_the_processes_and_adds_what_it_gathers():
    from gpt2lab.runtime.memory import block_and_root_params, estimate_training

    params = 124_475_904
    block, root = block_and_root_params(GPT2)
    assert 12 * block + root == GPT2.n_layer * (12 * 768 * 768 + 13 * 768) + (50257 + 1024 + 2) * 768
    kwargs = dict(params=params, cast_params=params, world_size=8)
    ddp = estimate_training(GPT2, 1, 64, **kwargs)
    fsdp = estimate_training(GPT2, 1, 64, **kwargs, sharded=True)
    assert fsdp.weights == ddp.weights // 8 and fsdp.optimizer == ddp.optimizer // 8
    assert fsdp.ddp_buckets == 0 < ddp.ddp_buckets
    assert fsdp.gathered_weights == 4 * (2 * block + root) and fsdp.reduce_buffers == 4 * block * 2
    # accumulating, FSDP keeps the whole gradients (reduced on the last micro-step only): in bf16 on GPUs
    held = estimate_training(GPT2, 1, 64, **kwargs, sharded=True, grad_accum=2, amp_bytes=2,
                             low_precision_params=True)
    assert held.gradients == 2 * params and held.autocast_weights == 0


def test_activation_checkpointing_keeps_a_block_s_input_per_layer():
    from gpt2lab.runtime.memory import estimate_training

    kwargs = dict(params=1, cast_params=1)
    full = estimate_training(GPT2, 4, 256, **kwargs).activations
    checkpointed = estimate_training(GPT2, 4, 256, **kwargs, checkpointed=True).activations
    per_layer = 17 * 4 * 768 + 4 * 12  # one block's saved values, float32, per token
    assert checkpointed == 4 * 256 * (12 * 4 * 768 + per_layer + 2 * 4 * 768)
    assert full == 4 * 256 * (12 * per_layer + 2 * 4 * 768) and checkpointed < full / 3
