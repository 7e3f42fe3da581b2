"""One prepared run for a lent GPU that always leaves results (``bench/gpu_session.sh`` calls it).

Phases, each in its own process with its own timeout, under one overall deadline (540 s by
default, inside the 600 s one device call may take); each writes its files as soon as it ends:

1. ``install``: seedfast into the machine's own torch/triton (no network: ``--no-deps``), and any
   pure-Python peer wheels carried in ``.whl/`` into ``/tmp/site`` (``--no-index --no-deps``);
2. ``env``: ``seedfast env``;
3. GPU tests, without ``-x``: the GPU-marked CUDA-graph tests (replay equals eager decoding),
   then every other GPU-marked test; where nvcc or ninja is absent the ``cuda`` backend's tests
   are skipped with the reason;
4. the benchmark suites, VQ and sampling first, decode last, each saving its JSON after every
   measurement (``<date>-<device>[-quick]-<suite>.json``), so a timeout keeps what ran; a peer that
   raises is recorded as ``error: ...`` for its case;
5. on a GPU, with the time left: ``tests/ops`` (every kernel compiled and run for real), then the
   tokenizer training budget (``seedfast budget --measure --preset official``); then, on any
   device, the decode step's fused-op suites (``add_rms_norm``, ``silu_mul``, ``rope_kv_write``);
6. ``session.json``: every phase's exit status, time and files, the peers that were absent, and
   whether the ``cuda`` backend could be built.

Results go to ``$OUT`` when set, else ``bench/results/``. ``--device cpu --quick`` is the dry run
CI makes: the same phases and files, one case per suite.

Usage: ``python bench/gpu_session.py [--device cuda|cpu] [--quick] [--deadline S] [--skip-install]``
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Order matters: the cheap, most-wanted suites first, the 8B-shaped decode last.
SUITES = ("vq", "constrained_sample", "qformer_attention", "tokenizer", "decode")
# The decode step's small fused ops: after the op tests and the budget, with the time left.
LATE_SUITES = ("add_rms_norm", "silu_mul", "rope_kv_write")
# Seconds each phase may take at most on a GPU (the overall deadline clips them further).
GPU_CAPS = {"install": 30, "env": 10, "test-graphs": 50, "test-gpu": 70, "vq": 40, "constrained_sample": 40,
            "qformer_attention": 60, "tokenizer": 40, "decode": 80, "test-ops": 60, "budget": 30,
            "add_rms_norm": 20, "silu_mul": 20, "rope_kv_write": 20}
# Where seedfast's cuda backend cannot be built, tests of it are skipped by this pytest plugin.
SKIP_CUDA_PLUGIN = '''
import os
import pytest

REASON = os.environ["SEEDFAST_SESSION_NO_CUDA_BUILD"]


def pytest_collection_modifyitems(config, items):
    mark = pytest.mark.skip(reason=REASON)
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if params.get("backend") == "cuda" or "cuda_backend" in item.name or "cuda_extension" in item.name:
            item.add_marker(mark)
'''


def _log(msg: str) -> None:
    print(f"[gpu_session {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Session:
    """Runs phases under one deadline and keeps the record that becomes ``session.json``."""

    def __init__(self, out: Path, deadline_s: float, env: dict) -> None:
        self.out, self.env = out, env
        self.end = time.monotonic() + deadline_s
        self.record: dict = {"phases": [], "deadline_s": deadline_s}

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def run(self, name: str, cmd: list[str], cap: float, env: dict | None = None) -> dict:
        """Run ``cmd`` with stdout+stderr into ``<out>/<name>.log``; kill its process group on timeout."""
        limit = min(cap, self.remaining() - 5)
        phase = {"phase": name, "cmd": cmd, "log": f"{name}.log", "limit_s": round(limit, 1)}
        if limit < 5:
            phase.update(rc=None, skipped="no time left before the deadline")
            _log(f"{name}: skipped, no time left")
            self._save(phase)
            return phase
        _log(f"{name}: up to {limit:.0f} s: {' '.join(cmd)}")
        start = time.monotonic()
        with open(self.out / phase["log"], "w", encoding="utf-8") as log:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env or self.env,
                                    start_new_session=True)
            try:
                phase["rc"] = proc.wait(timeout=limit)
                phase["timed_out"] = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                phase["rc"], phase["timed_out"] = None, True
        phase["seconds"] = round(time.monotonic() - start, 1)
        tail = (self.out / phase["log"]).read_text(encoding="utf-8", errors="replace").splitlines()[-3:]
        status = "TIMED OUT" if phase["timed_out"] else f"rc={phase['rc']}"
        _log(f"{name}: {status} after {phase['seconds']} s | " + " | ".join(tail))
        self._save(phase)
        return phase

    def _save(self, phase: dict) -> None:
        self.record["phases"].append(phase)
        write_json(self.out / "session.json", self.record)


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    tmp.replace(path)


def install_wheels(session: Session, env: dict) -> list[str]:
    """Install the wheels carried in ``.whl/`` into ``/tmp/site`` and put it on the path."""
    wheels = sorted((ROOT / ".whl").glob("*.whl"))
    if not wheels:
        _log("no .whl/ folder: peers not on this machine stay absent")
        return []
    site = Path("/tmp/site")
    phase = session.run("install-wheels", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                           "--target", str(site), *map(str, wheels)], cap=40)
    if phase.get("rc") == 0:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
    return [w.name for w in wheels]


def cuda_build_blocker() -> str | None:
    """Why seedfast's ``cuda`` backend cannot be JIT-built here (None when nvcc and ninja exist)."""
    missing = [tool for tool in ("nvcc", "ninja") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not found: the cuda backend cannot be built" if missing else None


def absent_peers(out: Path, files: list[str]) -> dict[str, str]:
    """``{peer: why}`` for every implementation recorded as unavailable in the suites' JSON."""
    found: dict[str, str] = {}
    for name in files:
        for m in json.loads((out / name).read_text(encoding="utf-8")).get("measurements", []):
            if (m.get("error") or "").startswith("unavailable: "):
                found.setdefault(m["impl"], m["error"].removeprefix("unavailable: "))
    return found


def run_suite(name: str, out: Path, device: str, quick: bool, max_cases: int | None) -> int:
    """The child process of one suite: run it, saving the JSON after every measurement."""
    import torch

    from seedfast.benchmarks import load_suite
    from seedfast.benchmarks.harness import run_suites, write_result

    def save(result) -> None:
        save.path = write_result(result, out, tag=name)

    result = run_suites([load_suite(name)], quick=quick, device=torch.device(device), max_cases=max_cases,
                        budget_ms=5.0 if device == "cpu" else None,
                        progress=lambda label: print(label, flush=True), on_measurement=save)
    save(result)
    print(f"wrote {save.path}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="the suites' quick sizes")
    p.add_argument("--deadline", type=float, default=540.0, help="overall seconds (default 540)")
    p.add_argument("--skip-install", action="store_true", help="seedfast is already installed")
    p.add_argument("--max-cases", type=int, help="cases per suite (default: all on cuda, 1 on cpu)")
    every = SUITES + LATE_SUITES
    p.add_argument("--suites", default=",".join(every), help=f"comma-separated (default {','.join(every)}); "
                   f"{', '.join(LATE_SUITES)} run after the op tests and the budget")
    p.add_argument("--out", help="results folder (default: $OUT, else bench/results)")
    p.add_argument("--suite", help=argparse.SUPPRESS)  # the child process of one suite
    args = p.parse_args(argv)
    out = Path(args.out or os.environ.get("OUT") or ROOT / "bench" / "results").resolve()
    out.mkdir(parents=True, exist_ok=True)
    max_cases = args.max_cases if args.max_cases is not None else (1 if args.device == "cpu" else None)
    if args.suite:
        return run_suite(args.suite, out, args.device, args.quick, max_cases)
    suites = [s for s in args.suites.split(",") if s]
    unknown = sorted(set(suites) - set(SUITES + LATE_SUITES))
    if unknown:
        p.error(f"--suites: unknown {unknown}; choose from {', '.join(SUITES + LATE_SUITES)}")
    if args.deadline <= 0:
        p.error(f"--deadline: expected a positive number of seconds, got {args.deadline}")

    env = dict(os.environ, PYTHONUNBUFFERED="1", SEEDFAST_SKIP_AOT="1", OUT=str(out))
    session = Session(out, args.deadline, env)
    py = sys.executable
    # On CPU every phase gets the whole remaining time: the dry run checks the plumbing, not the caps.
    cap = GPU_CAPS if args.device == "cuda" else {k: args.deadline for k in GPU_CAPS}
    session.record.update(device=args.device, quick=args.quick, suites=suites, wheels=install_wheels(session, env))
    if not args.skip_install:
        session.run("install", [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", "."],
                    cap["install"])
    session.run("env", [py, "-m", "seedfast", "env"], cap["env"])

    blocker = cuda_build_blocker()
    session.record["cuda_backend"] = blocker or "nvcc and ninja found"
    test_env = dict(env)
    plugin = []
    if blocker:
        _log(f"skipping the cuda backend and its tests: {blocker}")
        site = Path("/tmp/seedfast_session_plugins")
        site.mkdir(parents=True, exist_ok=True)
        (site / "seedfast_skip_cuda.py").write_text(SKIP_CUDA_PLUGIN, encoding="utf-8")
        test_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH", "")]))
        test_env["SEEDFAST_SESSION_NO_CUDA_BUILD"] = blocker
        plugin = ["-p", "seedfast_skip_cuda"]
    pytest = [py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *plugin]
    session.run("test-graphs", [*pytest, "-m", "gpu", "-k", "graph", "tests"], cap["test-graphs"], env=test_env)
    session.run("test-gpu", [*pytest, "-m", "gpu", "-k", "not graph", "tests"], cap["test-gpu"], env=test_env)

    files: list[str] = []

    def suite_phase(name: str) -> None:
        started = time.time()
        cmd = [py, str(Path(__file__).resolve()), "--suite", name, "--device", args.device, "--out", str(out),
               *(["--quick"] if args.quick else []), *(["--max-cases", str(max_cases)] if max_cases else [])]
        phase = session.run(name, cmd, cap[name])
        # This suite's files are the ones it (re)wrote during its phase.
        written = sorted(f.name for f in out.glob(f"*-{name.replace('_', '-')}.json") if f.stat().st_mtime >= started)
        phase["json"] = written
        if phase.get("timed_out") and written:
            data = json.loads((out / written[0]).read_text(encoding="utf-8"))
            data["notes"].append(f"timed out after {phase['seconds']} s: the cases after the last one listed "
                                 "did not run")
            write_json(out / written[0], data)
        files.extend(written)
        write_json(out / "session.json", session.record)

    for name in suites:
        if name in SUITES:
            suite_phase(name)
    if args.device == "cuda":
        # The op tests compile and run every kernel for real on a GPU; with the time that is left.
        session.run("test-ops", [*pytest, "tests/ops"], cap["test-ops"], env=test_env)
        # Stage-2 MFU at the official sizes, for the training budget against the paper's V100-days.
        session.run("budget", [py, "-m", "seedfast", "budget", "--measure", "--preset", "official", "--batch", "256",
                               "--out", str(out / "budget")], cap["budget"])
    else:
        session.record["phases"] += [{"phase": name, "rc": None, "skipped": "GPU only (CI runs these on CPU)"}
                                     for name in ("test-ops", "budget")]
    for name in suites:
        if name in LATE_SUITES:
            suite_phase(name)
    session.record["absent_peers"] = absent_peers(out, files)
    session.record["seconds"] = round(args.deadline - session.remaining(), 1)
    write_json(out / "session.json", session.record)
    _log(f"done in {session.record['seconds']} s; absent peers: {session.record['absent_peers'] or 'none'}; "
         f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
