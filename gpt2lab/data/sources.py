"""Documents from the sources `gpt2lab prepare` accepts, streamed one at a time (never a whole corpus in RAM).

SOURCE is one of: a file, a directory (searched recursively), or a glob of `.txt` (one document per file),
`.jsonl` / `.json` (one document per record, field `--text-field`), `.parquet` (a text column);
`hf:NAME[:CONFIG]` (a Hugging Face dataset, streamed); `shakespeare` (the built-in demo corpus).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from gpt2lab.data.document import Document
from gpt2lab.data.errors import DataError
from gpt2lab.errors import first_line

SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")


@dataclass
class SourceStats:
    """What was skipped or repaired while reading, reported at the end of a prepare."""
    files: int = 0
    records: int = 0
    empty: int = 0
    bad_json: list = field(default_factory=list)  # "file:line" of lines that are not JSON objects
    missing_field: list = field(default_factory=list)  # "file:line" of records without a string text field
    bad_utf8_files: list = field(default_factory=list)
    replaced_chars: int = 0

    def warnings(self, text_field: str) -> list[str]:
        out = []
        for where, what in ((self.bad_json, "not a JSON object"), (self.missing_field, f"no string {text_field!r} field")):
            if where:
                shown = ", ".join(where[:5]) + (", ..." if len(where) > 5 else "")
                out.append(f"skipped {len(where):,} record(s) that are {what} ({shown}); --strict makes this an error")
        if self.bad_utf8_files:
            shown = ", ".join(self.bad_utf8_files[:3]) + (", ..." if len(self.bad_utf8_files) > 3 else "")
            out.append(f"{len(self.bad_utf8_files)} file(s) had invalid UTF-8 ({self.replaced_chars:,} bytes "
                       f"replaced by U+FFFD): {shown}")
        if self.empty:
            out.append(f"skipped {self.empty:,} empty document(s)")
        return out


@dataclass
class SourceOptions:
    text_field: str = "text"
    strict: bool = False
    hf_split: str = "train"
    exclude: Path | None = None  # the output directory: never read our own manifest as a source


def describe_source(spec: str) -> str:
    """A stable identity for a source: absolute paths for local ones (so reruns from elsewhere match)."""
    if spec == "shakespeare" or spec.startswith("hf:"):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def resolve_files(spec: str) -> list[Path]:
    """The files a local source names, sorted; DataError if none."""
    path = Path(os.path.expanduser(spec))
    if glob.has_magic(spec):
        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(spec), recursive=True)) if Path(p).is_file()]
        files = [f for f in files if f.suffix.lower() in SUFFIXES]
    elif path.is_dir():
        datasets = [m.parent for m in path.rglob("manifest.json") if _is_dataset_dir(m.parent)]
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                       and not any(part.startswith(".") for part in p.relative_to(path).parts)
                       and not any(d in p.parents for d in datasets))
    elif path.is_file():
        if path.suffix.lower() not in SUFFIXES:
            raise DataError(f"{spec}: unsupported file type {path.suffix or '(none)'!r}; use .txt, .jsonl, .json or .parquet")
        files = [path]
    else:
        raise DataError(f"source {spec!r} is not a file, directory, glob, 'hf:NAME[:CONFIG]' or 'shakespeare'")
    if not files:
        raise DataError(f"no .txt/.jsonl/.json/.parquet files match {spec!r}")
    return files


def _is_dataset_dir(folder: Path) -> bool:
    """A gpt2lab token dataset (prepared earlier, maybe inside the corpus folder): not a source of text."""
    try:
        with open(folder / "manifest.json", "rb") as f:
            return b"gpt2lab-shards/" in f.read(200)
    except OSError:
        return False


def iter_documents(specs: list[str], options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """All documents of all sources in order; empty ones are counted in `stats` and left out. Every source is
    resolved here, before the first document is read, so a bad one fails before any work is done."""
    readers = [_reader_for(spec, options) for spec in specs]
    return _non_empty(readers, stats)


def _non_empty(readers, stats: SourceStats) -> Iterator[Document]:
    for read in readers:
        for doc in read(stats):
            if doc.text.strip():
                yield doc
            else:
                stats.empty += 1


def _reader_for(spec: str, options: SourceOptions) -> Callable[[SourceStats], Iterator[Document]]:
    if spec == "shakespeare":
        from gpt2lab.data.shakespeare import shakespeare_documents
        return lambda stats: shakespeare_documents()
    if spec.startswith("hf:"):
        parts = spec[3:].split(":")
        if not parts[0] or len(parts) > 2:
            raise DataError(f"{spec!r}: write a Hugging Face dataset as hf:NAME or hf:NAME:CONFIG")
        return lambda stats: _read_hf(spec, parts[0], parts[1] if len(parts) == 2 else None, options, stats)
    files = resolve_files(spec)
    if options.exclude is not None:
        skip = options.exclude.resolve()
        files = [f for f in files if skip not in f.resolve().parents]
        if not files:
            raise DataError(f"{spec!r} only matches files inside the output directory {options.exclude}")
    return lambda stats: (doc for f in files for doc in _read_file(f, options, stats))


def _read_file(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    stats.files += 1
    suffix = path.suffix.lower()
    if suffix == ".txt":
        yield Document(_decode(path.read_bytes(), str(path), stats), str(path))
    elif suffix == ".jsonl":
        yield from _read_jsonl(path, options, stats)
    elif suffix == ".json":
        yield from _read_json(path, options, stats)
    else:
        yield from _read_parquet(path, options, stats)


def _decode(data: bytes, name: str, stats: SourceStats) -> str:
    """UTF-8 text; invalid bytes become U+FFFD and are counted (a few bad bytes should not stop a big job)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        stats.bad_utf8_files.append(name) if name not in stats.bad_utf8_files else None
        stats.replaced_chars += text.count("\ufffd") - data.count("\ufffd".encode())
        return text


def _record_text(record, where: str, options: SourceOptions, stats: SourceStats) -> str | None:
    stats.records += 1
    text = record.get(options.text_field) if isinstance(record, dict) else None
    if isinstance(text, str):
        return text
    if options.strict:
        raise DataError(f"{where}: record has no string field {options.text_field!r} (choose it with --text-field)")
    stats.missing_field.append(where)
    return None


def _read_jsonl(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            where = f"{path}:{number}"
            try:
                record = json.loads(_decode(raw, str(path), stats))
            except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: brackets nested too deeply
                if options.strict:
                    why = e.msg if isinstance(e, json.JSONDecodeError) else "nested too deeply"
                    raise DataError(f"{where}: not valid JSON ({why}); fix the line or drop --strict to skip it") from None
                stats.records += 1
                stats.bad_json.append(where)
                continue
            text = _record_text(record, where, options, stats)
            if text is not None:
                yield Document(text, where)


def _read_json(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """A JSON array of records (or an object holding one such array). Read whole: use .jsonl for big corpora."""
    try:
        data = json.loads(_decode(path.read_bytes(), str(path), stats))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); for one record per line use .jsonl") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read; for one record per line use .jsonl") from None
    if isinstance(data, dict):
        arrays = [v for v in data.values() if isinstance(v, list)]
        data = arrays[0] if len(arrays) == 1 else None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records (objects with a {options.text_field!r} field)")
    for i, record in enumerate(data):
        text = _record_text(record, f"{path}[{i}]", options, stats)
        if text is not None:
            yield Document(text, f"{path}[{i}]")


def _read_parquet(path: Path, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    if options.text_field not in table.schema_arrow.names:
        raise DataError(f"{path}: no column {options.text_field!r} (columns: {table.schema_arrow.names}); "
                        f"choose one with --text-field")
    row = 0
    for batch in table.iter_batches(batch_size=1024, columns=[options.text_field]):
        for text in batch.column(0).to_pylist():
            row += 1
            record = {options.text_field: text}
            text = _record_text(record, f"{path} row {row}", options, stats)
            if text is not None:
                yield Document(text, f"{path} row {row}")


def _read_hf(spec: str, name: str, config: str | None, options: SourceOptions, stats: SourceStats) -> Iterator[Document]:
    """`hf:NAME[:CONFIG]` streamed with `datasets` (nothing downloaded up front; --max-tokens takes a prefix)."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split=options.hf_split, streaming=True)
    except Exception as e:  # offline, unknown name/config/split: datasets raises many types
        raise DataError(f"cannot open Hugging Face dataset {name!r} (config {config}, split {options.hf_split!r}): "
                        f"{type(e).__name__}: {first_line(e)}; check the name and your "
                        f"internet connection") from None
    records = iter(dataset)
    for i in itertools.count():
        try:
            record = next(records)
        except StopIteration:
            return
        except Exception as e:  # the connection dropped mid-stream: finished shards are kept for a rerun
            raise DataError(f"reading {spec} failed after {i:,} records ({type(e).__name__}: "
                            f"{(str(e).splitlines() or [''])[0]}); rerun the same command to resume") from None
        text = _record_text(record, f"{spec} #{i}", options, stats)
        if text is not None:
            yield Document(text, f"{spec} #{i}")
