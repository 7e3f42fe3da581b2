"""The benchmark harness every op shares: timing, memory, rates, results JSON, tables, plots.

A suite (one module per op in this package) lists :class:`Case` s and :class:`Impl` s; the
harness builds each implementation's closure for each case, times it side by side with the
peers in the same process, and writes one JSON per run under ``bench/results/``.

Timing: on CUDA, CUDA events around each call with the L2 cache flushed before it, after a
warm-up (so compilation and autotuning stay out); the median and 20th/80th percentiles are
kept. On CPU, ``time.perf_counter``. Peak memory (CUDA only) is the allocator's peak during
one call minus what was allocated before it, so outputs count and persistent inputs do not.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from seedfast.checkpoint_io import save_bytes
from seedfast.env import EnvInfo, collect

SCHEMA_VERSION = 1


class PeerUnavailable(RuntimeError):
    """A peer cannot run here (package missing, unsupported device): recorded, not fatal."""


@dataclass(frozen=True)
class Case:
    """One problem size. ``flops`` and ``bytes`` are the useful work and the fewest bytes moved
    (each input read once, each output written once), from which rates are derived."""

    op: str
    mode: str
    params: dict
    flops: float = 0.0
    bytes: float = 0.0
    size: float = 0.0

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items())


@dataclass(frozen=True)
class Impl:
    """An implementation: ``build(case, device)`` prepares inputs and returns the closure to time."""

    name: str
    build: Callable[[Case, torch.device], Callable[[], object]]
    ours: bool = False


@dataclass
class Measurement:
    """One implementation on one case."""

    op: str
    mode: str
    case: dict
    impl: str
    ours: bool
    median_ms: float | None = None
    q20_ms: float | None = None
    q80_ms: float | None = None
    reps: int = 0
    peak_mem_mib: float | None = None
    tflops: float | None = None
    gbps: float | None = None
    error: str | None = None


@dataclass
class Timing:
    median_ms: float
    q20_ms: float
    q80_ms: float
    reps: int


@dataclass
class RunResult:
    """A whole run: environment, settings and every measurement."""

    date: str
    device: str
    quick: bool
    env: dict
    measurements: list[Measurement] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    schema: int = SCHEMA_VERSION

    def as_dict(self) -> dict:
        return asdict(self)


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def time_callable(fn: Callable[[], object], device: torch.device, *, budget_ms: float = 200.0,
                  min_reps: int = 5, max_reps: int = 1000) -> Timing:
    """Median time of ``fn()`` after warm-up, with as many repeats as fit ``budget_ms``."""
    if device.type == "cuda":
        return _time_cuda(fn, budget_ms, min_reps, max_reps)
    fn()  # warm-up
    t0 = time.perf_counter()
    fn()
    once = (time.perf_counter() - t0) * 1e3
    reps = int(min(max_reps, max(min_reps, budget_ms / max(once, 1e-3))))
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), reps)


def _time_cuda(fn: Callable[[], object], budget_ms: float, min_reps: int, max_reps: int) -> Timing:
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device="cuda")
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        fn()
    end.record()
    torch.cuda.synchronize()
    once = start.elapsed_time(end) / 3
    reps = int(min(max_reps, max(min_reps, budget_ms / max(once, 1e-3))))
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        flush.zero_()  # each call starts with a cold L2, as in a real pipeline
        starts[i].record()
        fn()
        ends[i].record()
    torch.cuda.synchronize()
    samples = [s.elapsed_time(e) for s, e in zip(starts, ends)]
    return Timing(statistics.median(samples), _quantile(samples, 0.2), _quantile(samples, 0.8), reps)


def peak_memory_mib(fn: Callable[[], object], device: torch.device) -> float | None:
    """Peak extra device memory of one call, in MiB (None off CUDA)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def measure(case: Case, impl: Impl, device: torch.device, *, budget_ms: float) -> Measurement:
    """Build and time one implementation on one case; failures become recorded errors.

    ``Measurement.error`` is ``"unavailable: <why>"`` for :class:`PeerUnavailable`, ``"out of
    memory"``, or ``"error: <ExceptionType>: <message>"`` for anything else an implementation
    raises (a peer's bug, a kernel that fails to compile): recorded for that implementation and
    case, so the rest of the suite still runs. ``KeyboardInterrupt`` still stops the run.
    """
    m = Measurement(op=case.op, mode=case.mode, case=dict(case.params), impl=impl.name, ours=impl.ours)
    fn = None
    try:
        fn = impl.build(case, device)
        m.peak_mem_mib = peak_memory_mib(fn, device)
        t = time_callable(fn, device, budget_ms=budget_ms)
    except PeerUnavailable as err:
        m.error = f"unavailable: {err}"
        return m
    except torch.cuda.OutOfMemoryError:
        m.error = "out of memory"
        return m
    except Exception as err:  # noqa: BLE001 - one broken implementation must not cost the other results
        m.error = f"error: {type(err).__name__}: {_one_line(err)}"
        return m
    finally:
        del fn
        if device.type == "cuda":
            torch.cuda.empty_cache()
    m.median_ms, m.q20_ms, m.q80_ms, m.reps = t.median_ms, t.q20_ms, t.q80_ms, t.reps
    seconds = t.median_ms / 1e3
    if case.flops:
        m.tflops = case.flops / seconds / 1e12
    if case.bytes:
        m.gbps = case.bytes / seconds / 1e9
    return m


def run_suites(suites: Sequence, *, quick: bool, device: torch.device, budget_ms: float | None = None,
               progress: Callable[[str], None] | None = None, max_cases: int | None = None,
               on_measurement: Callable[[RunResult], None] | None = None) -> RunResult:
    """Run every case of every suite with all its implementations, side by side.

    ``max_cases`` keeps each suite's first cases only (a dry run); ``on_measurement(result)``
    is called after each measurement, e.g. to save partial results that survive a timeout.
    """
    if max_cases is not None and max_cases < 1:
        raise ValueError(f"run_suites: max_cases must be >= 1 or None, got {max_cases}")
    env: EnvInfo = collect()
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else env.cpu
    result = RunResult(date=_dt.date.today().isoformat(), device=device_name, quick=quick, env=env.as_dict())
    if device.type != "cuda":
        result.notes.append("CPU run: seedfast dispatches to its torch reference paths here; "
                            "these numbers track regressions and support no speed claim.")
    budget = budget_ms if budget_ms is not None else (60.0 if quick else 300.0)
    for suite in suites:
        for case in suite.cases(quick=quick, device=device)[:max_cases]:
            for impl in suite.impls:
                if progress:
                    progress(f"{case.op} {case.mode} {case.label} · {impl.name}")
                result.measurements.append(measure(case, impl, device, budget_ms=budget))
                if on_measurement:
                    on_measurement(result)
    return result


def slug(text: str) -> str:
    """File-name-safe form of a device name."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "device"


def write_result(result: RunResult, out_dir: str | Path, *, tag: str = "") -> Path:
    """Write ``<out_dir>/<date>-<device>[-quick][-<tag>].json`` (atomically) and return its path.

    ``tag`` (e.g. the suite's name) keeps the files of runs made separately on the same day apart.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{result.date}-{slug(result.device)}{'-quick' if result.quick else ''}"
    path = out / f"{stem}{'-' + slug(tag) if tag else ''}.json"
    # A failed write (disk full, a kill) leaves the previous file, never a partial one or a temporary.
    return save_bytes(path, (json.dumps(result.as_dict(), indent=1) + "\n").encode("utf-8"))


def load_result(path: str | Path) -> RunResult:
    """Read a results JSON back."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{path}: results schema {data.get('schema')!r}, expected {SCHEMA_VERSION}")
    data["measurements"] = [Measurement(**m) for m in data["measurements"]]
    return RunResult(**data)


def _group(result: RunResult) -> dict[tuple, list[Measurement]]:
    groups: dict[tuple, list[Measurement]] = {}
    for m in result.measurements:
        groups.setdefault((m.op, m.mode, json.dumps(m.case, sort_keys=False)), []).append(m)
    return groups


def _fmt_ms(m: Measurement) -> str:
    if m.error:
        if m.error == "out of memory":
            return "OOM"
        return "error" if m.error.startswith("error: ") else "n/a"
    return f"{m.median_ms:.3f}" if m.median_ms < 100 else f"{m.median_ms:.1f}"


def speedups(result: RunResult) -> list[dict]:
    """Per case: our time, each peer's time and ``peer / ours`` (above 1 means we are faster)."""
    rows = []
    for (op, mode, case_json), ms in _group(result).items():
        ours = next((m for m in ms if m.ours), None)
        row = {"op": op, "mode": mode, "case": json.loads(case_json), "ours": ours, "peers": {}}
        for m in ms:
            if m.ours:
                continue
            ratio = None
            if ours and not ours.error and not m.error:
                ratio = m.median_ms / ours.median_ms
            row["peers"][m.impl] = (m, ratio)
        rows.append(row)
    return rows


def format_table(result: RunResult, *, markdown: bool = False) -> str:
    """Times (ms) and speed-ups, one line per case and one table per op (with that op's peers)."""
    lines = []
    rows = speedups(result)
    for op in dict.fromkeys(r["op"] for r in rows):
        op_rows = [r for r in rows if r["op"] == op]
        peers = list(dict.fromkeys(p for r in op_rows for p in r["peers"]))
        header = ["op", "mode", "case", "seedfast ms", *[f"{p} ms" for p in peers], *[f"× {p}" for p in peers],
                  "TFLOP/s", "peak MiB"]
        body = []
        for r in op_rows:
            ours = r["ours"]
            cells = [r["op"], r["mode"], " ".join(f"{k}={v}" for k, v in r["case"].items()),
                     _fmt_ms(ours) if ours else "-"]
            cells += [_fmt_ms(r["peers"][p][0]) if p in r["peers"] else "-" for p in peers]
            cells += [(f"{r['peers'][p][1]:.2f}" if p in r["peers"] and r["peers"][p][1] else "-") for p in peers]
            cells.append(f"{ours.tflops:.2f}" if ours and ours.tflops else "-")
            cells.append(f"{ours.peak_mem_mib:.1f}" if ours and ours.peak_mem_mib is not None else "-")
            body.append(cells)
        if markdown:
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "|".join("---" for _ in header) + "|")
            lines += ["| " + " | ".join(c) + " |" for c in body]
        else:
            widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
            lines += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in body]
        lines.append("")
    lines.append(f"device: {result.device} · date {result.date} · torch {result.env['versions'].get('torch')}"
                 f" · triton {result.env['versions'].get('triton')}")
    lines += [f"note: {n}" for n in result.notes]
    lines += [f"{m.impl} on {m.op} {m.mode} {' '.join(f'{k}={v}' for k, v in m.case.items())}: {m.error}"
              for m in result.measurements if m.error and m.error.startswith("error: ")]
    return "\n".join(lines)


def plot_speedups(result: RunResult, path: str | Path) -> Path:
    """Speed-up over each peer against problem size, one panel per (op, mode, dtype)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib") from err
    panels: dict[tuple, dict[str, list[tuple[float, float]]]] = {}
    for r in speedups(result):
        case = dict(r["case"])
        size_key = next(iter(case))
        size = float(case.pop(size_key))
        key = (r["op"], r["mode"], " ".join(f"{k}={v}" for k, v in case.items()), size_key)
        for peer, (_, ratio) in r["peers"].items():
            if ratio:
                panels.setdefault(key, {}).setdefault(peer, []).append((size, ratio))
    if not panels:
        raise RuntimeError("nothing to plot: no case has both seedfast and a peer measured")
    n = len(panels)
    cols = min(3, n)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(5 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, ((op, mode, rest, size_key), peers) in zip(axes.flat, panels.items()):
        for peer, pts in peers.items():
            pts.sort()
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=peer)
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(size_key)
        ax.set_ylabel("speed-up (peer time / seedfast time)")
        ax.set_title(f"{op} {mode} {rest}", fontsize=9)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"seedfast vs peers on {result.device} ({result.date})")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
