"""`gpt2lab bench`: gpt2lab against transformers / raw tiktoken, side by side in one process."""

from __future__ import annotations

from gpt2lab.cli.common import csv_of, positive_flags
from gpt2lab.errors import GPT2LabError


def add_command(commands):
    p = commands.add_parser(
        "bench",
        help="measure gpt2lab against transformers / raw tiktoken, side by side in one process",
        description="Run our implementation and the alternative alternately on the same config, dtype and "
        "inputs (warm-up excluded, several repetitions) and print median tokens/s, ms per iteration, the ratio "
        "ours/theirs, peak memory and, for training, the fraction of the measured matmul peak. Needs "
        "transformers (pip install 'gpt2lab[bench]') except for --no-compare, prepare and serve (which compares "
        "concurrent requests to one-by-one ones, and needs the serve extra).",
    )
    p.add_argument("mode", choices=["train", "generate", "prepare", "serve"])
    p.add_argument("--model", default="gpt2", choices=["gpt2", "tiny"],
                   help="model shape, random weights (default gpt2 = 124M; tiny = a 2-layer smoke test)")
    p.add_argument("--device", default="auto", help="auto|cpu|cuda|mps (default auto)")
    p.add_argument("--dtypes", type=csv_of(str), default=None,
                   help="comma-separated dtypes to run ours (and, for train, theirs) in; default float32, "
                   "plus bfloat16 where the device computes it natively (serve: the first one only)")
    p.add_argument("--batch-size", type=int, default=4, help="train: micro-batch size (default 4)")
    p.add_argument("--seq-len", type=int, default=256, help="train: sequence length (default 256)")
    p.add_argument("--iters", type=int, default=3, help="train: timed steps per repetition (default 3)")
    p.add_argument("--compile", action="store_true",
                   help="train: run ours through torch.compile, as runtime.compile = true does (warm-up compiles)")
    p.add_argument("--batch-sizes", type=csv_of(int), default=[1, 8], help="generate: batch sizes (default 1,8)")
    p.add_argument("--new-tokens", type=int, default=256, help="generate, serve: tokens per sequence (default 256)")
    p.add_argument("--clients", type=int, default=8,
                   help="serve: requests sent at once, compared with the same requests one by one (default 8)")
    p.add_argument("--no-cache-baseline", action="store_true",
                   help="generate: also time the loop without a KV cache (recompute the context every token; slow)")
    p.add_argument("--text-repeat", type=int, default=2,
                   help="prepare: how many copies of the Shakespeare corpus to tokenise (default 2, ~10 MB)")
    p.add_argument("--repeats", type=int, default=3, help="repetitions, alternating implementations (default 3)")
    p.add_argument("--no-compare", action="store_true", help="measure gpt2lab only")
    p.add_argument("--json", metavar="FILE", help="also write the full results as JSON to FILE")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.runtime import memory
    from gpt2lab.runtime.device import keep_freed_memory, native_dtypes, resolve_device
    from gpt2lab.storage.atomic import writable_file
    from gpt2lab.tools import bench

    if args.compile and args.mode != "train":
        raise GPT2LabError("--compile applies to `bench train` only")
    positive_flags(args, "batch_size", "seq_len", "iters", "new_tokens", "text_repeat", "repeats", "clients")
    if any(b < 1 for b in args.batch_sizes):
        raise GPT2LabError("--batch-sizes must all be at least 1")
    if args.json:  # an unwritable --json fails now, not after minutes of measuring
        writable_file(args.json)
    device = resolve_device(args.device)
    if device.type == "cpu":
        keep_freed_memory()  # as `gpt2lab train` does; it is process-wide, so both sides get it
    dtypes = args.dtypes or native_dtypes(device)
    config = bench.BENCH_CONFIGS[args.model]
    if args.mode == "train":
        report = bench.bench_train(config, args.batch_size, args.seq_len, device, dtypes, args.iters,
                                   repeats=args.repeats, compare=not args.no_compare, compile=args.compile)
    elif args.mode == "serve":
        report = bench.bench_serve(config, clients=args.clients, new_tokens=args.new_tokens, device=device,
                                   dtype=dtypes[0], repeats=args.repeats)
    elif args.mode == "generate":
        report = bench.bench_generate(config, args.batch_sizes, args.new_tokens, device=device, dtypes=dtypes,
                                      repeats=args.repeats, compare=not args.no_compare,
                                      recompute=args.no_cache_baseline)
    else:
        from gpt2lab.data.shakespeare import shakespeare_documents

        texts = [doc.text for doc in shakespeare_documents()]
        # the copies below share their strings, but each copy is tokenised into token lists of its own
        needed = memory.token_list_bytes(sum(map(len, texts)) * args.text_repeat)
        memory.check_fits("text_repeat", args.text_repeat, needed, "cpu", "for raw tiktoken's token lists")
        report = bench.bench_prepare(texts * args.text_repeat, repeats=args.repeats)
    print(bench.format_table(report))
    if args.json:
        bench.write_json(report, args.json)
        print(f"wrote {args.json}")
    return 0
