"""Precision (gpt2lab/runtime/device.py): both spellings of a precision setting map to one autocast dtype, and the
autocast context applies it."""

import pytest
import torch

from gpt2lab.errors import GPT2LabError
from gpt2lab.runtime import device as device_module
from gpt2lab.runtime.device import autocast, autocast_dtype

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("names, expected", [
    (("fp32", "float32"), None),  # full precision: no autocast
    (("bf16", "bfloat16"), torch.bfloat16),
    (("fp16", "float16"), torch.float16),
])
def test_config_and_cli_names_agree(names, expected):
    assert [autocast_dtype(name, CPU) for name in names] == [expected, expected]


def test_auto_takes_bf16_only_where_it_is_native(monkeypatch):
    monkeypatch.setattr(device_module, "native_bf16", lambda device: True)
    assert autocast_dtype("auto", CPU) == autocast_dtype("auto", CUDA) == torch.bfloat16
    monkeypatch.setattr(device_module, "native_bf16", lambda device: False)
    assert autocast_dtype("auto", CPU) is None  # emulated bf16 is slower than fp32
    assert autocast_dtype("auto", CUDA) == torch.float16  # an older GPU: fp16 (with a GradScaler in training)
    assert autocast_dtype("auto", torch.device("mps")) is None


def test_unknown_precision_is_a_user_error():
    with pytest.raises(GPT2LabError, match="unknown dtype 'float64'"):
        autocast_dtype("float64", CPU)


def test_autocast_context():
    a = torch.randn(4, 4)
    for full_precision in (None, torch.float32):
        with autocast(CPU, full_precision):
            assert (a @ a).dtype == torch.float32
    with autocast(CPU, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16


def test_sampling_dtype_auto_is_bf16_where_it_decodes_faster(monkeypatch):
    from gpt2lab.model import cpu_decode
    from gpt2lab.runtime.device import decoding_dtype

    assert decoding_dtype("float32", CPU) == torch.float32 and decoding_dtype("bfloat16", CPU) == torch.bfloat16
    monkeypatch.setattr(cpu_decode, "packing_available", lambda: True)  # native bf16 + oneDNN's packed product
    assert decoding_dtype("auto", CPU) == torch.bfloat16
    monkeypatch.setattr(cpu_decode, "packing_available", lambda: False)  # emulated bf16: slower than fp32
    assert decoding_dtype("auto", CPU) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert decoding_dtype("auto", CUDA) == torch.bfloat16
    assert decoding_dtype("auto", torch.device("mps")) == torch.float32
    with pytest.raises(GPT2LabError, match="unknown dtype 'float64'"):
        decoding_dtype("float64", CPU)
