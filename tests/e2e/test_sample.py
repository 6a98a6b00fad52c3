"""`gpt2lab sample` as a user runs it, in real processes: output, a prompt piped on stdin, bad input."""

from tests.conftest import run_cli

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny model; the machine's two cores are shared


def test_single_sample_end_to_end(tiny_model_dir):
    prompt = "Hello, I'm a language model,"
    result = run_cli("sample", tiny_model_dir, "--prompt", prompt, "--num-samples", "1", "--max-new-tokens", "12",
                     env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(prompt)
    assert len(result.stdout) > len(prompt) + 12  # 12 tokens of text followed it
    assert "Traceback" not in result.stderr and "tokens/s" in result.stderr


def test_several_samples_from_piped_stdin_are_separated(tiny_model_dir):
    args = ("sample", tiny_model_dir, "--num-samples", "3", "--max-new-tokens", "10", "--seed", "7")
    result = run_cli(*args, input="Once upon a time\n", env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("Once upon a time") == 3  # the trailing newline of the piped text is dropped
    assert "Once upon a time\n" not in result.stdout
    for i in (1, 2, 3):
        assert f"sample {i} of 3" in result.stdout


def test_bad_input_in_a_real_subprocess(tiny_model_dir):
    result = run_cli("sample", tiny_model_dir, "--top-p", "2", env=ONE_THREAD)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "--top-p must" in result.stderr and "Traceback" not in result.stderr
    assert result.stdout == ""
