"""The embedded dataset: procedural shape scenes with exact captions, no download, no files.

Sample ``index`` of split ``split`` under ``seed`` is drawn from its own counter-based random
stream, ``np.random.default_rng([seed, SPLIT_STREAMS[split], index])``: any sample is made
directly, the same on every machine and run, and the two splits come from disjoint streams,
so no held-out sample is a training sample. The attribute space is small (120 one-object and
1728 two-object captions with the defaults), so captions recur across splits by design;
images do not: each object's position (±``POSITION_JITTER``) and size (±``RADIUS_JITTER``)
are continuous draws, rendered anti-aliased.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from seedfast.data.render import POSITION_CENTRES, SIZE_RADIUS, PlacedObject, SceneLayout, render_layouts
from seedfast.data.samples import Batch, Sample, check_shard
from seedfast.data.scene import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, ObjectAttributes, make_caption

SPLIT_STREAMS = {"train": 0, "heldout": 1}
POSITION_JITTER = 0.03
RADIUS_JITTER = 0.06
_RELATION_PAIRS = tuple(RELATIONS)
# Iteration renders this many samples at once: most of the batch speed-up, little memory.
_RENDER_CHUNK = 64


@dataclass(frozen=True)
class ProceduralConfig:
    """What the procedural dataset draws.

    Attributes
    ----------
    image_size : int
        Side of the square images in pixels (at least 16; 64 by default, 32 still checks well).
    min_objects, max_objects : int
        Objects per scene, 1 or 2; a scene has each count in range with equal probability.
    seed : int
        Non-negative; selects the whole dataset.
    train_size, heldout_size : int
        Number of samples in each split.
    shapes, colours, sizes : tuples of names
        Non-empty subsets of ``SHAPES``, ``COLOURS``, ``SIZES`` to draw from (two colours at
        least when scenes may hold two objects: those always differ in colour).

    Raises
    ------
    ValueError
        Any field out of range.
    """

    image_size: int = 64
    min_objects: int = 1
    max_objects: int = 2
    seed: int = 0
    train_size: int = 1_000_000
    heldout_size: int = 1_000
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = COLOURS
    sizes: tuple[str, ...] = SIZES

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"ProceduralConfig: image_size must be at least 16, got {self.image_size}")
        if not 1 <= self.min_objects <= self.max_objects <= 2:
            raise ValueError(
                "ProceduralConfig: need 1 <= min_objects <= max_objects <= 2, "
                f"got min_objects={self.min_objects}, max_objects={self.max_objects}"
            )
        if self.seed < 0:
            raise ValueError(f"ProceduralConfig: seed must be non-negative, got {self.seed}")
        if self.train_size < 0 or self.heldout_size < 0:
            raise ValueError(
                f"ProceduralConfig: split sizes must be non-negative, got train_size={self.train_size}, "
                f"heldout_size={self.heldout_size}"
            )
        for name, allowed in (("shapes", SHAPES), ("colours", COLOURS), ("sizes", SIZES)):
            chosen = getattr(self, name)
            if not chosen or len(set(chosen)) != len(chosen) or not set(chosen) <= set(allowed):
                raise ValueError(f"ProceduralConfig: {name} must be distinct names from {allowed}, got {chosen!r}")
        if self.max_objects == 2 and len(self.colours) < 2:
            raise ValueError("ProceduralConfig: two-object scenes need at least two colours")

    def split_size(self, split: str) -> int:
        """Number of samples in ``split`` ("train" or "heldout")."""
        return self.train_size if _check_split(split) == "train" else self.heldout_size


def sample_layout(config: ProceduralConfig, split: str, index: int) -> SceneLayout:
    """Draw scene ``index`` of ``split``; the same arguments always give the same layout.

    Raises
    ------
    ValueError
        Unknown split or negative index.
    """
    if index < 0:
        raise ValueError(f"sample_layout: index must be non-negative, got {index}")
    rng = np.random.default_rng([config.seed, SPLIT_STREAMS[_check_split(split)], index])
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    if count == 1:
        positions: tuple[str, ...] = (POSITIONS[rng.integers(len(POSITIONS))],)
        colours = (config.colours[rng.integers(len(config.colours))],)
    else:
        positions = _RELATION_PAIRS[rng.integers(len(_RELATION_PAIRS))]
        colours = tuple(config.colours[i] for i in rng.choice(len(config.colours), size=2, replace=False))
    placed = []
    for position, colour in zip(positions, colours):
        shape = config.shapes[rng.integers(len(config.shapes))]
        size = config.sizes[rng.integers(len(config.sizes))]
        dx, dy = rng.uniform(-POSITION_JITTER, POSITION_JITTER, size=2)
        scale = 1.0 + rng.uniform(-RADIUS_JITTER, RADIUS_JITTER)
        centre_x, centre_y = POSITION_CENTRES[position]
        placed.append(PlacedObject(
            ObjectAttributes(shape, colour, size, position),
            x=float(centre_x + dx),
            y=float(centre_y + dy),
            radius=float(SIZE_RADIUS[size] * scale),
        ))
    return SceneLayout(tuple(placed))


class ProceduralDataset:
    """One split of the procedural dataset, or one rank's shard of it.

    Shard ``rank`` of ``world_size`` holds the split's samples ``rank, rank + world_size, …``;
    its item ``i`` is the split's sample ``rank + i·world_size``, so the shards are disjoint and
    together hold the whole split.

    Parameters
    ----------
    config : ProceduralConfig
    split : "train" or "heldout"
    rank, world_size : int
        This process's shard; ``0 <= rank < world_size``.

    Raises
    ------
    ValueError
        Unknown split or bad rank / world_size.
    """

    def __init__(
        self, config: ProceduralConfig | None = None, split: str = "train", *, rank: int = 0, world_size: int = 1
    ) -> None:
        self.config = config if config is not None else ProceduralConfig()
        self.split = _check_split(split)
        self.rank, self.world_size = check_shard(rank, world_size)
        total = self.config.split_size(self.split)
        self._length = max(0, (total - rank + world_size - 1) // world_size)

    def __len__(self) -> int:
        return self._length

    def index_of(self, i: int) -> int:
        """The split's sample index of this shard's item ``i``.

        Raises
        ------
        IndexError
            ``i`` outside ``[0, len(self))``.
        """
        if not 0 <= i < self._length:
            raise IndexError(f"ProceduralDataset: index {i} out of range for {self._length} samples")
        return self.rank + i * self.world_size

    def layout(self, i: int) -> SceneLayout:
        """The scene and geometry of item ``i``."""
        return sample_layout(self.config, self.split, self.index_of(i))

    def __getitem__(self, i: int) -> Sample:
        """Item ``i`` of this shard: image ``[3, image_size, image_size]`` uint8, caption, Scene."""
        (sample,) = self._samples([i])
        return sample

    def __iter__(self) -> Iterator[Sample]:
        """This shard's items in order, drawn a chunk at a time."""
        for start in range(0, self._length, _RENDER_CHUNK):
            yield from self._samples(range(start, min(start + _RENDER_CHUNK, self._length)))

    def batch(self, indices: Sequence[int]) -> Batch:
        """Items ``indices`` drawn together.

        Returns
        -------
        Batch with images ``[B, 3, image_size, image_size]`` uint8 and each sample's Scene.
        """
        layouts = [self.layout(i) for i in indices]
        return Batch(
            images=render_layouts(layouts, self.config.image_size),
            captions=[make_caption(layout.scene) for layout in layouts],
            truths=[layout.scene for layout in layouts],
            keys=[self._key(i) for i in indices],
        )

    def _samples(self, indices: Sequence[int]) -> list[Sample]:
        batch = self.batch(indices)
        return [Sample(image, caption, truth, key)
                for image, caption, truth, key in zip(batch.images, batch.captions, batch.truths, batch.keys)]

    def _key(self, i: int) -> str:
        return f"procedural/{self.split}/{self.index_of(i)}"


def _check_split(split: str) -> str:
    if split not in SPLIT_STREAMS:
        raise ValueError(f"split must be one of {tuple(SPLIT_STREAMS)}, got {split!r}")
    return split
