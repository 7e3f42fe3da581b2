"""What every dataset yields: one :class:`Sample` at a time, or a :class:`Batch` of them.

Images are uint8 RGB, channels first, values 0–255: exact, four times smaller than float32,
and what :func:`seedfast.models.preprocess.clip_preprocess` takes (it also takes floats in [0, 1]).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Protocol

import torch

from seedfast.data.scene import Scene


@dataclass(frozen=True)
class Sample:
    """One image with its caption.

    Attributes
    ----------
    image : Tensor ``[3, H, W]``, uint8
    caption : str
    truth : Scene or None
        The attributes of each object, for procedural samples; None for real data.
    key : str
        Where the sample comes from (``"procedural/train/17"``, a file name, a tar key).
    """

    image: torch.Tensor
    caption: str
    truth: Scene | None
    key: str


@dataclass(frozen=True)
class Batch:
    """B samples stacked.

    Attributes
    ----------
    images : Tensor ``[B, 3, H, W]``, uint8
    captions, truths, keys : lists of length B
    """

    images: torch.Tensor
    captions: list[str]
    truths: list[Scene | None]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.captions)


class IndexedSamples(Protocol):
    """A map-style dataset that can build a batch of its samples at once."""

    def __len__(self) -> int: ...

    def batch(self, indices: Sequence[int]) -> Batch: ...


def collate(samples: Sequence[Sample]) -> Batch:
    """Stack samples into a batch.

    Raises
    ------
    ValueError
        No samples, or images of different shapes.
    """
    if not samples:
        raise ValueError("collate: needs at least one sample")
    shapes = {tuple(sample.image.shape) for sample in samples}
    if len(shapes) != 1:
        raise ValueError(f"collate: all images must have one shape, got {sorted(shapes)}")
    return Batch(
        images=torch.stack([sample.image for sample in samples]),
        captions=[sample.caption for sample in samples],
        truths=[sample.truth for sample in samples],
        keys=[sample.key for sample in samples],
    )


def iter_batches(
    samples: IndexedSamples | Iterable[Sample], batch_size: int, *, drop_last: bool = False, repeat: bool = False
) -> Iterator[Batch]:
    """Batches in order over a dataset: its ``batch`` method for map-style datasets (the
    procedural one renders a whole batch at once), else consecutive samples of the stream.

    Parameters
    ----------
    samples : a dataset with ``__len__`` and ``batch(indices)``, or any iterable of Sample
    batch_size : int, positive
    drop_last : bool
        Leave out a last batch smaller than ``batch_size``.
    repeat : bool
        Start over at the end, forever (an iterable must then be re-iterable).

    Raises
    ------
    ValueError
        ``batch_size`` not positive, or ``repeat`` over a dataset that yields nothing.
    """
    if batch_size < 1:
        raise ValueError(f"iter_batches: batch_size must be positive, got {batch_size}")
    while True:
        produced = False
        for batch in _one_pass(samples, batch_size, drop_last):
            produced = True
            yield batch
        if not repeat:
            return
        if not produced:
            raise ValueError("iter_batches: repeat=True over a dataset that yields no full batch")


def _one_pass(samples: IndexedSamples | Iterable[Sample], batch_size: int, drop_last: bool) -> Iterator[Batch]:
    if hasattr(samples, "batch") and hasattr(samples, "__len__"):
        total = len(samples)
        stop = total - total % batch_size if drop_last else total
        for start in range(0, stop, batch_size):
            yield samples.batch(range(start, min(start + batch_size, total)))
        return
    iterator = iter(samples)
    while chunk := list(islice(iterator, batch_size)):
        if len(chunk) < batch_size and drop_last:
            return
        yield collate(chunk)


def check_shard(rank: int, world_size: int) -> tuple[int, int]:
    """Check a ``rank`` / ``world_size`` pair for sharding; return it.

    Raises
    ------
    ValueError
        ``world_size < 1`` or ``rank`` outside ``[0, world_size)``.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return rank, world_size
