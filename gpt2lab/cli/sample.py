"""`gpt2lab sample`: continue a prompt with text sampled from a model (KV cache, streaming, seeded)."""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import time
from pathlib import Path

from gpt2lab.cli.common import MODEL_HELP
from gpt2lab.errors import GPT2LabError

DEFAULT_PROMPT = "Hello, I'm a language model,"


def add_command(commands):
    p = commands.add_parser(
        "sample",
        help="continue a prompt with text sampled from a model (KV cache, streaming, seeded)",
        description="Sample continuations of a prompt. One sample streams to the terminal as it is generated; "
        "several are generated --batch-size at a time, each batch printed as soon as it is done, so memory does not "
        "grow with --num-samples. Generation stops at <|endoftext|>. "
        "The prompt comes from --prompt, --prompt-file, or standard input when it is piped "
        f"(`echo Hi | gpt2lab sample gpt2`); with none of these it is {DEFAULT_PROMPT!r}. An empty prompt "
        "samples unconditionally (from <|endoftext|>); one longer than the model's context is cropped from the "
        "left, with a warning. Sample i depends only on --seed and i, not on --num-samples or --batch-size (barring "
        "a rare near-tie that float rounding, which differs between batch shapes, tips): the same seed gives the "
        "same samples on the same device.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--prompt", help=f"text to continue (default {DEFAULT_PROMPT!r}; '' = unconditional)")
    p.add_argument("--prompt-file", metavar="FILE",
                   help="read the prompt from FILE, UTF-8 ('-' = standard input); one trailing newline is dropped")
    p.add_argument("--num-samples", type=int, default=5, metavar="N", help="samples to generate (default 5)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="samples generated together: more is faster per sample, and takes more memory (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=30, metavar="N", help="tokens per sample (default 30)")
    p.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    p.add_argument("--temperature", type=float, default=1.0, metavar="T",
                   help="softmax temperature; 0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int_or_none, default=50, metavar="K",
                   help="sample among the K most likely tokens; 'none' = no limit (default 50)")
    p.add_argument("--top-p", type=float, default=None, metavar="P",
                   help="nucleus sampling: among the fewest most likely tokens whose probability reaches P, "
                   "0 < P <= 1 (default off)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto: cuda, then mps, then cpu)")
    p.add_argument("--dtype", default="auto",
                   help="auto | float32 | bfloat16 | float16 (default auto: bfloat16 where it decodes faster, on CUDA "
                   "GPUs and CPUs with native bf16, else float32)")
    p.set_defaults(run=run)
    return p


def int_or_none(text: str):
    if text.lower() == "none":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def run(args) -> int:
    from gpt2lab.model.gpt import load_model
    from gpt2lab.runtime import memory
    from gpt2lab.runtime.device import decoding_dtype, resolve_device
    from gpt2lab.sampling.decode import check_sampling_settings
    from gpt2lab.sampling.texts import (SampleSettings, prompt_tokens, sample_tokens, sampling_model_source,
                                        stream_sample, write_text)
    from gpt2lab.tokenizer import get_tokenizer

    # Everything that can be checked without the model first: a typo should not cost a model load.
    check_sampling_settings(args.max_new_tokens, seed=args.seed)
    settings = SampleSettings(args.max_new_tokens, args.temperature, args.top_k, args.top_p)
    for flag in ("num_samples", "batch_size"):
        if getattr(args, flag) <= 0:
            raise GPT2LabError(f"--{flag.replace('_', '-')} must be a positive integer, got {getattr(args, flag)}")
    device = resolve_device(args.device)
    dtype = decoding_dtype(args.dtype, device)
    prompt = read_prompt(args.prompt, args.prompt_file)
    tokenizer = get_tokenizer()
    directory, config = sampling_model_source(args.model, tokenizer)
    tokens = prompt_tokens(tokenizer, prompt, config.block_size, warn=lambda line: print(f"warning: {line}",
                                                                                           file=sys.stderr))
    batch_size = min(args.batch_size, args.num_samples)
    cached = min(len(tokens) + args.max_new_tokens, config.block_size)
    needed = memory.inference_bytes(config, batch_size, len(tokens), scored=1, cached=cached,
                                    bytes_per_value=dtype.itemsize)
    memory.check_fits("batch_size", args.batch_size, needed, device, step="to sample one batch")
    model = load_model(directory, device=device, dtype=dtype)
    prompt_text = tokenizer.decode(tokens) if prompt else ""

    out = sys.stdout
    if hasattr(out, "reconfigure"):  # a terminal that cannot show a character gets '?', not a crash
        out.reconfigure(errors="replace")
    start = time.perf_counter()
    if args.num_samples == 1:
        out.write(prompt_text)
        out.flush()
        count = write_text(stream_sample(model, tokenizer, tokens, settings, seed=args.seed), tokenizer, out)
    else:
        count = 0
        for i, row in sample_tokens(model, tokenizer, tokens, settings, seed=args.seed, count=args.num_samples,
                                    batch_size=batch_size):
            count += len(row)
            out.write(f"{'-' * 20} sample {i + 1} of {args.num_samples} {'-' * 20}\n")
            out.write(prompt_text + tokenizer.decode(row) + "\n")
            if (i + 1) % batch_size == 0:
                out.flush()  # this batch is done: show it now rather than after the last one
    out.flush()
    seconds = time.perf_counter() - start
    dtype_name = str(dtype).removeprefix("torch.") + (" (auto)" if args.dtype == "auto" else "")
    print(f"[{count} new tokens in {seconds:.1f} s, {count / seconds:.1f} tokens/s, {dtype_name}]", file=sys.stderr)
    return 0


def read_prompt(prompt: str | None, prompt_file: str | None) -> str:
    """--prompt, else --prompt-file ('-' = stdin), else piped stdin, else the default prompt."""
    if prompt is not None and prompt_file is not None:
        raise GPT2LabError("give either --prompt or --prompt-file, not both")
    if prompt is not None:
        return prompt
    if prompt_file == "-" or (prompt_file is None and _stdin_is_piped()):
        return _drop_final_newline(sys.stdin.read())
    if prompt_file is None:
        return DEFAULT_PROMPT
    path = Path(prompt_file).expanduser()
    # Opened as it is, not checked with is_file() first: a shell's <(echo hi) is a FIFO, /dev/stdin a device.
    try:
        return _drop_final_newline(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise GPT2LabError(f"prompt file {path} is not UTF-8 text; convert it (e.g. with iconv)") from None
    except OSError as e:
        what = {errno.ENOENT: "does not exist", errno.EISDIR: "is a directory", errno.ELOOP: "is a symlink loop",
                errno.EACCES: "is not readable (permission denied)"}.get(e.errno, f"cannot be read ({e.strerror})")
        raise GPT2LabError(f"prompt file {path} {what}; pass a UTF-8 text file, or '-' for standard input") from None


def _stdin_is_piped() -> bool:
    # A pipe or a redirected file, not a terminal and not /dev/null (cron, CI), which would read as "".
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (AttributeError, OSError, ValueError):  # no real stdin (pytest capture, closed)
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode)


def _drop_final_newline(text: str) -> str:
    return text[:-1] if text.endswith("\n") else text
