"""optim.ema: the weights' moving average follows its warmed-up decay, is what the val loss and `gpt2lab export
--ema` see, never changes the training, resumes bit for bit after a kill, and is counted by the planner."""

import json

import pytest
import torch

from gpt2lab import cli
from gpt2lab.model.gpt import GPT, GPTConfig, load_model
from gpt2lab.train import train
from gpt2lab.train.config import ConfigError
from gpt2lab.train.config_files import resolve_config
from gpt2lab.train.ema import WeightAverage, step_weight
from tests.train_utils import losses, quiet, tiny_config, train_until_crash, write_dataset

TINY_GPT = dict(block_size=16, vocab_size=128, n_layer=1, n_head=2, n_embd=16)


def records(run, key):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r[key] for r in map(json.loads, lines) if key in r}


def test_the_average_is_the_bias_corrected_exponential_average_of_the_updated_weights():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT))
    average = WeightAverage(model, decay=0.9)
    history = []  # the weights after each update: the average is sum_k (1 - d) d^(n-k) w_k / (1 - d^n)
    for update in range(1, 31):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        history.append({name: p.detach().double().clone() for name, p in model.named_parameters()})
        average.update()
    assert step_weight(0.9, 1) == 1  # the first update is the weights themselves: nothing of the initialisation
    n = len(history)
    expected = {name: sum(0.1 * 0.9 ** (n - k) * w[name] for k, w in enumerate(history, 1)) / (1 - 0.9**n)
                for name in history[0]}
    saved = average.state_dict()
    assert saved["updates"] == 30 and len(saved["average"]) == len(list(model.parameters()))  # the tied head once
    for name, tensor in saved["average"].items():
        assert torch.allclose(tensor.double(), expected[name], atol=1e-5), name


def test_swapped_in_holds_the_average_then_gives_the_weights_back_bit_for_bit():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY_GPT))
    average = WeightAverage(model, decay=0.5)
    own = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(2):  # the first update copies the weights, the second moves the average 2/3 of the way
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1)
        average.update()
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in():
        inside = model.state_dict()
        for name, tensor in average.state_dict()["average"].items():
            assert torch.equal(inside[name], tensor) and not torch.equal(tensor, trained[name]), name
        assert torch.equal(model.lm_head.weight, inside["transformer.wte.weight"])  # the tie holds
    assert all(torch.equal(model.state_dict()[k], trained[k]) for k in trained)
    assert not torch.equal(own["transformer.wte.weight"], trained["transformer.wte.weight"])


def test_a_saved_average_of_another_model_is_refused():
    torch.manual_seed(0)
    saved = WeightAverage(GPT(GPTConfig(**TINY_GPT)), 0.9).state_dict()
    other = WeightAverage(GPT(GPTConfig(**{**TINY_GPT, "n_layer": 2})), 0.9)
    with pytest.raises(ValueError, match="other parameters"):
        other.load_state_dict(saved)


def test_the_average_changes_no_loss_is_validated_and_resumes_bit_identically(tmp_path, monkeypatch):
    data = write_dataset(tmp_path / "data")
    plain = tiny_config(data, schedule__max_steps=8, checkpoint__every=4, eval__val_every=4)
    averaged = tiny_config(data, schedule__max_steps=8, checkpoint__every=4, eval__val_every=4, optim__ema=0.9)
    train(plain, tmp_path / "plain", log=quiet)
    train(averaged, tmp_path / "straight", log=quiet)
    assert losses(tmp_path / "straight") == losses(tmp_path / "plain")  # the average never feeds back
    val, val_ema = records(tmp_path / "straight", "val_loss"), records(tmp_path / "straight", "val_loss_ema")
    assert sorted(val_ema) == [4, 8] and all(val_ema[s] != val[s] for s in val_ema)
    assert not records(tmp_path / "plain", "val_loss_ema")

    train_until_crash(monkeypatch, averaged, tmp_path / "killed", 7 * 1, log=quiet)  # 1 micro-step per step
    train(averaged, tmp_path / "killed", resume=True, log=quiet)
    assert losses(tmp_path / "killed") == losses(tmp_path / "straight")
    assert records(tmp_path / "killed", "val_loss_ema") == val_ema
    states = [torch.load(run / "checkpoints/step_00000008/training_state.pt", weights_only=True)["ema"]
              for run in (tmp_path / "straight", tmp_path / "killed")]
    assert states[0]["updates"] == states[1]["updates"] == 8
    assert all(torch.equal(states[0]["average"][k], states[1]["average"][k]) for k in states[0]["average"])


def test_export_ema_writes_the_average_as_a_model_transformers_reads(tmp_path, capsys):
    from transformers import GPT2LMHeadModel

    data = write_dataset(tmp_path / "data")
    train(tiny_config(data, schedule__max_steps=5, optim__ema=0.8), tmp_path / "run", log=quiet)
    assert cli.main(["export", str(tmp_path / "run"), "--ema", "--out", str(tmp_path / "ema")]) == 0
    assert "moving average at step 5" in capsys.readouterr().out
    average = torch.load(tmp_path / "run/checkpoints/step_00000005/training_state.pt", weights_only=True)["ema"]
    ours = load_model(tmp_path / "ema").eval()
    trained = load_model(tmp_path / "run").state_dict()
    for name, parameter in ours.named_parameters():
        assert torch.equal(parameter, average["average"][name]) and not torch.equal(parameter, trained[name]), name
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "ema").eval()
    tokens = torch.randint(0, 50257, (2, 16))
    with torch.no_grad():
        assert (hf(tokens).logits - ours(tokens)[0]).abs().max() < 1e-4

    train(tiny_config(data, schedule__max_steps=2), tmp_path / "plain", log=quiet)
    capsys.readouterr()  # transformers' loading bar
    assert cli.main(["export", str(tmp_path / "plain"), "--ema", "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "holds no moving average" in err and "optim.ema" in err and err.count("\n") == 1
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("value", ["1", "1.5", "-0.1", "inf"])
def test_an_ema_factor_outside_0_1_is_refused(value):
    with pytest.raises(ConfigError, match=r"optim.ema must be in \(0, 1\)"):
        resolve_config(overrides=[("optim.ema", value)])


def test_ema_under_fsdp_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="optim.ema is not supported with parallel.strategy = fsdp"):
        resolve_config(overrides=[("optim.ema", "0.99"), ("parallel.strategy", "fsdp")])


def test_the_planner_counts_the_average_in_memory_and_checkpoints(tmp_path):
    from gpt2lab.runtime.hardware import planned_device
    from gpt2lab.train.plan import make_plan

    data = write_dataset(tmp_path / "data")
    plain = make_plan(tiny_config(data), planned_device("h100"))
    averaged = make_plan(tiny_config(data, optim__ema=0.99), planned_device("h100"))
    params = plain.params.total
    assert averaged.params.averaged == params and plain.params.averaged == 0
    assert averaged.memory.optimizer - plain.memory.optimizer == 4 * params
    assert averaged.checkpoint_bytes - plain.checkpoint_bytes == 4 * params
