"""GPT-2, written from scratch, in one file: the network, its KV cache, and the familiar entry points.

Module and parameter names and weight layouts follow Hugging Face's GPT-2 (`transformer.h.0.attn.c_attn.weight`,
projections stored (in, out) as in its `Conv1D`), so a released checkpoint maps onto this model key for key, as a
plain copy. The network knows nothing about files, hubs, devices or training. `GPT.from_pretrained`,
`save_pretrained`, `generate` and `generate_stream` are the API users know; they hand over to the modules that
own those jobs (`gpt2lab.hf.resolve`: what a MODEL names; `gpt2lab.hf.format`: the files;
`gpt2lab.sampling.decode`: sampling), none of which imports this one: dependencies point one way.

References:
1) OpenAI's TensorFlow GPT-2: https://github.com/openai/gpt-2/blob/master/src/model.py
2) Hugging Face transformers: src/transformers/models/gpt2/modeling_gpt2.py
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt2lab.hf.format import check_before_building, read_config, read_state_dict, save_model
from gpt2lab.hf.resolve import resolve_model_dir
from gpt2lab.model.config import ContextLengthError, GPTConfig
from gpt2lab.model.cpu_decode import FEW_ROWS, linear_few_rows
from gpt2lab.sampling import decode as sampling


class KVCache:
    """Keys and values of the positions seen so far, for incremental decoding.

    Preallocated: a decode step writes one slot per layer instead of concatenating (and so copying) the whole
    past every step. `length` positions are allocated (default: the whole context; a short generation needs
    only prompt + new tokens, which saves memory with many samples). `pos` is the number of positions filled,
    the same for every row.

    The model talks to a cache through three methods: `positions` (where the next tokens go), `attend` (store a
    layer's new keys and values, attend over everything cached) and `advance` (the tokens are in). A cache whose
    rows hold sequences of different lengths, for serving many requests at once, implements the same three
    (`gpt2lab.serve.slots`).
    """

    def __init__(self, config: GPTConfig, batch_size: int, device=None, dtype=torch.float32, length=None):
        self.config, self.block_size = config, config.block_size
        self.length = min(length or config.block_size, config.block_size)
        shape = (config.n_layer, batch_size, config.n_head, self.length, config.head_dim)
        # empty, not zeros: a slot is always written before attention reads it
        self.keys = torch.empty(shape, device=device, dtype=dtype)
        self.values = torch.empty(shape, device=device, dtype=dtype)
        self.pos = 0

    def reset(self) -> None:
        self.pos = 0

    def positions(self, T: int, device) -> torch.Tensor:
        """Positions of the next T tokens, (T,): the same for every row. Refuses tokens that do not fit."""
        self.config.check_context(self.pos + T, "sequence", f"crop it to the last {self.block_size} tokens")
        if self.pos + T > self.length:
            raise ContextLengthError("sequence", f"({self.pos + T} tokens) does not fit a KV cache of {self.length} "
                                                 f"positions; allocate a longer one")
        return torch.arange(self.pos, self.pos + T, dtype=torch.long, device=device)

    def attend(self, layer: int, q, k, v):
        """Store layer `layer`'s keys and values of the new tokens after the cached ones, and return the
        attention of the new queries over all of them. q, k, v: (B, n_head, T, head_dim)."""
        past, T = self.pos, q.size(2)
        self.keys[layer, :, :, past : past + T] = k
        self.values[layer, :, :, past : past + T] = v
        k = self.keys[layer, :, :, : past + T]
        v = self.values[layer, :, :, : past + T]
        if past == 0:  # every query sees itself and the positions before it
            return causal_attention(q, k, v)
        if T == 1:  # one new token attends to everything cached: no mask needed
            return F.scaled_dot_product_attention(q, k, v)
        # several new tokens after a cached prefix: query i sees keys 0 .. past + i
        mask = torch.ones(T, past + T, dtype=torch.bool, device=q.device).tril(diagonal=past)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    def advance(self, T: int) -> None:
        self.pos += T


class Conv1D(nn.Module):
    """A linear layer, y = x W + b, whose weight is stored (in, out): the layout of OpenAI's GPT-2 (a "conv1d"
    of width 1) and of HF's `Conv1D`, hence the name.

    Why not nn.Linear, which stores (out, in)? With this layout a released checkpoint loads as a plain copy (no
    transposes to forget), and batch-1 decoding, which streams every weight from memory once per token, measured
    4-6% faster on CPU (x @ W reads W in the order it is stored). Training speed is the same either way.
    """

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        x2d = x.reshape(-1, x.size(-1))
        if x2d.size(0) <= FEW_ROWS and x2d.is_cpu and not torch.is_grad_enabled():
            y = linear_few_rows(self, x2d, self.weight, self.bias)  # decoding: see cpu_decode.py
        else:
            y = torch.addmm(self.bias, x2d, self.weight)
        return y.view(*x.shape[:-1], y.size(-1))


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        # query, key and value projections for all heads in one matmul
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_PROJECTION = True  # scaled at init, see GPT._init_weights

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, n_head, T, head_dim)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

        if cache is None:  # every query sees itself and the positions before it
            y = causal_attention(q, k, v)
        else:
            y = cache.attend(layer, q, k, v)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble the heads side by side
        return self.c_proj(y)


# Up to this many positions a bf16 CPU forward + backward is faster through explicit_causal_attention than
# through SDPA's flash kernel (measured, see there); beyond it the (T, T) scores cost more than they save.
EXPLICIT_ATTENTION_MAX_T = 256


def causal_attention(q, k, v):
    """Causal self-attention of whole sequences, (B, n_head, T, head_dim) each: training, evaluation, prefill."""
    if q.is_cpu and q.dtype == torch.bfloat16 and q.size(-2) <= EXPLICIT_ATTENTION_MAX_T:
        return explicit_causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def explicit_causal_attention(q, k, v):
    """softmax(q kᵀ / sqrt(head_dim) + causal mask) v, written out: the same attention as SDPA's, in plain ops.

    Why: on CPUs, SDPA runs bf16 through its flash kernel, whose backward pass is slow there (on a 2-core
    AVX512-BF16 EPYC at T=256 its forward + backward took 1.7x as long as this). Written out, the two products go
    to oneDNN's bf16 matmuls, and the (T, T) scores are small at the lengths CPUs train at. The softmax runs in
    the scores' dtype (torch accumulates bf16 softmax in float32), as flash attention's probabilities are bf16 too.
    """
    T = q.size(-2)
    scores = (q * q.size(-1) ** -0.5) @ k.transpose(-2, -1)  # scale the (T, d) queries, not the (T, T) scores
    future = torch.full((T, T), float("-inf"), dtype=scores.dtype, device=q.device).triu(1)
    return torch.softmax(scores + future, dim=-1) @ v


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = Conv1D(config.n_embd, 4 * config.n_embd)
        self.c_proj = Conv1D(4 * config.n_embd, config.n_embd)
        self.c_proj.RESIDUAL_PROJECTION = True

    def forward(self, x):
        # GPT-2 uses the tanh approximation of GELU (HF calls it "gelu_new")
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN transformer block: LayerNorm before each sub-layer, residual stream untouched by normalisation."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig, init_weights: bool = True):
        """init_weights=False leaves parameters uninitialised, for when a checkpoint overwrites them anyway."""
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # learned position embeddings
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying: the output projection *is* the token embedding (same storage), as in GPT-2.
        self.lm_head.weight = self.transformer.wte.weight
        if init_weights:
            self.apply(self._init_weights)

    def _init_weights(self, module):
        # GPT-2 initialisation: N(0, 0.02) everywhere, zero biases, and the projections that write into the
        # residual stream scaled by 1/sqrt(2 * n_layer): each block adds two of them to the stream, so without
        # the scaling its variance would grow with depth.
        if isinstance(module, (Conv1D, nn.Linear)):
            std = 0.02
            if getattr(module, "RESIDUAL_PROJECTION", False):
                std *= (2 * self.config.n_layer) ** -0.5
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    @torch.no_grad()
    def zero_residual_projections(self) -> None:
        """Zero the weights of the projections that write into the residual stream (attn.c_proj, mlp.c_proj): every
        block then starts as the identity, and its first steps grow it from there (modded-nanogpt's init)."""
        for module in self.modules():
            if getattr(module, "RESIDUAL_PROJECTION", False):
                module.weight.zero_()

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count, tied weights counted once (124,439,808 for `gpt2`)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied tensor once
        if exclude_embeddings:
            n -= self.transformer.wte.weight.numel() + self.transformer.wpe.weight.numel()
        return n

    def hidden_states(self, idx, cache: KVCache | None = None):
        """idx (B, T) -> (B, T, n_embd): the final LayerNorm's output, which lm_head projects onto the vocabulary."""
        B, T = idx.size()
        if cache is not None:
            pos = cache.positions(T, idx.device)  # (T,), or (B, T) when rows have their own lengths
        else:
            self.config.check_context(T, "sequence", f"crop it to the last {self.config.block_size} tokens")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for layer, block in enumerate(self.transformer.h):
            x = block(x, cache, layer)
        if cache is not None:
            cache.advance(T)
        return self.transformer.ln_f(x)

    def forward(self, idx, targets=None, cache: KVCache | None = None, last_logits_only: bool = False):
        """idx (B, T) token ids -> (logits, loss).

        targets (B, T): next-token ids, -100 where no loss is wanted; the loss is their mean cross-entropy.
        cache: continue after the positions it holds (and append these T to it).
        last_logits_only: compute the vocabulary projection for the last position only, all that sampling
        needs; it is the most expensive matmul of a decode step.
        """
        x = self.hidden_states(idx, cache)
        if last_logits_only:
            x = x[:, -1:, :]
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            # The loss is taken in float32 even under bf16 autocast: it is a sum over 50k classes.
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100
            )
        return logits, loss

    def new_kv_cache(self, batch_size: int, length: int | None = None) -> KVCache:
        """An empty KV cache for `batch_size` sequences of up to `length` positions (default: the context), on
        the model's device and in its dtype."""
        weight = self.transformer.wte.weight
        return KVCache(self.config, batch_size, device=weight.device, dtype=weight.dtype, length=length)

    # The familiar entry points. Each hands over to the module that owns the job, arguments by keyword.

    def generate(self, idx, max_new_tokens, **options) -> torch.Tensor:
        """idx (B, T) -> (B, T + n) token ids: the prompts continued by sampling, with a KV cache.

        options: temperature, top_k, top_p, seed, stop_token, vocab_size (see `gpt2lab.sampling.decode.generate_stream`).
        """
        return sampling.generate(self, idx=idx, max_new_tokens=max_new_tokens, **options)

    def generate_stream(self, idx, max_new_tokens, **options):
        """Like `generate`, but yields each step's new tokens, (B,), as soon as they are chosen."""
        return sampling.generate_stream(self, idx=idx, max_new_tokens=max_new_tokens, **options)

    @classmethod
    def from_pretrained(cls, source, device=None, dtype=None) -> GPT:
        """Load MODEL: `gpt2`, `gpt2-medium`, `gpt2-large`, `gpt2-xl`, any HF hub id, a local HF directory, or a
        gpt2lab run directory (its newest complete checkpoint). Returned in eval mode."""
        directory = resolve_model_dir(source)
        config = read_config(directory)
        check_before_building(directory, config)
        with torch.device("meta"):  # no memory or time spent on a random init that is overwritten anyway
            model = cls(config, init_weights=False)
        expected_shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        model.load_state_dict(read_state_dict(directory, expected_shapes), assign=True)
        model.lm_head.weight = model.transformer.wte.weight  # assign=True replaced the tied tensor; re-tie
        model.to(device=device, dtype=dtype)
        return model.eval()

    def save_pretrained(self, directory) -> None:
        """Write `config.json` + `model.safetensors` in Hugging Face GPT-2 format, with GPT-2's tokenizer files."""
        save_model(self, directory)


def load_model(source, device=None, dtype=None) -> GPT:
    """`GPT.from_pretrained` as a function: the one MODEL -> GPT that every command uses."""
    return GPT.from_pretrained(source, device=device, dtype=dtype)
