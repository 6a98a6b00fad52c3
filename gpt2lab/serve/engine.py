"""Continuous batching: many completions of one model generated together, each as if it were alone.

A completion is a `Sequence`: a prompt, its sampling settings and its own random generator. An `Engine` owns one
model and a `SlotCache` of `batch_size` rows. Each `step`:

1. frees the rows of sequences the client gave up on (a closed stream frees its row at the next step);
2. admits waiting sequences into free rows and runs their prompts through the model together (one right-padded
   forward pass, the prefill), which gives each its first token;
3. feeds every running sequence's last token through the model together (one decode step) and samples its next.

A sequence joins the batch at the next step after it arrives and leaves it as soon as it is done, instead of
waiting for a whole batch to finish: decoding on a CPU is bound by reading the weights, so 8 rows cost little
more than 1. Each sequence samples with its own generator and its own settings, so its tokens do not depend on
which others share its steps (up to float rounding, which differs between batch shapes and can tip a rare
near-tie, as in `gpt2lab sample`); a lone sequence computes exactly what `gpt2lab.sampling.decode` does.

A fault belongs to the sequences it reached. A row whose sampling fails (its logits are NaN or infinite, or the
sampler raises) ends with an error alone; the other rows of that step keep their tokens and decode on, drawing
exactly what they would have drawn without it. When the step itself raises (the model: a bug, out of memory), the
sequences it was computing (running, and those being admitted) end with an error; those still waiting took no part
in it and stay queued, so a request that arrives while the failure is being reported is never dropped.

The `Scheduler` is the one thread that runs the engines (one per served model) in turn; the HTTP side only
submits sequences and cancels them, and receives `Event`s through each sequence's callback.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gpt2lab.errors import first_line
from gpt2lab.sampling.decode import sample_next, seeded_generator, unembedding_for_decoding
from gpt2lab.serve.slots import SlotCache
from gpt2lab.sampling.stream import TextStream


@dataclass(frozen=True)
class Settings:
    """How one completion is sampled (the rules of `gpt2lab.sampling.decode.sample_next`)."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()


@dataclass
class Event:
    """What a sequence produced in one step: text to show (maybe empty: bytes or a possible stop string held
    back), and, on its last event, why it ended: "stop" (<|endoftext|> or a stop string), "length"
    (max_tokens), "error" (the model, or this sequence's sampling, failed: `text` says how)."""

    text: str
    finish_reason: str | None = None


class Sequence:
    def __init__(self, prompt: list[int], settings: Settings, seed: int | None, tokenizer,
                 on_event: Callable[[Event], None]):
        self.prompt, self.settings, self.seed = prompt, settings, seed
        self.on_event = on_event
        self.text = TextStream(tokenizer, settings.stop)
        self.generator: torch.Generator | None = None  # made on the engine's device when admitted
        self.generated = 0  # tokens of the completion (not counting <|endoftext|>)
        self.last_token: int | None = None
        self.finish_reason: str | None = None
        self.cancelled = False  # set by the HTTP side when the client is gone; read by the engine

    def accept(self, token: int, stop_token: int) -> None:
        """Take the sampled token: emit its text, and finish when the completion is over."""
        if token == stop_token:
            return self._finish("stop", self.text.flush())
        self.generated += 1
        self.last_token = token
        text = self.text.push(token)
        if self.text.stopped:
            self._finish("stop", text)
        elif self.generated >= self.settings.max_tokens:
            self._finish("length", text + self.text.flush())
        elif text:
            self.on_event(Event(text))

    def fail(self, message: str) -> None:
        self._finish("error", message)

    def _finish(self, reason: str, text: str) -> None:
        self.finish_reason = reason
        self.on_event(Event(text, reason))


class Engine:
    def __init__(self, model, tokenizer, batch_size: int = 8, prefill_tokens: int = 4096):
        """batch_size: rows decoded together (each holds a KV cache for the whole context); prefill_tokens: at
        most this many (padded) prompt tokens enter in one prefill, unless a single prompt is longer."""
        self.model, self.tokenizer = model, tokenizer
        self.device = model.transformer.wte.weight.device
        self.cache = SlotCache(model, batch_size)
        self.prefill_tokens = prefill_tokens
        self.unembedding = unembedding_for_decoding(model)
        self.stop_token, self.vocab_size = tokenizer.eot_token, tokenizer.n_vocab
        self.waiting: deque[Sequence] = deque()  # appended by the HTTP side, taken by the scheduler thread
        self.running: list[Sequence] = []  # running[i] is in cache row i
        self.admitting: list[Sequence] = []  # taken from `waiting` by this step, until they are running

    def submit(self, sequences: list[Sequence]) -> None:
        self.waiting.extend(sequences)

    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    @torch.no_grad()
    def step(self) -> None:
        self._free(lambda seq: seq.cancelled)
        self.admitting = self._admit()
        if self.admitting:
            self._prefill(self.admitting)
        self.admitting = []
        if self.running:
            self._decode()

    def fail(self, message: str) -> None:
        """The step raised: end the sequences it was computing with an error; the server stays up.

        `waiting` is not touched: its sequences were not part of the step (they run at the next one), and the HTTP
        side appends to it from another thread, so clearing it here could drop a request submitted meanwhile (one
        a client sends as soon as it has read this failure, say) and leave its client hanging."""
        failed = list(dict.fromkeys([*self.running, *self.admitting]))  # admitted ones may be running already
        self.running.clear()
        self.admitting = []
        for seq in failed:
            if seq.finish_reason is None:
                seq.fail(message)

    # --- the three kinds of work ---------------------------------------------------------------------------

    def _admit(self) -> list[Sequence]:
        """Waiting sequences that fit in the free rows and the prefill budget, oldest first."""
        admitted, longest = [], 0
        while self.waiting and len(self.running) + len(admitted) < self.cache.rows:
            seq = self.waiting[0]
            if seq.cancelled:
                self.waiting.popleft()
                continue
            longest = max(longest, len(seq.prompt))
            if admitted and longest * (len(admitted) + 1) > self.prefill_tokens:
                break
            admitted.append(self.waiting.popleft())
        return admitted

    def _prefill(self, admitted: list[Sequence]) -> None:
        lengths = [len(seq.prompt) for seq in admitted]
        width = max(lengths)
        # Right-padded with token 0, which no real token attends to (see slots._Prefill).
        idx = torch.tensor([seq.prompt + [0] * (width - len(seq.prompt)) for seq in admitted], device=self.device)
        first = len(self.running)
        hidden = self.model.hidden_states(idx, cache=self.cache.prefill(first, lengths))
        last = hidden[torch.arange(len(admitted), device=self.device), torch.tensor(lengths, device=self.device) - 1]
        for seq in admitted:
            seq.generator = seeded_generator(seq.seed, self.device)
        self.running.extend(admitted)
        self._sample(first, self._logits(last))

    def _decode(self) -> None:
        idx = torch.tensor([[seq.last_token] for seq in self.running], device=self.device)
        hidden = self.model.hidden_states(idx, cache=self.cache.decode(len(self.running)))
        self._sample(0, self._logits(hidden[:, -1]))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, n_embd) -> (B, vocab) float32 logits, ids the tokenizer does not know (a padded vocabulary) excluded."""
        logits = (self.unembedding(hidden) if self.unembedding is not None else self.model.lm_head(hidden)).float()
        if self.vocab_size < logits.size(-1):
            logits[:, self.vocab_size :] = float("-inf")
        return logits

    def _sample(self, first: int, logits: torch.Tensor) -> None:
        """Each row with its own settings and generator: a sequence draws the same tokens in any batch. A row
        that cannot be sampled fails alone (see the module docstring)."""
        # A row whose largest logit is NaN or +-inf has no distribution to draw from (NaN propagates through amax).
        # Checked before sampling rather than left to multinomial: on a GPU, NaN probabilities are a device-side
        # assert that would end every row (and the process), not an exception.
        finite = torch.isfinite(logits.amax(dim=-1)).tolist()
        for b in range(logits.size(0)):
            seq = self.running[first + b]
            s = seq.settings
            try:
                if not finite[b]:
                    raise FloatingPointError("its logits are not finite (NaN or infinity)")
                token = int(sample_next(logits[b : b + 1], s.temperature, s.top_k, s.top_p, seq.generator)[0])
            except Exception as e:  # this row's fault: the others keep their tokens
                message = f"sampling failed for this completion: {first_line(e)}"
                print(f"gpt2lab serve: {message}", file=sys.stderr, flush=True)  # one line: no traceback
                seq.fail(message)
                continue
            seq.accept(token, self.stop_token)
        self._free(lambda seq: seq.finish_reason is not None)

    def _free(self, done: Callable[[Sequence], bool]) -> None:
        """Drop the running sequences that are done; the last row moves into each freed one, so the rows in use
        stay 0 .. len(running) - 1. From the end, so that the row moved in has already been looked at."""
        for row in reversed(range(len(self.running))):
            if done(self.running[row]):
                last = len(self.running) - 1
                if row != last:
                    self.cache.move(last, row)
                    self.running[row] = self.running[last]
                self.running.pop()


class Scheduler:
    """The one thread that runs the models: while any engine has work, each such engine takes a step in turn."""

    def __init__(self, engines: list[Engine]):
        self.engines = engines
        self._work = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="gpt2lab-serve-engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._work:
            self._stopping = True
            self._work.notify()
        self._thread.join(timeout=30)

    def submit(self, engine: Engine, sequences: list[Sequence]) -> None:
        with self._work:
            engine.submit(sequences)
            self._work.notify()

    def cancel(self, sequences: list[Sequence]) -> None:
        """The client is gone: the engine drops these at its next step, freeing their rows."""
        for seq in sequences:
            seq.cancelled = True
        with self._work:
            self._work.notify()

    def _run(self) -> None:
        while True:
            with self._work:
                while not self._stopping and not any(engine.busy() for engine in self.engines):
                    self._work.wait()
                if self._stopping:
                    return
            for engine in self.engines:
                if engine.busy():
                    try:
                        engine.step()
                    except Exception as e:  # a bug or out of memory: fail these requests, keep serving
                        traceback.print_exc(file=sys.stderr)
                        engine.fail(f"the model failed: {type(e).__name__}: {e}")
