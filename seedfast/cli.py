"""The ``seedfast`` command."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from seedfast.errors import CliError


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

    from seedfast.benchmarks.cli import add_bench_parser, add_budget_parser
    from seedfast.train.cli import add_train_parser

    add_bench_parser(sub)
    add_train_parser(sub)
    add_budget_parser(sub)

    p = sub.add_parser("convert", help="convert official seed_quantizer.pt (+ eva_vit_g.pth) to seedfast's format")
    p.add_argument("quantizer", help="path to seed_quantizer.pt")
    p.add_argument("--vit", help="path to eva_vit_g.pth (omit if the quantizer file holds visual_encoder.*)")
    p.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.set_defaults(func=_cmd_convert)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``seedfast`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 0
    try:
        return func(args)
    except CliError as err:
        print(f"seedfast {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seedfast {args.command}: interrupted", file=sys.stderr)
        return 130
