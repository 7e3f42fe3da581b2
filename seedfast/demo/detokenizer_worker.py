"""``python -m seedfast.demo.detokenizer_worker FOLDER SEED [--progress]``: the process in which
``seedfast demo`` trains its de-tokenizer (see :func:`seedfast.demo.pipeline.detokenizer_worker`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from seedfast.demo.pipeline import detokenizer_worker

    parser = argparse.ArgumentParser(prog="python -m seedfast.demo.detokenizer_worker")
    parser.add_argument("folder", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)
    return detokenizer_worker(args.folder, args.seed, args.progress)


if __name__ == "__main__":
    sys.exit(main())
