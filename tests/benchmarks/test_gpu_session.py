"""``bench/gpu_session.sh``: the prepared GPU run, dry-run on CPU so that it is tested before a GPU sees it."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _driver():
    spec = importlib.util.spec_from_file_location("gpu_session", ROOT / "bench" / "gpu_session.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_phase_past_its_timeout_is_killed_and_recorded(tmp_path):
    gs = _driver()
    session = gs.Session(tmp_path, deadline_s=60.0, env=None)
    phase = session.run("sleepy", [sys.executable, "-c", "print('started', flush=True); import time; time.sleep(60)"],
                        cap=6)
    assert phase["timed_out"] is True and phase["rc"] is None and phase["seconds"] < 30
    assert "started" in (tmp_path / "sleepy.log").read_text()
    done = session.run("quick", [sys.executable, "-c", "raise SystemExit(3)"], cap=30)
    assert done["rc"] == 3 and done["timed_out"] is False
    session.end = 0.0  # the deadline has passed: later phases are skipped, not run
    assert session.run("late", [sys.executable, "-c", "pass"], cap=30)["skipped"]
    record = json.loads((tmp_path / "session.json").read_text())
    assert [p["phase"] for p in record["phases"]] == ["sleepy", "quick", "late"]


def test_cuda_backend_tests_skip_with_a_reason_without_nvcc(tmp_path, monkeypatch):
    gs = _driver()
    monkeypatch.setattr(gs.shutil, "which", lambda tool: None if tool == "ninja" else f"/usr/bin/{tool}")
    assert gs.cuda_build_blocker() == "ninja not found: the cuda backend cannot be built"
    monkeypatch.setattr(gs.shutil, "which", lambda tool: f"/usr/bin/{tool}")
    assert gs.cuda_build_blocker() is None
    (tmp_path / "seedfast_skip_cuda.py").write_text(gs.SKIP_CUDA_PLUGIN)
    (tmp_path / "test_toy.py").write_text(
        "import pytest\n\n@pytest.mark.parametrize('backend', ['torch', 'cuda'])\ndef test_op(backend):\n"
        "    assert backend != 'cuda'\n")
    env = {"PYTHONPATH": str(tmp_path), "SEEDFAST_SESSION_NO_CUDA_BUILD": "nvcc not found: reason"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-p",
                           "seedfast_skip_cuda", str(tmp_path / "test_toy.py")], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed, 1 skipped" in proc.stdout and "nvcc not found: reason" in proc.stdout


@pytest.mark.slow
def test_cpu_dry_run_writes_every_file(tmp_path):
    # This interpreter, whatever PATH holds (a venv's python run without activating it).
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_session.sh"), "--device", "cpu", "--quick",
                           "--skip-install", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads((tmp_path / "session.json").read_text())
    phases = {p["phase"]: p for p in record["phases"]}
    order = [p["phase"] for p in record["phases"]]
    late = ["add_rms_norm", "silu_mul", "rope_kv_write"]
    suites = ["vq", "constrained_sample", "qformer_attention", "tokenizer", "decode", *late]
    assert [p for p in order if p in suites] == suites  # VQ and sampling first, the model suites, the decode ops
    assert order.index("test-graphs") < order.index("test-gpu") < order.index("vq")  # GPU tests first
    assert order.index("decode") < order.index("test-ops") < order.index("budget") < order.index(late[0])
    assert phases["test-ops"]["skipped"] and phases["budget"]["skipped"]  # GPU only
    for name in suites:
        assert phases[name]["rc"] == 0 and not phases[name]["timed_out"], name
        (json_name,) = phases[name]["json"]
        data = json.loads((tmp_path / json_name).read_text())
        assert data["measurements"] and data["quick"] is True, name
        assert (tmp_path / f"{name}.log").is_file()
    for name in ("env", "test-graphs", "test-gpu"):
        assert phases[name]["rc"] == 0, (name, (tmp_path / f"{name}.log").read_text()[-2000:])
    # Peers this machine lacks are named, with the reason, in session.json.
    assert "flashinfer" in record["absent_peers"] and record["seconds"] < record["deadline_s"]
