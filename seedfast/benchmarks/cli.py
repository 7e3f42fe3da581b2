"""The ``seedfast bench``, ``seedfast budget`` and ``seedfast kernels`` commands (wired into :mod:`seedfast.cli`).

``seedfast bench [--quick] [--op OP ...] [--plot PNG]`` times each op against its peers.
``seedfast budget [--measure | --results JSON ... | --log JSONL ...] [--reference JSON]``
projects the tokenizer's training cost; it lives here, above the training package, because
``--measure`` times training steps with the benchmark harness.
``seedfast kernels [--arch sm_80,sm_90] [--json]`` reports what the compiled code of every
shipped kernel says, with estimated times (:mod:`seedfast.benchmarks.kernels_report`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seedfast.errors import CliError, os_error_message


def add_bench_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("bench", help="benchmark seedfast's ops against their peers")
    p.add_argument("--quick", action="store_true", help="small sizes, short timing budget")
    p.add_argument("--op", action="append", help="op to run (repeatable); default: all")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--out", default="bench/results", help="folder for the results JSON (default: bench/results)")
    p.add_argument("--no-save", action="store_true", help="do not write a results JSON")
    p.add_argument("--plot", metavar="PNG", help="draw speed-up vs size per peer")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--report", metavar="JSON", help="print (and plot) a saved results JSON instead of running")
    p.set_defaults(func=_cmd_bench)
    return p


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch
    from tqdm import tqdm

    from seedfast.benchmarks import SUITES, load_suite
    from seedfast.benchmarks.harness import format_table, plot_speedups, run_suites

    if args.report:
        result = _load_report(args.report)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise CliError("--device cuda: no CUDA GPU is visible to torch")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if not args.no_save:
            _prepare_out(args.out)
        names = args.op or list(SUITES)
        try:
            suites = [load_suite(n) for n in names]
        except ValueError as err:
            raise CliError(str(err)) from err
        total = sum(len(s.cases(quick=args.quick, device=device)) * len(s.impls) for s in suites)
        with tqdm(total=total, desc="bench", unit="run", file=sys.stderr) as bar:
            def progress(label: str) -> None:
                bar.set_postfix_str(label[-60:])
                bar.update(1)
            result = run_suites(suites, quick=args.quick, device=device, progress=progress)
        if not args.no_save:
            path = _write(result, args.out)
            print(f"wrote {path}", file=sys.stderr)
    print(format_table(result, markdown=args.markdown))
    if args.plot:
        try:
            print(f"wrote {plot_speedups(result, args.plot)}", file=sys.stderr)
        except RuntimeError as err:
            raise CliError(str(err)) from err
        except OSError as err:
            raise CliError(os_error_message(err, f"--plot {args.plot}")) from err
    return 0


def _check_results_file(flag: str, path: str) -> None:
    """A results JSON that exists, parses and has a schema, or one line naming ``flag``, the file
    and what is wrong with it."""
    from seedfast.checkpoint_io import CheckpointError, load_json

    try:
        data = load_json(path)
    except CheckpointError as err:
        raise CliError(f"{flag} {err}") from None
    except OSError as err:
        raise CliError(os_error_message(err, f"{flag} {path}")) from None
    if not isinstance(data, dict) or "schema" not in data:
        raise CliError(f"{flag} {path}: not a seedfast bench results file (no 'schema' field)")


def _load_report(path: str) -> Any:
    """``--report``: a results JSON read back, or one line naming the file and what is wrong with it."""
    from seedfast.benchmarks.harness import load_result

    _check_results_file("--report", path)
    try:
        return load_result(path)
    except (ValueError, KeyError, TypeError) as err:
        detail = f"no {err} field" if isinstance(err, KeyError) else " ".join(str(err).split())
        raise CliError(f"--report {path}: not a readable seedfast bench results file ({detail})") from None


def _prepare_out(out: str) -> None:
    """Create the ``--out`` folder before any timing, so that a bad one fails in a second, not after."""
    if Path(out).exists() and not Path(out).is_dir():
        raise CliError(f"--out {out} is a file; expected a folder for the results JSON")
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(os_error_message(err, f"--out {out}")) from err


def _write(result: Any, out: str) -> Path:
    """Write a results JSON under ``--out``; OS errors (read-only, full, a file there) as one line."""
    from seedfast.benchmarks.harness import write_result

    _prepare_out(out)
    try:
        return write_result(result, out)
    except OSError as err:
        raise CliError(os_error_message(err, f"writing --out {out}")) from err


def add_budget_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``budget`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("budget", help="project the tokenizer's training cost from measured throughput and compare "
                                      "with the paper's 364.8 V100-days",
                       description="Project GPU-days for SEED's tokenizer recipe (5M pairs, 10 + 500 epochs) "
                                   "from measured seconds per sample, and convert to V100-days.")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--measure", action="store_true", help="time training steps on this device now")
    how.add_argument("--results", metavar="JSON", action="append", help="a results JSON with 'train' measurements")
    how.add_argument("--log", metavar="JSONL", action="append", help="log.jsonl of a stage-1 or stage-2 run")
    p.add_argument("--reference", metavar="JSON", help="results JSON measured on a V100, to convert by throughput")
    p.add_argument("--preset", default=None, help="config for --measure (default: official on CUDA, tiny on CPU)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p.add_argument("--mode", action="append", help="modes for --measure (default: all four)")
    p.add_argument("--batch", type=int, help="samples per measured step (default: the config's micro-batch)")
    p.add_argument("--device", choices=["cpu", "cuda"])
    p.add_argument("--time-ms", type=float, default=2000.0, help="timing budget per measured mode (default 2000)")
    p.add_argument("--out", default="bench/results/budget", help="folder for --measure's results JSON")
    p.add_argument("--pairs", type=int, help="image-text pairs (default 5,000,000)")
    p.add_argument("--epochs", type=int, nargs=2, metavar=("STAGE1", "STAGE2"), help="default 10 500")
    p.add_argument("--peak-tflops", type=float, help="the device's peak (default: from its name)")
    p.set_defaults(func=_cmd_budget)
    return p


def _cmd_budget(args: argparse.Namespace) -> int:
    from seedfast.benchmarks.train_step import from_results
    from seedfast.train import budget as B
    from seedfast.train.config import PAPER_PAIRS, ConfigError

    pairs = PAPER_PAIRS if args.pairs is None else args.pairs
    epochs = tuple(args.epochs) if args.epochs else (B.STAGE1_EPOCHS, B.STAGE2_EPOCHS)
    _check_budget_args(args)
    for flag, path in [*(("--results", r) for r in args.results or []), ("--reference", args.reference)]:
        if path is not None:
            _check_results_file(flag, path)
    try:
        if args.measure:
            measured = from_results(_measure(args))
        elif args.results:
            measured = [m for r in args.results for m in from_results(r)]
        else:
            measured = [m for log in args.log for m in B.from_log(log)]
        reference = from_results(args.reference) if args.reference else None
        report = B.compute_budget(measured, pairs=pairs, epochs=epochs, reference=reference, peak=args.peak_tflops)
    except (ConfigError, ValueError, FileNotFoundError, KeyError, TypeError) as err:
        raise CliError(" ".join(str(err).split())) from None
    except OSError as err:
        raise CliError(os_error_message(err, "reading the measurements")) from None
    print(B.format_budget(report))
    return 0


def _check_budget_args(args: argparse.Namespace) -> None:
    """Refuse numbers that would project nonsense, before anything is measured."""
    import math

    if args.pairs is not None and args.pairs < 1:
        raise CliError(f"--pairs must be a positive number of image-text pairs, got {args.pairs}")
    if args.epochs and (min(args.epochs) < 0 or not any(args.epochs)):
        raise CliError(f"--epochs STAGE1 STAGE2 must be non-negative, not both 0, got {args.epochs[0]} "
                       f"{args.epochs[1]}")
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--time-ms", args.time_ms)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise CliError(f"{flag} must be a positive finite number, got {value}")
    if args.batch is not None and args.batch < 1:
        raise CliError(f"--batch must be at least 1 sample per measured step, got {args.batch}")


def _measure(args: argparse.Namespace) -> Path:
    """``--measure``: time the modes on this device and write their results JSON; its path."""
    import torch

    from seedfast.benchmarks.train_step import measure_modes
    from seedfast.train.budget import MODES
    from seedfast.train.config_sources import read_preset

    _prepare_out(args.out)
    preset = args.preset or ("official" if torch.cuda.is_available() and args.device != "cpu" else "tiny")
    modes = args.mode or list(MODES)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise CliError(f"--mode: unknown {unknown}; choose from {', '.join(MODES)}")
    result = measure_modes([read_preset(preset)], args.overrides, modes=modes, batch=args.batch,
                           device=args.device, budget_ms=args.time_ms,
                           progress=lambda s: print(f"measuring {s}", file=sys.stderr))
    path = _write(result, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return path


def add_kernels_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``kernels`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("kernels", help="compile every shipped kernel for GPU targets (no GPU needed) and report "
                                       "registers, spills, tensor cores, load widths and estimated times",
                       description="Compile every Triton kernel at every config its launcher can pick, and csrc/ "
                                   "with nvcc, for each --arch; print what the compiled code says per kernel/config, "
                                   "and per benchmark case an estimated time from an H100's limits (an estimate, "
                                   "not a measurement).")
    p.add_argument("--arch", default=",".join(("sm_80", "sm_90")),
                   help="comma-separated targets (default: sm_80,sm_90)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown")
    p.add_argument("--quick", action="store_true", help="the benchmarks' quick cases only")
    p.add_argument("--hot", action="store_true", help="only the hot paths the CI gate judges (no backward kernels)")
    p.add_argument("--no-csrc", action="store_true", help="skip the CUDA C++ kernels in csrc/")
    p.add_argument("--workers", type=int, help="parallel compile processes (default: the CPU count)")
    p.set_defaults(func=_cmd_kernels)
    return p


def _cmd_kernels(args: argparse.Namespace) -> int:
    import json

    from seedfast.benchmarks.kernels_report import collect, format_report

    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    if args.workers is not None and args.workers < 1:
        raise CliError(f"--workers: expected a positive integer, got {args.workers}")
    try:
        report = collect(archs, quick=args.quick, hot_only=args.hot, csrc=not args.no_csrc, workers=args.workers)
    except ValueError as err:
        raise CliError(f"--arch: {err}") from None
    except RuntimeError as err:
        raise CliError(str(err)) from None
    print(json.dumps(report.as_dict(), indent=1) if args.json else format_report(report, markdown=args.markdown))
    return 0
