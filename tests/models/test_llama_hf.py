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
