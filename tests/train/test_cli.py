"""``seedfast train`` / ``seedfast budget`` on the command line: settings, one-line errors."""
import json

import pytest

from seedfast.cli import main


def test_print_config_resolves_preset_and_overrides(capsys):
    assert main(["train", "--stage", "3", "--preset", "tiny", "--set", "optim.lr=1e-4", "--print-config"]) == 0
    flat = json.loads(capsys.readouterr().out)
    assert flat["stage"] == 3 and flat["optim.lr"] == 1e-4 and flat["llm.preset"] == "tiny"
    assert flat["train.global_batch"] == 16 and flat["lora.r"] == 4


def test_config_file(tmp_path, capsys):
    path = tmp_path / "run.toml"
    path.write_text('[tokenizer]\npreset = "tiny"\n[stage2.train]\nglobal_batch = 8\n')
    assert main(["train", "--stage", "2", "--config", str(path), "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["train.global_batch"] == 8


@pytest.mark.parametrize("argv, message", [
    (["--set", "optim.lrr=1", "--steps", "1", "--out", "x"], "unknown config key 'optim.lrr' (did you mean 'lr'?)"),
    (["--steps", "1"], "--steps and --out are required to train"),
    (["--steps", "0", "--out", "x"], "--steps must be at least 1, got 0"),
    (["--set", "train.micro_batch=5", "--steps", "1", "--out", "x"],
     "train.global_batch (32) must be a multiple of train.micro_batch (5) × world size (1)"),
    (["--set", "data.source=/nowhere", "--steps", "1", "--out", "x"], "image-caption data not found: /nowhere"),
])
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--stage", "2", "--preset", "tiny", "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"seedfast train: error: {message}"]


def test_train_then_chain_stages(tmp_path, capsys):
    """Stage 1 → stage 2 (init from stage 1's final) → stage 3 (codes from stage 2's tokenizer) →
    full fine-tuning from the LoRA run's merged model."""
    common = ["--preset", "tiny", "--steps", "2", "--device", "cpu", "--no-progress"]
    assert main(["train", "--stage", "1", "--out", str(tmp_path / "s1"), *common]) == 0
    assert main(["train", "--stage", "2", "--out", str(tmp_path / "s2"), *common,
                 "--set", f'train.init="{tmp_path / "s1" / "final"}"']) == 0
    assert main(["train", "--stage", "3", "--out", str(tmp_path / "lora"), *common,
                 "--set", f'data.tokenizer="{tmp_path / "s2" / "final"}"']) == 0
    assert main(["train", "--stage", "3", "--out", str(tmp_path / "full"), *common,
                 "--set", f'data.tokenizer="{tmp_path / "s2" / "final"}"', "--set", "lora.enabled=false",
                 "--set", f'train.init="{tmp_path / "lora" / "final"}"']) == 0
    err = capsys.readouterr().err
    assert f"model {tmp_path / 'full' / 'final'}" in err

    from seedfast.models.llama import Llama
    from seedfast.models.seed_tokenizer import SeedTokenizer

    assert SeedTokenizer.load(tmp_path / "s2" / "final").config.training_heads
    assert Llama.from_hf(tmp_path / "full" / "final").config.vocab_size == 322
