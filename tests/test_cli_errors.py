"""One-line errors of ``seedfast train``/``budget``/``bench``/``env`` (issue 15), run as
subprocesses: exit status 2, exactly one line on stderr, no traceback; ``--debug`` (or
``SEEDFAST_DEBUG=1``) shows the traceback."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAULTS = REPO / "tests" / "train" / "cli_faults.py"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SEEDFAST_DEBUG"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO), **extra)
    return env


def _run(*args: str, fault: str | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = _env(**({"SEEDFAST_TEST_FAULT": fault} if fault else {}))
    command = [sys.executable, str(FAULTS), *args] if fault else [sys.executable, "-m", "seedfast", *args]
    kwargs.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(command, env=env, stderr=subprocess.PIPE, text=True, timeout=300, cwd=REPO, **kwargs)


def _error_line(done: subprocess.CompletedProcess, command: str) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    prefix = f"seedfast {command}: error: "
    assert lines[0].startswith(prefix)
    return lines[0][len(prefix):]


@pytest.mark.parametrize("argv, message", [
    (["--pairs", "-1"], "--pairs must be a positive number of image-text pairs, got -1"),
    (["--pairs", "0"], "--pairs must be a positive number of image-text pairs, got 0"),
    (["--epochs", "-1", "500"], "--epochs STAGE1 STAGE2 must be non-negative, not both 0, got -1 500"),
    (["--epochs", "0", "0"], "--epochs STAGE1 STAGE2 must be non-negative, not both 0, got 0 0"),
    (["--peak-tflops", "-1"], "--peak-tflops must be a positive finite number, got -1.0"),
    (["--peak-tflops", "inf"], "--peak-tflops must be a positive finite number, got inf"),
    (["--time-ms", "-5"], "--time-ms must be a positive finite number, got -5.0"),
    (["--time-ms", "nan"], "--time-ms must be a positive finite number, got nan"),
    (["--batch", "0"], "--batch must be at least 1 sample per measured step, got 0"),
])
def test_budget_refuses_bad_numbers_before_measuring(argv, message):
    assert _error_line(_run("budget", "--measure", "--device", "cpu", *argv), "budget") == message


def test_budget_measure_out_read_only_or_a_file(tmp_path):
    ro = tmp_path / "ro"
    line = _error_line(_run("budget", "--measure", "--device", "cpu", "--out", str(ro / "results"),
                            fault=f"read-only:{ro}"), "budget")
    assert line == f"--out {ro / 'results'}: Read-only file system ({ro / 'results'})"
    (tmp_path / "file").write_text("x")
    line = _error_line(_run("budget", "--measure", "--device", "cpu", "--out", str(tmp_path / "file")), "budget")
    assert line == f"--out {tmp_path / 'file'} is a file; expected a folder for the results JSON"


def _report_cases(tmp_path: Path) -> list[tuple[Path, str]]:
    missing = tmp_path / "missing.json"
    malformed = tmp_path / "malformed.json"
    malformed.write_text('{"schema": 1, "meas')
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    schemaless = tmp_path / "schemaless.json"
    schemaless.write_text('{"measurements": []}')
    other = tmp_path / "other.json"
    other.write_text('{"schema": 999}')
    binary = tmp_path / "image.png"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe")
    return [
        (missing, f"--report {missing}: missing"),
        (malformed, f"--report {malformed}: not valid JSON (Unterminated string"),
        (listed, f"--report {listed}: not a seedfast bench results file (no 'schema' field)"),
        (schemaless, f"--report {schemaless}: not a seedfast bench results file (no 'schema' field)"),
        (other, f"--report {other}: not a readable seedfast bench results file ({other}: results schema 999"),
        (binary, f"--report {binary}: not valid JSON"),
    ]


def test_bench_report_on_bad_files(tmp_path):
    for path, start in _report_cases(tmp_path):
        assert _error_line(_run("bench", "--report", str(path)), "bench").startswith(start), path


def test_bench_out_naming_a_file_or_read_only(tmp_path):
    (tmp_path / "file").write_text("x")
    line = _error_line(_run("bench", "--quick", "--op", "vq", "--device", "cpu", "--out", str(tmp_path / "file")),
                       "bench")
    assert line == f"--out {tmp_path / 'file'} is a file; expected a folder for the results JSON"
    ro = tmp_path / "ro"
    line = _error_line(_run("bench", "--quick", "--op", "vq", "--device", "cpu", "--out", str(ro),
                            fault=f"read-only:{ro}"), "bench")
    assert line == f"--out {ro}: Read-only file system ({ro})"


def test_budget_results_on_bad_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    line = _error_line(_run("budget", "--results", str(bad)), "budget")
    assert line.startswith(f"--results {bad}: not valid JSON")
    line = _error_line(_run("budget", "--results", str(tmp_path / "none.json")), "budget")
    assert line == f"--results {tmp_path / 'none.json'}: missing"


def test_budget_log_on_bad_files(tmp_path):
    bad = tmp_path / "log.jsonl"
    bad.write_text('{"event": "start"}\n{"step')
    line = _error_line(_run("budget", "--log", str(bad)), "budget")
    assert line.startswith(f"{bad}: line 2 is not JSON (")


def test_train_config_that_is_not_toml_text(tmp_path):
    png = tmp_path / "some.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    line = _error_line(_run("train", "--stage", "2", "--config", str(png), "--print-config"), "train")
    assert line == f"--config {png}: not a text file (expected UTF-8 TOML)"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_env_on_a_full_stdout():
    with open("/dev/full", "w") as full:
        line = _error_line(_run("env", stdout=full), "env")
    assert "No space left on device" in line


@pytest.mark.parametrize("how", ["flag", "flag after the command", "environment"])
def test_debug_shows_the_traceback(how):
    argv = ["budget", "--measure", "--pairs", "-1"]
    if how == "flag":
        done = _run("--debug", *argv)
    elif how == "flag after the command":
        done = _run(*argv, "--debug")
    else:
        done = subprocess.run([sys.executable, "-m", "seedfast", *argv], env=_env(SEEDFAST_DEBUG="1"),
                              capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 2
    assert "Traceback (most recent call last)" in done.stderr and "CliError" in done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "seedfast budget: error: --pairs must be a positive number of image-text pairs, got -1")
