"""The matrix products of CPU decoding: a few rows (one per sequence being sampled) times a weight matrix.

A decode step feeds one token per sequence, so every projection is a matrix-vector product (or a handful of them)
whose speed is how fast the weight streams from memory: all of a model's weights are read once per token. The
kernels torch calls by default are tuned for large products and stream far below the memory's bandwidth here, and
which kernel streams best depends on the dtype:

- float32: MKL runs products of 1-16 rows on one thread (~14 GB/s on a 2-core EPYC, and worse for 2-8 rows), so
  `matmul_few_rows` splits the inner dimension into one slice per thread and multiplies the slices as one batched
  matmul, which torch spreads over the threads (~21 GB/s).
- bfloat16: a plain bf16 product of a few rows reads weights at a third of float32's speed per byte (so bf16
  decoding, which reads half the bytes, was slower than float32). oneDNN's inner product with the weight packed once
  into its blocked layout streams bf16 at close to float32's bytes per second, so reading half the bytes becomes
  ~1.4-1.7x faster per token (`PackedLinear`; measured in `gpt2lab bench generate`).

Everything here is for inference on a CPU (no autograd); the callers fall back to ordinary matmuls elsewhere.
"""

from __future__ import annotations

import functools

import torch

FEW_ROWS = 16  # up to here the float32 split measured faster (1.4x at 1 row, 1.05x at 16, slower at 64)


def matmul_few_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x @ w (float32) for a handful of rows of x, using every CPU thread: the inner dimension split into one slice
    per thread, multiplied as one batched matmul, the partial products summed."""
    rows, inner = x.shape
    parts = torch.get_num_threads()
    if parts < 2 or inner % parts:
        return x @ w
    partial = torch.bmm(x.view(rows, parts, inner // parts).transpose(0, 1), w.view(parts, inner // parts, -1))
    return partial.sum(0)


@functools.cache  # a fact about this torch build and CPU, fixed for the process
def packing_available() -> bool:
    """Whether this torch has oneDNN's packed bf16 inner product and this CPU computes bf16 natively (without
    AVX512-BF16 / AMX, oneDNN emulates bf16 and the packed product is slow)."""
    mkldnn = torch.ops.mkldnn
    return (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")
            and hasattr(mkldnn, "_linear_pointwise") and mkldnn._is_mkldnn_bf16_supported())


class PackedLinear:
    """y = x Wᵀ + b for a bf16 weight W stored (out, in), through oneDNN with W packed once into its blocked layout.

    The packed copy costs as much memory as the weight itself. It is made on first use and made again if the weight
    changes (an optimizer step, a `load_state_dict`): `matches` compares the tensor's storage and version counter.
    """

    def __init__(self, weight_out_in: torch.Tensor, source: torch.Tensor):
        self.source_key = _key(source)
        # the hint (1 row) picks the blocking for decoding's row counts; other row counts work with it too
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight_out_in.detach().contiguous(), 1)

    def matches(self, source: torch.Tensor) -> bool:
        return self.source_key == _key(source)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, bias, "none", [None], "")


def _key(tensor: torch.Tensor) -> tuple:
    return tensor.data_ptr(), tensor._version, tuple(tensor.shape)


def uses_packed_bf16(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """The packed path applies to bf16 decoding on a CPU that computes bf16 natively."""
    return x.dtype == weight.dtype == torch.bfloat16 and weight.is_cpu and packing_available()


def linear_few_rows(module, x2d: torch.Tensor, weight_in_out: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """x2d @ W + b for a few rows on a CPU, W stored (in, out) as our Conv1D keeps it; `module` holds the packed
    copy of W between decode steps (as a plain attribute: it is not a parameter and not in the state_dict)."""
    if uses_packed_bf16(x2d, weight_in_out):
        packed = getattr(module, "_packed_bf16", None)
        if packed is None or not packed.matches(weight_in_out):
            packed = module._packed_bf16 = PackedLinear(weight_in_out.t(), weight_in_out)
        return packed(x2d, bias)
    return matmul_few_rows(x2d, weight_in_out) + bias
