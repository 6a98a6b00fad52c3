"""The serving engine without HTTP (gpt2lab/serve/engine.py): batched sequences draw what they draw alone (what
`gpt2lab.sampling.decode` draws), rows are freed and reused, <|endoftext|> and cancellations end sequences, a
failing step ends the sequences it computed (never one waiting or submitted meanwhile), and a row whose sampling
fails ends alone. (The per-row KV cache: test_slots.py; the text released in safe pieces:
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


def test_a_failing_step_ends_the_sequences_it_computed_and_the_waiting_ones_run_next():
    """The model raised in a step (the Scheduler then calls fail): the two running rows end with the error; the
    third, still waiting, was not part of that step and then runs as it would have."""
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    engine = Engine(model, tokenizer, batch_size=2)
    logs = [[] for _ in range(3)]
    sequences = [Sequence([1, 2], Settings(5), i, tokenizer, logs[i].append) for i in range(3)]
    engine.submit(sequences)
    engine.step()
    engine.fail("the model failed: boom")
    assert all(log[-1].finish_reason == "error" and log[-1].text == "the model failed: boom" for log in logs[:2])
    assert not engine.running and list(engine.waiting) == [sequences[2]] and not logs[2]
    while engine.busy():
        engine.step()
    assert "".join(e.text for e in logs[2]) == alone(model, tokenizer, [1, 2], Settings(5), 2)
    assert logs[2][-1].finish_reason == "length"


def test_a_failure_while_admitting_ends_the_sequences_being_admitted():
    """The prefill raised: the sequences it took from `waiting` are in no list yet; fail still reaches them."""
    tokenizer = get_tokenizer()
    engine = Engine(tiny_gpt(vocab_size=50257, block_size=64), tokenizer, batch_size=2)
    engine.model.hidden_states = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("out of memory"))
    logs = [[], []]
    engine.submit([Sequence([1, 2], Settings(5), i, tokenizer, logs[i].append) for i in range(2)])
    with pytest.raises(RuntimeError):
        engine.step()
    engine.fail("the model failed: out of memory")
    assert [log[-1].finish_reason for log in logs] == ["error", "error"] and not engine.busy()


def test_a_request_submitted_while_a_failure_is_reported_is_not_dropped():
    """The race of a failing model, made deterministic: the failed request's client sends its next request from
    inside the report (as a fast client does, on another thread, before fail returns). It must run."""
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    engine = Engine(model, tokenizer, batch_size=2)
    retry_log = []
    retry = Sequence([1, 2], Settings(4), 7, tokenizer, retry_log.append)

    def client(event):
        if event.finish_reason == "error":
            engine.submit([retry])

    engine.submit([Sequence([1, 2], Settings(5), 0, tokenizer, client)])
    engine.step()
    engine.fail("the model failed: boom")
    assert list(engine.waiting) == [retry]
    while engine.busy():
        engine.step()
    assert retry_log[-1].finish_reason == "length"
    assert "".join(e.text for e in retry_log) == alone(model, tokenizer, [1, 2], Settings(4), 7)


def tokens_of(sequence: Sequence) -> list[int]:
    """Records every token the engine gives `sequence` (before <|endoftext|> or the end)."""
    tokens, real_accept = [], sequence.accept

    def accept(token, stop_token):
        tokens.append(token)
        real_accept(token, stop_token)

    sequence.accept = accept
    return tokens


def batched_tokens(model, tokenizer, jobs, broken=None):
    """Each job's tokens and last event, all in one engine; broken(engine) may break it."""
    engine = Engine(model, tokenizer, batch_size=len(jobs))
    logs = [[] for _ in jobs]
    sequences = [Sequence(p, s, seed, tokenizer, logs[i].append) for i, (p, s, seed) in enumerate(jobs)]
    tokens = [tokens_of(seq) for seq in sequences]
    if broken is not None:
        broken(engine, sequences)
    engine.submit(sequences)
    while engine.busy():
        engine.step()
    return tokens, [log[-1] for log in logs]


JOBS = [([15496, 11], Settings(20, 0.9, 40), 1), ([464], Settings(25, 1.0, None, 0.9), 2), ([1, 2, 3], Settings(30), 3)]


@pytest.mark.parametrize("fault", ["sampler raises", "logits NaN"])
def test_a_row_whose_sampling_fails_fails_alone_and_the_others_draw_bit_for_bit_what_they_draw_alone(fault):
    """One row's fault: a temperature no one can divide by (1e-300 is 0 in float32: the sampler sees NaN and
    raises; the API refuses it up front, the engine must not depend on that), or a model whose logits for that row
    turn NaN mid-way (with greedy decoding, where argmax would silently pick a token from NaN). That row ends with
    an error; the others' tokens are exactly those of each run alone in an engine, and of gpt2lab sample."""
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    bad_job = ([50, 60], Settings(30, 1e-300 if fault == "sampler raises" else 0.0), 9)

    def nan_logits_from_step_4(engine, sequences):
        real_logits, steps = engine._logits, []

        def logits(hidden):
            out = real_logits(hidden)
            steps.append(1)
            if len(steps) >= 4 and sequences[1] in engine.running:
                out[engine.running.index(sequences[1])] = float("nan")
            return out

        engine._logits = logits

    jobs = [JOBS[0], bad_job, *JOBS[1:]]
    tokens, last = batched_tokens(model, tokenizer, jobs, None if fault == "sampler raises" else nan_logits_from_step_4)
    assert last[1].finish_reason == "error" and last[1].text.startswith("sampling failed for this completion: ")
    if fault == "logits NaN":
        assert "not finite" in last[1].text and len(tokens[1]) == 3  # three good tokens, then the fault
    for i in (0, 2, 3):
        solo, _ = batched_tokens(model, tokenizer, [jobs[i]])
        assert tokens[i] == solo[0] and last[i].finish_reason in ("length", "stop")
        assert tokenizer.decode([t for t in tokens[i] if t != tokenizer.eot_token]) == alone(model, tokenizer, *jobs[i])


def test_a_prompt_and_max_tokens_that_exactly_fill_the_context_run_to_the_end():
    """prompt + max_tokens = block_size is what the API accepts: the engine generates every token of it."""
    tokenizer = get_tokenizer()
    model = tiny_gpt(vocab_size=50257, block_size=64)
    prompt = list(range(100, 140))
    tokens, last = batched_tokens(model, tokenizer, [(prompt, Settings(24, 0.0), 0)])
    assert last[0].finish_reason == "length" and len(tokens[0]) == 24
