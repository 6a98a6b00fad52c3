"""`gpt2lab prepare` in-process (gpt2lab/cli/prepare.py): bad input gives one clear line and exit code 2. (In a real
process, and a killed run that resumes: tests/e2e/test_prepare.py.)"""

from gpt2lab.cli import main


def one_line_error(returncode, stderr, *needles):
    assert returncode == 2, stderr
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpt2lab prepare: error:"), stderr
    for needle in needles:
        assert needle in lines[0]


def test_bad_inputs(tmp_path, capsys):
    """The same entry point (gpt2lab.cli.main) in-process, to keep the suite fast."""
    def cli(*args):
        code = main(["prepare", *map(str, args), "--no-progress"])
        return code, capsys.readouterr().err

    (tmp_path / "empty").mkdir()
    for i in range(3):
        (tmp_path / "empty" / f"{i}.txt").write_text("  \n\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{broken\n')
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.md").write_text("mine")
    one_line_error(*cli(tmp_path / "empty", "--out", tmp_path / "o2"), "no non-empty documents", "3 empty")
    assert not (tmp_path / "o2").exists()
    one_line_error(*cli(tmp_path / "bad.jsonl", "--strict", "--out", tmp_path / "o3"), "bad.jsonl:2")
    one_line_error(*cli(tmp_path / "bad.jsonl", "--out", tmp_path / "foreign"), "not a gpt2lab dataset")
    assert (tmp_path / "foreign" / "notes.md").read_text() == "mine"
    one_line_error(*cli(tmp_path / "bad.csv", "--out", tmp_path / "o4"), "not a file, directory")
    (tmp_path / "bad.csv").write_text("a,b")
    one_line_error(*cli(tmp_path / "bad.csv", "--out", tmp_path / "o4"), "unsupported file type")
    one_line_error(*cli(tmp_path / "bad.jsonl", "--out", tmp_path / "o5", "--shard-size", "0"), "--shard-size")
    one_line_error(*cli("hf:", "--out", tmp_path / "o6"), "hf:NAME")
    one_line_error(*cli(tmp_path / "bad.jsonl", "--out", tmp_path / "o7", "--threads", "-1"), "--threads")
    assert not (tmp_path / "o7").exists()
    # a non-strict run skips the bad line, reports it, and succeeds
    assert main(["prepare", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "ok"), "--no-progress"]) == 0
    assert "bad.jsonl:2" in capsys.readouterr().err
