"""Helpers for the training tests: tiny token datasets in the `gpt2lab prepare` format, tiny configs, the CLI
in-process, and reading a run's metrics."""

import contextlib
import hashlib
import json

import numpy as np
import pytest

from gpt2lab.train.config_files import resolve_config

# 2 layers, 32 dims, 16-token context: a step takes milliseconds, yet it is the real GPT-2 code path.
TINY = {
    "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 32, "model.block_size": 16, "model.vocab_size": 50304,
    "data.batch_size": 4, "data.seq_len": 16, "data.total_batch_tokens": 64,
    "optim.lr": 3e-3, "optim.min_lr": 3e-4, "schedule.max_steps": 20, "schedule.warmup_steps": 2,
    "eval.val_every": 0, "eval.val_batches": 2, "eval.sample_every": 0,
    "checkpoint.every": 1000, "checkpoint.keep": 2, "runtime.device": "cpu", "runtime.precision": "fp32",
    "runtime.threads": 1,
}


def write_dataset(path, train_tokens=20_000, val_tokens=2_000, seed=0, document_tokens=0, **manifest_overrides):
    """A learnable stream: mostly a fixed cycle over 97 token ids, 10 % random tokens, EOT-prefixed documents (one
    per split, or of 1 to 2 x `document_tokens` tokens each)."""
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", train_tokens), ("val", val_tokens)):
        tokens = (np.arange(n) * 7 % 97 + 100).astype(np.int64)
        noise = rng.random(n) < 0.1
        tokens[noise] = rng.integers(0, 50257, noise.sum())
        tokens[0] = 50256
        if document_tokens:
            starts = np.cumsum(rng.integers(document_tokens, 2 * document_tokens, n // document_tokens))
            tokens[starts[starts < n]] = 50256
        name = f"{split}_000000.bin"
        tokens.astype("<u2").tofile(path / name)
        sha256 = hashlib.sha256((path / name).read_bytes()).hexdigest()  # what prepare records: runs verify it
        splits[split] = [{"file": name, "tokens": n, "documents": 1, "sha256": sha256}]
    manifest = {"format": "gpt2lab-shards/1", "tokenizer": "gpt2", "vocab_size": 50257, "eot_token": 50256,
                "dtype": "uint16", "source": "test", "args": {}, "splits": splits, **manifest_overrides}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def tiny_overrides(data_dir, **changes) -> dict:
    return {**TINY, "data.dir": str(data_dir), **{k.replace("__", "."): v for k, v in changes.items()}}


def tiny_config(data_dir, **changes):
    """TrainConfig of the tiny model; changes as optim__lr=1e-3 (double underscore = dot)."""
    return resolve_config(overrides=[(k, str(v)) for k, v in tiny_overrides(data_dir, **changes).items()])


def cli_flags(data_dir, **changes) -> list[str]:
    flags = []
    for key, value in tiny_overrides(data_dir, **changes).items():
        flags += ["--set", f"{key}={value}"]
    return flags


def losses(run_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def forward_backward(model, batches, grad_accum: int = 1, parallel=None):
    """The trainer's micro-steps (TrainStep.forward_backward) over `batches`, fp32 on the CPU; returns the loss.
    parallel: a ParallelModel to use instead of wrapping `model` alone."""
    from gpt2lab.train.parallel import ParallelModel
    from gpt2lab.train.step import TrainStep

    parallel = parallel or ParallelModel(model)
    return TrainStep(parallel, None, device="cpu", grad_accum=grad_accum).forward_backward(iter(batches))


def quiet(line):
    pass


def one_line_error(result, *needles):
    """A refused command: exit code 2 and one line on stderr (no traceback) holding every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout[-500:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def run_main(capsys, *argv):
    """The CLI in-process (same code path as the subprocess, without paying torch's import again)."""
    from gpt2lab.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return type("Result", (), {"returncode": code, "stdout": out, "stderr": err})


def dry_run_json(capsys, *argv) -> dict:
    result = run_main(capsys, "train", "--dry-run", "--json", *argv)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def overrides_of(flags) -> list[list[str]]:
    return [flag.split("=", 1) for flag in flags[1::2]]  # ["--set", "key=value", ...]


def metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(run_dir) -> list[dict]:
    return [r for r in metrics(run_dir) if "loss" in r]


def write_hellaswag(path, n=12):
    """Ending 0 is one word, the others four, and it is always the right one: the summed loss (acc) favours the
    short ending, the mean (acc_norm) does not, so acc and acc_norm differ and swapping them shows."""
    words = "the a man dog runs into water ball kitchen then and snow skis camera smiles slowly".split()
    pick = lambda k: words[k % len(words)]  # noqa: E731
    rows = [{"ctx": f"{pick(i).capitalize()} {pick(5 * i + 1)}",
             "endings": [pick(i + 2) + "."] + [" ".join(pick(3 * i + 4 * k + j) for j in range(4)) + "."
                                               for k in range(1, 4)],
             "label": 0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------------------------------------- dashboards
# train/* tags <- the record keys of metrics.jsonl
TRAIN_KEYS = {"train/loss": "loss", "train/lr": "lr", "train/grad_norm": "grad_norm",
              "train/tokens_per_s": "tokens_per_s", "train/ms_per_step": "ms_per_step"}


def tracked_config(tmp_path, **changes):
    data = write_dataset(tmp_path / "data")
    examples = write_hellaswag(tmp_path / "hellaswag.jsonl")
    return tiny_config(data, data__batch_size=2, schedule__max_steps=6, eval__val_every=3, eval__sample_every=3,
                       eval__sample_count=1, eval__sample_tokens=8, eval__hellaswag_every=3,
                       eval__hellaswag_data=examples, checkpoint__every=3, **changes)


def expected(run, key) -> dict[int, float]:
    return {r["step"]: r[key] for r in metrics(run) if key in r}


@contextlib.contextmanager
def one_process_group():
    """A gloo process group of this process alone (what FSDP's device mesh needs), left again afterwards."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def tiny_sharded(seed: int = 0, **overrides):
    """(a tiny GPT sharded by FSDP2 over one process, the same model whole): call inside one_process_group()."""
    import torch

    from gpt2lab.model.gpt import GPT, GPTConfig
    from gpt2lab.runtime.distributed import DistContext
    from gpt2lab.train.parallel import ParallelModel

    config = GPTConfig(**{**dict(n_layer=2, n_head=2, n_embd=32, block_size=16, vocab_size=128), **overrides})
    torch.manual_seed(seed)
    whole = GPT(config)
    sharded = GPT(config)
    sharded.load_state_dict(whole.state_dict())
    return ParallelModel(sharded, DistContext(), "cpu", strategy="fsdp"), whole


class Crash(Exception):
    """Stands in for a kill -9 between two steps."""


def train_until_crash(monkeypatch, config, run_dir, micro_step: int, **train_options) -> None:
    """Train `config` into `run_dir`, dying (Crash) as micro-step `micro_step` (1-based) begins, as a kill would."""
    from gpt2lab.train import train
    from gpt2lab.train.step import TrainStep

    real, count = TrainStep.forward_backward, []

    def crash_at(*args, **kwargs):
        count.append(1)
        if len(count) == micro_step:
            raise Crash
        return real(*args, **kwargs)

    with monkeypatch.context() as patched:
        patched.setattr(TrainStep, "forward_backward", crash_at)
        with pytest.raises(Crash):
            train(config, run_dir, **train_options)
