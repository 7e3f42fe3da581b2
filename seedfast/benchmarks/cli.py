"""The ``seedfast bench`` and ``seedfast budget`` commands (wired into :mod:`seedfast.cli`).

``seedfast bench [--quick] [--op OP ...] [--plot PNG]`` times each op against its peers.
``seedfast budget [--measure | --results JSON ... | --log JSONL ...] [--reference JSON]``
projects the tokenizer's training cost; it lives here, above the training package, because
``--measure`` times training steps with the benchmark harness.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seedfast.errors import CliError


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
    from seedfast.benchmarks.harness import format_table, load_result, plot_speedups, run_suites, write_result

    if args.report:
        result = load_result(args.report)
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise CliError("--device cuda: no CUDA GPU is visible to torch")
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
            path = write_result(result, args.out)
            print(f"wrote {path}", file=sys.stderr)
    print(format_table(result, markdown=args.markdown))
    if args.plot:
        try:
            print(f"wrote {plot_speedups(result, args.plot)}", file=sys.stderr)
        except RuntimeError as err:
            raise CliError(str(err)) from err
    return 0


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

    try:
        if args.measure:
            measured = from_results(_measure(args))
        elif args.results:
            measured = [m for r in args.results for m in from_results(r)]
        else:
            measured = [m for log in args.log for m in B.from_log(log)]
        reference = from_results(args.reference) if args.reference else None
        report = B.compute_budget(measured, pairs=args.pairs or PAPER_PAIRS,
                                  epochs=tuple(args.epochs) if args.epochs else (B.STAGE1_EPOCHS, B.STAGE2_EPOCHS),
                                  reference=reference, peak=args.peak_tflops)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        raise CliError(str(err)) from None
    print(B.format_budget(report))
    return 0


def _measure(args: argparse.Namespace) -> Path:
    """``--measure``: time the modes on this device and write their results JSON; its path."""
    import torch

    from seedfast.benchmarks.harness import write_result
    from seedfast.benchmarks.train_step import measure_modes
    from seedfast.train.budget import MODES
    from seedfast.train.config_sources import read_preset

    preset = args.preset or ("official" if torch.cuda.is_available() and args.device != "cpu" else "tiny")
    modes = args.mode or list(MODES)
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        raise CliError(f"--mode: unknown {unknown}; choose from {', '.join(MODES)}")
    result = measure_modes([read_preset(preset)], args.overrides, modes=modes, batch=args.batch,
                           device=args.device, budget_ms=args.time_ms,
                           progress=lambda s: print(f"measuring {s}", file=sys.stderr))
    path = write_result(result, args.out)
    print(f"wrote {path}", file=sys.stderr)
    return path
