"""`gpt2lab prepare`: documents in, GPT-2 token shards + manifest.json out, on all cores, resumable.

Pipeline (memory bounded by a few batches of text, whatever the corpus size):
  reader thread   sources -> documents -> batches of ~4 MB of text (I/O and JSON parsing overlap tokenising)
  tokeniser pool  tiktoken on every core (it releases the GIL); batch k+1 is encoded while batch k is written
  main thread     EOT + tokens as uint16 -> one ShardWriter per split (temporary name, renamed when complete)
After each finished shard, prepare-state.json records what is done, so an interrupted run resumes after the
last finished shard of each split (documents are re-read but not re-tokenised). manifest.json comes last.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator


from gpt2lab.storage.atomic import TMP_PREFIX, atomic_write_text
from gpt2lab.data.document import Document
from gpt2lab.data.errors import BadDataValue, DataError
from gpt2lab.data.manifest import (DTYPE, EOT_TOKEN, FORMAT, MANIFEST, SPLITS, STATE, TOKENIZER, VOCAB_SIZE,
                                   read_manifest)
from gpt2lab.data.shards import ShardWriter

from gpt2lab.data.sources import SourceOptions, SourceStats, describe_source, iter_documents
from gpt2lab.storage.dirlock import LOCK_FILE, DirectoryLock
from gpt2lab.tokenizer import get_tokenizer

DEFAULT_VAL_FRACTION = 0.01
BATCH_CHARS = 1 << 22  # text per tokeniser batch: big enough to keep every core busy, small for memory


@dataclass
class PrepareConfig:
    sources: list[str]
    out: str
    shard_size: int = 100_000_000  # tokens per shard (shards end on document boundaries)
    val_fraction: float | None = None  # every round(1/f)-th document goes to val; default 0.01
    val_docs: int | None = None  # or: the first N documents go to val
    text_field: str = "text"
    hf_split: str = "train"
    max_tokens: int | None = None  # stop after this many tokens (a prefix of the corpus)
    strict: bool = False  # malformed JSONL records are errors instead of being skipped
    overwrite: bool = False  # replace a different dataset in `out`
    threads: int | None = None  # tokeniser threads; default: every core
    progress: bool = True


@dataclass
class _Run:
    """Everything one prepare tracks while it streams."""
    out: Path
    writers: dict = field(default_factory=dict)
    tokens: int = 0  # in finished and open shards, resumed ones included
    resumed_tokens: int = 0
    documents: int = 0  # tokenised by this run


def prepare(config: PrepareConfig, log: Callable[[str], None] = print) -> dict:
    """Tokenise `config.sources` into shards in `config.out`; returns the manifest (also on a complete rerun)."""
    _check_config(config)
    fingerprint = _fingerprint(config)
    stats = SourceStats()
    out = Path(config.out)
    options = SourceOptions(text_field=config.text_field, strict=config.strict, hf_split=config.hf_split,
                            exclude=out)
    if out.exists() and not out.is_dir():
        raise BadDataValue("out", f"{out} is a file; give a directory")
    # One prepare per output directory: a second one would interleave shards. A failed start leaves nothing.
    with DirectoryLock(out, what="gpt2lab prepare"):
        complete, resume = _existing_output(out, fingerprint, config.overwrite)
        if complete is not None:
            total = sum(s["tokens"] for shards in complete["splits"].values() for s in shards)
            log(f"{out} already holds this dataset ({total:,} tokens, complete); nothing to do "
                f"(--overwrite rebuilds it)")
            return complete
        documents = iter_documents(config.sources, options, stats)  # resolves sources: fails before writing
        return prepare_documents(documents, out, config, fingerprint, resume=resume, stats=stats, log=log)


def prepare_documents(documents: Iterable[Document], out: Path, config: PrepareConfig, fingerprint: dict,
                      resume: dict | None = None, stats: SourceStats | None = None,
                      log: Callable[[str], None] = print) -> dict:
    """The streaming core: route, tokenise and shard `documents`; write the manifest last."""
    from tqdm import tqdm

    stats = stats or SourceStats()
    resume = resume or {"splits": {s: [] for s in SPLITS}, "last_document": {s: -1 for s in SPLITS}}
    run = _Run(out)
    state = {"fingerprint": fingerprint, "splits": resume["splits"], "last_document": resume["last_document"]}

    def save_state():
        state["last_document"] = {s: w.last_document for s, w in run.writers.items()}
        atomic_write_text(out / STATE, json.dumps(state, indent=1))

    for split in SPLITS:
        run.writers[split] = ShardWriter(out, split, config.shard_size, state["splits"][split], save_state)
        run.writers[split].last_document = resume["last_document"][split]
    run.tokens = run.resumed_tokens = sum(s["tokens"] for shards in state["splits"].values() for s in shards)
    if run.tokens:
        log(f"resuming: {run.tokens:,} tokens in finished shards are kept")
    encode = _encoder()
    threads = config.threads or os.cpu_count() or 1
    bar = tqdm(total=config.max_tokens, initial=run.tokens, unit="tok", unit_scale=True,
               desc="tokenising", disable=None if config.progress else True)
    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(threads) as pool, _BatchReader(documents, config, state["last_document"]) as batches:
            pending = None
            for batch in batches:
                submitted = (batch, _submit(pool, encode, [text for _, _, text in batch], threads))
                if pending is not None and not _write(run, *pending, config, bar):
                    pending = None
                    break
                pending = submitted
            if pending is not None:
                _write(run, *pending, config, bar)
        for writer in run.writers.values():
            writer.close()
    except BaseException:
        for writer in run.writers.values():
            writer.discard()
        raise
    finally:
        bar.close()
    seconds = time.perf_counter() - started
    return _finish(run, config, fingerprint, state, stats, seconds, log)


def _finish(run: _Run, config: PrepareConfig, fingerprint: dict, state: dict, stats: SourceStats, seconds: float,
            log) -> dict:
    splits = state["splits"]
    if not any(splits.values()):
        (run.out / STATE).unlink(missing_ok=True)
        skipped = "; ".join(stats.warnings(config.text_field))
        raise DataError(f"no non-empty documents in {' '.join(config.sources)}" + (f" ({skipped})" if skipped else "")
                        + "; nothing was written: check the source and --text-field")
    for warning in stats.warnings(config.text_field):
        log(f"warning: {warning}")
    for split in SPLITS:
        if not splits[split]:
            hint = "--val-docs N or a larger --val-fraction" if split == "val" else "a smaller --val-fraction/--val-docs"
            log(f"warning: the {split} split is empty; use {hint}")
    manifest = {"format": FORMAT, "tokenizer": TOKENIZER, "vocab_size": VOCAB_SIZE, "eot_token": EOT_TOKEN,
                "dtype": DTYPE, "source": " ".join(fingerprint["sources"]), "sources": fingerprint["sources"],
                "args": fingerprint["args"], "splits": splits,
                "skipped": {"empty": stats.empty, "bad_json": len(stats.bad_json),
                            "missing_field": len(stats.missing_field), "bad_utf8_files": len(stats.bad_utf8_files)}}
    atomic_write_text(run.out / MANIFEST, json.dumps(manifest, indent=1))
    os.chmod(run.out / MANIFEST, 0o644)  # readable like the shards (the temporary file was private)
    (run.out / STATE).unlink(missing_ok=True)
    counts = {s: (sum(x["tokens"] for x in splits[s]), sum(x["documents"] for x in splits[s]), len(splits[s]))
              for s in SPLITS}
    summary = ", ".join(f"{s}: {t:,} tokens in {d:,} documents, {n} shard(s)" for s, (t, d, n) in counts.items())
    new_tokens = run.tokens - run.resumed_tokens
    rate = f" ({new_tokens / seconds:,.0f} tokens/s this run)" if run.documents and seconds > 0 else ""
    log(f"wrote {run.out}: {summary}{rate}")
    return manifest


# --- the three pipeline stages ---------------------------------------------------------------------------------

class _BatchReader:
    """A thread that reads documents, routes each to a split, drops ones already in finished shards (resume) and
    groups the rest into batches of (stream index, split, text)."""

    def __init__(self, documents: Iterable[Document], config: PrepareConfig, done_through: dict):
        self.documents, self.config, self.done_through = documents, config, dict(done_through)
        self.queue: queue.Queue = queue.Queue(maxsize=2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gpt2lab-prepare-reader", daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        deadline = time.monotonic() + 10  # a reader stuck in a slow source (network) is a daemon: leave it
        while self.thread.is_alive() and time.monotonic() < deadline:  # unblock a reader on a full queue
            with contextlib.suppress(queue.Empty):
                self.queue.get(timeout=0.05)
        return False

    def __iter__(self) -> Iterator[list]:
        while True:
            kind, item = self.queue.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            batch, chars = [], 0
            for index, doc in enumerate(self.documents):
                split = route(index, doc, self.config)
                if index <= self.done_through[split]:
                    continue  # already in a finished shard
                batch.append((index, split, doc.text))
                chars += len(doc.text)
                if chars >= BATCH_CHARS:
                    if not self._put(("batch", batch)):
                        return
                    batch, chars = [], 0
            if batch and not self._put(("batch", batch)):
                return
            self._put(("end", None))
        except BaseException as e:  # handed to the main thread, which raises it
            self._put(("error", e))


def route(index: int, doc: Document, config: PrepareConfig) -> str:
    """Deterministic train/val choice by whole document: --val-docs N takes the first N; --val-fraction f takes
    every (1/f)-th, starting at the (1/f)-th; with neither, a source's own split (Shakespeare's held-out plays)."""
    if config.val_docs is not None:
        return "val" if index < config.val_docs else "train"
    if config.val_fraction is None and doc.split is not None:
        return doc.split
    f = DEFAULT_VAL_FRACTION if config.val_fraction is None else config.val_fraction
    return "val" if math.floor((index + 1) * f) > math.floor(index * f) else "train"


def _encoder():
    """tokens of one text as a numpy array, identical to encode_ordinary (a literal "<|endoftext|>" is text)
    but without building a Python list of ints."""
    encoding = get_tokenizer().encoding
    return lambda text: encoding.encode_to_numpy(text, allowed_special=set(), disallowed_special=())


def _submit(pool, encode, texts: list[str], threads: int) -> list:
    """One task per thread over a contiguous slice (few, large tasks: no per-document scheduling cost)."""
    step = max(1, math.ceil(len(texts) / threads))
    return [pool.submit(lambda part: [encode(t) for t in part], texts[i:i + step]) for i in range(0, len(texts), step)]


def _write(run: _Run, batch: list, tasks: list, config: PrepareConfig, bar) -> bool:
    """Hand a tokenised batch to the split writers; False once --max-tokens is reached."""
    encoded = [tokens for task in tasks for tokens in task.result()]
    by_split = {s: [] for s in SPLITS}
    more = True
    added = 0
    for (index, split, _), tokens in zip(batch, encoded):
        by_split[split].append((index, tokens))
        added += len(tokens) + 1
        run.documents += 1
        if config.max_tokens is not None and run.tokens + added >= config.max_tokens:
            more = False
            break
    for split, docs in by_split.items():
        if docs:
            run.writers[split].add(docs)
    run.tokens += added
    bar.update(added if bar.total is None else max(0, min(added, bar.total - bar.n)))
    return more


# --- the output directory ----------------------------------------------------------------------------------------

def _check_config(config: PrepareConfig) -> None:
    if not config.sources:
        raise DataError("no SOURCE given: name files, directories, globs, hf:NAME[:CONFIG] or shakespeare")
    if config.shard_size < 1:
        raise BadDataValue("shard_size", f"must be a positive number of tokens (got {config.shard_size})")
    if config.val_fraction is not None and config.val_docs is not None:
        raise DataError("give --val-fraction or --val-docs, not both")
    if config.val_fraction is not None and not 0 <= config.val_fraction < 1:
        raise BadDataValue("val_fraction", f"must be in [0, 1) (got {config.val_fraction})")
    if config.val_docs is not None and config.val_docs < 0:
        raise BadDataValue("val_docs", f"must be >= 0 (got {config.val_docs})")
    if config.max_tokens is not None and config.max_tokens < 1:
        raise BadDataValue("max_tokens", f"must be positive (got {config.max_tokens})")
    if config.threads is not None and config.threads < 0:
        raise BadDataValue("threads", f"must not be negative (got {config.threads}; 0 or none given: every core)")


def _fingerprint(config: PrepareConfig) -> dict:
    """What decides the output: the same fingerprint in `out` means the same dataset."""
    args = asdict(config)
    for key in ("sources", "out", "overwrite", "threads", "progress"):
        args.pop(key)
    return {"sources": [describe_source(s) for s in config.sources], "args": args}


def _ours(path: Path) -> bool:
    name = path.name
    return (name in (MANIFEST, STATE, LOCK_FILE) or name.startswith(TMP_PREFIX)
            or (name.endswith(".bin") and name.split("_")[0] in SPLITS))


def _existing_output(out: Path, fingerprint: dict, overwrite: bool) -> tuple[dict | None, dict | None]:
    """(manifest, None) if `out` holds this dataset complete; (None, progress) if an unfinished prepare of it
    can resume; (None, None) after clearing anything else of ours. A different dataset is refused unless
    `overwrite`; files that are not ours are always refused."""
    foreign = [p.name for p in out.iterdir() if not _ours(p)]
    if foreign:
        raise BadDataValue("out", f"{out} holds files that are not a gpt2lab dataset ({', '.join(sorted(foreign)[:3])}); "
                        f"choose an empty or new directory")
    previous = None
    if (out / MANIFEST).exists():
        try:
            previous = read_manifest(out)
        except DataError:
            previous = None
        if previous is not None and {"sources": previous.get("sources"), "args": previous.get("args")} == fingerprint:
            if _shards_intact(out, previous["splits"], check_hash=False):
                return previous, None
            previous = None  # ours but damaged: start over
    elif (out / STATE).exists():
        with contextlib.suppress(OSError, ValueError):
            previous = json.loads((out / STATE).read_text(encoding="utf-8"))
        if isinstance(previous, dict) and previous.get("fingerprint") == fingerprint:
            for p in out.glob(f"{TMP_PREFIX}*"):  # an interrupted shard: its documents are redone
                p.unlink()
            if _shards_intact(out, previous["splits"], check_hash=True):
                return None, {"splits": previous["splits"], "last_document": previous["last_document"]}
            previous = None  # damaged: start over
    if previous is not None and not overwrite:
        raise BadDataValue("out", f"{out} holds a different dataset (or different prepare options); choose another "
                        f"directory, rerun with the same options, or pass --overwrite to replace it")
    for p in out.iterdir():  # our files only (checked above): a clean start
        if p.name != LOCK_FILE:  # held by this process
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return None, None


def _shards_intact(out: Path, splits: dict, check_hash: bool) -> bool:
    import hashlib

    for shards in splits.values():
        for shard in shards:
            path = out / shard["file"]
            if not path.is_file() or path.stat().st_size != 2 * shard["tokens"]:
                return False
            if check_hash:
                digest = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        digest.update(block)
                if digest.hexdigest() != shard["sha256"]:
                    return False
    return True

