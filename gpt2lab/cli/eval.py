"""`gpt2lab eval`: HellaSwag accuracy or held-out loss of a model, split across ranks under torchrun."""

from __future__ import annotations

import json

from gpt2lab.cli.common import MODEL_HELP
from gpt2lab.errors import GPT2LabError


def add_command(commands):
    p = commands.add_parser(
        "eval",
        help="HellaSwag accuracy or held-out loss of a model",
        description="Evaluate MODEL (gpt2, a hub id, a local HF directory or a run directory): HellaSwag "
        "accuracy (completion-style: acc = lowest summed ending loss, acc_norm = lowest mean) or the mean token "
        "loss and perplexity on prepared shards or a text file. Under torchrun the work is split across ranks.",
    )
    p.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    p.add_argument("--task", choices=("hellaswag", "loss"), default="hellaswag")
    p.add_argument("--data", metavar="PATH", help="hellaswag: a hellaswag_val.jsonl (default: download it "
                   "into the cache); loss: a prepared data directory or a text file (required)")
    p.add_argument("--split", default="val", help="loss on a data directory: which split (default: val)")
    p.add_argument("--limit", type=int, metavar="N", help="hellaswag: only the first N examples")
    p.add_argument("--max-tokens", type=int, metavar="N", help="loss: only the first N target tokens")
    p.add_argument("--batch-size", type=int, default=8,
                   help="hellaswag: examples per forward pass (x 4 endings); loss: windows per forward pass")
    p.add_argument("--seq-len", type=int, help="loss: window length (default: the model's context)")
    p.add_argument("--stride", type=int, help="loss: new targets per window (default: --seq-len, "
                   "non-overlapping windows; smaller gives each token more context)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--dtype", default="auto",
                   help="autocast precision of the forward pass: float32, bfloat16, float16, or auto (default): "
                   "bfloat16 where the device computes it natively (as `runtime.precision = auto` trains), "
                   "float16 on older CUDA GPUs, else float32")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a sentence")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.eval import hellaswag, loss
    from gpt2lab.model.gpt import load_model
    from gpt2lab.runtime import distributed
    from gpt2lab.runtime.device import autocast_dtype as precision_of, keep_freed_memory, resolve_device

    # float32 runs without autocast (None; gpt2lab.runtime.device.autocast)
    device = resolve_device(args.device)
    autocast_dtype = precision_of(args.dtype, device)
    if device.type == "cpu":
        # every batch allocates and frees its (batch x window x vocab) logits, ~200 MB for the demo model; without
        # this glibc may unmap them and each batch page-faults all of it in again (docs/speed.md: 2x slower on an
        # Intel Xeon, no difference on an AMD EPYC; ~200 MB more resident memory)
        keep_freed_memory()
    # Read the data before the (slower) model load, so a bad file or an offline download fails at once.
    if args.task == "hellaswag":
        examples = hellaswag.load_examples(args.data, limit=args.limit)
    elif args.data is None:
        raise GPT2LabError("--task loss needs --data: a prepared data directory or a text file")
    else:
        streams = loss.load_streams(args.data, split=args.split)
    ctx = distributed.setup(device)
    device = distributed.process_device(device, ctx)
    model = load_model(args.model, device=device)
    if args.task == "hellaswag":
        result = hellaswag.evaluate(model, examples, args.batch_size, device, autocast_dtype)
        sentence = (f"hellaswag: acc {result.acc:.4f}  acc_norm {result.acc_norm:.4f}  n {result.n}  "
                    f"({result.examples_per_s:.1f} examples/s, {result.seconds:.1f} s)")
    else:
        result = loss.evaluate_loss(model, streams, args.seq_len, args.batch_size, args.stride, device,
                                    autocast_dtype, args.max_tokens)
        sentence = (f"loss: {result.loss:.4f}  perplexity {result.perplexity:.2f}  tokens {result.tokens}  "
                    f"({result.tokens_per_s:.0f} tokens/s, {result.seconds:.1f} s)")
    if ctx.is_main:
        dtype = str(autocast_dtype or "torch.float32").removeprefix("torch.")
        record = {"task": args.task, "model": str(args.model), "data": args.data, "dtype": dtype, **result.to_dict()}
        print(json.dumps(record) if args.json else sentence, flush=True)
    return 0
