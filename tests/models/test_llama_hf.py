"""Hugging Face checkpoints in and out: loading shards and ``.bin`` files by key name, errors that
name the bad keys, the views ``hf_state_dict`` gives transformers, and ``save_hf`` round trips."""
from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
import torch

from seedfast.checkpoint_io import CheckpointError
from seedfast.models import llama_hf
from seedfast.models.llama import Llama, LlamaConfig, RopeScaling
from seedfast.models.llama_hf import save_hf
from tests.generation.tiny import one_thread, random_hf_llama, tiny_pair  # noqa: F401 (one_thread: fixture)

TOL = 1e-4
TINY = LlamaConfig.tiny()


def _prompts(lengths, vocab_size=256, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=g).tolist() for n in lengths]


def test_from_hf_loads_safetensors_shards_and_bin(tmp_path):
    model, hf = tiny_pair(seed=8)
    x = torch.tensor(_prompts([12], seed=9))
    with torch.no_grad():
        ref = hf(x).logits
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    loaded = Llama.from_hf(sharded)
    assert loaded.config == model.config and loaded.dtype == torch.float32
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text((sharded / "config.json").read_text())
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # old checkpoints: ignored
    torch.save(state, binary / "pytorch_model.bin")
    from_bin = Llama.from_hf(binary, dtype=torch.float64)
    assert from_bin.dtype == torch.float64
    with torch.no_grad():
        assert (loaded(x) - ref).abs().max() < TOL
        assert (from_bin(x).float() - ref).abs().max() < TOL


def test_from_hf_names_missing_unexpected_and_misshaped_keys():
    _, hf = tiny_pair(seed=10)
    config = TINY
    state = dict(hf.state_dict())
    del state["model.layers.1.mlp.up_proj.weight"]
    state["model.layers.1.mlp.extra.weight"] = torch.zeros(3)
    with pytest.raises(ValueError) as info:
        Llama.from_hf(state, config)
    msg = str(info.value)
    assert "1 missing key(s): model.layers.1.mlp.up_proj.weight" in msg
    assert "1 unexpected key(s): model.layers.1.mlp.extra.weight" in msg

    state = dict(hf.state_dict())
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight must have shape \(32, 64\) "
                                         r"for this config, got \(64, 64\)"):
        Llama.from_hf(state, config)
    with pytest.raises(ValueError, match="config is required"):
        Llama.from_hf(dict(hf.state_dict()))
    with pytest.raises(ValueError, match="missing key"):  # a deeper config does not load silently
        Llama.from_hf(dict(hf.state_dict()), dataclasses.replace(config, n_layers=3))


def test_from_hf_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Llama.from_hf(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_hf_dict()))
    with pytest.raises(FileNotFoundError, match="no model"):
        Llama.from_hf(tmp_path)


def test_hf_state_dict_is_views_that_load_into_transformers():
    model, _ = tiny_pair(seed=11)
    hf = random_hf_llama(model.config, seed=99)
    hf.load_state_dict(model.hf_state_dict(), assign=True)
    wqkv = model.layers[0].attention.wqkv.weight
    assert hf.model.layers[0].self_attn.k_proj.weight.data_ptr() == wqkv[64:96].data_ptr()
    x = torch.tensor(_prompts([10], seed=12))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < TOL


@pytest.mark.parametrize("config", [TINY, dataclasses.replace(TINY, n_kv_heads=1, tie_word_embeddings=True,
                                                               rope_scaling=RopeScaling("linear", 2.0))],
                         ids=["gqa", "tied-linear-rope"])
def test_save_hf_then_from_hf_gives_identical_logits(tmp_path, config):
    model, _ = tiny_pair(config, seed=40)
    x = torch.tensor(_prompts([9, 9], seed=41))
    assert save_hf(model, None, tmp_path / "a" / "llm") == tmp_path / "a" / "llm"  # parents are created
    save_hf(model.state_dict(), config, tmp_path / "b")  # a Llama state dict, as training exports it
    written = json.loads((tmp_path / "b" / "config.json").read_text())
    assert written["architectures"] == ["LlamaForCausalLM"] and written["torch_dtype"] == "float32"
    with torch.no_grad():
        ref = model(x)
        for folder in (tmp_path / "a" / "llm", tmp_path / "b"):
            loaded = Llama.from_hf(folder)
            assert loaded.config == config
            assert torch.equal(loaded(x), ref)
            for ours, theirs in zip(loaded.parameters(), model.parameters()):
                assert torch.equal(ours, theirs)


def test_save_hf_folders_load_into_transformers(tmp_path):
    from transformers import LlamaForCausalLM

    model, _ = tiny_pair(seed=42)
    save_hf(model, model.config, tmp_path)
    hf = LlamaForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    x = torch.tensor(_prompts([11], seed=43))
    with torch.no_grad():
        assert (model(x) - hf(x).logits).abs().max() < TOL


def test_save_hf_keeps_the_dtype(tmp_path):
    model, _ = tiny_pair(seed=44)
    half = Llama.from_hf(model.hf_state_dict(), model.config, dtype=torch.bfloat16)
    save_hf(half, None, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    again = Llama.from_hf(tmp_path)
    assert again.dtype == torch.bfloat16
    assert all(torch.equal(a, b) for a, b in zip(again.parameters(), half.parameters()))


def test_save_hf_errors_name_the_problem(tmp_path):
    model, _ = tiny_pair(seed=45)
    with pytest.raises(ValueError, match="config is required when saving a state dict"):
        save_hf(model.state_dict(), None, tmp_path)
    with pytest.raises(ValueError, match="differs from the model's"):
        save_hf(model, dataclasses.replace(TINY, n_layers=3), tmp_path)
    state = dict(model.state_dict())
    del state["layers.1.feed_forward.w2.weight"]
    with pytest.raises(ValueError, match=r"does not fit the config.*layers\.1\.feed_forward\.w2\.weight"):
        save_hf(state, TINY, tmp_path)
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("name", ["expected_hf_shapes", "hf_to_state_dict"])
def test_old_paths_under_models_llama_warn_and_work(name):
    import seedfast.models.llama as old

    with pytest.warns(DeprecationWarning, match=rf"seedfast\.models\.llama\.{name} moved to "
                                                rf"seedfast\.models\.llama_hf\.{name}"):
        moved = getattr(old, name)
    assert moved is getattr(llama_hf, name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from seedfast.models.llama import Llama as still_here  # names that stayed do not warn
    assert still_here is Llama
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        old.nope


def test_save_hf_writes_atomically_and_from_hf_verifies(tmp_path):
    model = Llama(LlamaConfig.tiny()).eval()
    folder = save_hf(model, None, tmp_path / "llm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "manifest.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="model.safetensors.*SHA-256"):
        Llama.from_hf(folder)
    # A folder from elsewhere (no manifest) is read as it is.
    (folder / "manifest.json").unlink()
    assert isinstance(Llama.from_hf(folder), Llama)


def _folder_with(tmp_path, hf_config=None, state=None, name="model.safetensors"):
    """A Hugging Face folder: ``config.json`` (TINY's unless given) and one weights file."""
    from safetensors.torch import save_file

    folder = tmp_path / "hf"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps(hf_config if hf_config is not None else TINY.to_hf_dict()))
    if state is not None:
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    return folder


@pytest.mark.parametrize("change, words", [
    ({"rms_norm_eps": -1.0}, "rms_norm_eps must be a finite number > 0, got -1.0"),
    ({"rms_norm_eps": 0}, "rms_norm_eps must be a finite number > 0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0.0}}, "rope_theta must be a finite number > 0"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": -5}}, "rope_theta must be a finite number > 0"),
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 0}},
     "factor must be a finite number > 0"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0, "low_freq_factor": 4.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}},
     "high_freq_factor (4.0) must be greater than low_freq_factor (4.0)"),
    ({"vocab_size": None}, "vocab_size is missing"),
    ({"hidden_size": "64"}, "hidden_size must be an int, got '64'"),
    ({"num_hidden_layers": 0}, "num_hidden_layers must be >= 1, got 0"),
    ({"max_position_embeddings": -2}, "max_position_embeddings must be >= 1"),
    ({"tie_word_embeddings": "yes"}, "tie_word_embeddings must be true or false"),
])
def test_from_hf_rejects_nonsensical_configs_naming_field_and_file(tmp_path, change, words):
    """rms_norm_eps=-1 loaded and gave NaN logits, rope_theta=0 loaded, a missing vocab_size was a KeyError."""
    hf_config = {**TINY.to_hf_dict(), **change}
    folder = _folder_with(tmp_path, {k: v for k, v in hf_config.items() if v is not None})
    with pytest.raises(ValueError) as info:
        Llama.from_hf(folder)
    message = str(info.value)
    assert words in message and str(folder / "config.json") in message, message
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        LlamaConfig.from_hf_dict({k: v for k, v in hf_config.items() if v is not None})


@pytest.mark.parametrize("kwargs, words", [
    (dict(norm_eps=-1.0), "norm_eps must be a finite number > 0"),
    (dict(norm_eps=float("nan")), "norm_eps must be a finite number > 0"),
    (dict(rope_theta=0.0), "rope_theta must be a finite number > 0"),
    (dict(rope_theta=float("inf")), "rope_theta must be a finite number > 0"),
])
def test_llama_config_rejects_bad_eps_and_theta(kwargs, words):
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(TINY, **kwargs)


def test_from_hf_malformed_config_json_names_the_file(tmp_path):
    folder = _folder_with(tmp_path)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError) as info:
        Llama.from_hf(folder)
    assert str(folder / "config.json") in str(info.value) and "not valid JSON" in str(info.value)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        Llama.from_hf(folder)


def test_tied_config_with_a_distinct_lm_head_is_an_error(tmp_path):
    tied = dataclasses.replace(TINY, tie_word_embeddings=True)
    _, hf = tiny_pair(seed=21)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    assert "lm_head.weight" in state and not torch.equal(state["lm_head.weight"], state["model.embed_tokens.weight"])
    with pytest.raises(ValueError, match="tie_word_embeddings=true, but the checkpoint's lm_head.weight") as info:
        Llama.from_hf(state, tied)
    assert "set tie_word_embeddings to false" in str(info.value)
    folder = _folder_with(tmp_path, tied.to_hf_dict(), state)
    with pytest.raises(ValueError, match=r"lm_head\.weight \(in .*model\.safetensors\) differs"):
        Llama.from_hf(folder)
    # A stored copy equal to the embeddings is fine (some tied checkpoints keep it).
    state["lm_head.weight"] = state["model.embed_tokens.weight"].clone()
    model = Llama.from_hf(state, tied)
    assert model.output.weight is model.tok_embeddings.weight


def test_integer_weight_is_named_with_its_file(tmp_path):
    _, hf = tiny_pair(seed=22)
    state = {k: v.clone() for k, v in hf.state_dict().items()}
    state["model.norm.weight"] = state["model.norm.weight"].long()
    with pytest.raises(ValueError, match="model.norm.weight must be a floating-point tensor, got int64"):
        Llama.from_hf(state, TINY)
    folder = _folder_with(tmp_path, state=state)
    with pytest.raises(ValueError, match=r"model\.norm\.weight \(in .*model\.safetensors\) must be a floating-point"):
        Llama.from_hf(folder)


def test_index_without_weight_map_and_truncated_shards_name_the_file(tmp_path):
    _, hf = tiny_pair(seed=23)
    folder = tmp_path / "sharded"
    hf.save_pretrained(folder, max_shard_size="100KB")
    index = folder / "model.safetensors.index.json"
    good_index = index.read_text()
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match="weight_map") as info:
        Llama.from_hf(folder)
    assert str(index) in str(info.value)
    index.write_text("{")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Llama.from_hf(folder)
    index.write_text(good_index)
    shard = sorted(folder.glob("model-*.safetensors"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable safetensors file") as info:
        Llama.from_hf(folder)
    assert str(shard) in str(info.value)
    shard.unlink()
    with pytest.raises(CheckpointError, match="weights file missing") as info:
        Llama.from_hf(folder)
    assert str(shard) in str(info.value)


@pytest.mark.parametrize("content", [b"", b"hello, not a checkpoint\n", "pickle"], ids=["empty", "text", "pickle"])
def test_damaged_bin_shard_is_named_without_unsafe_advice(tmp_path, content):
    import pickle

    folder = _folder_with(tmp_path)
    data = pickle.dumps({"a": 1}) if content == "pickle" else content
    (folder / "pytorch_model.bin").write_bytes(data)
    with pytest.raises(CheckpointError) as info:
        Llama.from_hf(folder)
    message = str(info.value)
    assert str(folder / "pytorch_model.bin") in message and "weights_only" not in message, message
