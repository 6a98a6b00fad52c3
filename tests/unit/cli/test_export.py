"""`gpt2lab export` (gpt2lab/cli/export.py): the newest or a given checkpoint as a plain HF directory; bad input is
one line and writes nothing."""

from gpt2lab.model.gpt import load_model
from gpt2lab.train import train

from tests.train_utils import one_line_error, quiet, run_main, tiny_config, write_dataset


def test_export_writes_the_checkpoint_asked_for(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=4, checkpoint__every=2), tmp_path / "run", log=quiet)
    result = run_main(capsys, "export", tmp_path / "run", "--out", tmp_path / "newest")
    assert result.returncode == 0 and "step 4 of" in result.stdout
    assert run_main(capsys, "export", tmp_path / "run", "--step", "2", "--out", tmp_path / "two").returncode == 0
    newest, two = load_model(tmp_path / "newest").state_dict(), load_model(tmp_path / "two").state_dict()
    assert any(not (newest[k] == two[k]).all() for k in newest)  # two different checkpoints
    assert not (tmp_path / "two" / "training_state.pt").exists()  # the model only


def test_bad_exports_are_one_line_and_write_nothing(tmp_path, capsys):
    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=2), tmp_path / "run", log=quiet)
    one_line_error(run_main(capsys, "export", tmp_path / "nothing", "--out", tmp_path / "a"), "no complete checkpoint")
    one_line_error(run_main(capsys, "export", tmp_path / "run", "--step", "7", "--out", tmp_path / "b"),
                   "no checkpoint of step 7", "it has steps 2")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "mine.txt").write_text("keep")
    one_line_error(run_main(capsys, "export", tmp_path / "run", "--out", tmp_path / "used"), "not an empty directory")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert [p.name for p in (tmp_path / "used").iterdir()] == ["mine.txt"]
