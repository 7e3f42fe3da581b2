"""Building configs: presets, TOML files with [stageN.*] tables, --set, clear errors."""
import pytest

from seedfast.train.config import ConfigError, model_config
from seedfast.train.config_sources import build_config, parse_override, preset_names, read_preset, read_toml


def test_presets_resolve_for_every_stage():
    assert {"tiny", "official"} <= set(preset_names())
    for name in ("tiny", "official"):
        for stage in (1, 2, 3):
            cfg = build_config(stage, [read_preset(name)])
            model_config("tokenizer", cfg.tokenizer)
            model_config("llm", cfg.llm)
    official = build_config(2, [read_preset("official")])
    assert official.train.micro_batch == 256 and official.tokenizer.preset == "official"
    assert build_config(3, [read_preset("official")]).train.parallel == "fsdp"


def test_stage_tables_apply_only_to_their_stage(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('[optim]\nlr = 0.5\n[stage2.optim]\nlr = 0.25\n[stage2.tokenizer]\nqformer_dropout = 0.0\n')
    table = read_toml(path)
    assert build_config(1, [table]).optim.lr == 0.5
    s2 = build_config(2, [table])
    assert s2.optim.lr == 0.25 and model_config("tokenizer", s2.tokenizer).qformer_dropout == 0.0


def test_overrides_parse_toml_values_and_bare_strings():
    assert parse_override("optim.lr=1e-4") == ("optim.lr", 1e-4)
    assert parse_override("lora.targets=['wqkv', 'wo']") == ("lora.targets", ["wqkv", "wo"])
    assert parse_override("data.source=/data/cc3m.jsonl") == ("data.source", "/data/cc3m.jsonl")
    cfg = build_config(3, [read_preset("tiny")], ["optim.lr=2", "lora.enabled=false", "lora.targets=['wo']"])
    assert cfg.optim.lr == 2.0 and isinstance(cfg.optim.lr, float)
    assert cfg.lora.enabled is False and cfg.lora.targets == ("wo",)


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    ("tokenizer.qformer_dropotu=0", "unknown config key 'tokenizer.qformer_dropotu' (did you mean 'qformer_dropout'?)"),
    ("train.global_batch=1.5", "config key 'train.global_batch' must be int, got 1.5"),
    ("train.parallel=zero3", "config key 'train.parallel' must be one of ('ddp', 'fsdp'), got 'zero3'"),
    ("optim.warmup_steps=-1", "config key 'optim.warmup_steps' must be non-negative, got -1"),
    ("optm.lr=1", "unknown section 'optm' (did you mean 'optim'?)"),
    ("lr=1", "--set expects section.key=value, got 'lr=1'"),
    ("tokenizer.vit_width=-3", "[tokenizer]: SeedTokenizerConfig: vit_width must be a positive int, got -3"),
])
def test_bad_settings_are_named(override, message):
    with pytest.raises(ConfigError) as info:
        build_config(1, [read_preset("tiny")], [override])
    assert message in str(info.value)


def test_unknown_preset_and_bad_toml(tmp_path):
    with pytest.raises(ConfigError, match="unknown preset 'tiniest'; presets: .*tiny"):
        read_preset("tiniest")
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: invalid TOML"):
        read_toml(bad)
