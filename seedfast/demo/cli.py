"""``seedfast demo`` and the user commands ``tokenize``, ``detokenize``, ``generate`` and
``caption`` (wired into :mod:`seedfast.cli`).

The user commands load the models a ``seedfast demo`` run wrote (``--demo DIR``, default
``seedfast-demo``); ``--tokenizer``, ``--detokenizer`` and ``--llm`` replace any of them by a
checkpoint folder of the user's. Every bad input ends in a one-line error and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from seedfast.errors import CliError

DEFAULT_OUT = "seedfast-demo"


def _require_diffusers() -> None:
    import importlib.util

    if importlib.util.find_spec("diffusers") is None:
        raise CliError("the de-tokenizer needs diffusers, which is not installed: pip install 'seedfast[demo]'")


# -------------------------------------------------------------------------------------------------
# seedfast demo


def add_demo_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``demo`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser(
        "demo", help="train a tiny SEED tokenizer, de-tokenizer and SEED-LLaMA on this CPU and write a report",
        description="Train every SEED model from scratch on the embedded procedural data (tokenizer stages 1 and "
                    "2, the de-tokenizer, SEED-LLaMA stage 3; about 15 minutes on 2 CPU cores, under 3 with "
                    "--quick), then measure reconstruction, captioning and text-to-image on the held-out split and "
                    "write report.html, PNGs and metrics.json to --out.")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"output folder (default: {DEFAULT_OUT}); a previous demo's files in it are replaced")
    p.add_argument("--quick", action="store_true", help="same path with few steps (smoke test; no quality claim)")
    p.add_argument("--seed", type=int, default=0, help="seeds data, initialisation and sampling (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (summary lines still print)")
    p.set_defaults(func=_cmd_demo)
    return p


def _cmd_demo(args: argparse.Namespace) -> int:
    from seedfast.demo.config import DemoConfig
    from seedfast.demo.pipeline import DemoError, run_demo
    from seedfast.demo.report import GOALS

    if args.seed < 0:
        raise CliError(f"--seed must be non-negative, got {args.seed}")
    _require_diffusers()
    config = DemoConfig.quick() if args.quick else DemoConfig.full()
    try:
        result = run_demo(config, Path(args.out), seed=args.seed, progress=not args.no_progress)
    except DemoError as err:
        raise CliError(str(err)) from None
    for key, value in result.metrics.items():
        goal = GOALS.get(key)
        met = goal is not None and value >= goal
        note = "" if goal is None or config.name == "quick" else f"  (goal >= {goal}: {'met' if met else 'missed'})"
        print(f"{key:36s} {value:10.4f}{note}")
    print(f"report: {result.report}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------
# The user commands


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo", default=DEFAULT_OUT, metavar="DIR",
                   help=f"a `seedfast demo` output folder whose models to use (default: {DEFAULT_OUT})")
    p.add_argument("--tokenizer", metavar="DIR", help="a SEED tokenizer folder (SeedTokenizer.save) instead")
    p.add_argument("--detokenizer", metavar="DIR", help="a de-tokenizer folder (SeedDetokenizer.load) instead")
    p.add_argument("--llm", metavar="DIR", help="a Hugging Face LLaMA folder over the demo vocabulary instead")


def _models(args: argparse.Namespace) -> Any:
    from seedfast.demo.models import MANIFEST_FILE, DemoModelError, DemoModels
    from seedfast.demo.pipeline import MODELS_DIR

    _require_diffusers()
    root = Path(args.demo)
    folder = root if (root / MANIFEST_FILE).is_file() else root / MODELS_DIR
    try:
        return DemoModels.load(folder, tokenizer=args.tokenizer, detokenizer=args.detokenizer, llm=args.llm)
    except DemoModelError as err:
        raise CliError(str(err)) from None


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from seedfast.demo.commands import CommandError

    try:
        return fn(*args, **kwargs)
    except CommandError as err:
        raise CliError(str(err)) from None


def add_tokenize_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``tokenize`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("tokenize", help="images -> 32 SEED codes each",
                       description="Print the 32 codes of each image (one line per image, or JSON).")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; resized)")
    p.add_argument("--json", action="store_true",
                   help='print a JSON list of {"image", "codes"} (what detokenize reads)')
    _add_model_flags(p)
    p.set_defaults(func=_cmd_tokenize)
    return p


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from seedfast.demo import commands

    models = _models(args)
    codes = _run(commands.tokenize, models, args.images)
    print(commands.format_codes(args.images, codes, as_json=args.json))
    return 0


def _add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT.png", help="where to write the image")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling (default 0)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times (nearest neighbour)")


def _check_output_flags(args: argparse.Namespace) -> None:
    if args.seed < 0:
        raise CliError(f"--seed must be non-negative, got {args.seed}")
    if not 1 <= args.scale <= 64:
        raise CliError(f"--scale must be in [1, 64], got {args.scale}")


def add_detokenize_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``detokenize`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("detokenize", help="32 SEED codes -> an image",
                       description="Decode one image's 32 codes (generation embedding, then the de-tokenizer).")
    p.add_argument("codes", metavar="CODES_JSON",
                   help='a JSON file: a list of 32 codes, {"codes": [...]}, or `tokenize --json` output')
    p.add_argument("--index", type=int, help="which code list of a file holding several")
    _add_output_flags(p)
    _add_model_flags(p)
    p.set_defaults(func=_cmd_detokenize)
    return p


def _cmd_detokenize(args: argparse.Namespace) -> int:
    from seedfast.demo import commands

    _check_output_flags(args)
    models = _models(args)
    path = _run(commands.detokenize, models, args.codes, args.output, index=args.index, seed=args.seed,
                scale=args.scale)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``generate`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("generate", help="a caption -> an image, through SEED-LLaMA's codes",
                       description="SEED-LLaMA writes 32 codes for the caption; the de-tokenizer draws them. The "
                                   "demo models know the procedural captions' words, e.g. "
                                   '"a large red circle on the left".')
    p.add_argument("caption", help="the caption")
    _add_output_flags(p)
    _add_model_flags(p)
    p.set_defaults(func=_cmd_generate)
    return p


def _cmd_generate(args: argparse.Namespace) -> int:
    from seedfast.demo import commands

    _check_output_flags(args)
    models = _models(args)
    path, codes = _run(commands.generate_image, models, args.caption, args.output, seed=args.seed, scale=args.scale)
    print(f"codes: {' '.join(map(str, codes))}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def add_caption_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``caption`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("caption", help="images -> captions, through SEED codes and SEED-LLaMA",
                       description="Caption each image: its 32 codes, then SEED-LLaMA's text.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; resized)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling when it is not greedy (default 0)")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_caption)
    return p


def _cmd_caption(args: argparse.Namespace) -> int:
    from seedfast.demo import commands

    if args.seed < 0:
        raise CliError(f"--seed must be non-negative, got {args.seed}")
    models = _models(args)
    captions = _run(commands.caption, models, args.images, seed=args.seed)
    for path, text in zip(args.images, captions):
        print(text if len(args.images) == 1 else f"{path}: {text}")
    return 0
