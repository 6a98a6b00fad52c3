"""`gpt2lab serve`: models behind an OpenAI-compatible completions API, and a playground page in the browser.

    config.py    what a server is started with: its models, address, device, batch and per-request limits
    slots.py     the KV cache of a server: a row per sequence, each with its own length
    engine.py    continuous batching of many completions of one model; the thread that runs the engines
    protocol.py  the requests and responses of the OpenAI completions API, and its error objects
    api.py       the HTTP application (FastAPI): routes, limits, streaming
    server.py    loading the models, binding the port, running uvicorn until Ctrl-C
    playground.html  the page at /: plain HTML + JavaScript, no build step, nothing fetched from elsewhere
"""
