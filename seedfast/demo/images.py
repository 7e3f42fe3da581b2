"""Pixels to PNG files and back: single images, labelled grids, and user image files.

Images are ``[3, H, W]`` tensors, uint8 (0–255) or floating (0–1), as everywhere in seedfast.
The demo's images are tiny (32×32), so files and grids are enlarged by an integer factor with
nearest-neighbour sampling: every source pixel stays a crisp square.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

GRID_PAD = 4
"""White pixels between and around the cells of a grid."""
LABEL_HEIGHT = 12
"""Height of the column label strip, in pixels."""
LABEL_CHAR_WIDTH = 6
"""Width of a character of Pillow's built-in bitmap font, in pixels (sizes the row label strip)."""


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[3, H, W]`` uint8 or float in [0, 1] → ``[H, W, 3]`` uint8 array (floats are clamped and rounded).

    Raises
    ------
    ValueError
        Not a ``[3, H, W]`` tensor.
    """
    if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected an image tensor [3, H, W], got {getattr(image, 'shape', type(image).__name__)}")
    if image.dtype != torch.uint8:
        image = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return image.detach().cpu().permute(1, 2, 0).numpy()


def png_bytes(pixels: np.ndarray) -> bytes:
    """An ``[H, W, 3]`` uint8 array encoded as PNG."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def save_png(image: torch.Tensor, path: str | Path, *, scale: int = 1) -> Path:
    """Write one image as a PNG, enlarged ``scale`` times, atomically (a failed write leaves no partial file).

    Returns
    -------
    Path

    Raises
    ------
    OSError
        Of the failing write (read-only folder, disk full, a directory at ``path``).
    """
    from seedfast.checkpoint_io import save_bytes

    pixels = to_uint8(image)
    if scale > 1:
        pixels = pixels.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_bytes(path, png_bytes(pixels))


def image_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    *,
    scale: int = 4,
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
) -> np.ndarray:
    """Images laid out row by row on white, optionally labelled per column (above) and per row (left).

    Parameters
    ----------
    rows : sequence of rows, each a sequence of ``[3, H, W]`` images of one size
    scale : int
        Nearest-neighbour enlargement of every image.
    column_labels, row_labels : sequence of str
        Drawn in black above the columns / left of the rows (Pillow's built-in bitmap
        font); empty for none.

    Returns
    -------
    ndarray ``[H', W', 3]`` uint8

    Raises
    ------
    ValueError
        No rows, rows of different lengths, or images of different sizes.
    """
    from PIL import Image, ImageDraw

    if not rows or any(len(row) != len(rows[0]) or not row for row in rows):
        raise ValueError("image_grid: needs one or more rows of the same, non-zero length")
    cells = [[to_uint8(image) for image in row] for row in rows]
    shapes = {cell.shape for row in cells for cell in row}
    if len(shapes) != 1:
        raise ValueError(f"image_grid: all images must have one size, got {sorted(shapes)}")
    (height, width, _), = shapes
    cell_h, cell_w = height * scale, width * scale
    top = LABEL_HEIGHT if column_labels else 0
    left = GRID_PAD + LABEL_CHAR_WIDTH * max(map(len, row_labels)) if row_labels else 0
    columns = len(rows[0])
    canvas = np.full((top + GRID_PAD + len(rows) * (cell_h + GRID_PAD),
                      left + GRID_PAD + columns * (cell_w + GRID_PAD), 3), 255, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, cell in enumerate(row):
            y, x = top + GRID_PAD + r * (cell_h + GRID_PAD), left + GRID_PAD + c * (cell_w + GRID_PAD)
            canvas[y:y + cell_h, x:x + cell_w] = cell.repeat(scale, axis=0).repeat(scale, axis=1)
    if not column_labels and not row_labels:
        return canvas
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for c, label in enumerate(column_labels):
        draw.text((left + GRID_PAD + c * (cell_w + GRID_PAD), 1), label, fill=(0, 0, 0))
    for r, label in enumerate(row_labels):
        draw.text((GRID_PAD, top + GRID_PAD + r * (cell_h + GRID_PAD) + cell_h // 2 - 5), label, fill=(0, 0, 0))
    return np.asarray(picture)


def save_grid(
    rows: Sequence[Sequence[torch.Tensor]],
    path: str | Path,
    *,
    scale: int = 4,
    column_labels: Sequence[str] = (),
    row_labels: Sequence[str] = (),
) -> Path:
    """:func:`image_grid` written as a PNG, atomically; return the path."""
    from seedfast.checkpoint_io import save_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_bytes(path, png_bytes(image_grid(rows, scale=scale, column_labels=column_labels,
                                                 row_labels=row_labels)))


def read_image(path: str | Path, image_size: int) -> torch.Tensor:
    """A user's image file as ``[3, image_size, image_size]`` uint8 (RGB, bicubic resize, as
    :func:`seedfast.data.decode_image`).

    Raises
    ------
    FileNotFoundError
        No such file.
    seedfast.data.DatasetError
        Not an image Pillow can decode.
    """
    from seedfast.data import decode_image

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such image file: {path}")
    return decode_image(path, str(path), image_size)
