"""Checkpoint loading: the official key set of spec §9 (written here as data, independently of
the model code) on the meta device at full size, every error path, the ``visual_encoder.``
and separate-EVA-file layouts, and real round trips on the tiny config."""
from __future__ import annotations

import json
import re

import pytest
import torch

from seedfast.models.checkpoints import (
    CheckpointError,
    convert_official,
    load_official,
    load_official_state_dict,
    load_tokenizer,
)
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.models.tokenizer_config import SeedTokenizerConfig

# Spec §9. Placeholders: {i} every Q-Former layer, {c} cross-attention layers, {b} head blocks,
# {v} ViT blocks. Shapes name the dimensions below.
QUANTIZER_KEYS = [
    ("query_tokens", (1, "Q", "H")),
    ("ln_vision.weight", ("V",)), ("ln_vision.bias", ("V",)),
    ("Qformer.bert.embeddings.LayerNorm.weight", ("H",)), ("Qformer.bert.embeddings.LayerNorm.bias", ("H",)),
    ("Qformer.bert.embeddings.position_ids", (1, "POS")),
    *[(f"Qformer.bert.encoder.layer.{{i}}.attention.self.{p}.weight", ("H", "H")) for p in ("query", "key", "value")],
    *[(f"Qformer.bert.encoder.layer.{{i}}.attention.self.{p}.bias", ("H",)) for p in ("query", "key", "value")],
    ("Qformer.bert.encoder.layer.{i}.attention.output.dense.weight", ("H", "H")),
    ("Qformer.bert.encoder.layer.{i}.attention.output.dense.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.attention.output.LayerNorm.weight", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.attention.output.LayerNorm.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.query.weight", ("H", "H")),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.query.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.key.weight", ("H", "V")),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.key.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.value.weight", ("H", "V")),
    ("Qformer.bert.encoder.layer.{c}.crossattention.self.value.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.output.dense.weight", ("H", "H")),
    ("Qformer.bert.encoder.layer.{c}.crossattention.output.dense.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.output.LayerNorm.weight", ("H",)),
    ("Qformer.bert.encoder.layer.{c}.crossattention.output.LayerNorm.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.intermediate_query.dense.weight", ("I", "H")),
    ("Qformer.bert.encoder.layer.{i}.intermediate_query.dense.bias", ("I",)),
    ("Qformer.bert.encoder.layer.{i}.output_query.dense.weight", ("H", "I")),
    ("Qformer.bert.encoder.layer.{i}.output_query.dense.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.output_query.LayerNorm.weight", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.output_query.LayerNorm.bias", ("H",)),
    ("quantize.embedding.weight", ("K", "D")),
    ("encode_task_layer.0.weight", ("H", "H")), ("encode_task_layer.0.bias", ("H",)),
    ("encode_task_layer.2.weight", ("D", "H")), ("encode_task_layer.2.bias", ("D",)),
    ("decode_task_layer.0.weight", ("D", "D")), ("decode_task_layer.0.bias", ("D",)),
    ("decode_task_layer.2.weight", ("H", "D")), ("decode_task_layer.2.bias", ("H",)),
    ("pos_embed", (1, "Q", "H")), ("pos_embed_image", (1, "Q", "H")),
    *[(f"{s}.{{b}}.{n}.{wb}", ("H",)) for s in ("blocks", "blocks_image") for n in ("norm1", "norm2")
      for wb in ("weight", "bias")],
    *[(f"{s}.{{b}}.attn.qkv.weight", ("3H", "H")) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.attn.qkv.bias", ("3H",)) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.attn.proj.weight", ("H", "H")) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.attn.proj.bias", ("H",)) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.mlp.fc1.weight", ("HM", "H")) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.mlp.fc1.bias", ("HM",)) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.mlp.fc2.weight", ("H", "HM")) for s in ("blocks", "blocks_image")],
    *[(f"{s}.{{b}}.mlp.fc2.bias", ("H",)) for s in ("blocks", "blocks_image")],
    ("image_down.0.weight", ("D1", "H")), ("image_down.2.weight", ("D2", "D1")), ("image_down.4.weight", ("D3", "D2")),
    ("distill_image_proj.weight", ("G", "QD3")), ("distill_image_proj.bias", ("G",)),
]

# Keys §9 says may appear and must be ignored (training-only modules).
TRAINING_ONLY_KEYS = [
    ("Qformer.bert.embeddings.word_embeddings.weight", ("VOCAB", "H")),
    ("Qformer.bert.embeddings.position_embeddings.weight", ("POS", "H")),
    ("Qformer.bert.encoder.layer.{i}.intermediate.dense.weight", ("I", "H")),
    ("Qformer.bert.encoder.layer.{i}.intermediate.dense.bias", ("I",)),
    ("Qformer.bert.encoder.layer.{i}.output.dense.weight", ("H", "I")),
    ("Qformer.bert.encoder.layer.{i}.output.dense.bias", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.output.LayerNorm.weight", ("H",)),
    ("Qformer.bert.encoder.layer.{i}.output.LayerNorm.bias", ("H",)),
    ("vision_proj.weight", ("E", "H")), ("vision_proj.bias", ("E",)),
    ("text_proj.weight", ("E", "H")), ("text_proj.bias", ("E",)),
    ("temp", ()),
]
NEVER_BUILT_KEYS = [
    ("Qformer.cls.predictions.bias", ("VOCAB",)),
    ("Qformer.cls.predictions.transform.dense.weight", ("H", "H")),
    ("Reverse_Qformer.bert.encoder.layer.0.attention.self.query.weight", ("H", "H")),
    ("reverse_tokens", (1, 1, "H")),
]

# eva_vit_g.pth, no prefix.
VIT_KEYS = [
    ("cls_token", (1, 1, "V")), ("pos_embed", (1, "NP1", "V")),
    ("patch_embed.proj.weight", ("V", 3, "P", "P")), ("patch_embed.proj.bias", ("V",)),
    ("blocks.{v}.norm1.weight", ("V",)), ("blocks.{v}.norm1.bias", ("V",)),
    ("blocks.{v}.attn.qkv.weight", ("3V", "V")),
    ("blocks.{v}.attn.q_bias", ("V",)), ("blocks.{v}.attn.v_bias", ("V",)),
    ("blocks.{v}.attn.proj.weight", ("V", "V")), ("blocks.{v}.attn.proj.bias", ("V",)),
    ("blocks.{v}.norm2.weight", ("V",)), ("blocks.{v}.norm2.bias", ("V",)),
    ("blocks.{v}.mlp.fc1.weight", ("VM", "V")), ("blocks.{v}.mlp.fc1.bias", ("VM",)),
    ("blocks.{v}.mlp.fc2.weight", ("V", "VM")), ("blocks.{v}.mlp.fc2.bias", ("V",)),
]

OFFICIAL_DIMS = dict(Q=32, H=768, V=1408, POS=512, I=3072, K=8192, D=32, HM=3072, D1=256, D2=128, D3=32, G=1024,
                     VOCAB=30523, E=256, NP1=257, P=14, VM=6144,
                     layers=12, cross=2, head_blocks=4, vit_blocks_in_file=40)
TINY_DIMS = dict(Q=32, H=32, V=48, POS=16, I=64, K=64, D=8, HM=64, D1=16, D2=8, D3=4, G=48,
                 VOCAB=64, E=16, NP1=17, P=8, VM=96,
                 layers=4, cross=2, head_blocks=2, vit_blocks_in_file=3)


def _shape(spec, dims):
    out = []
    for s in spec:
        if isinstance(s, int):
            out.append(s)
        elif s.startswith("3"):
            out.append(3 * dims[s[1:]])
        elif s == "QD3":
            out.append(dims["Q"] * dims["D3"])
        else:
            out.append(dims[s])
    return tuple(out)


def expand(table, dims) -> dict[str, tuple[int, ...]]:
    """Key → shape for every instance of the placeholders."""
    ranges = {
        "{i}": range(dims["layers"]), "{c}": range(0, dims["layers"], dims["cross"]),
        "{b}": range(dims["head_blocks"]), "{v}": range(dims["vit_blocks_in_file"]),
    }
    keys = {}
    for template, spec in table:
        placeholder = next((p for p in ranges if p in template), None)
        for n in ranges[placeholder] if placeholder else [None]:
            key = template.replace(placeholder, str(n)) if placeholder else template
            keys[key] = _shape(spec, dims)
    return keys


def make_state_dict(shapes, device="meta", seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            out[key] = torch.arange(shape[1]).reshape(shape).to(device)
        elif device == "meta":
            out[key] = torch.empty(shape, device="meta")
        else:
            out[key] = torch.randn(shape, generator=g) * 0.1
    return out


def official_files(dims=OFFICIAL_DIMS, device="meta", seed=0):
    """(quantizer state dict, eva state dict) laid out like the released files."""
    return (make_state_dict(expand(QUANTIZER_KEYS, dims), device, seed),
            make_state_dict(expand(VIT_KEYS, dims), device, seed + 1))


def meta_model(training_heads=False) -> SeedTokenizer:
    with torch.device("meta"):
        return SeedTokenizer(SeedTokenizerConfig.official(training_heads=training_heads))


# ---------------------------------------------------------------------------------------------
# Full-size key set on the meta device


def test_official_files_load_exactly():
    model = meta_model()
    quantizer, eva = official_files()
    report = load_official_state_dict(model, quantizer, eva)
    model_keys = set(model.state_dict())
    assert set(report.loaded) == model_keys
    assert report.initialised == ()
    # The model has no key outside the table, and needs every table key except those §9 calls unused.
    table = set(quantizer) | {"visual_encoder." + k for k in eva}
    unused = {k for k in table if re.fullmatch(r"(pos_embed|blocks\.\d+\..+|visual_encoder\.blocks\.39\..+"
                                               r"|Qformer\.bert\.embeddings\.position_ids)", k)}
    assert model_keys == table - unused
    assert set(report.ignored) == unused
    assert len([k for k in unused if k.startswith("visual_encoder.blocks.39.")]) == 13
    for key, param in model.state_dict().items():
        assert tuple(param.shape) == tuple(quantizer.get(key, eva.get(key.removeprefix("visual_encoder."))).shape)


def test_official_training_heads_load_and_initialise():
    quantizer, eva = official_files()
    extra = make_state_dict(expand(TRAINING_ONLY_KEYS + NEVER_BUILT_KEYS, OFFICIAL_DIMS))
    model = meta_model(training_heads=True)
    report = load_official_state_dict(model, {**quantizer, **extra}, eva)
    assert report.initialised == ()
    assert set(report.loaded) == set(model.state_dict())
    assert {k for k in report.ignored if not k.startswith("visual_encoder.")} == {
        "Qformer.bert.embeddings.position_ids", *expand(NEVER_BUILT_KEYS, OFFICIAL_DIMS)}
    # Without the training-only keys (the released quantizer file), they are left at init.
    report = load_official_state_dict(meta_model(training_heads=True), quantizer, eva)
    assert set(report.initialised) == set(expand(TRAINING_ONLY_KEYS, OFFICIAL_DIMS))


def test_training_only_keys_ignored_by_inference_model():
    quantizer, eva = official_files()
    extra = make_state_dict(expand(TRAINING_ONLY_KEYS + NEVER_BUILT_KEYS, OFFICIAL_DIMS))
    report = load_official_state_dict(meta_model(), {**quantizer, **extra}, eva)
    assert set(extra) <= set(report.ignored)


def test_vit_inside_quantizer_file():
    quantizer, eva = official_files()
    merged = {**quantizer, **{"visual_encoder." + k: v for k, v in eva.items()}}
    model = meta_model()
    report = load_official_state_dict(model, merged)
    assert set(report.loaded) == set(model.state_dict())
    assert "visual_encoder.blocks.39.mlp.fc2.bias" in report.ignored
    with pytest.raises(ValueError, match="ViT weights given twice"):
        load_official_state_dict(meta_model(), merged, eva)


def test_wrong_shape_is_named():
    quantizer, eva = official_files()
    quantizer["Qformer.bert.encoder.layer.4.crossattention.self.key.weight"] = torch.empty(768, 768, device="meta")
    eva["blocks.7.attn.q_bias"] = torch.empty(1407, device="meta")
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(meta_model(), quantizer, eva)
    err = info.value
    assert err.mismatched == {
        "Qformer.bert.encoder.layer.4.crossattention.self.key.weight": ((768, 1408), (768, 768)),
        "visual_encoder.blocks.7.attn.q_bias": ((1408,), (1407,)),
    }
    assert not err.missing and not err.unexpected
    key = "Qformer.bert.encoder.layer.4.crossattention.self.key.weight"
    assert f"{key}: expected [768, 1408], got [768, 768]" in str(err)


def test_missing_key_is_named_with_shape():
    quantizer, eva = official_files()
    del quantizer["Qformer.bert.encoder.layer.3.output_query.dense.weight"]
    del eva["blocks.5.attn.v_bias"]
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(meta_model(), quantizer, eva)
    err = info.value
    assert err.missing == {"Qformer.bert.encoder.layer.3.output_query.dense.weight": (768, 3072),
                           "visual_encoder.blocks.5.attn.v_bias": (1408,)}
    assert "Qformer.bert.encoder.layer.3.output_query.dense.weight [768, 3072]" in str(err)


def test_missing_block_of_the_built_depth_is_an_error():
    quantizer, eva = official_files()
    for k in [k for k in eva if k.startswith("blocks.38.")]:
        del eva[k]
    with pytest.raises(CheckpointError, match=r"visual_encoder\.blocks\.38\.mlp\.fc1\.weight \[6144, 1408\]"):
        load_official_state_dict(meta_model(), quantizer, eva)


def test_unknown_key_is_named():
    quantizer, eva = official_files()
    quantizer["Qformer.bert.encoder.layer.0.attention.self.rotary.weight"] = torch.empty(3, device="meta")
    eva["norm.weight"] = torch.empty(1408, device="meta")
    with pytest.raises(CheckpointError) as info:
        load_official_state_dict(meta_model(), quantizer, eva)
    assert info.value.unexpected == {"Qformer.bert.encoder.layer.0.attention.self.rotary.weight": (3,),
                                     "visual_encoder.norm.weight": (1408,)}
    assert "visual_encoder.norm.weight [1408]" in str(info.value)


def test_position_ids_shape_checked():
    quantizer, eva = official_files()
    quantizer["Qformer.bert.embeddings.position_ids"] = torch.arange(511)[None]
    with pytest.raises(CheckpointError, match=r"position_ids: expected \[1, 512\], got \[1, 511\]"):
        load_official_state_dict(meta_model(), quantizer, eva)
    del quantizer["Qformer.bert.embeddings.position_ids"]
    load_official_state_dict(meta_model(), quantizer, eva)


# ---------------------------------------------------------------------------------------------
# Real files on the tiny config


def _save_pt(sd, path, zip_format=True):
    torch.save(sd, path, _use_new_zipfile_serialization=zip_format)
    return path


def _check_values(model, quantizer, eva):
    got = model.state_dict()
    for key, value in quantizer.items():
        if key in got:
            assert torch.equal(got[key], value.to(got[key].dtype)), key
    for key, value in eva.items():
        if "visual_encoder." + key in got:
            assert torch.equal(got["visual_encoder." + key], value.to(torch.float32)), key


@pytest.mark.parametrize("layout", ["separate-eva", "prefixed", "legacy-pickle"])
def test_tiny_official_format_loads(tmp_path, layout):
    cfg = SeedTokenizerConfig.tiny()
    quantizer, eva = official_files(TINY_DIMS, device="cpu")
    # LAVIS ships the ViT in fp16: it is converted to the requested dtype.
    eva = {k: v.half() for k, v in eva.items()}
    if layout == "prefixed":
        q_path = _save_pt({**quantizer, **{"visual_encoder." + k: v for k, v in eva.items()}}, tmp_path / "q.pt")
        model, report = load_official(q_path, config=cfg)
    else:
        zip_format = layout != "legacy-pickle"
        q_path = _save_pt(quantizer, tmp_path / "q.pt", zip_format)
        v_path = _save_pt(eva, tmp_path / "eva.pt", zip_format)
        model, report = load_official(q_path, v_path, config=cfg)
    assert not model.training
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())
    assert "visual_encoder.blocks.2.attn.qkv.weight" in report.ignored  # beyond the tiny depth of 2
    _check_values(model, quantizer, eva)
    images = torch.randn(2, 3, cfg.image_size, cfg.image_size)
    assert model.encode(images).shape == (2, 32)


def test_from_official_training_heads_materialised(tmp_path):
    cfg = SeedTokenizerConfig.tiny(training_heads=True)
    quantizer, eva = official_files(TINY_DIMS, device="cpu")
    q_path, v_path = _save_pt(quantizer, tmp_path / "q.pt"), _save_pt(eva, tmp_path / "eva.pt")
    model = SeedTokenizer.from_official(q_path, v_path, config=cfg, dtype=torch.bfloat16)
    assert not any(p.is_meta for p in model.parameters())
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert model.temp.item() == pytest.approx(0.07, rel=1e-2)
    assert torch.equal(model.pos_embed, quantizer["pos_embed"].to(torch.bfloat16))  # loaded, not initialised
    emb = model.Qformer.embeddings.word_embeddings.weight
    assert torch.isfinite(emb).all() and 0.005 < emb.float().std() < 0.05


def test_from_official_without_vit_is_an_error(tmp_path):
    quantizer, _ = official_files(TINY_DIMS, device="cpu")
    q_path = _save_pt(quantizer, tmp_path / "q.pt")
    with pytest.raises(ValueError, match="pass vit_path"):
        load_official(q_path, config=SeedTokenizerConfig.tiny())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_official(tmp_path / "nope.pt", config=SeedTokenizerConfig.tiny())
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(TypeError, match="expected a state dict"):
        load_official(tmp_path / "list.pt", config=SeedTokenizerConfig.tiny())


def test_tiny_official_format_wrong_config_names_keys(tmp_path):
    quantizer, eva = official_files(TINY_DIMS, device="cpu")
    q_path, v_path = _save_pt(quantizer, tmp_path / "q.pt"), _save_pt(eva, tmp_path / "eva.pt")
    with pytest.raises(CheckpointError, match=r"quantize\.embedding\.weight: expected \[128, 8\], got \[64, 8\]"):
        load_official(q_path, v_path, config=SeedTokenizerConfig.tiny(codebook_size=128))


def test_save_load_round_trip(tmp_path):
    model = SeedTokenizer(SeedTokenizerConfig.tiny(training_heads=True))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    path = model.save(tmp_path / "tok")
    assert {p.name for p in path.iterdir()} == {"model.safetensors", "config.json"}
    loaded = SeedTokenizer.load(path)
    assert loaded.config == model.config and not loaded.training
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    assert torch.equal(loaded.encode(images), model.encode(images))
    half = load_tokenizer(path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_convert_official_then_load(tmp_path):
    cfg = SeedTokenizerConfig.tiny()
    quantizer, eva = official_files(TINY_DIMS, device="cpu")
    q_path, v_path = _save_pt(quantizer, tmp_path / "q.pt"), _save_pt(eva, tmp_path / "eva.pt")
    out = convert_official(q_path, v_path, tmp_path / "converted", config=cfg)
    model = SeedTokenizer.load(out)
    _check_values(model, quantizer, eva)
    assert "pos_embed" not in model.state_dict()


def test_load_errors(tmp_path):
    model = SeedTokenizer(SeedTokenizerConfig.tiny())
    path = model.save(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(tmp_path)
    cfg_file = path / "config.json"
    original = cfg_file.read_text()
    cfg_file.write_text(original.replace('"seedfast-seed-tokenizer"', '"other"'))
    with pytest.raises(ValueError, match="format 'other'"):
        load_tokenizer(path)
    # Weights that do not match the config: every offending key named.
    cfg_file.write_text(original.replace('"head_depth": 2', '"head_depth": 3'))
    with pytest.raises(CheckpointError, match=r"blocks_image\.2\.attn\.qkv\.weight \[96, 32\]"):
        load_tokenizer(path)


def test_save_is_atomic_and_checksummed(tmp_path):
    model = SeedTokenizer(SeedTokenizerConfig.tiny())
    path = model.save(tmp_path / "tok")
    meta = json.loads((path / "config.json").read_text())
    assert meta["version"] == 2 and set(meta["files"]) == {"model.safetensors"}
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: \d+ bytes, expected \d+ \(truncated"):
        load_tokenizer(path)
    # Saving again over a damaged folder replaces it whole.
    model.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"]
    load_tokenizer(path)


def test_version_1_folders_still_load(tmp_path, caplog):
    from safetensors.torch import save_file

    model = SeedTokenizer(SeedTokenizerConfig.tiny())
    path = tmp_path / "old"
    path.mkdir()
    save_file(model.state_dict(), str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"format": "seedfast-seed-tokenizer", "version": 1,
                                                  "config": model.config.to_dict()}))
    loaded = load_tokenizer(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))
    assert "without checksums" in caplog.text
    (path / "config.json").write_text(json.dumps({"format": "seedfast-seed-tokenizer", "version": 3}))
    with pytest.raises(ValueError, match="version 3, this seedfast reads 2"):
        load_tokenizer(path)


# ---------------------------------------------------------------------------------------------
# Damaged or foreign official files: one error naming the file, never advice to unpickle


def _damaged_files(tmp_path):
    """name -> path of files that are not state dicts saved by torch.save."""
    import os
    import pickle

    good = tmp_path / "good.pt"
    torch.save({"w": torch.randn(64, 64)}, good)
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.randn(64, 64)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "text": b"query_tokens 1 32 768\nnot a checkpoint\n",
        "empty": b"",
        "truncated-zip": good.read_bytes()[: good.stat().st_size // 2],
        "truncated-legacy": legacy.read_bytes()[: legacy.stat().st_size // 2],
        "random-bytes": os.urandom(4096),
        "plain-pickle": pickle.dumps({"query_tokens": [1.0, 2.0]}),
    }
    paths = {}
    for name, data in files.items():
        paths[name] = tmp_path / f"{name}.pt"
        paths[name].write_bytes(data)
    return paths


DAMAGED = ["text", "empty", "truncated-zip", "truncated-legacy", "random-bytes", "plain-pickle"]


@pytest.mark.parametrize("name", DAMAGED)
def test_damaged_official_files_are_one_clear_error(tmp_path, name):
    """Before: IndexError/KeyError (text), EOFError (empty), RuntimeError/OSError (truncated), and
    an UnpicklingError recommending weights_only=False (random bytes, plain pickle)."""
    path = _damaged_files(tmp_path)[name]
    cfg = SeedTokenizerConfig.tiny()
    quantizer, eva = official_files(TINY_DIMS, device="cpu")
    q_path, v_path = _save_pt(quantizer, tmp_path / "q.pt"), _save_pt(eva, tmp_path / "eva.pt")
    for call in (lambda: load_official(path, v_path, config=cfg),
                 lambda: load_official(q_path, path, config=cfg),
                 lambda: SeedTokenizer.from_official(path, v_path, config=cfg),
                 lambda: convert_official(q_path, path, tmp_path / "out", config=cfg)):
        with pytest.raises(CheckpointError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"{path}: not a readable PyTorch checkpoint"), message
        assert "weights_only" not in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()


def _convert_cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "SEEDFAST_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(repo))
    return subprocess.run([sys.executable, "-m", "seedfast", "convert", *map(str, args)], env=env, cwd=repo,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=300)


def test_convert_cli_on_damaged_files_exits_2_with_one_line(tmp_path):
    paths = _damaged_files(tmp_path)
    for name in DAMAGED:
        done = _convert_cli(paths[name], "--out", tmp_path / "out")
        assert done.returncode == 2, (name, done.stderr)
        assert "Traceback" not in done.stderr and "weights_only" not in done.stderr, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, (name, done.stderr)
        assert lines[0].startswith(f"seedfast convert: error: {paths[name]}: not a readable PyTorch checkpoint"), lines
    assert not (tmp_path / "out").exists()
    done = _convert_cli(tmp_path / "missing.pt", "--out", tmp_path / "out")
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"seedfast convert: error: checkpoint not found: {tmp_path / 'missing.pt'}"]


def test_truncated_version_1_tokenizer_weights_name_the_file(tmp_path):
    from safetensors.torch import save_file

    model = SeedTokenizer(SeedTokenizerConfig.tiny())
    path = tmp_path / "old"
    path.mkdir()
    weights = path / "model.safetensors"
    save_file(model.state_dict(), str(weights))
    (path / "config.json").write_text(json.dumps({"format": "seedfast-seed-tokenizer", "version": 1,
                                                  "config": model.config.to_dict()}))
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="unreadable safetensors file") as info:
        load_tokenizer(path)
    assert str(weights) in str(info.value)
    saved = SeedTokenizer(SeedTokenizerConfig.tiny()).save(tmp_path / "new")
    (saved / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes()[:-100])
    with pytest.raises(CheckpointError) as info:
        SeedTokenizer.load(saved)
    assert str(saved / "model.safetensors") in str(info.value)
