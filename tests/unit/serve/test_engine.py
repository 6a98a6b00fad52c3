"""The serving engine without HTTP (gpt2lab/serve/engine.py): batched sequences draw what they draw alone (what
`gpt2lab.sampling.decode` draws), rows are freed and reused, <|endoftext|> and cancellations end sequences, and a
failure ends every one with an error. (The per-row KV cache: test_slots.py; the text released in safe pieces:
tests/unit/sampling/test_stream.py.)"""

import pytest
import torch

from gpt2lab.sampling.decode import generate_stream
from gpt2lab.serve.engine import Engine, Sequence, Settings
from gpt2lab.tokenizer import get_tokenizer

from tests.conftest import tiny_gpt


def engine_run(model, tokenizer, jobs, batch_size=3, arrivals=None):
    """Run jobs [(prompt, settings, seed)] through an engine, job i submitted before step arrivals[i];
    returns each job's events."""
    engine = Engine(model, tokenizer, batch_size=batch_size)
    events = [[] for _ in jobs]
    sequences = [Sequence(p, s, seed, tokenizer, events[i].append) for i, (p, s, seed) in enumerate(jobs)]
    arrivals = arrivals or [0] * len(jobs)
    step = 0
    while step <= max(arrivals) or engine.busy():
        engine.submit([seq for seq, at in zip(sequences, arrivals) if at == step])
        if engine.busy():
            engine.step()
        assert len(engine.running) <= batch_size
        step += 1
    return events, sequences


def alone(model, tokenizer, prompt, settings, seed) -> str:
    """What gpt2lab.sampling.decode gives for this one sequence: the text up to <|endoftext|>."""
    tokens = [int(t[0]) for t in generate_stream(
        model, torch.tensor([prompt]), settings.max_tokens, temperature=settings.temperature, top_k=settings.top_k,
        top_p=settings.top_p, seed=seed, stop_token=tokenizer.eot_token, vocab_size=tokenizer.n_vocab)]
    if tokenizer.eot_token in tokens:
        tokens = tokens[: tokens.index(tokenizer.eot_token)]
    return tokenizer.decode(tokens)


def test_batched_sequences_draw_what_they_draw_alone():
    """More sequences than rows, arriving at different steps, with different prompts and sampling settings:
    each one's text is what gpt2lab.sampling.decode gives it alone with its seed."""
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50304, block_size=64)  # a padded vocabulary: the 47 extra ids are never drawn
    prompts = [tokenizer.encode(t) for t in ("Hello there", "The meaning of life is, and more", "x y z w")]
    prompts.append([tokenizer.eot_token])
    settings = [Settings(20, 1.0, 50), Settings(25, 0.8, None, 0.9), Settings(30), Settings(12, 0.0)]
    jobs = [(prompts[i % 4], settings[i % 4], 100 + i) for i in range(7)]
    events, sequences = engine_run(model, tokenizer, jobs, batch_size=3, arrivals=[0, 0, 1, 1, 1, 4, 9])
    for (prompt, s, seed), job_events, seq in zip(jobs, events, sequences):
        text = "".join(e.text for e in job_events)
        assert text == alone(model, tokenizer, prompt, s, seed)
        ended = "length" if seq.generated == s.max_tokens else "stop"  # stop: <|endoftext|> was drawn
        assert job_events[-1].finish_reason == ended
        assert all(e.finish_reason is None for e in job_events[:-1])


def test_a_finished_sequence_frees_its_row_for_the_next():
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    jobs = [(tokenizer.encode("first"), Settings(2), 1), (tokenizer.encode("then me"), Settings(6), 2)]
    events, sequences = engine_run(model, tokenizer, jobs, batch_size=1)
    assert [s.generated for s in sequences] == [2, 6]
    for (prompt, settings, seed), job_events in zip(jobs, events):
        assert "".join(e.text for e in job_events) == alone(model, tokenizer, prompt, settings, seed)


def test_endoftext_ends_a_sequence_and_is_not_text():
    tokenizer = get_tokenizer()
    engine = Engine(tiny_gpt(vocab_size=50257, block_size=64), tokenizer, batch_size=2)
    real_logits, steps = engine._logits, []

    def eot_on_third_step(hidden):  # the model "chooses" <|endoftext|> for its third token
        logits = real_logits(hidden)
        steps.append(1)
        if len(steps) == 3:
            logits[:, tokenizer.eot_token] = 1e4
        return logits

    engine._logits = eot_on_third_step
    events = []
    sequence = Sequence(tokenizer.encode("Hi"), Settings(10, 0.0), 1, tokenizer, events.append)
    engine.submit([sequence])
    while engine.busy():
        engine.step()
    assert events[-1].finish_reason == "stop" and sequence.generated == 2 and len(steps) == 3
    assert "<|endoftext|>" not in "".join(e.text for e in events)


def test_cancelled_sequences_leave_at_the_next_step_and_the_others_are_unaffected():
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    engine = Engine(model, tokenizer, batch_size=4)
    prompt = tokenizer.encode("Hello")
    logs = [[] for _ in range(3)]
    sequences = [Sequence(prompt, Settings(30), 10 + i, tokenizer, logs[i].append) for i in range(3)]
    waiting = Sequence(prompt, Settings(30), 99, tokenizer, lambda e: pytest.fail("a cancelled sequence ran"))
    engine.submit(sequences)
    engine.step()
    sequences[0].cancelled = True
    waiting.cancelled = True
    engine.submit([waiting])
    engine.step()
    assert set(engine.running) == set(sequences[1:]) and not engine.waiting  # the last row moved into row 0
    generated_when_cancelled = sequences[0].generated
    while engine.busy():
        engine.step()
    assert sequences[0].generated == generated_when_cancelled < 30
    for i in (1, 2):
        assert "".join(e.text for e in logs[i]) == alone(model, tokenizer, prompt, Settings(30), 10 + i)


def test_engine_failure_ends_every_sequence_with_an_error():
    tokenizer = get_tokenizer()
    engine = Engine(tiny_gpt(vocab_size=50257, block_size=64), tokenizer, batch_size=2)
    logs = [[] for _ in range(3)]
    engine.submit([Sequence([1, 2], Settings(5), 0, tokenizer, logs[i].append) for i in range(3)])
    engine.step()
    engine.fail("the model failed: boom")
    assert not engine.busy()
    assert all(log[-1].finish_reason == "error" and log[-1].text == "the model failed: boom" for log in logs)
