"""What the subcommands share (gpt2lab/cli/common.py): comma-separated flag values, and flags that must be positive."""

import argparse

import pytest

from gpt2lab.cli.common import csv_of, positive_flags
from gpt2lab.errors import GPT2LabError


def test_csv_of_parses_each_value_and_names_the_text_it_cannot():
    assert csv_of(int)("1,8,32") == [1, 8, 32]
    assert csv_of(int)("4,") == [4]  # a trailing comma adds no value
    assert csv_of(str)("float32,bfloat16") == ["float32", "bfloat16"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"^expected comma-separated int values, got '1,x'$"):
        csv_of(int)("1,x")


def test_a_comma_separated_flag_with_a_bad_value_is_one_argparse_line(capsys):
    parser = argparse.ArgumentParser(prog="gpt2lab bench")
    parser.add_argument("--batch-sizes", type=csv_of(int))
    assert parser.parse_args(["--batch-sizes", "1,8"]).batch_sizes == [1, 8]
    with pytest.raises(SystemExit):
        parser.parse_args(["--batch-sizes", "1,many"])
    assert "argument --batch-sizes: expected comma-separated int values, got '1,many'" in capsys.readouterr().err


def test_positive_flags_refuses_the_first_flag_below_1_by_its_name():
    args = argparse.Namespace(batch_size=1, new_tokens=0, repeats=-2)
    positive_flags(args, "batch_size")  # 1 is allowed
    with pytest.raises(GPT2LabError, match=r"^--new-tokens must be at least 1, got 0$"):
        positive_flags(args, "batch_size", "new_tokens", "repeats")
    with pytest.raises(GPT2LabError, match=r"^--repeats must be at least 1, got -2$"):
        positive_flags(args, "repeats")
