"""``seedfast demo`` and the user commands ``tokenize``, ``detokenize``, ``generate`` and
``caption`` (wired into :mod:`seedfast.cli`).

The user commands run one :class:`~seedfast.pipeline.SeedPipeline`: by default the models a
``seedfast demo`` run wrote (``--demo DIR``, default ``seedfast-demo``; ``--tokenizer``,
``--detokenizer`` and ``--llm`` replace any of them by a checkpoint folder of the user's), or the
released SEED folders (``--models DIR``, ``--vit``, ``--text-tokenizer``, ``--template``, an LLM
folder with its text tokenizer, a diffusers de-tokenizer, an official ``seed_quantizer.pt``, or
no demo run to fall back on; :mod:`seedfast.demo.released`). Both go through the same code; only
the image files are read differently (the demo resizes them its own way, the released
tokenizer gets the official transform). Every bad input ends in a one-line error and exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seedfast.constants import CODES_PER_IMAGE
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
    from seedfast.demo.report import goal_results

    _check_seed(args)
    _require_diffusers()
    config = DemoConfig.quick() if args.quick else DemoConfig.full()
    try:
        result = run_demo(config, Path(args.out), seed=args.seed, progress=not args.no_progress)
    except DemoError as err:
        raise CliError(str(err)) from None
    for key, value in result.metrics.items():
        print(f"{key:36s} {value:10.4f}")
    if config.name != "quick":  # --quick makes no quality claim
        for goal, value in goal_results(result.breakdown):
            verdict = "no such scenes" if value is None else f"{value:.4f}, {'met' if value >= goal.threshold else 'missed'}"
            print(f"goal {goal.label:40s} >= {goal.threshold}: {verdict}")
    print(f"report: {result.report}", file=sys.stderr)
    return 0


# -------------------------------------------------------------------------------------------------
# The user commands


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--demo", default=DEFAULT_OUT, metavar="DIR",
                   help=f"a `seedfast demo` output folder whose models to use (default: {DEFAULT_OUT})")
    p.add_argument("--tokenizer", metavar="PATH",
                   help="a SEED tokenizer folder (`seedfast convert` output), or the official seed_quantizer.pt "
                        "(with --vit)")
    p.add_argument("--detokenizer", metavar="DIR",
                   help="a de-tokenizer folder: a diffusers unCLIP pipeline, or a PixelDetokenizer")
    p.add_argument("--llm", metavar="DIR",
                   help="a Hugging Face SEED-LLaMA folder (its text tokenizer too, unless --text-tokenizer), or an "
                        "LLM over the demo vocabulary")
    p.add_argument("--vit", metavar="FILE", help="eva_vit_g.pth, for an official seed_quantizer.pt")
    p.add_argument("--text-tokenizer", metavar="DIR", help="the SEED-LLaMA text tokenizer folder (default: --llm)")
    p.add_argument("--template", choices=["8b", "14b"],
                   help="SEED-LLaMA's prompt template (default: inferred from the LLM's width)")
    p.add_argument("--models", metavar="DIR",
                   help="a folder whose seedfast-models.json names tokenizer, llm, detokenizer (and optionally "
                        "text_tokenizer, vit, template), relative to it")
    p.add_argument("--device", default=None, help="where the models run (default: cuda if available, else cpu)")


def _released_parts(args: argparse.Namespace) -> dict[str, str | None] | None:
    """The released folders the flags name, or None to use the demo's models (the old behaviour)."""
    from seedfast.demo.models import MANIFEST_FILE
    from seedfast.demo.pipeline import MODELS_DIR
    from seedfast.demo.released import read_manifest

    if args.models:
        parts: dict[str, str | None] = dict(read_manifest(args.models))
    else:
        parts = {}
    for key in ("tokenizer", "llm", "detokenizer", "text_tokenizer", "vit", "template"):
        if getattr(args, key, None) is not None:
            parts[key] = getattr(args, key)
    root = Path(args.demo)
    has_demo = (root / MANIFEST_FILE).is_file() or (root / MODELS_DIR / MANIFEST_FILE).is_file()
    released_files = (
        (parts.get("tokenizer") and Path(parts["tokenizer"]).is_file())
        or (parts.get("llm") and any((Path(parts["llm"]) / f).is_file()
                                     for f in ("tokenizer.model", "tokenizer.json", "tokenizer_config.json")))
        or (parts.get("detokenizer") and (Path(parts["detokenizer"]) / "model_index.json").is_file()))
    explicit = args.models or args.vit or args.text_tokenizer or args.template
    if explicit or released_files or (parts and not has_demo):
        return parts
    return None


def _device(args: argparse.Namespace) -> str:
    """``--device``, else this process's GPU (``LOCAL_RANK`` under torchrun), else the CPU."""
    import os

    import torch

    if args.device:
        return args.device
    return f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"


def _pipeline(args: argparse.Namespace, parts: dict[str, str | None], *, llm: bool, detokenizer: bool) -> Any:
    from seedfast.demo.released import load_pipeline

    if detokenizer:
        _require_diffusers()
    return _run(load_pipeline, parts, device=_device(args), need_llm=llm, need_detokenizer=detokenizer)


def _check_seed(args: argparse.Namespace) -> None:
    if not 0 <= args.seed < 2**63:
        raise CliError(f"--seed must be an integer in [0, 2**63), got {args.seed}")


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


def _open(args: argparse.Namespace, *, llm: bool, detokenizer: bool) -> tuple[Any, Callable[[str], Any]]:
    """The pipeline the flags name and how it reads an image file (``[3, H, W]`` uint8)."""
    from seedfast.demo import commands
    from seedfast.demo.released import read_rgb

    parts = _released_parts(args)
    if parts is not None:
        return _pipeline(args, parts, llm=llm, detokenizer=detokenizer), lambda path: _run(read_rgb, path)
    models = _models(args)
    size = models.tokenizer.config.image_size
    return models, lambda path: _run(commands.load_images, [path], size)[0]


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

    pipe, read = _open(args, llm=False, detokenizer=False)
    codes = [pipe.tokenize(read(path))[0].tolist() for path in args.images]
    print(commands.format_codes(args.images, codes, as_json=args.json))
    return 0


def _add_output_flags(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("-o", "--output", required=required, metavar="OUT.png", help="where to write the image")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling (default 0)")
    p.add_argument("--scale", type=int, default=1, help="enlarge the PNG this many times (nearest neighbour)")


def _check_output_flags(args: argparse.Namespace) -> None:
    _check_seed(args)
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
    from seedfast.demo.images import save_png

    _check_output_flags(args)
    pipe, _ = _open(args, llm=False, detokenizer=True)
    out = _run(commands.output_path, args.output)
    codes = _run(commands.read_codes, args.codes, index=args.index, codes_per_image=CODES_PER_IMAGE,
                 num_codes=pipe.tokenizer.config.codebook_size)
    path = save_png(pipe.detokenize([codes], seed=[args.seed])[0], out, scale=args.scale)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def add_generate_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``generate`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("generate", help="a caption -> an image, through SEED-LLaMA's codes",
                       description="SEED-LLaMA writes 32 codes for the caption; the de-tokenizer draws them. The "
                                   "demo models know the procedural captions' words, e.g. "
                                   '"a large red circle on the left".')
    p.add_argument("caption", nargs="?", help="the caption (or --prompts FILE)")
    p.add_argument("--prompts", metavar="FILE.jsonl",
                   help='batch mode: one JSON request per line, {"prompt": ..., "seed"?, '
                        '"image"?, "temperature"?, "top_k"?, "top_p"?, "max_new_tokens"?}; a request with an image '
                        "is answered in text, one without is drawn; under torchrun the requests are sharded")
    p.add_argument("--out", metavar="DIR", help="batch mode: where NNNNN.png / NNNNN.txt and results.jsonl go")
    p.add_argument("--batch-size", type=int, default=8, help="batch mode: requests per batch (default 8)")
    p.add_argument("--no-progress", action="store_true", help="batch mode: no progress bar or throughput line")
    _add_output_flags(p, required=False)
    _add_model_flags(p)
    p.set_defaults(func=_cmd_generate)
    return p


def _cmd_generate(args: argparse.Namespace) -> int:
    from seedfast.demo import commands
    from seedfast.demo.images import save_png

    _check_output_flags(args)
    if args.prompts is not None:
        return _generate_batch(args)
    if args.caption is None or args.output is None:
        raise CliError("give a caption and -o OUT.png, or --prompts FILE.jsonl --out DIR")
    if not args.caption.strip():
        raise CliError("the caption is empty")
    pipe, _ = _open(args, llm=True, detokenizer=True)
    out = _run(commands.output_path, args.output)
    try:
        codes, images = pipe.text_to_image(args.caption, seed=args.seed)
    except ValueError as err:
        raise CliError(" ".join(str(err).split())) from None
    path = save_png(images[0], out, scale=args.scale)
    print(f"codes: {' '.join(map(str, codes[0].tolist()))}", file=sys.stderr)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _generate_batch(args: argparse.Namespace) -> int:
    from seedfast.demo.released import read_requests, run_requests

    if args.out is None:
        raise CliError("--prompts needs --out DIR")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {out}: exists and is not a folder")
    requests = _run(read_requests, args.prompts, default_seed=args.seed)
    pipe, read = _open(args, llm=True, detokenizer=any(r.image is None for r in requests))
    results = _run(run_requests, pipe, requests, out, batch_size=args.batch_size, progress=not args.no_progress,
                   read_image=read)
    print(f"wrote {results}", file=sys.stderr)
    return 0


def add_caption_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``caption`` to the ``seedfast`` sub-command parsers."""
    p = sub.add_parser("caption", help="images -> captions, through SEED codes and SEED-LLaMA",
                       description="Caption each image: its 32 codes, then SEED-LLaMA's text.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any size; resized)")
    p.add_argument("--seed", type=int, default=0, help="seeds the sampling when it is not greedy (default 0)")
    p.add_argument("--question", help="ask this about each image instead of a plain caption")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest answer (default: the LLM's generation_config.json, else 120; the demo's: 24); an "
                        "answer cut there is reported")
    _add_model_flags(p)
    p.set_defaults(func=_cmd_caption)
    return p


def _cmd_caption(args: argparse.Namespace) -> int:
    _check_seed(args)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    pipe, read = _open(args, llm=True, detokenizer=False)
    captions = []
    try:
        for i, path in enumerate(args.images):
            reply = pipe.answer(read(path), args.question, seed=args.seed + i, max_new_tokens=args.max_new_tokens)[0]
            captions.append(reply.text_segments[0].strip())
            if reply.finish_reason == "length":
                limit = args.max_new_tokens or pipe.sampling.max_new_tokens
                print(f"seedfast caption: note: {path}: the answer reached max_new_tokens={limit} and is cut "
                      "there; pass --max-new-tokens to allow more", file=sys.stderr)
    except ValueError as err:
        raise CliError(" ".join(str(err).split())) from None
    for path, text in zip(args.images, captions):
        print(text if len(args.images) == 1 else f"{path}: {text}")
    return 0
