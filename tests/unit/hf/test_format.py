"""The Hugging Face GPT-2 format (gpt2lab/hf/format.py): parity with transformers' GPT2LMHeadModel, the layouts of hub
files, save/load round trips, saves that survive an interruption, and bad checkpoints refused by name."""

import json

import pytest
from safetensors.torch import load_file, save_file
import torch

from gpt2lab import GPT, load_model
from gpt2lab.errors import CheckpointError, UnsupportedConfigError

from tests.conftest import ODD, hf_gpt2, tiny_gpt

CONFIGS = {
    "odd": ODD,
    "gpt2-124M": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50257),
    "deep-narrow": dict(n_layer=6, n_head=8, n_embd=64, block_size=128, vocab_size=50304),
}


def assert_same_outputs(hf, ours, vocab, seq=32):
    torch.manual_seed(1)
    idx = torch.randint(0, vocab, (2, seq))
    with torch.no_grad():
        hf_out = hf(idx, labels=idx)
        logits, loss = ours(idx[:, :-1], targets=idx[:, 1:])  # HF shifts labels internally
        full_logits, _ = ours(idx)
    assert (hf_out.logits - full_logits).abs().max().item() <= 1e-4
    assert abs(hf_out.loss.item() - loss.item()) <= 1e-5


@pytest.mark.parametrize("name", CONFIGS)
def test_logits_and_loss_match_transformers(name, tmp_path):
    cfg = CONFIGS[name]
    hf = hf_gpt2(**cfg)
    hf.save_pretrained(tmp_path)
    ours = GPT.from_pretrained(tmp_path)
    assert ours.config.n_layer == cfg["n_layer"] and ours.config.block_size == cfg["block_size"]
    assert ours.lm_head.weight is ours.transformer.wte.weight
    assert_same_outputs(hf, ours, cfg["vocab_size"], seq=min(32, cfg["block_size"]))


@pytest.mark.parametrize("prefixed", [True, False])
@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_key_layouts_and_file_formats(tmp_path, fmt, prefixed):
    """Hub files come with or without the `transformer.` prefix, with old mask buffers, as .bin or safetensors."""
    hf = hf_gpt2()
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    if not prefixed:
        tensors = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    tensors["h.0.attn.bias" if not prefixed else "transformer.h.0.attn.bias"] = torch.ones(1, 1, 37, 37).tril()
    tensors["h.0.attn.masked_bias" if not prefixed else "transformer.h.0.attn.masked_bias"] = torch.tensor(-1e4)
    tensors["lm_head.weight"] = tensors["transformer.wte.weight" if prefixed else "wte.weight"].clone()
    if fmt == "bin":
        torch.save(tensors, tmp_path / "pytorch_model.bin")
    else:
        save_file(tensors, tmp_path / "model.safetensors")
    assert_same_outputs(hf, GPT.from_pretrained(tmp_path), ODD["vocab_size"])


def test_sharded_safetensors_index(tmp_path):
    hf = hf_gpt2()
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for shard, shard_keys in shards.items():
        save_file({k: tensors[k] for k in shard_keys}, tmp_path / shard)
    weight_map = {k: shard for shard, ks in shards.items() for k in ks}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    assert_same_outputs(hf, GPT.from_pretrained(tmp_path), ODD["vocab_size"])


@pytest.mark.parametrize("cfg", [ODD, dict(n_layer=2, n_head=4, n_embd=64, block_size=50, vocab_size=50257)])
def test_round_trip_ours_to_transformers(tmp_path, cfg):
    from transformers import GPT2LMHeadModel

    ours = tiny_gpt(**cfg)
    ours.save_pretrained(tmp_path)
    tokenizer = ["merges.txt", "tokenizer_config.json", "vocab.json"] if cfg["vocab_size"] >= 50257 else []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", "model.safetensors", *tokenizer])
    hf, info = GPT2LMHeadModel.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert_same_outputs(hf.eval(), ours, cfg["vocab_size"], seq=min(32, cfg["block_size"]))
    # and back: ours -> HF dir -> ours is exact
    before, after = ours.state_dict(), load_model(tmp_path).state_dict()
    assert after.keys() == before.keys()  # the same names (and so the same number), not just the same order
    for name, tensor in before.items():
        assert after[name].dtype == tensor.dtype and torch.equal(after[name], tensor), name


def test_round_trip_transformers_to_ours_to_transformers(tmp_path):
    from transformers import GPT2LMHeadModel

    hf = hf_gpt2(seed=3)
    hf.save_pretrained(tmp_path / "hf")
    GPT.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    back = GPT2LMHeadModel.from_pretrained(tmp_path / "ours").eval()
    idx = torch.randint(0, ODD["vocab_size"], (1, 20))
    with torch.no_grad():
        assert (back(idx).logits - hf(idx).logits).abs().max().item() <= 1e-6


def test_load_with_dtype(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    model = load_model(tmp_path, dtype=torch.bfloat16)
    assert model.transformer.wte.weight.dtype == torch.bfloat16
    assert model.lm_head.weight is model.transformer.wte.weight


def test_save_leaves_no_temporary_files_and_survives_failure(tmp_path, monkeypatch):
    model = tiny_gpt()
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import safetensors.torch

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # as if the user pressed Ctrl-C mid-write

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_gpt(seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_a_save_that_dies_half_way_leaves_the_previous_weights(tmp_path, monkeypatch):
    """Ctrl-C after half of model.safetensors was written: the previous file is still there, whole."""
    import safetensors.torch

    tiny_gpt().save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()
    real_save = safetensors.torch.save_file

    def half_then_interrupt(tensors, filename, *args, **kwargs):
        real_save(tensors, filename, *args, **kwargs)
        data = open(filename, "rb").read()
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        tiny_gpt(seed=1).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert torch.equal(load_model(tmp_path).transformer.wte.weight, tiny_gpt().transformer.wte.weight)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_safetensors(tmp_path, damage):
    tiny_gpt().save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 100)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(tmp_path)


def test_truncated_bin(tmp_path):
    torch.save({"a": torch.ones(3)}, tmp_path / "pytorch_model.bin")
    data = (tmp_path / "pytorch_model.bin").read_bytes()
    (tmp_path / "pytorch_model.bin").write_bytes(data[:-40])
    _write_tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path)


def test_bin_with_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "pytorch_model.bin")
    _write_tiny_config(tmp_path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(tmp_path)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 60  # weights are 48 wide
    config["n_head"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"transformer\.wte\.weight has shape \(1011, 48\) but config.json implies \(1011, 60\)"):
        load_model(tmp_path)


def test_missing_and_unexpected_keys(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["transformer.h.2.mlp.c_fc.bias"]
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing keys transformer\.h\.2\.mlp\.c_fc\.bias"):
        load_model(tmp_path)
    tensors["transformer.h.2.mlp.c_fc.bias"] = torch.zeros(192)
    tensors["transformer.h.0.attn.q_proj.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"unexpected keys transformer\.h\.0\.attn\.q_proj\.weight"):
        load_model(tmp_path)


@pytest.mark.parametrize(
    "option, value",
    [
        ("activation_function", "relu"),
        ("scale_attn_by_inverse_layer_idx", True),
        ("reorder_and_upcast_attn", True),
        ("add_cross_attention", True),
        ("tie_word_embeddings", False),
        ("model_type", "llama"),
        ("n_inner", 100),
    ],
)
def test_unsupported_config_is_refused_by_name(tmp_path, option, value):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[option] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedConfigError, match=option):
        load_model(tmp_path)


def test_gelu_pytorch_tanh_is_accepted(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["activation_function"] = "gelu_pytorch_tanh"
    (tmp_path / "config.json").write_text(json.dumps(config))
    idx = torch.randint(0, ODD["vocab_size"], (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path)(idx)[0], tiny_gpt()(idx)[0])  # loaded, and the same model


def _write_tiny_config(directory):
    from gpt2lab.hf.format import write_config
    write_config(tiny_gpt().config, directory)


@pytest.mark.parametrize("content, needle", [
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b"\xff\xfe{}", "is not UTF-8 text"),
    (b"{", "is not valid JSON"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"model_type": "gpt2"}', "lacks vocab_size, n_embd, n_layer, n_head, n_positions"),
    (b'{"vocab_size": 64, "n_embd": 16, "n_layer": 2, "n_head": 2, "n_ctx": 8, "layer_norm_epsilon": null}',
     "impossible model"),
])
def test_a_damaged_config_json_is_one_line_naming_it(tmp_path, content, needle, capsys):
    from gpt2lab.cli import main

    tiny_gpt().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=needle):
        load_model(tmp_path)
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.json" in err and "Traceback" not in err


def test_an_index_without_weight_map_or_with_a_path_is_refused(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "part-1.safetensors")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="has no weight_map"):
        load_model(tmp_path)
    index.write_text(json.dumps({"weight_map": {"transformer.wte.weight": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="not a file name in its directory"):
        load_model(tmp_path)
    weight_map = {name: "part-1.safetensors" for name in load_file(tmp_path / "part-1.safetensors")}
    index.write_text(json.dumps({"weight_map": weight_map}))
    assert load_model(tmp_path).config == tiny_gpt().config  # a good index still loads


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_a_huge_config_is_refused_before_any_model_is_built(tmp_path, monkeypatch, fmt):
    """n_layer = 100000 against weights of 3 layers: one line from the safetensors header, before a model (even on
    the meta device) is built; weights without a header (.bin) are held against the memory available."""
    tiny_gpt().save_pretrained(tmp_path)
    if fmt == "bin":
        torch.save(load_file(tmp_path / "model.safetensors"), tmp_path / "pytorch_model.bin")
        (tmp_path / "model.safetensors").unlink()
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_layer"] = 100_000
    (tmp_path / "config.json").write_text(json.dumps(config))

    def no_building(*args, **kwargs):
        raise AssertionError("a model was built")

    monkeypatch.setattr(GPT, "__init__", no_building)
    from gpt2lab.runtime import memory
    monkeypatch.setattr(memory, "available_bytes", lambda device: 8 * 2**30)  # 100000 layers of this width need ~11 GiB
    needle = "n_layer = 100000 but the weights hold 3 layers" if fmt == "safetensors" else "would need ~.* to load"
    with pytest.raises((CheckpointError, memory.MemoryLimitError), match=needle):
        load_model(tmp_path)


def test_weights_that_do_not_fit_in_memory_are_refused_up_front(tmp_path, monkeypatch):
    from gpt2lab.runtime import memory

    tiny_gpt().save_pretrained(tmp_path)
    weights = (tmp_path / "model.safetensors").stat().st_size
    monkeypatch.setattr(memory, "available_bytes", lambda device: weights // 2)
    with pytest.raises(memory.MemoryLimitError, match="config.json of .* would need ~.* to load, more than"):
        load_model(tmp_path)
    monkeypatch.setattr(memory, "available_bytes", lambda device: weights * 4)
    assert load_model(tmp_path).config == tiny_gpt().config


def test_vocabulary_or_context_against_the_header(tmp_path):
    tiny_gpt().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_positions": config["n_positions"] * 2}))
    with pytest.raises(CheckpointError, match=r"transformer\.wpe\.weight has shape"):
        load_model(tmp_path)
