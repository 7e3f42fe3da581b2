"""``seedfast kernels``: what the compiled code of every shipped kernel says, without a GPU.

Every shipped Triton kernel is compiled ahead of time for each requested architecture at every
config its launcher can pick, with the specialisation a real launch gets, and every ``csrc/``
kernel is compiled with ``nvcc --resource-usage``. Per kernel, variant and config the report
reads from the compiled code:

* registers, spill stores/loads (``STL``/``LDL`` instructions in the SASS: Triton allocates no
  other local memory), shared memory (Triton's dynamic allocation; static for ``csrc/``), warps;
* whether every ``tl.dot`` lowered to a tensor-core instruction: in Triton's GPU IR every dot is
  ``ttng.warp_group_dot`` (sm_90) or ``tt.dot`` with an ``#mma`` result (sm_80), and the SASS
  holds ``HGMMA``/``HMMA``; a ``tt.dot`` with any other result layout is an FMA loop;
* the global loads of the hot loop by width: 128-bit ``LDG.E.128``, asynchronous copies
  (``LDGSTS``, i.e. ``cp.async``) and TMA (``UTMALDG``) count as vectorised, ``LDG.E.64`` as
  two-wide, anything narrower as scalar;
* the SASS instruction count of the hot loop. How the hot loop is found: every backward branch
  (``BRA`` to a lower address) closes a loop spanning [target, branch]; the hot loop is the loop
  with the most tensor-core instructions, else the most global loads, and among loops with that
  count the smallest (the innermost). A kernel without a backward branch is its own hot loop.

How kernels and configs are found: the op benchmarks' own cases (:mod:`seedfast.benchmarks`)
are built on CPU tensors of the benchmark shapes and run once through the public ops with the
Triton backend, with Triton's ``JITFunction.run`` and ``Autotuner.run`` replaced by recorders,
so that every launch the ops make is captured with its real arguments and nothing runs. Each
capture is then bound through Triton's own binder for the GPU target (integers divisible by 16
get divisibility hints, pointers their alignment, exactly as at launch) and compiled once per
config the autotuner would try (after its own pruning). This runs in a subprocess with
``TRITON_INTERPRET`` cleared, and compiles in parallel forked workers.

The estimated-time column is an estimate, never a measurement. Model: each benchmark case's
useful FLOPs and fewest bytes moved (the suite's ``Case.flops`` and ``Case.bytes``) against an
H100 SXM's limits, ``t = max(bytes / 3.0 TB/s, FLOPs / peak) / fill``, with 3.0 TB/s achievable
HBM bandwidth, a peak of 990 TFLOP/s dense for bf16/fp16 tensor cores and 165 TFLOP/s for fp32
(3xTF32: three 495 TFLOP/s TF32 products), and ``fill = min(1, programs / 132)`` because a grid
of fewer programs than the 132 SMs uses only that share of the chip (one program per SM at a
time; caches, launch latency, tails and instruction issue limits are ignored). ``programs`` is
the largest grid among the case's launches, at the config with the most programs (``est lo``)
and the fewest (``est hi``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seedfast.benchmarks.compiled_code import (
    analyse_sass,
    cache_dir,
    cuobjdump,
    read_cubin,
    resource_usage,
    sass_functions,
    ttgir_dots,
)

ARCHS = ("sm_80", "sm_90")
HBM_BYTES_PER_S = 3.0e12
TENSOR_FLOPS = {"bf16": 990e12, "fp16": 990e12, "fp32": 165e12}
NUM_SMS = 132
# The op benchmarks whose kernels are compiled (the other suites time whole models).
OPS = ("vq", "qformer_attention", "constrained_sample", "rope_kv_write", "add_rms_norm", "silu_mul")
# The hot paths the CI gate judges: (op, benchmark modes, largest head dim or None).
HOT = {"vq forward": ("vq", ("codes", "fwd"), None),
       "attention forward": ("qformer_attention", ("fwd",), 128),
       "sampler": ("constrained_sample", None, None),
       "decode rope+kv write": ("rope_kv_write", None, None),
       "decode add+rmsnorm": ("add_rms_norm", None, None),
       "decode silu*mul": ("silu_mul", None, None)}



@dataclass
class KernelStats:
    """One kernel compiled for one architecture at one config and variant."""

    op: str
    kernel: str
    arch: str
    config: str
    variant: str
    source: str  # "triton" or "csrc"
    warps: int | None = None
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    shared_bytes: int | None = None
    dots: int | None = None
    tensor_core_dots: bool | None = None
    tensor_core_insns: int = 0
    hot_loop: str = ""
    hot_loop_insns: int = 0
    hot_vector_loads: int = 0
    hot_wide2_loads: int = 0
    hot_scalar_loads: int = 0
    modes: list[str] = field(default_factory=list)
    max_head_dim: int | None = None
    first_case: str = ""
    error: str | None = None

    @property
    def loads(self) -> str:
        """Hot-loop global loads: ``vector/two-wide/scalar`` counts."""
        return f"{self.hot_vector_loads}/{self.hot_wide2_loads}/{self.hot_scalar_loads}"

    @property
    def scalar_only(self) -> bool:
        """The hot loop loads from global memory, and only one element at a time."""
        return self.hot_vector_loads == 0 and self.hot_wide2_loads == 0 and self.hot_scalar_loads > 0


@dataclass
class CaseEstimate:
    """The estimated time of one benchmark case (an estimate from an H100's limits)."""

    op: str
    mode: str
    case: dict
    bytes: float
    flops: float
    kernels: list[str]
    programs_lo: int
    programs_hi: int
    est_us_lo: float
    est_us_hi: float
    bound: str


@dataclass
class KernelsReport:
    """Everything ``seedfast kernels`` prints."""

    archs: list[str]
    kernels: list[KernelStats]
    estimates: list[CaseEstimate]
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def estimate_us(nbytes: float, flops: float, programs: int, dtype: str) -> tuple[float, str]:
    """The roofline estimate of one call, in microseconds, and which limit binds.

    Parameters
    ----------
    nbytes, flops : float
        Fewest bytes moved and useful FLOPs of the call.
    programs : int
        Programs in the grid; fewer than :data:`NUM_SMS` use that share of the chip.
    dtype : {"bf16", "fp16", "fp32"}
        Picks the tensor-core peak from :data:`TENSOR_FLOPS`.

    Returns
    -------
    (float, str)
        The estimate and ``"memory"`` or ``"compute"``.
    """
    if dtype not in TENSOR_FLOPS:
        raise ValueError(f"estimate_us: dtype must be one of {sorted(TENSOR_FLOPS)}, got {dtype!r}")
    if programs < 1:
        raise ValueError(f"estimate_us: programs must be >= 1, got {programs}")
    fill = min(1.0, programs / NUM_SMS)
    memory, compute = nbytes / HBM_BYTES_PER_S, flops / TENSOR_FLOPS[dtype]
    return max(memory, compute) / fill * 1e6, "memory" if memory >= compute else "compute"


# ------------------------------------------------------------------------------------------------
# The capture and compile subprocess


def _patch_backends() -> None:
    """Let the ops pick their Triton path on CPU tensors (nothing runs: launches are recorded)."""
    for name, module in list(sys.modules.items()):
        original = getattr(module, "resolve_backend", None)
        if name.startswith("seedfast.ops") and callable(original) and not hasattr(original, "recording"):
            def resolve(op, backend, device, *args, _original=original, **kwargs):
                return "triton" if backend in ("auto", "triton") else _original(op, backend, device, *args, **kwargs)
            resolve.recording = True
            module.resolve_backend = resolve


def _capture(suite, cases, log: list) -> list[dict]:
    """Run the suite's own implementation once per case with launches recorded."""
    import torch

    ours = next(i for i in suite.impls if i.ours)
    captured = []
    for case in cases:
        log.clear()
        error = None
        try:
            fn = ours.build(case, torch.device("cpu"))
            fn()
        except Exception as err:  # noqa: BLE001 - garbage outputs may upset code after a launch
            error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
        captured.append({"case": case, "launches": list(log), "error": error})
    return captured


def _jit_of(fn):
    from triton.runtime.jit import JITFunction

    while not isinstance(fn, JITFunction):
        fn = fn.fn
    return fn


def _configs(tuner, args, kwargs) -> list:
    import triton

    if tuner is None:
        return [triton.Config({}, num_warps=kwargs.get("num_warps", 4), num_stages=kwargs.get("num_stages", 3))]
    named = dict(zip(tuner.arg_names, args), **kwargs)
    prune = getattr(tuner, "early_config_prune", None)
    if prune is None:
        return list(tuner.configs)
    try:
        # The pruner itself: Autotuner.prune_configs reads arguments a real launch sets first.
        return list(prune(tuner.configs, named))
    except Exception:  # noqa: BLE001 - a pruner that needs a GPU: every config is a candidate
        return list(tuner.configs)


def _config_label(cfg) -> str:
    kw = " ".join(f"{k}={v}" for k, v in cfg.kwargs.items())
    return f"{kw} w{cfg.num_warps} s{cfg.num_stages}".strip()


# Tile sizes show in the config column; the interpreter switch is always off for a GPU target.
_VARIANT_SKIP = {"INTERPRET_BF16", "ROWS", "CAP", "CHUNK", "NP", "WRITE_D", "DOT_D"}


def _variant(constexprs: dict, names: list[str], dtype: str) -> str:
    """``dtype`` and the constexprs that pick a code path: flags that are set, and numbers."""
    flags = []
    for path, value in constexprs.items():
        name = names[path[0]]
        if name in _VARIANT_SKIP or name.startswith("BLOCK_") or value is False or isinstance(value, str):
            continue
        flags.append(name if value is True else f"{name}={value}")
    return " ".join([dtype, *flags])


_JOBS: list = []


def _compile_job(index: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    job = _JOBS[index]
    stats = dict(job["stats"])
    jit = job["jit"]
    try:
        target = GPUTarget("cuda", job["cc"], 32)
        backend = make_backend(target)
        binder = create_function_from_signature(jit.signature, jit.params, backend)
        kwargs = dict(job["kwargs"], **job["config"].all_kwargs())
        bound, spec, opts = binder(*job["args"], **kwargs)
        options, signature, constexprs, attrs = jit._pack_args(backend, kwargs, bound, spec, opts)
        compiled = triton.compile(ASTSource(jit, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        stats.update(read_cubin(compiled.asm["cubin"]))
        stats["shared_bytes"] = int(compiled.metadata.shared)
        stats["warps"] = int(compiled.metadata.num_warps)
        stats["dots"], stats["tensor_core_dots"] = ttgir_dots(compiled.asm["ttgir"])
    except Exception as err:  # noqa: BLE001 - one config that fails to compile is a finding, not a crash
        stats["error"] = f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"
    return stats


def _child(archs: list[str], quick: bool, hot_only: bool, workers: int) -> dict:
    """Capture, compile and analyse; the JSON-able report (runs in the subprocess)."""
    import multiprocessing

    import torch
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction, create_function_from_signature

    from seedfast.benchmarks import load_suite

    torch.set_num_threads(1)
    log: list = []

    def record_jit(self, *args, grid, warmup, **kwargs):
        log.append((self, None, args, kwargs, grid))

    def record_tuner(self, *args, grid=None, warmup=False, **kwargs):
        log.append((_jit_of(self.fn), self, args, kwargs, grid))

    JITFunction.run, Autotuner.run = record_jit, record_tuner
    started = time.perf_counter()
    notes, estimates, seen = [], [], {}
    for op in OPS:
        suite = load_suite(op)
        _patch_backends()  # after the suite imported its op modules
        cases = suite.cases(quick=quick, device=torch.device("cuda"))
        if hot_only:
            hot = [(modes, max_d) for o, modes, max_d in HOT.values() if o == op]
            cases = [c for c in cases if any((modes is None or c.mode in modes)
                                             and (max_d is None or c.params.get("D", 0) <= max_d)
                                             for modes, max_d in hot)]
        for cap in _capture(suite, cases, log):
            case = cap["case"]
            if not cap["launches"]:
                why = cap["error"] or "the op took its torch path"
                notes.append(f"{op} {case.mode} {case.label}: no Triton launch ({why})")
                continue
            if cap["error"]:
                notes.append(f"{op} {case.mode} {case.label}: raised after its launches were recorded "
                             f"({cap['error']}); the launches before it are reported")
            dtype = case.params.get("dtype", "bf16")
            grids_lo, grids_hi, names = [], [], []
            for jit, tuner, args, kwargs, grid in cap["launches"]:
                names.append(jit.fn.__name__)
                configs = _configs(tuner, args, kwargs)
                sizes = []
                for cfg in configs:
                    for arch in archs:
                        cc = int(arch.removeprefix("sm_"))
                        backend = make_backend(GPUTarget("cuda", cc, 32))
                        binder = create_function_from_signature(jit.signature, jit.params, backend)
                        full = dict(kwargs, **cfg.all_kwargs())
                        bound, spec, _ = binder(*args, **full)
                        if arch == archs[0]:
                            g = grid(bound) if callable(grid) else grid
                            sizes.append(math.prod(int(x) for x in g))
                        params = [p.name for p in jit.params]
                        constexprs = {(i,): bound[n] for i, n in enumerate(params) if jit.params[i].is_constexpr}
                        key = (jit.fn.__qualname__, jit.fn.__module__, arch, _config_label(cfg), repr(spec))
                        if key in seen:
                            if case.mode not in seen[key]["stats"]["modes"]:
                                seen[key]["stats"]["modes"].append(case.mode)
                            if "D" in case.params:
                                d = seen[key]["stats"]["max_head_dim"] or 0
                                seen[key]["stats"]["max_head_dim"] = max(d, case.params["D"])
                            continue
                        seen[key] = {
                            "jit": jit, "args": args, "kwargs": kwargs, "config": cfg, "cc": cc,
                            "stats": asdict(KernelStats(
                                op=op, kernel=jit.fn.__name__, arch=arch, config=_config_label(cfg),
                                variant=_variant(constexprs, params, dtype), source="triton", modes=[case.mode],
                                max_head_dim=case.params.get("D"), first_case=f"{case.mode} {case.label}")),
                        }
                grids_lo.append(max(sizes))
                grids_hi.append(min(sizes))
            p_lo, p_hi = max(grids_lo), max(grids_hi)
            if dtype not in TENSOR_FLOPS:
                notes.append(f"{op} {case.mode} {case.label}: no estimate for dtype {dtype}")
                continue
            lo, bound_by = estimate_us(case.bytes, case.flops, p_lo, dtype)
            hi, _ = estimate_us(case.bytes, case.flops, p_hi, dtype)
            estimates.append(asdict(CaseEstimate(op, case.mode, dict(case.params), case.bytes, case.flops,
                                                 list(dict.fromkeys(names)), p_lo, p_hi, lo, hi, bound_by)))
    _JOBS[:] = list(seen.values())
    captured = time.perf_counter()
    with multiprocessing.get_context("fork").Pool(max(1, workers)) as pool:
        kernels = pool.map(_compile_job, range(len(_JOBS)), chunksize=1)
    notes.append(f"captured the launches of {len(estimates)} benchmark cases in {captured - started:.1f} s; "
                 f"compiled {len(kernels)} kernel/config/arch combinations with {workers} workers in "
                 f"{time.perf_counter() - captured:.1f} s")
    return {"archs": archs, "kernels": kernels, "estimates": estimates, "notes": notes}


def _csrc(archs: Sequence[str], root: Path) -> tuple[list[KernelStats], list[str]]:
    """Compile each ``csrc/*.cu`` with ``nvcc --resource-usage`` and read its SASS."""
    nvcc = shutil.which("nvcc")
    files = sorted((root / "csrc").glob("*.cu"))
    if not files:
        return [], []
    if nvcc is None:
        return [], ["csrc/: nvcc not found, CUDA C++ kernels not compiled"]
    out, notes = [], []
    for cu in files:
        for arch in archs:
            # The disassembly depends only on the source, the target and the compiler: cached on disk.
            key = hashlib.sha256(cu.read_bytes() + f"{arch} {Path(nvcc).resolve()}".encode()).hexdigest()
            cached = cache_dir() / f"nvcc-{key}.sass"
            if cached.is_file():
                text = cached.read_text(encoding="utf-8")
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    obj = Path(tmp) / "k.o"
                    proc = subprocess.run([nvcc, "-O3", "-std=c++17", f"-arch={arch}", "--resource-usage", "-c",
                                           str(cu), "-o", str(obj)], capture_output=True, text=True)
                    if proc.returncode != 0:
                        notes.append(f"csrc/{cu.name} {arch}: nvcc failed: {proc.stderr.strip()[-300:]}")
                        continue
                    text = cuobjdump(obj)
                cached.parent.mkdir(parents=True, exist_ok=True)
                cached.write_text(text, encoding="utf-8")
            usage = resource_usage(text)
            for name, insns in sass_functions(text).items():
                if not insns:
                    continue
                stats = KernelStats(op=cu.stem, kernel=_demangle(name), arch=arch, config="-", variant="-",
                                    source="csrc", modes=[], registers=usage.get(name, {}).get("REG"),
                                    shared_bytes=usage.get(name, {}).get("SHARED"))
                for k, v in analyse_sass(insns).items():
                    setattr(stats, k, v)
                out.append(stats)
    return out, notes


def _demangle(name: str) -> str:
    filt = shutil.which("cu++filt") or shutil.which("c++filt")
    if filt is None:
        return name
    text = subprocess.run([filt, name], capture_output=True, text=True).stdout.strip() or name
    return text if len(text) <= 90 else text[:89] + "…"


def collect(archs: Sequence[str] = ARCHS, *, quick: bool = False, hot_only: bool = False, csrc: bool = True,
            workers: int | None = None, timeout: float = 900.0) -> KernelsReport:
    """Compile and read every shipped kernel (see the module docstring); no GPU needed.

    Parameters
    ----------
    archs : sequence of str
        Targets such as ``"sm_80"``, ``"sm_90"``.
    quick : bool
        Use the benchmarks' quick cases (fewer variants and estimates).
    hot_only : bool
        Only the hot paths the CI gate judges (:data:`HOT`), not backward kernels.
    csrc : bool
        Also compile ``csrc/*.cu`` with nvcc (skipped with a note when nvcc is absent).
    workers : int, optional
        Parallel compile processes (default: the CPU count).
    timeout : float
        Seconds allowed for the capture-and-compile subprocess.

    Raises
    ------
    ValueError
        An architecture that is not ``sm_<number>``.
    RuntimeError
        The subprocess failed.
    """
    archs = list(archs)
    bad = [a for a in archs if not re.fullmatch(r"sm_\d+", a)]
    if bad or not archs:
        raise ValueError(f"archs: expected names like 'sm_80' or 'sm_90', got {archs!r}")
    env = dict(os.environ, TRITON_DEFAULT_FP_FUSION="1")
    env.pop("TRITON_INTERPRET", None)
    spec = json.dumps({"archs": archs, "quick": quick, "hot_only": hot_only,
                       "workers": workers or os.cpu_count() or 1})
    proc = subprocess.run([sys.executable, "-c", "import sys; from seedfast.benchmarks.kernels_report import "
                           "_child_main; _child_main(sys.argv[1])", spec],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"seedfast kernels: the compile subprocess failed:\n{proc.stderr[-4000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    kernels = [KernelStats(**k) for k in data["kernels"]]
    notes = data["notes"]
    if csrc:
        more, more_notes = _csrc(archs, Path(__file__).resolve().parents[2])
        kernels += more
        notes += more_notes
    return KernelsReport(archs, kernels, [CaseEstimate(**e) for e in data["estimates"]], notes)


def _child_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    report = _child(spec["archs"], spec["quick"], spec["hot_only"], spec["workers"])
    sys.stdout.write("\n" + json.dumps(report) + "\n")


# ------------------------------------------------------------------------------------------------
# Gates and formatting


def gate_failures(k: KernelStats) -> list[str]:
    """What the CI gate holds against one compiled hot kernel (empty when it passes)."""
    if k.error:
        return [f"did not compile: {k.error}"]
    out = []
    if k.spill_stores or k.spill_loads:
        out.append(f"spills ({k.spill_stores} stores, {k.spill_loads} loads)")
    if k.tensor_core_dots is False or (k.dots and not k.tensor_core_insns):
        out.append("a tl.dot is not a tensor-core instruction")
    if k.scalar_only:
        out.append(f"scalar-only global loads in the hot loop ({k.hot_scalar_loads})")
    return out


def hot_kernels(report: KernelsReport, path: str) -> list[KernelStats]:
    """The Triton kernels on hot path ``path`` (a key of :data:`HOT`)."""
    if path not in HOT:
        raise ValueError(f"path: expected one of {sorted(HOT)}, got {path!r}")
    op, modes, max_d = HOT[path]
    return [k for k in report.kernels if k.source == "triton" and k.op == op
            and (modes is None or set(k.modes) & set(modes))
            and (max_d is None or k.max_head_dim is None or k.max_head_dim <= max_d)]


def _fmt_bytes(n: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} B"


def _table(header: list[str], body: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        return (["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
                + ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body])
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    return ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()] + [
        "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]


def _us(t: float) -> str:
    # Three significant digits under 10 µs: the split sampler's estimates are hundredths of a µs.
    return f"{t:.3g}" if t < 10 else f"{t:.1f}"


def format_report(report: KernelsReport, *, markdown: bool = False) -> str:
    """The compiled-code table, then the estimated times per benchmark case."""
    header = ["kernel", "arch", "variant", "first bench case", "config", "regs", "spill st/ld", "smem KiB", "warps",
              "TC dots", "hot-loop loads v/2/s", "hot-loop SASS", "gate"]
    hot_ids = {id(k) for path in HOT for k in hot_kernels(report, path)}
    body = []
    for k in report.kernels:
        if k.error:
            body.append([k.kernel, k.arch, k.variant, k.first_case, k.config, *["-"] * 7,
                         f"compile error: {k.error[:80]}"])
            continue
        if k.source == "csrc" or not k.dots:
            tc = "yes" if k.tensor_core_insns else "-"
        else:
            tc = "yes" if k.tensor_core_dots and k.tensor_core_insns else "NO"
        gate = ("; ".join(gate_failures(k)) or "pass") if id(k) in hot_ids else ""
        body.append([k.kernel, k.arch, k.variant, k.first_case, k.config, str(k.registers),
                     f"{k.spill_stores}/{k.spill_loads}",
                     f"{(k.shared_bytes or 0) / 1024:.1f}", str(k.warps or "-"), tc, k.loads,
                     str(k.hot_loop_insns), gate])
    lines = _table(header, body, markdown)
    lines += ["", "Hot loop: the smallest loop (backward branch) holding the most tensor-core instructions, "
              "else the most global loads. Loads: vector (LDG.E.128, LDGSTS, TMA) / two-wide (LDG.E.64) / scalar.",
              ""]
    header = ["op", "mode", "case", "bytes", "GFLOP", "programs", "est µs (estimate)", "bound (estimate)", "kernels"]
    body = []
    for e in report.estimates:
        case = " ".join(f"{k}={v}" for k, v in e.case.items())
        programs = f"{e.programs_lo}" if e.programs_lo == e.programs_hi else f"{e.programs_hi}-{e.programs_lo}"
        lo, hi = _us(e.est_us_lo), _us(e.est_us_hi)
        est = lo if lo == hi else f"{lo}-{hi}"
        body.append([e.op, e.mode, case, _fmt_bytes(e.bytes), f"{e.flops / 1e9:.2f}", programs, est, e.bound,
                     ", ".join(e.kernels)])
    lines += _table(header, body, markdown)
    lines += ["", "Estimates, not measurements: max(bytes / 3.0 TB/s, FLOPs / peak) / min(1, programs / 132) on an "
              "H100 (peak 990 TFLOP/s bf16/fp16, 165 TFLOP/s fp32 as 3xTF32); no GPU ran."]
    lines += [f"note: {n}" for n in report.notes]
    return "\n".join(lines)
