"""`gpt2lab sample` in-process (gpt2lab/cli/sample.py): seeds, batches printed as they finish, prompts from flags and
files, the dtype it picked, bad input. (In real processes, stdin piped: tests/e2e/test_sample.py.)"""

import io
import re
import sys

import pytest
import torch

from gpt2lab.cli import main
from gpt2lab.cli.sample import DEFAULT_PROMPT, read_prompt
from gpt2lab.errors import GPT2LabError
from gpt2lab.tokenizer import get_tokenizer

CPU = torch.device("cpu")


def run_main(capsys, *argv):
    code = main(["sample", *map(str, argv)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_same_seed_same_text_other_seed_other_text_empty_prompt_unconditional(tiny_model_dir, capsys):
    base = (tiny_model_dir, "--num-samples", "2", "--max-new-tokens", "8", "--prompt", "")
    code, out_a, _ = run_main(capsys, *base, "--seed", "1")
    assert code == 0
    assert "sample 1 of 2" in out_a and "<|endoftext|>" not in out_a
    assert run_main(capsys, *base, "--seed", "1")[1] == out_a
    assert run_main(capsys, *base, "--seed", "2")[1] != out_a


def samples(out):
    """The texts of the samples in `gpt2lab sample` output, in order."""
    return re.split(r"-{20} sample \d+ of \d+ -{20}\n", out)[1:]


def test_many_samples_come_in_bounded_batches_each_printed_when_done(tiny_model_dir, monkeypatch):
    import gpt2lab.sampling.texts

    class Pipe(io.StringIO):
        """Standard output into a pipe: what a reader sees is what was flushed."""
        flushed = ""

        def flush(self):
            self.flushed = self.getvalue()

    shown_before_each_batch, rows = [], []
    real_generate = gpt2lab.sampling.texts.generate

    def spy(model, idx, *args, **kwargs):
        shown_before_each_batch.append(len(samples(sys.stdout.flushed)))
        rows.append(idx.size(0))
        return real_generate(model, idx, *args, **kwargs)

    monkeypatch.setattr(gpt2lab.sampling.texts, "generate", spy)
    monkeypatch.setattr(sys, "stdout", Pipe())
    code = main(["sample", str(tiny_model_dir), "--num-samples", "20", "--batch-size", "8", "--max-new-tokens", "3"])
    assert code == 0 and len(samples(sys.stdout.getvalue())) == 20
    assert rows == [8, 8, 4]  # memory bounded by --batch-size, not --num-samples
    assert shown_before_each_batch == [0, 8, 16]  # each batch was out before the next one started


def test_sample_i_is_the_same_whatever_the_batching_and_the_number_of_samples(tiny_model_dir, capsys):
    base = (tiny_model_dir, "--prompt", "Once", "--max-new-tokens", "6", "--seed", "3")
    code, out, _ = run_main(capsys, *base, "--num-samples", "20", "--batch-size", "8")
    twenty = samples(out)
    assert code == 0 and len(twenty) == 20 and len(set(twenty)) == 20  # 20 different samples
    assert samples(run_main(capsys, *base, "--num-samples", "20", "--batch-size", "20")[1]) == twenty  # one batch
    assert samples(run_main(capsys, *base, "--num-samples", "20", "--batch-size", "3")[1]) == twenty
    assert samples(run_main(capsys, *base, "--num-samples", "5")[1]) == twenty[:5]
    assert run_main(capsys, *base, "--num-samples", "1")[1] == twenty[0]  # a single sample streams: no header


def test_a_batch_too_large_for_memory_is_refused_in_one_line(tiny_model_dir, capsys, monkeypatch):
    from gpt2lab.runtime import memory

    # Memory "available" patched small, so that the test neither depends on this machine's RAM nor, should the
    # check break, allocates what a real refusal protects from. The tiny model has GPT-2's 50,257-token
    # vocabulary: 64 rows need ~19 MB of logits, the default 8 rows ~2.4 MB.
    monkeypatch.setattr(memory, "available_bytes", lambda device: 10 * 2**20)
    code, out, err = run_main(capsys, tiny_model_dir, "--num-samples", "64", "--batch-size", "64")
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert re.match(r"gpt2lab sample: error: --batch-size 64 would need ~\d+ MiB to sample one batch, more than "
                    r"the 10 MiB available; lower it$", err)
    assert run_main(capsys, tiny_model_dir, "--num-samples", "64", "--max-new-tokens", "2")[0] == 0  # 8 at a time


def test_prompt_longer_than_context_is_cropped_with_a_warning(tiny_model_dir, capsys):
    long_prompt = " ".join(f"word{i}" for i in range(100))  # > 64 tokens, the tiny model's context
    code, out, err = run_main(capsys, tiny_model_dir, "--prompt", long_prompt, "--num-samples", "1",
                              "--max-new-tokens", "5", "--temperature", "0")
    assert code == 0
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "last 64 tokens" in warnings[0]
    assert out.startswith(get_tokenizer().decode(get_tokenizer().encode(long_prompt)[-64:]))
    assert "word99" in out and "word0 " not in out


def test_prompt_file(tiny_model_dir, tmp_path, capsys):
    path = tmp_path / "prompt.txt"
    path.write_text("The meaning of life is\n", encoding="utf-8")
    code, out, _ = run_main(capsys, tiny_model_dir, "--prompt-file", path, "--num-samples", "1",
                            "--max-new-tokens", "4")
    assert code == 0 and out.startswith("The meaning of life is") and not out.startswith("The meaning of life is\n")


def test_a_prompt_file_that_is_a_fifo_is_read(tmp_path):
    """`--prompt-file <(echo hi)`: the shell passes a FIFO (/dev/fd/N), not a regular file."""
    import os
    import threading

    fifo = tmp_path / "prompt.fifo"
    os.mkfifo(fifo)

    def write():  # opening a FIFO for writing waits for its reader: no race, whichever thread comes first
        with open(fifo, "w") as f:
            f.write("hi\n")

    writer = threading.Thread(target=write)
    writer.start()
    assert read_prompt(None, str(fifo)) == "hi"
    writer.join()
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(GPT2LabError, match="is a symlink loop"):
        read_prompt(None, str(tmp_path / "loop"))


def test_read_prompt_sources(monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "stdin", io.StringIO("from stdin\n"))  # no file descriptor: not "piped"
    assert read_prompt(None, None) == DEFAULT_PROMPT
    assert read_prompt("", None) == ""
    assert read_prompt(None, "-") == "from stdin"


BAD_INPUT = [
    (["--max-new-tokens", "0"], "--max-new-tokens must"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must"),
    (["--top-k", "0"], "--top-k must"),
    (["--top-k", "-1"], "--top-k must"),
    (["--top-p", "0"], "--top-p must"),
    (["--top-p", "1.5"], "--top-p must"),
    (["--temperature", "-1"], "--temperature must"),
    (["--temperature", "1e-300"], "--temperature must be 0 (greedy) or at least"),
    (["--num-samples", "0"], "num-samples"),
    (["--batch-size", "0"], "batch-size"),
    (["--device", "tpu"], "unknown device"),
    (["--device", "cuda"], "not available"),
    (["--dtype", "float64"], "unknown dtype"),
    (["--prompt-file", "/nonexistent/prompt.txt"], "does not exist"),
    (["--prompt", "x", "--prompt-file", "-"], "not both"),
    (["--top-k", "many"], "integer or 'none'"),
]


@pytest.mark.parametrize("flags, message", BAD_INPUT, ids=[" ".join(f) for f, _ in BAD_INPUT])
def test_bad_input_is_one_line_exit_2(tiny_model_dir, capsys, flags, message):
    if flags == ["--device", "cuda"] and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    argv = ["sample", str(tiny_model_dir), *flags]
    if "--prompt-file" not in flags:
        argv += ["--prompt", "hi"]
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own type errors
        code = e.code
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err


def test_model_without_gpt2_vocabulary_is_refused(tmp_path, capsys):
    from tests.conftest import tiny_gpt

    tiny_gpt().save_pretrained(tmp_path / "toy")  # vocab 1011
    code, _, err = run_main(capsys, tmp_path / "toy", "--prompt", "hi")
    assert code == 2 and "vocabulary of 1011" in err and err.count("\n") == 1


def test_sample_reports_the_dtype_auto_picked(tmp_path, capsys):
    from gpt2lab.cli import main
    from gpt2lab.runtime.device import decoding_dtype
    from gpt2lab.model.config import GPTConfig
    from gpt2lab.model.gpt import GPT

    GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=32, vocab_size=50257)).save_pretrained(tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--num-samples", "1", "--max-new-tokens", "3", "--prompt", "Hi"]) == 0
    picked = str(decoding_dtype("auto", CPU)).removeprefix("torch.")
    assert capsys.readouterr().err.rstrip().endswith(f", {picked} (auto)]")
