"""The ``seedfast train`` and ``seedfast budget`` commands (wired into :mod:`seedfast.cli`).

``seedfast train --stage {1,2,3} [--config FILE | --preset NAME] [--set section.key=value ...]
--steps N --out DIR [--resume]``; under ``torchrun`` the same command runs on every process.
``seedfast budget [--measure | --results JSON ... | --log JSONL ...] [--reference JSON]``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from seedfast.errors import CliError


def add_train_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``train`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("train", help="train the SEED tokenizer (stages 1-2) or SEED-LLaMA (stage 3)",
                       description="Train one stage. Settings: the stage's official defaults, then --preset or "
                                   "--config (TOML), then each --set. Run it under torchrun for several GPUs.")
    p.add_argument("--stage", type=int, choices=[1, 2, 3], required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--config", metavar="FILE", help="TOML config file")
    src.add_argument("--preset", metavar="NAME", help="shipped config: tiny, official (default: tiny)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one setting, e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--steps", type=int, metavar="N", help="stop after global step N")
    p.add_argument("--out", metavar="DIR", help="run folder: checkpoints/, log.jsonl, final/")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--precompute-features", metavar="DIR",
                   help="instead of training: encode the data once with the frozen encoder (stage 1: ViT "
                        "features; stage 2: Q-Former features + targets) and write them to DIR")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings and exit")
    p.set_defaults(func=_cmd_train)
    return p


def _config(args: argparse.Namespace) -> Any:
    from seedfast.train.config import ConfigError, build_config, read_preset, read_toml

    try:
        table = read_toml(args.config) if args.config else read_preset(args.preset or "tiny")
        return build_config(args.stage, [table], args.overrides)
    except ConfigError as err:
        raise CliError(str(err)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    from seedfast.train.checkpoint import CheckpointError
    from seedfast.train.config import ConfigError

    cfg = _config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    try:
        if args.precompute_features:
            from seedfast.train.features import precompute

            path = precompute(cfg, args.precompute_features, device=args.device, progress=not args.no_progress)
            print(f"wrote features to {path}", file=sys.stderr)
            return 0
        if args.steps is None or args.out is None:
            raise CliError("--steps and --out are required to train")
        if args.steps < 1:
            raise CliError(f"--steps must be at least 1, got {args.steps}")
        from seedfast.train.loop import train

        result = train(cfg, args.out, steps=args.steps, resume_run=args.resume, device=args.device,
                       progress=not args.no_progress)
    except (ConfigError, CheckpointError, ValueError, FileNotFoundError) as err:
        raise CliError(str(err)) from None
    if os.environ.get("RANK", "0") == "0":
        if result.stopped_by is None:
            print(f"step {result.step}: checkpoint {result.checkpoint}; model {result.final}", file=sys.stderr)
        else:
            print(f"stopped by {result.stopped_by} after step {result.step}; saved {result.checkpoint}; "
                  "continue with --resume", file=sys.stderr)
    if result.stopped_by is None:
        return 0
    # 128 + signal number, as a process killed by it; a stop requested on another rank counts as SIGTERM.
    return 128 + int(getattr(signal, result.stopped_by, signal.SIGTERM))


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
    from seedfast.train import budget as B
    from seedfast.train.config import PAPER_PAIRS, ConfigError, read_preset

    try:
        if args.measure:
            import torch

            from seedfast.benchmarks.harness import write_result
            from seedfast.train.measure import measure_modes

            preset = args.preset or ("official" if torch.cuda.is_available() and args.device != "cpu" else "tiny")
            modes = args.mode or list(B.MODES)
            unknown = sorted(set(modes) - set(B.MODES))
            if unknown:
                raise CliError(f"--mode: unknown {unknown}; choose from {', '.join(B.MODES)}")
            result = measure_modes([read_preset(preset)], args.overrides, modes=modes, batch=args.batch,
                                   device=args.device, budget_ms=args.time_ms,
                                   progress=lambda s: print(f"measuring {s}", file=sys.stderr))
            path = write_result(result, args.out)
            print(f"wrote {path}", file=sys.stderr)
            measured = B.from_results(path)
        elif args.results:
            measured = [m for r in args.results for m in B.from_results(r)]
        else:
            measured = [m for log in args.log for m in B.from_log(log)]
        reference = B.from_results(args.reference) if args.reference else None
        report = B.compute_budget(measured, pairs=args.pairs or PAPER_PAIRS,
                                  epochs=tuple(args.epochs) if args.epochs else (B.STAGE1_EPOCHS, B.STAGE2_EPOCHS),
                                  reference=reference, peak=args.peak_tflops)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        raise CliError(str(err)) from None
    print(B.format_budget(report))
    return 0
