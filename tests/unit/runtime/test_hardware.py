"""What a device offers (gpt2lab/runtime/hardware.py): a CUDA device's name finds its published specs, a GPU to plan
for by its short name, and this CPU's memory (patched: nothing depends on this machine)."""

import pytest
import torch

from gpt2lab.errors import BadValue
from gpt2lab.runtime import hardware, memory


def test_gpu_names_match_the_right_specs():
    names = {"NVIDIA H100 80GB HBM3": "h100", "NVIDIA H100 PCIe": "h100-pcie", "NVIDIA A100-SXM4-80GB": "a100",
             "NVIDIA A100-SXM4-40GB": "a100-40gb", "NVIDIA A10": "a10", "NVIDIA L4": "l4", "NVIDIA L40S": "l40s",
             "NVIDIA GeForce RTX 4090": "rtx4090", "NVIDIA H200": "h200"}
    for name, key in names.items():
        assert hardware.gpu_spec(name) is hardware.GPUS[key], name
    assert hardware.gpu_spec("NVIDIA A10G") is None and hardware.gpu_spec("Tesla T4") is None


def test_a_gpu_to_plan_for_is_named_as_the_table_names_it_and_an_unknown_one_lists_them():
    h100 = hardware.planned_device("H100")  # any case
    assert (h100.name, h100.memory_bytes, h100.peak_flops) == ("NVIDIA H100 SXM 80GB", 81559 * 2**20, 989e12)
    assert h100.planned and h100.type == "cuda" and h100.precision == "bf16"
    rtx = hardware.planned_device("RTX 4090", "fp32")  # spaces ignored; in fp32 no published peak applies
    assert rtx.name == "NVIDIA GeForce RTX 4090 24GB" and rtx.amp_dtype is None and rtx.peak_flops is None
    assert hardware.planned_device("l4", "fp16").amp_dtype == torch.float16
    with pytest.raises(BadValue, match="'tpu' is not a GPU gpt2lab knows; choose one of h100-pcie, h100, h200") as e:
        hardware.planned_device("tpu")
    assert e.value.param == "plan_device"


def test_this_cpu_offers_what_is_available_and_no_published_peak(monkeypatch):
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)
    monkeypatch.setattr(memory, "resident_bytes", lambda: 2**30)
    cpu = hardware.device_spec(torch.device("cpu"), None)
    assert (cpu.type, cpu.memory_bytes, cpu.peak_flops, cpu.precision) == ("cpu", 9 * 2**30, None, "fp32")
    assert cpu.name.endswith(" cores") and not cpu.planned
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown stays unknown
    assert hardware.cpu_memory_for_one_process() is None
