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


def _cmd_convert(args: argparse.Namespace) -> int:
    import torch

    from seedfast.models.checkpoints import CheckpointError, convert_official

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

    from seedfast.train.cli import add_budget_parser, add_train_parser

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
