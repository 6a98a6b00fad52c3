"""`gpt2lab serve`: models behind an OpenAI-compatible completions API, with a playground page."""

from __future__ import annotations

from gpt2lab.cli.common import MODEL_HELP


def add_command(commands):
    p = commands.add_parser(
        "serve", help="serve models over an OpenAI-compatible completions API, with a playground page",
        description="Serve one or more models over HTTP: OpenAI's completions API (GET /v1/models, POST "
        "/v1/completions, streaming included; top_k as an extension), GET /health, and a playground page at /. "
        "Concurrent requests are batched together. Each MODEL is served under its own name, or NAME=MODEL. "
        "Listens on 127.0.0.1 (this machine only) unless --host says otherwise. "
        "Needs the serve extra: pip install 'gpt2lab[serve]'.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help=MODEL_HELP + "; NAME=MODEL serves it as NAME")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every "
                   "network: anyone who can reach it can use it)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 = any free port)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | mps (default auto)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (default auto, as for "
                   "`gpt2lab sample`: bfloat16 where it decodes faster, else float32)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="completions each model generates together; each holds a KV cache for the whole context "
                   "(default 8)")
    p.add_argument("--max-tokens", type=int, default=256, metavar="N", help="the most max_tokens a request may "
                   "ask for (default 256)")
    p.add_argument("--max-prompt-tokens", type=int, metavar="N", help="longest prompt accepted, in tokens "
                   "(default: the model's context minus one)")
    p.add_argument("--max-n", type=int, default=8, metavar="N", help="completions per request, prompts x n "
                   "(default 8)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body (default 1 MiB)")
    p.add_argument("--max-concurrent-requests", type=int, default=32, metavar="N",
                   help="requests accepted at once, running or waiting; more get HTTP 429 (default 32)")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from gpt2lab.serve.config import Limits, ServeConfig
    from gpt2lab.serve.server import serve

    limits = Limits(max_tokens=args.max_tokens, max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n,
                    max_body_bytes=args.max_body_bytes, max_concurrent_requests=args.max_concurrent_requests)
    config = ServeConfig(models=args.models, host=args.host, port=args.port, device=args.device, dtype=args.dtype,
                         batch_size=args.batch_size, limits=limits)
    return serve(config)
