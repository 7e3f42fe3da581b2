"""The ``seedfast`` command."""
from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Callable, Sequence

from seedfast.errors import CliError, os_error_message

DEBUG_ENV = "SEEDFAST_DEBUG"
"""Set to ``1`` for tracebacks with every error, as ``seedfast --debug``."""


def _cmd_env(args: argparse.Namespace) -> int:
    from seedfast.env import collect, format_env

    print(format_env(collect()))
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from seedfast.checkpoint_io import CheckpointError
    from seedfast.models.checkpoints import convert_official

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    try:
        out = convert_official(args.quantizer, args.vit, args.out, dtype=dtype)
    except (CheckpointError, FileNotFoundError, TypeError, ValueError) as err:
        raise CliError(str(err)) from err
    print(f"wrote {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="seedfast",
        description="SEED visual tokenizer and SEED-LLaMA, with fused kernels.",
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"on an error, show the traceback before the one-line message (also: {DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    from seedfast.demo.cli import (
        add_caption_parser,
        add_demo_parser,
        add_detokenize_parser,
        add_generate_parser,
        add_tokenize_parser,
    )

    add_demo_parser(sub)
    add_tokenize_parser(sub)
    add_detokenize_parser(sub)
    add_generate_parser(sub)
    add_caption_parser(sub)

    p = sub.add_parser("env", help="print torch/triton/CUDA versions and the GPU (or say there is none)")
    p.set_defaults(func=_cmd_env)

    from seedfast.benchmarks.cli import add_bench_parser, add_budget_parser, add_kernels_parser
    from seedfast.train.cli import add_train_parser

    add_bench_parser(sub)
    add_train_parser(sub)
    add_budget_parser(sub)
    add_kernels_parser(sub)

    p = sub.add_parser("convert", help="convert official seed_quantizer.pt (+ eva_vit_g.pth) to seedfast's format")
    p.add_argument("quantizer", help="path to seed_quantizer.pt")
    p.add_argument("--vit", help="path to eva_vit_g.pth (omit if the quantizer file holds visual_encoder.*)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.set_defaults(func=_cmd_convert)
    for command in sub.choices.values():
        # Also after the command (`seedfast generate ... --debug`); SUPPRESS keeps a --debug given before it.
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, show the traceback before the one-line message")
    return parser


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` given, or ``SEEDFAST_DEBUG`` set to anything but empty or ``0``."""
    return bool(getattr(args, "debug", False)) or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(args: argparse.Namespace, err: BaseException, message: str) -> int:
    """Print ``message`` as the command's one error line (after the traceback under --debug); exit 2."""
    if debug_requested(args):
        # The one-line errors are raised ``from None``; under --debug show what they summarise.
        err.__suppress_context__ = False
        traceback.print_exception(err)
    print(f"seedfast {args.command}: error: {message}", file=sys.stderr)
    return 2


def _abandon_stdout() -> None:
    """If stdout cannot take its buffered text, point it at the null device, so that the
    interpreter's last flush does not print a second, raw error."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seedfast`` console script.

    A :class:`~seedfast.errors.CliError`, or an ``OSError`` no command turned into one (a
    read-only or full disk, say), is printed as one line ``seedfast COMMAND: error: ...`` with
    exit status 2; ``--debug`` (or ``SEEDFAST_DEBUG=1``) prints the traceback first.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        status = func(args)
        sys.stdout.flush()  # a full disk or a closed pipe behind stdout fails here, not at exit
        return status
    except CliError as err:
        return _fail(args, err, str(err))
    except OSError as err:
        _abandon_stdout()
        return _fail(args, err, os_error_message(err, "I/O error"))
    except KeyboardInterrupt:
        print(f"seedfast {args.command}: interrupted", file=sys.stderr)
        return 130
