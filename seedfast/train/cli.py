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
from pathlib import Path
from typing import Any

from seedfast.errors import CliError, os_error_message


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
    except UnicodeDecodeError:
        raise CliError(f"--config {args.config}: not a text file (expected UTF-8 TOML)") from None
    except OSError as err:
        raise CliError(os_error_message(err, f"--config {args.config}")) from None


def _io_error(err: Exception, flag: str, target: str) -> CliError:
    """An OS error (or safetensors' own error for a failed write) as one line, naming ``flag``'s
    folder unless the failing path lies outside it (the data, say)."""
    doing = f"writing {flag} {target}"
    name = getattr(err, "filename", None)
    if isinstance(name, (str, os.PathLike)):
        path, folder = Path(name).resolve(), Path(target).resolve()
        if path != folder and folder not in path.parents:
            doing = "reading"
    if isinstance(err, OSError):
        return CliError(os_error_message(err, doing))
    # safetensors reports I/O failures as SafetensorError("... Os { code: 28, ... }"): keep its text.
    return CliError(f"{doing}: {' '.join(str(err).split())}")


def _cmd_train(args: argparse.Namespace) -> int:
    from safetensors import SafetensorError

    from seedfast.train.checkpoint import CheckpointError
    from seedfast.train.config import ConfigError

    cfg = _config(args)
    if args.print_config:
        print(cfg.to_json())
        return 0
    target = args.precompute_features or args.out
    try:
        if args.precompute_features:
            from seedfast.train.features import precompute

            if Path(target).exists() and not Path(target).is_dir():
                raise CliError(f"--precompute-features {target} is a file; expected a folder")
            path = precompute(cfg, target, device=args.device, progress=not args.no_progress)
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
    except (OSError, SafetensorError) as err:
        raise _io_error(err, "--precompute-features" if args.precompute_features else "--out", target) from err
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
