"""Never lose work: exact resume, a real SIGTERM, damaged and mismatched checkpoints refused."""
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from seedfast.train import checkpoint as ckpt
from seedfast.train.checkpoint import CheckpointError
from seedfast.train.config import ConfigError
from seedfast.train.loop import train

from .helpers import max_diff, seedfast_cmd, steps_of, subprocess_env, tiny, weights


def _files(out: Path, step: int) -> dict[str, bytes]:
    folder = out / "checkpoints" / f"step-{step:08d}"
    return {n: (folder / n).read_bytes() for n in (ckpt.MODEL_FILE, ckpt.OPTIM_FILE)}


@pytest.mark.parametrize("stage, overrides", [
    # Dropout on and 4 accumulation micro-steps: random streams and accumulation both resume exactly.
    (1, ("tokenizer.qformer_dropout=0.1", "train.micro_batch=8")),
    (3, ()),  # LoRA through peft, with LoRA dropout
])
def test_resume_is_bit_identical(tmp_path, stage, overrides):
    cfg = tiny(stage, *overrides)
    train(cfg, tmp_path / "once", steps=6, device="cpu", progress=False)
    first = train(cfg, tmp_path / "twice", steps=3, device="cpu", progress=False)
    assert first.step == 3 and first.final is not None
    second = train(cfg, tmp_path / "twice", steps=6, device="cpu", progress=False, resume_run=True)
    assert second.step == 6
    assert _files(tmp_path / "once", 6) == _files(tmp_path / "twice", 6)
    once, twice = steps_of(tmp_path / "once"), steps_of(tmp_path / "twice")
    assert [r["loss"] for r in once] == [r["loss"] for r in twice]
    a, b = (Path(tmp_path / d / "final" / "model.safetensors").read_bytes() for d in ("once", "twice"))
    assert a == b


def test_sigterm_saves_and_resume_continues_exactly(tmp_path):
    run = tmp_path / "killed"
    args = ["train", "--stage", "2", "--preset", "tiny", "--steps", "100000", "--out", str(run), "--device", "cpu",
            "--no-progress", "--set", "train.ckpt_every=100000", "--set", "optim.total_steps=20"]
    proc = subprocess.Popen(seedfast_cmd(*args), env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    log = run / "log.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.is_file() and len(steps_of(run)) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    k = steps_of(run)[-1]["step"]
    assert f"stopped by SIGTERM after step {k}" in err
    assert ckpt.latest(run).name == f"step-{k:08d}"
    cfg = tiny(2, "train.ckpt_every=100000", "optim.total_steps=20")
    train(cfg, run, steps=k + 2, device="cpu", progress=False, resume_run=True)
    train(cfg, tmp_path / "straight", steps=k + 2, device="cpu", progress=False)
    assert max_diff(weights(run, k + 2), weights(tmp_path / "straight", k + 2)) == 0.0


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    train(tiny(2, "train.ckpt_every=1", "train.keep_last=2"), out, steps=4, device="cpu", progress=False)
    return out


def test_keeps_the_last_n_and_ignores_unfinished(finished):
    assert [p.name for p in ckpt.step_dirs(finished)] == ["step-00000003", "step-00000004"]
    (finished / "checkpoints" / ".tmp-step-00000009").mkdir()  # a save killed half-way
    assert ckpt.latest(finished).name == "step-00000004"


def _damaged_copy(src: Path, dst: Path, damage) -> Path:
    import shutil

    shutil.copytree(src, dst)
    damage(ckpt.latest(dst))
    return ckpt.latest(dst)


def _truncate(folder: Path) -> None:
    f = folder / ckpt.MODEL_FILE
    f.write_bytes(f.read_bytes()[:-100])


def _flip_byte(folder: Path) -> None:
    f = folder / ckpt.OPTIM_FILE
    data = bytearray(f.read_bytes())
    data[-5] ^= 0xFF
    f.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, message", [
    (_truncate, r"model\.safetensors: \d+ bytes, expected \d+ \(truncated or overwritten\)"),
    (_flip_byte, r"optimizer\.safetensors: SHA-256 does not match"),
    (lambda f: (f / ckpt.STATE_FILE).unlink(), r"state\.json: missing; .* is not a complete checkpoint"),
    (lambda f: (f / ckpt.STATE_FILE).write_text("{"), r"state\.json: not valid JSON"),
])
def test_damaged_checkpoints_are_refused(finished, tmp_path, damage, message):
    folder = _damaged_copy(finished, tmp_path / "run", damage)
    with pytest.raises(CheckpointError, match=message):
        ckpt.load(folder)


def test_cli_refuses_a_truncated_checkpoint_in_one_line(finished, tmp_path):
    run = tmp_path / "run"
    folder = _damaged_copy(finished, run, _truncate)
    args = ["train", "--stage", "2", "--preset", "tiny", "--steps", "6", "--out", str(run), "--resume", "--device",
            "cpu", "--no-progress", "--set", "train.ckpt_every=1", "--set", "train.keep_last=2"]
    done = subprocess.run(seedfast_cmd(*args), env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("seedfast train: error: ")
    assert str(folder / ckpt.MODEL_FILE) in lines[0] and "truncated" in lines[0]


def test_mismatched_config_names_the_fields(finished):
    cfg = tiny(2, "train.ckpt_every=1", "train.keep_last=2", "optim.lr=0.5", "lora.r=8")
    with pytest.raises(ConfigError, match=r"written with other settings: lora\.r: 4 → 8; optim\.lr: 0\.003 → 0\.5"):
        train(cfg, finished, steps=6, device="cpu", progress=False, resume_run=True)


def test_refuses_to_overwrite_or_go_back(finished, tmp_path):
    cfg = tiny(2, "train.ckpt_every=1", "train.keep_last=2")
    with pytest.raises(ConfigError, match="already holds checkpoints; pass --resume"):
        train(cfg, finished, steps=6, device="cpu", progress=False)
    with pytest.raises(ConfigError, match="checkpoint is at step 4, beyond --steps 2"):
        train(cfg, finished, steps=2, device="cpu", progress=False, resume_run=True)
    fresh = train(cfg, tmp_path / "new", steps=1, device="cpu", progress=False, resume_run=True)
    assert fresh.step == 1  # --resume without a checkpoint starts at step 0


def test_checkpoint_holds_only_trained_weights_and_the_state(finished):
    from seedfast.models.seed_tokenizer import SeedTokenizer
    from seedfast.train.config import model_config

    loaded = ckpt.load(ckpt.latest(finished))
    model = SeedTokenizer(model_config("tokenizer", tiny(2).tokenizer))
    assert set(loaded.model) == {n for n, _ in model.trainable_parameters(2)}
    assert set(loaded.optimizer["state"]) == set(loaded.model)
    assert {key for entry in loaded.optimizer["state"].values() for key in entry} == {"step", "exp_avg", "exp_avg_sq"}
    assert all(torch.is_tensor(v) for entry in loaded.optimizer["state"].values() for v in entry.values())
    assert loaded.state["step"] == 4 and loaded.state["samples_seen"] == 4 * 32
    assert loaded.state["world_size"] == 1 and loaded.state["config"]["optim.lr"] == 0.003
