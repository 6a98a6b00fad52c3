"""Sampling (gpt2lab/sampling/decode.py): the KV cache against full recomputation, greedy against transformers, and
the sampling rules."""

import pytest
import torch

from gpt2lab import GPT
from gpt2lab.errors import GPT2LabError
from gpt2lab.sampling.decode import (IncrementalDecoder, SamplingError, generate, generate_stream, keep_top_p,
                                     sample_next, sample_seed)

from tests.conftest import ODD, hf_gpt2, tiny_gpt

BLOCK = ODD["block_size"]  # 37: small, so the tests cross the context boundary



def full_logits(model, seq):
    """The reference: recompute the last block_size tokens from scratch, no cache."""
    with torch.no_grad():
        logits, _ = model(seq[:, -model.config.block_size :])
    return logits[:, -1, :]


def naive_greedy(model, idx, steps):
    for _ in range(steps):
        idx = torch.cat([idx, full_logits(model, idx).argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Decoding splits small matmuls over the CPU threads (model.matmul_few_rows): check both paths."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


@pytest.mark.parametrize("prompt_len", [5, BLOCK - 1, BLOCK + 13])
def test_cached_logits_equal_full_recomputation_across_block_size(prompt_len, threads):
    model = tiny_gpt()
    torch.manual_seed(3)
    seq = torch.randint(0, ODD["vocab_size"], (2, prompt_len))
    decoder = IncrementalDecoder(model, seq, max_new_tokens=2 * BLOCK)
    worst = 0.0
    for step in range(2 * BLOCK):  # well past block_size: the window slides for many steps
        worst = max(worst, (decoder.logits - full_logits(model, seq)).abs().max().item())
        token = torch.randint(0, ODD["vocab_size"], (2,))
        seq = torch.cat([seq, token[:, None]], dim=1)
        with torch.no_grad():
            decoder.append(token)
    assert seq.size(1) > BLOCK + 30
    assert worst <= 1e-4


def test_greedy_generate_equals_naive_recomputation_past_block_size():
    model = tiny_gpt(seed=1)
    idx = torch.randint(0, ODD["vocab_size"], (2, 10), generator=torch.Generator().manual_seed(0))
    out = model.generate(idx, 2 * BLOCK, temperature=0)
    assert out.shape == (2, 10 + 2 * BLOCK)
    assert torch.equal(out, naive_greedy(model, idx, 2 * BLOCK))


def test_greedy_40_tokens_equals_transformers(tmp_path):
    cfg = dict(ODD, block_size=64)
    hf = hf_gpt2(seed=5, **cfg)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, cfg["vocab_size"], (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf.generate(
            idx, attention_mask=torch.ones_like(idx), do_sample=False, max_new_tokens=40, min_new_tokens=40,
            pad_token_id=0, use_cache=True,
        )
    ours_out = ours.generate(idx, 40, temperature=0)
    assert expected.shape == (2, 47)
    assert torch.equal(ours_out, expected)
    assert ours_out[:, 7:].unique().numel() > 2  # a real sequence, not one token repeated


def test_same_seed_same_tokens_different_seed_different_and_global_rng_untouched():
    model = tiny_gpt()
    idx = torch.zeros(3, 4, dtype=torch.long)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = model.generate(idx, 25, seed=7)
    b = model.generate(idx, 25, seed=7)
    c = model.generate(idx, 25, seed=8)
    assert torch.equal(torch.get_rng_state(), before)  # neither read-and-advanced nor reseeded
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # rows of a batch draw independently
    torch.manual_seed(999)  # the global seed has no influence
    assert torch.equal(model.generate(idx, 25, seed=7), a)


def test_a_list_of_seeds_gives_each_row_the_tokens_it_draws_alone():
    model = tiny_gpt(seed=1)
    idx = torch.randint(0, ODD["vocab_size"], (3, 5), generator=torch.Generator().manual_seed(0))
    seeds = [7, 8, 9]
    together = model.generate(idx, 12, top_k=20, seed=seeds)
    for row, seed in enumerate(seeds):
        assert torch.equal(together[row : row + 1], model.generate(idx[row : row + 1], 12, top_k=20, seed=[seed]))
    assert torch.equal(model.generate(idx[:1], 12, top_k=20, seed=[7]), model.generate(idx[:1], 12, top_k=20, seed=7))
    shared = model.generate(idx, 12, top_k=20, seed=7)  # one generator for the whole batch: other draws
    assert not torch.equal(shared[1:], together[1:])


def test_sample_seeds_of_nearby_run_seeds_do_not_overlap():
    assert sample_seed(42, 0) == 42  # a single sample is what it was before samples had seeds of their own
    run_42, run_43 = ({sample_seed(seed, i) for i in range(1000)} for seed in (42, 43))
    assert len(run_42) == 1000 and not run_42 & run_43
    assert all(0 <= s < 2**64 for s in run_42)


def test_stream_yields_the_same_tokens_as_generate_one_step_at_a_time():
    model = tiny_gpt()
    idx = torch.ones(2, 3, dtype=torch.long)
    steps = list(model.generate_stream(idx, 12, seed=3, top_k=20))
    assert len(steps) == 12 and all(s.shape == (2,) for s in steps)
    assert torch.equal(torch.stack(steps, dim=1), model.generate(idx, 12, seed=3, top_k=20)[:, 3:])


def test_top_k_1_equals_greedy():
    model = tiny_gpt(seed=2)
    idx = torch.randint(0, ODD["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(2))
    greedy = model.generate(idx, 30, temperature=0)
    assert torch.equal(model.generate(idx, 30, temperature=1.5, top_k=1, seed=11), greedy)


def test_the_largest_temperature_allowed_samples_with_a_padded_vocabulary():
    """At float32's largest number the excluded ids (-inf logits) stay excluded: no NaN, nothing refused."""
    from gpt2lab.sampling.decode import MAX_TEMPERATURE

    logits = torch.tensor([[1.0, 2.0, float("-inf")]]).expand(200, 3)
    drawn = sample_next(logits, MAX_TEMPERATURE, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {0, 1}


def test_temperature_towards_zero_equals_greedy():
    model = tiny_gpt(seed=2)
    idx = torch.randint(0, ODD["vocab_size"], (2, 6), generator=torch.Generator().manual_seed(2))
    greedy = model.generate(idx, 30, temperature=0)
    assert torch.equal(model.generate(idx, 30, temperature=1e-6, seed=11), greedy)
    assert not torch.equal(model.generate(idx, 30, temperature=1.0, seed=11), greedy)


def test_top_p_keeps_smallest_set_reaching_p():
    # dyadic probabilities: every cumulative sum is exact in float32
    probs = torch.tensor([[0.09375, 0.5, 0.15625, 0.25]])  # sorted: 0.5, 0.25, 0.15625, 0.09375
    kept = lambda p: set(keep_top_p(probs, p)[0].nonzero().flatten().tolist())  # noqa: E731
    assert kept(0.3) == {1}
    assert kept(0.5) == {1}  # 0.5 alone reaches 0.5
    assert kept(0.51) == {1, 3}
    assert kept(0.75) == {1, 3}  # exactly reached: the next token is not needed
    assert kept(0.76) == {1, 3, 2}
    assert kept(0.95) == {0, 1, 2, 3}
    assert kept(1e-300) == kept(5e-324) == {1}  # 0 in float32: the most likely token is still kept
    # and through the sampler: only kept tokens are ever drawn, each of them sometimes
    logits = probs.log().expand(4000, 4)
    drawn = sample_next(logits, top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, 3}
    assert abs((drawn == 1).float().mean().item() - 2 / 3) < 0.05  # renormalised: 0.5 / 0.75


def test_top_k_keeps_exactly_k_tokens():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 2.0]]).expand(3000, 5)
    drawn = sample_next(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert len(set(drawn.tolist())) == 2 and 1 in drawn.tolist()


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_draws_the_k_most_likely_with_their_renormalised_probabilities(k):
    """A known distribution over 8 ids in scrambled order: exactly the k most likely ids come out (so k - 1 or
    k + 1 would show), as vocabulary ids (not positions among the candidates), each as often as its probability
    renormalised over the k."""
    probs = torch.tensor([0.04, 0.30, 0.02, 0.10, 0.20, 0.01, 0.25, 0.08])  # ranked: 1, 6, 4, 3, 7, 0, 2, 5
    ranked = [1, 6, 4, 3, 7, 0, 2, 5]
    n = 20_000
    drawn = sample_next(probs.log().expand(n, 8), temperature=1.0, top_k=k,
                        generator=torch.Generator().manual_seed(k))
    counts = torch.bincount(drawn, minlength=8)
    assert set(drawn.unique().tolist()) == set(ranked[:k])
    expected = probs[ranked[:k]] / probs[ranked[:k]].sum()
    for token, p in zip(ranked[:k], expected.tolist()):
        assert abs(counts[token].item() / n - p) < 4 * (p * (1 - p) / n) ** 0.5 + 1e-9, (k, token)


def test_generate_with_top_k_only_ever_picks_among_the_k_most_likely():
    model = tiny_gpt(seed=6)
    idx = torch.randint(0, ODD["vocab_size"], (3, 4), generator=torch.Generator().manual_seed(6))
    out = model.generate(idx, 2 * BLOCK, temperature=3.0, top_k=4, seed=2)  # hot: far-down tokens are likely too
    for t in range(4, out.size(1)):
        allowed = full_logits(model, out[:, :t]).topk(4, dim=-1).indices
        assert (allowed == out[:, t : t + 1]).any(dim=-1).all(), t
    # and without top-k, at that temperature, tokens outside the top 4 are drawn often
    free = model.generate(idx, 20, temperature=3.0, seed=2)
    outside = [not (full_logits(model, free[:, :t]).topk(4, dim=-1).indices == free[:, t : t + 1]).any(-1).all()
               for t in range(4, free.size(1))]
    assert sum(outside) > 10


def test_stop_token_ends_each_sequence_and_pads_finished_rows():
    model = tiny_gpt()
    idx = torch.zeros(2, 3, dtype=torch.long)
    free = model.generate(idx, 20, seed=4)[:, 3:]
    stop = free[0, 5].item()
    first0 = free[0].tolist().index(stop)
    out = model.generate(idx, 20, seed=4, stop_token=stop)[:, 3:]
    assert out[0, first0].item() == stop and (out[0, first0:] == stop).all()
    assert torch.equal(out[0, :first0], free[0, :first0])
    row1 = free[1].tolist()
    end1 = row1.index(stop) if stop in row1 else 20
    assert torch.equal(out[1, :end1], free[1, :end1])
    assert out.size(1) == max(first0, end1 if end1 < 20 else 19) + 1  # stops once every row is done

    free_single = model.generate(idx[:1], 20, seed=4)[0, 3:].tolist()
    stop = free_single[5]
    single = model.generate(idx[:1], 20, seed=4, stop_token=stop)[0, 3:].tolist()
    assert single == free_single[: free_single.index(stop) + 1]  # a lone sequence stops right after it


def test_vocab_size_excludes_padded_ids():
    model = tiny_gpt()
    idx = torch.zeros(4, 2, dtype=torch.long)
    free = model.generate(idx, 200, temperature=100.0, seed=0)  # near-uniform over 1011 ids
    limited = model.generate(idx, 200, temperature=100.0, seed=0, vocab_size=1000)
    assert (free >= 1000).any()
    assert not (limited >= 1000).any()


def test_bfloat16_model_generates_with_a_bfloat16_cache():
    model = tiny_gpt().to(torch.bfloat16)
    decoder = IncrementalDecoder(model, torch.zeros(1, 3, dtype=torch.long), 5)
    assert decoder.cache.keys.dtype == torch.bfloat16
    assert decoder.logits.dtype == torch.float32
    out = model.generate(torch.zeros(1, 3, dtype=torch.long), 45, seed=0)  # across block_size too
    assert out.shape == (1, 48)


def test_bfloat16_decoding_follows_the_float32_model():
    """The bf16 model's cached logits stay within bf16 rounding of the fp32 model's at every step (across the
    context boundary, where the window slides), its most likely token is the fp32 one wherever the fp32 top two
    are further apart than that rounding, and greedy bf16 decoding makes the fp32 choices."""
    model = tiny_gpt(seed=2)
    with torch.no_grad():  # spread the logits, so that the most likely token is mostly a clear choice
        model.transformer.ln_f.weight.mul_(40)
    low = tiny_gpt(seed=2)
    low.load_state_dict(model.state_dict())
    low = low.to(torch.bfloat16)
    tolerance = 0.02  # of the largest logit: bf16 keeps 8 bits of mantissa; a wrong cache or position is far off

    def follow(seq, prompt_len):
        """Feed `seq` to the bf16 decoder token by token; returns (clear choices, first step with an unclear one)."""
        decoder = IncrementalDecoder(low, seq[:, :prompt_len], seq.size(1) - prompt_len)
        clear_choices, first_unclear = 0, None
        for t in range(prompt_len, seq.size(1)):
            reference = full_logits(model, seq[:, :t])
            scale = reference.abs().max().item()
            assert (decoder.logits - reference).abs().max().item() < tolerance * scale, t
            top2 = reference.topk(2, dim=-1).values
            clear = (top2[:, 0] - top2[:, 1]) > 2 * tolerance * scale  # a choice that error cannot flip
            assert torch.equal(decoder.logits.argmax(-1)[clear], reference.argmax(-1)[clear]), t
            clear_choices += int(clear.sum())
            if first_unclear is None and not clear.all():
                first_unclear = t
            with torch.no_grad():
                decoder.append(seq[:, t])
        return clear_choices, first_unclear

    varied = torch.randint(0, ODD["vocab_size"], (2, 5 + 2 * BLOCK), generator=torch.Generator().manual_seed(2))
    clear_choices, _ = follow(varied, 5)
    assert clear_choices > 0.8 * 2 * 2 * BLOCK  # most choices are clear ones: the argmax check has work to do

    idx = varied[:, :5]
    greedy32 = model.generate(idx, 2 * BLOCK, temperature=0)
    _, first_unclear = follow(greedy32, 5)
    assert first_unclear is None  # this model's greedy path is clear all the way, so bf16 must follow it
    assert torch.equal(low.generate(idx, 2 * BLOCK, temperature=0), greedy32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_new_tokens=0), "max_new_tokens"),
        (dict(max_new_tokens=-3), "max_new_tokens"),
        (dict(temperature=-0.5), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=1e39), r"temperature must be at most 3.4e\+38"),  # inf in float32: -inf / inf is NaN
        (dict(top_k=0), "top_k"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.5), "top_p"),
        (dict(seed=1.5), "seed"),
        (dict(seed=[1, 2]), "one per sequence"),
        (dict(seed=[-1]), "one per sequence"),
        (dict(stop_token=5000), "stop_token"),
        (dict(vocab_size=2000), "vocab_size"),
        (dict(idx=torch.zeros(1, 0, dtype=torch.long)), "at least one token"),
        (dict(idx=torch.zeros(3, dtype=torch.long)), "shape"),
        (dict(idx=torch.full((1, 2), 1011)), "outside"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    args = dict(idx=torch.zeros(1, 2, dtype=torch.long), max_new_tokens=5) | kwargs
    with pytest.raises(SamplingError, match=match) as info:
        generate(tiny_gpt(), **args)
    assert isinstance(info.value, (GPT2LabError, ValueError))
    with pytest.raises(SamplingError):
        next(generate_stream(tiny_gpt(), **args))


def test_unseeded_sampling_neither_reads_nor_advances_the_global_rng():
    model = tiny_gpt()
    idx = torch.zeros(2, 3, dtype=torch.long)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    a = model.generate(idx, 25)
    b = model.generate(idx, 25)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(a, b)  # fresh entropy each call
    torch.manual_seed(5)  # a reseeded global RNG does not make unseeded sampling repeat
    assert not torch.equal(model.generate(idx, 25), a)


def test_stream_yields_each_token_before_computing_the_next():
    model = tiny_gpt()
    forwards = []
    model.transformer.ln_f.register_forward_hook(lambda module, args, out: forwards.append(out.size(1)))
    seen = []
    for tokens in model.generate_stream(torch.zeros(1, 5, dtype=torch.long), 4, seed=0):
        seen.append(list(forwards))
    assert seen == [[5], [5, 1], [5, 1, 1], [5, 1, 1, 1]]  # the prefill, then one cached position per token
