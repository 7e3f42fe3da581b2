"""The run folder under faults (issue 15): one run at a time, a file where a folder belongs, a
read-only or full disk; the CLI cases run as subprocesses (exit 2, one line, no traceback)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from seedfast.train import checkpoint as ckpt
from seedfast.train.lock import LOCK_FILE, RunFolderError, RunLock
from seedfast.train.loop import train

from .helpers import max_diff, seedfast_cmd, subprocess_env, tiny, weights

FAULTS = Path(__file__).with_name("cli_faults.py")
TRAIN = ["train", "--stage", "2", "--preset", "tiny", "--device", "cpu", "--no-progress"]


def _one_line_error(done: subprocess.CompletedProcess, command: str = "train") -> str:
    """The single stderr line of a failed command (exit 2, no traceback)."""
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"seedfast {command}: error: ")
    return lines[0]


def _seedfast(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = subprocess_env()
    command = seedfast_cmd(*args)
    if fault is not None:
        env["SEEDFAST_TEST_FAULT"] = fault
        command = [sys.executable, str(FAULTS), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


# ---- start-up checks --------------------------------------------------------------------------


@pytest.mark.parametrize("resume", [False, True])
def test_a_checkpoints_file_is_refused_at_start(tmp_path, resume):
    (tmp_path / "checkpoints").write_text("not a folder")
    with pytest.raises(RunFolderError, match=r"checkpoints is a file, not the run's checkpoints folder"):
        train(tiny(2), tmp_path, steps=2, device="cpu", progress=False, resume_run=resume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoints"]  # nothing trained, nothing written


def test_out_naming_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("a file")
    with pytest.raises(RunFolderError, match=r"--out .*run is a file; expected a run folder"):
        train(tiny(2), tmp_path / "run", steps=2, device="cpu", progress=False)


def test_cli_refuses_a_checkpoints_file_and_an_out_file_in_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("x")
    line = _one_line_error(_seedfast(*TRAIN, "--steps", "2", "--out", str(tmp_path / "run"), "--resume"))
    assert f"{tmp_path / 'run' / 'checkpoints'} is a file" in line
    (tmp_path / "file").write_text("x")
    line = _one_line_error(_seedfast(*TRAIN, "--steps", "2", "--out", str(tmp_path / "file")))
    assert line.endswith(f"--out {tmp_path / 'file'} is a file; expected a run folder (new or from an earlier run)")


# ---- one run per folder -----------------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path):
    with RunLock(tmp_path) as held:
        assert (tmp_path / LOCK_FILE).read_text() == f"pid {os.getpid()}\n"
        with pytest.raises(RunFolderError, match=rf"{tmp_path} is in use by another seedfast train run "
                                                 rf"\(pid {os.getpid()}\)"):
            RunLock(tmp_path)
        with pytest.raises(RunFolderError, match="in use by another seedfast train run"):
            train(tiny(2), tmp_path, steps=1, device="cpu", progress=False)
        assert held.out == tmp_path
    RunLock(tmp_path).release()  # released on exit: a later run takes it


def test_second_run_is_refused_and_a_killed_holder_does_not_block(tmp_path):
    """A live holder (another process) blocks ``seedfast train`` with one line naming the folder;
    once it is killed with SIGKILL, its lock file is left behind but no longer blocks."""
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from seedfast.train.lock import RunLock; "
                               f"lock = RunLock({str(run)!r}); print('locked', flush=True); time.sleep(600)"],
        env=subprocess_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = _one_line_error(_seedfast(*TRAIN, "--steps", "1", "--out", str(run)))
        assert line.endswith(f"{run} is in use by another seedfast train run (pid {holder.pid}); wait for it to end "
                             "or choose another --out")
    finally:
        holder.kill()
        holder.wait(timeout=60)
    assert (run / LOCK_FILE).is_file()  # stale: the holder never cleaned up
    result = train(tiny(2), run, steps=1, device="cpu", progress=False)
    assert result.step == 1 and result.final is not None


# ---- read-only and full disks -----------------------------------------------------------------


def test_read_only_out_is_one_line(tmp_path):
    line = _one_line_error(_seedfast(*TRAIN, "--steps", "1", "--out", str(tmp_path / "ro" / "run"),
                                     fault=f"read-only:{tmp_path / 'ro'}"))
    assert line == (f"seedfast train: error: writing --out {tmp_path / 'ro' / 'run'}: Read-only file system "
                    f"({tmp_path / 'ro' / 'run'})")


def test_read_only_precompute_folder_is_one_line(tmp_path):
    line = _one_line_error(_seedfast("train", "--stage", "1", "--preset", "tiny", "--device", "cpu", "--no-progress",
                                     "--precompute-features", str(tmp_path / "ro" / "f"),
                                     fault=f"read-only:{tmp_path / 'ro'}"))
    assert f"writing --precompute-features {tmp_path / 'ro' / 'f'}: Read-only file system" in line


def test_precompute_folder_naming_a_file_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    line = _one_line_error(_seedfast("train", "--stage", "1", "--preset", "tiny", "--device", "cpu",
                                     "--precompute-features", str(tmp_path / "f")))
    assert line.endswith(f"--precompute-features {tmp_path / 'f'} is a file; expected a folder")


@pytest.mark.parametrize("fault, message", [
    ("disk-full", "No space left on device"),
    ("disk-full-safetensors", "No space left on device (os error 28)"),
])
def test_disk_full_during_training_then_resume_is_bit_identical(tmp_path, fault, message):
    """ENOSPC while writing the step-4 checkpoint: exit 2 in one line, no partial folder, the
    step-2 checkpoint intact; ``--resume`` once space is back ends bit-identical to a run that
    never failed."""
    args = [*TRAIN, "--set", "train.ckpt_every=2", "--set", "tokenizer.qformer_dropout=0.1"]
    run = tmp_path / "run"
    line = _one_line_error(_seedfast(*args, "--steps", "6", "--out", str(run), fault=f"{fault}:.tmp-step-00000004"))
    assert f"writing --out {run}" in line and message in line
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (run / "final").exists()

    cfg = tiny(2, "train.ckpt_every=2", "tokenizer.qformer_dropout=0.1")
    resumed = train(cfg, run, steps=6, device="cpu", progress=False, resume_run=True)
    assert resumed.step == 6
    train(cfg, tmp_path / "straight", steps=6, device="cpu", progress=False)
    assert max_diff(weights(run, 6), weights(tmp_path / "straight", 6)) == 0.0
    for name in (ckpt.MODEL_FILE, ckpt.OPTIM_FILE):
        assert ((run / "checkpoints" / "step-00000006" / name).read_bytes()
                == (tmp_path / "straight" / "checkpoints" / "step-00000006" / name).read_bytes())
    assert ((run / "final" / "model.safetensors").read_bytes()
            == (tmp_path / "straight" / "final" / "model.safetensors").read_bytes())
