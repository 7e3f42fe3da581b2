"""The ``seedfast train`` command (wired into :mod:`seedfast.cli`).

``seedfast train --stage {1,2,3} [--config FILE | --preset NAME] [--set section.key=value ...]
--steps N --out DIR [--resume]``; under ``torchrun`` the same command runs on every process.
(``seedfast budget`` times training steps with the benchmark harness, so it lives in
:mod:`seedfast.benchmarks.cli`.)
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
    from seedfast.train.config import ConfigError
    from seedfast.train.config_sources import build_config, read_preset, read_toml

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
