"""Real image–caption data through the same :class:`~seedfast.data.Sample` type.

Three layouts, each opened by :func:`open_image_captions`:

* a folder (searched recursively) of images ``x.jpg|jpeg|png|webp`` each beside ``x.txt``;
* a webdataset-style tar (plain or compressed): a sample's members are adjacent and share a
  key, the member name up to the first dot of its base name (``dir/x.jpg`` + ``dir/x.txt``,
  or ``dir/x.json`` with a ``"caption"`` field; ``.txt`` wins when both are there);
* a JSONL file, one ``{"image": path, "caption": text}`` per line, paths relative to the
  JSONL's folder or absolute; blank lines are skipped.

Images are decoded with Pillow (every mode by its full range: 16-bit grayscale is scaled, not
clipped; see :func:`decode_image`), composited onto white where they have transparency, and
resized to exactly ``image_size × image_size`` (aspect ratio not kept, no crop; spec §2) with
Pillow's bicubic filter by default, as SEED's ``ImageTokenizer.processor``; ``"bilinear"``
matches its LLM-data transform. Captions are read as UTF-8 and stripped of surrounding white
space, nothing else. Samples carry ``truth=None``.

Sharding: with ``rank`` and ``world_size``, a rank keeps every ``world_size``-th sample of the
sorted folder, of the JSONL lines, or of the tar's samples in archive order, starting at
``rank``; the ranks' shares are disjoint and together hold everything.

Problems raise :class:`DatasetError` (a ``ValueError``) in one line naming the file, member or
line; a path that does not exist raises ``FileNotFoundError``. Files beside the images that
are not captions (and, in a tar, keys without an image) are ignored.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seedfast.data.samples import Batch, Sample, check_shard, collate

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
RESAMPLING = ("bicubic", "bilinear")
_WHITE = (255, 255, 255)
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""Pillow modes whose samples exceed 8 bits: scaled by their range, never clipped."""
_ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")


class DatasetError(ValueError):
    """Image–caption data that cannot be read: the message names the file, member or line."""


@dataclass(frozen=True)
class _Record:
    key: str
    image: Path
    caption: str | None
    caption_file: Path | None
    origin: str


def decode_image(data: bytes | Path, name: str, image_size: int, resample: str = "bicubic") -> torch.Tensor:
    """Decode an image file (or its bytes) and resize it to ``image_size × image_size``.

    Every Pillow mode is brought to 8-bit RGB by its full range, so that no mode clips:

    * 8-bit modes (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ...)
      through Pillow's own conversion;
    * 16-bit grayscale (``I;16``, ``I;16B``, ``I;16L``, ``I;16N``; 16-bit PNGs and TIFFs):
      0–65535 → 0–255;
    * 32-bit integer ``I``: read as 16-bit data (0–65535 → 0–255); other values are refused;
    * 32-bit float ``F``: 0.0–1.0 → 0–255; other values (and NaN, inf) are refused;
    * transparency (an alpha channel, or a transparent colour or palette entry) is composited
      onto white.

    Parameters
    ----------
    data : bytes or Path
    name : str
        How errors refer to the image.
    image_size : int, positive
    resample : "bicubic" or "bilinear"

    Returns
    -------
    Tensor ``[3, image_size, image_size]``, uint8

    Raises
    ------
    DatasetError
        The data is not an image Pillow can decode, or its values lie outside its mode's range
        (the message names the image and its mode).
    """
    from PIL import Image, UnidentifiedImageError

    filters = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as opened:
            opened.load()
            image = _to_rgb(opened, name)
    except DatasetError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(f"cannot decode image {name}: {error}") from None
    resized = image.resize((image_size, image_size), filters[resample])
    return torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def _to_rgb(opened: Any, name: str) -> Any:
    """A loaded Pillow image of any mode → 8-bit ``RGB`` (see :func:`decode_image`)."""
    from PIL import Image

    image = opened
    transparency = opened.info.get("transparency")
    if opened.mode in _WIDE_MODES:
        values = np.asarray(opened)
        gray = _wide_to_8bit(values, opened.mode, name)
        image = Image.fromarray(gray, "L")
        if transparency is not None and opened.mode != "F":
            # A 16-bit PNG's transparent gray level (tRNS) is a value of the 16-bit samples.
            alpha = np.where(values == transparency, 0, 255).astype(np.uint8)
            image = Image.merge("LA", (image, Image.fromarray(alpha, "L")))
        transparency = None
    if image.mode in _ALPHA_MODES or transparency is not None:
        rgba = Image.new("RGBA", image.size, _WHITE + (255,))
        rgba.alpha_composite(image.convert("RGBA"))
        return rgba.convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise DatasetError(f"cannot decode image {name}: Pillow mode {opened.mode!r} has no conversion to "
                           f"RGB ({error})") from None


def _wide_to_8bit(values: np.ndarray, mode: str, name: str) -> np.ndarray:
    """16/32-bit gray samples → uint8 by the mode's range; out-of-range data is refused by name."""
    samples = values.astype(np.float64)
    top, kind, expected = ((1.0, "32-bit float", "[0, 1]") if mode == "F" else
                           (65535.0, "32-bit integer" if mode == "I" else "16-bit", "[0, 65535]"))
    if not np.isfinite(samples).all():
        raise DatasetError(f"image {name}: mode {mode!r} ({kind}) holds NaN or inf; expected values in {expected}")
    low, high = (float(samples.min()), float(samples.max())) if samples.size else (0.0, 0.0)
    if low < 0 or high > top:
        raise DatasetError(f"image {name}: mode {mode!r} ({kind}) values span [{low:g}, {high:g}]; "
                           f"expected {expected}")
    return np.rint(samples * (255.0 / top)).astype(np.uint8)


class ImageCaptionFiles:
    """A map-style dataset over an image–caption folder or JSONL file (one rank's share).

    Build it with :meth:`from_folder`, :meth:`from_jsonl` or :func:`open_image_captions`.
    Image files are opened only when their sample is read.
    """

    def __init__(self, records: Sequence[_Record], image_size: int, resample: str) -> None:
        self._records = list(records)
        self.image_size = image_size
        self.resample = resample

    @classmethod
    def from_folder(
        cls, root: str | os.PathLike, image_size: int = 64, *, resample: str = "bicubic", rank: int = 0,
        world_size: int = 1,
    ) -> ImageCaptionFiles:
        """Images under ``root`` (recursively, sorted by path), each with its ``.txt`` caption.

        Raises
        ------
        FileNotFoundError
            ``root`` does not exist.
        DatasetError
            ``root`` is not a folder, holds no images, or an image has no caption file.
        """
        image_size, resample, rank, world_size = _check_options(image_size, resample, rank, world_size)
        folder = _existing(root)
        if not folder.is_dir():
            raise DatasetError(f"{folder} is not a folder")
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not images:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {folder}")
        records = []
        for image in images:
            caption_file = image.with_suffix(".txt")
            if not caption_file.is_file():
                raise DatasetError(f"caption file missing for image {image}: expected {caption_file}")
            key = image.relative_to(folder).with_suffix("").as_posix()
            records.append(_Record(key, image, None, caption_file, str(image)))
        return cls(records[rank::world_size], image_size, resample)

    @classmethod
    def from_jsonl(
        cls, path: str | os.PathLike, image_size: int = 64, *, resample: str = "bicubic", rank: int = 0,
        world_size: int = 1,
    ) -> ImageCaptionFiles:
        """One sample per non-blank line of a JSONL file; every line is checked here.

        Raises
        ------
        FileNotFoundError
            ``path`` does not exist.
        DatasetError
            A line is not a JSON object with string fields "image" and "caption", or the file
            holds no samples (the message names the line number).
        """
        image_size, resample, rank, world_size = _check_options(image_size, resample, rank, world_size)
        jsonl = _existing(path)
        records = []
        with jsonl.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, start=1):
                if not line.strip():
                    continue
                where = f"{jsonl} line {number}"
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DatasetError(f"{where}: not valid JSON ({error.msg})") from None
                if not isinstance(entry, dict):
                    raise DatasetError(f"{where}: expected a JSON object, got {type(entry).__name__}")
                for field in ("image", "caption"):
                    if not isinstance(entry.get(field), str):
                        problem = "missing" if field not in entry else "not a string"
                        raise DatasetError(f"{where}: field {field!r} {problem}")
                records.append(_Record(
                    key=f"{jsonl.name}:{number}",
                    image=jsonl.parent / entry["image"],
                    caption=entry["caption"].strip(),
                    caption_file=None,
                    origin=where,
                ))
        if not records:
            raise DatasetError(f"{jsonl} holds no samples")
        return cls(records[rank::world_size], image_size, resample)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> Sample:
        if not 0 <= i < len(self._records):
            raise IndexError(f"ImageCaptionFiles: index {i} out of range for {len(self._records)} samples")
        record = self._records[i]
        if not record.image.is_file():
            raise DatasetError(f"{record.origin}: image {record.image} does not exist")
        caption = record.caption if record.caption is not None else _read_caption(record.caption_file)
        image = decode_image(record.image, str(record.image), self.image_size, self.resample)
        return Sample(image, caption, None, record.key)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def batch(self, indices: Sequence[int]) -> Batch:
        """Samples ``indices`` stacked: images ``[B, 3, image_size, image_size]`` uint8."""
        return collate([self[i] for i in indices])


class TarImageCaptions:
    """An iterable over a webdataset-style tar, read as a stream (one rank's share).

    Iterating raises :class:`DatasetError` for an image member without a caption member, a
    ``.json`` without a string "caption", an image that cannot be decoded, an unreadable
    archive, or an archive without images. With a ``torch.utils.data.DataLoader``, give each
    worker its own ``rank`` / ``world_size`` share, or every worker reads everything.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Bad ``image_size``, ``resample``, ``rank`` or ``world_size``.
    """

    def __init__(
        self, path: str | os.PathLike, image_size: int = 64, *, resample: str = "bicubic", rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.image_size, self.resample, self.rank, self.world_size = _check_options(
            image_size, resample, rank, world_size
        )
        self.path = _existing(path)

    def __iter__(self) -> Iterator[Sample]:
        images_seen = 0
        for key, members, mine in self._groups():
            image_extension = next((e for e in members if f".{e}" in IMAGE_EXTENSIONS), None)
            if image_extension is None:
                continue
            images_seen += 1
            image_name, image_bytes = members[image_extension]
            where = f"{image_name} in {self.path}"
            # Checked on every rank, so that all ranks fail alike on a malformed archive.
            if "txt" not in members and "json" not in members:
                raise DatasetError(f"caption missing for image {where}: expected {key}.txt or {key}.json beside it")
            if not mine:
                continue
            if "txt" in members:
                name, data = members["txt"]
                caption = _decode_text(data, f"{name} in {self.path}")
            else:
                name, data = members["json"]
                caption = _json_caption(data, f"{name} in {self.path}")
            yield Sample(decode_image(image_bytes, where, self.image_size, self.resample), caption, None, key)
        if images_seen == 0:
            raise DatasetError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in tar {self.path}")

    def _groups(self) -> Iterator[tuple[str, dict[str, tuple[str, bytes | None]], bool]]:
        """Each key's members as ``{extension: (member name, data)}`` and whether the sample is
        this rank's; the data of other ranks' samples is skipped, not read (None)."""
        try:
            with tarfile.open(self.path, mode="r|*") as archive:
                key, members, ordinal = None, {}, -1
                for member in archive:
                    if not member.isfile():
                        continue
                    member_key, extension = _split_member_name(member.name)
                    if member_key != key:
                        if members:
                            yield key, members, ordinal % self.world_size == self.rank
                        key, members, ordinal = member_key, {}, ordinal + 1
                    mine = ordinal % self.world_size == self.rank
                    members[extension] = (member.name, archive.extractfile(member).read() if mine else None)
                if members:
                    yield key, members, ordinal % self.world_size == self.rank
        except tarfile.TarError as error:
            raise DatasetError(f"cannot read tar {self.path}: {error}") from None


def open_image_captions(
    path: str | os.PathLike, image_size: int = 64, *, resample: str = "bicubic", rank: int = 0, world_size: int = 1
) -> ImageCaptionFiles | TarImageCaptions:
    """Open real image–caption data by what ``path`` is: a folder, a ``.tar`` (also
    ``.tar.gz``, ``.tgz``, ``.tar.bz2``, ``.tar.xz``) or a ``.jsonl`` file.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    DatasetError
        ``path`` is a file of another kind, or the data is malformed (see the module docstring).
    ValueError
        Bad ``image_size``, ``resample``, ``rank`` or ``world_size``.
    """
    location = _existing(path)
    options = dict(resample=resample, rank=rank, world_size=world_size)
    if location.is_dir():
        return ImageCaptionFiles.from_folder(location, image_size, **options)
    name = location.name.lower()
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return TarImageCaptions(location, image_size, **options)
    if name.endswith(".jsonl"):
        return ImageCaptionFiles.from_jsonl(location, image_size, **options)
    raise DatasetError(f"{location}: expected a folder, a .tar or a .jsonl file")


def _existing(path: str | os.PathLike) -> Path:
    location = Path(path)
    if not location.exists():
        raise FileNotFoundError(f"image-caption data not found: {location}")
    return location


def _check_options(image_size: int, resample: str, rank: int, world_size: int) -> tuple[int, str, int, int]:
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if resample not in RESAMPLING:
        raise ValueError(f"resample must be one of {RESAMPLING}, got {resample!r}")
    return (image_size, resample, *check_shard(rank, world_size))


def _split_member_name(name: str) -> tuple[str, str]:
    """webdataset's split: the key is the path up to the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return f"{folder}/{stem}" if folder else stem, extension.lower()


def _read_caption(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DatasetError(f"cannot read caption file {path}: {error.strerror}") from None
    return _decode_text(data, str(path))


def _decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError as error:
        raise DatasetError(f"caption {name} is not UTF-8 text: {error.reason} at byte {error.start}") from None


def _json_caption(data: bytes, name: str) -> str:
    try:
        entry = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DatasetError(f"{name}: not valid JSON ({error})") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str):
        raise DatasetError(f"{name}: expected a JSON object with a string field 'caption'")
    return entry["caption"].strip()
