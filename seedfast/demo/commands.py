"""The input and output files of ``seedfast tokenize``, ``detokenize``, ``generate`` and
``caption`` (the models' side is :class:`~seedfast.pipeline.SeedPipeline`).

Inputs are checked here and every problem is raised as :class:`CommandError` with one line
that names the file or value and what is wrong.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seedfast.demo.images import read_image


class CommandError(Exception):
    """A user input the commands cannot use (one line)."""


def load_images(paths: Sequence[str | Path], image_size: int) -> torch.Tensor:
    """Image files → ``[B, 3, image_size, image_size]`` uint8.

    Raises
    ------
    CommandError
        A missing file or one that is not an image.
    """
    from seedfast.data import DatasetError

    images = []
    for path in paths:
        try:
            images.append(read_image(path, image_size))
        except (FileNotFoundError, DatasetError) as err:
            raise CommandError(str(err)) from None
    return torch.stack(images)


def format_codes(paths: Sequence[str | Path], codes: list[list[int]], *, as_json: bool) -> str:
    """``tokenize``'s output: ``path: c1 … c32`` per line, or a JSON list of ``{"image", "codes"}``."""
    if as_json:
        return json.dumps([{"image": str(p), "codes": c} for p, c in zip(paths, codes)])
    return "\n".join(f"{p}: {' '.join(map(str, c))}" for p, c in zip(paths, codes))


def read_codes(path: str | Path, *, index: int | None, codes_per_image: int, num_codes: int) -> list[int]:
    """One image's codes from a JSON file.

    The file holds a list of ``codes_per_image`` ints, an object with a ``"codes"`` list, or a
    list of either (``tokenize --json`` writes a list of objects); ``index`` picks one of a list.

    Raises
    ------
    CommandError
        Unreadable or malformed JSON, several code lists without ``index`` (or an index out of
        range), the wrong number of codes, or a code outside ``[0, num_codes)``.
    """
    path = Path(path)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CommandError(f"no such file: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CommandError(f"{path}: not a JSON file of codes ({' '.join(str(err).split())})") from None
    if isinstance(data, dict) or (isinstance(data, list) and data and all(isinstance(x, int) for x in data)):
        entries = [data]
    elif isinstance(data, list) and data:
        entries = data
    else:
        raise CommandError(f"{path}: expected a list of {codes_per_image} codes, an object with \"codes\", or a "
                           "list of those")
    if index is None and len(entries) > 1:
        raise CommandError(f"{path} holds {len(entries)} code lists; choose one with --index (0 to {len(entries) - 1})")
    index = 0 if index is None else index
    if not 0 <= index < len(entries):
        raise CommandError(f"--index {index} is out of range: {path} holds {len(entries)} code list(s)")
    entry = entries[index]
    codes = entry.get("codes") if isinstance(entry, dict) else entry
    if not isinstance(codes, list) or not all(isinstance(c, int) and not isinstance(c, bool) for c in codes):
        raise CommandError(f"{path}: the codes must be a list of integers")
    if len(codes) != codes_per_image:
        raise CommandError(f"{path}: an image is {codes_per_image} codes, got {len(codes)}")
    bad = [(i, c) for i, c in enumerate(codes) if not 0 <= c < num_codes]
    if bad:
        i, c = bad[0]
        raise CommandError(f"{path}: code {c} at position {i} is outside the codebook [0, {num_codes})")
    return codes


def output_path(path: str | Path) -> Path:
    """``-o``: a ``.png`` name in an existing folder, not a directory.

    Raises
    ------
    CommandError
        Naming the path and what is expected.
    """
    out = Path(path)
    if out.is_dir():
        raise CommandError(f"-o {out}: is a directory; give a file name ending in .png")
    if out.suffix.lower() != ".png":
        raise CommandError(f"-o {out}: the output is a PNG; give a name ending in .png")
    if out.parent != Path("") and not out.parent.is_dir():
        raise CommandError(f"-o {out}: folder {out.parent} does not exist")
    return out
