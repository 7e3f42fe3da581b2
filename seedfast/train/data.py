"""Where each step's samples come from: a source with random access, and a sampler that makes
the samples of step ``s`` a pure function of ``s``.

The sampler concatenates one permutation of the source per epoch (epoch ``e``'s from
``numpy.random.default_rng([seed, e])``) and gives step ``s`` the global batch at positions
``s·G … (s+1)·G − 1``. Micro-batch ``m`` of rank ``r`` is the slice
``(m·world + r)·b … + b``. Hence

* the data position is just the step: resuming needs no iterator state;
* the ranks' slices are disjoint and together the global batch, in the order one process
  with ``micro_batch = world·b`` would read it (stage 1's gathered contrastive batch matches);
* every process can compute any step's samples without communicating.
"""
from __future__ import annotations

import concurrent.futures
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from seedfast.data import ProceduralConfig, ProceduralDataset, TarImageCaptions, open_image_captions
from seedfast.train.config import DataConfig


class ImageTextSource(Protocol):
    """Random-access image–caption data (the procedural dataset, a folder, a JSONL file)."""

    def __len__(self) -> int: ...

    def batch(self, indices: Any) -> Any: ...


@dataclass
class RawBatch:
    """One micro-batch as read, before it goes to the device.

    Attributes
    ----------
    indices : ndarray ``[b]``
        Global sample indices (they also seed per-sample choices such as stage 3's caption side).
    captions : list of str
    images : Tensor ``[b, 3, H, W]`` uint8, or None when reading features
    features : Tensor ``[b, ...]`` or None
        Precomputed frozen-encoder output (``vit`` or ``causal``, see :mod:`seedfast.train.features`).
    target : Tensor ``[b, G]`` or None
        Precomputed stage-2 target.
    """

    indices: np.ndarray
    captions: list[str]
    images: torch.Tensor | None = None
    features: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.captions)


class ImageSource:
    """Reads :class:`RawBatch` objects from a map-style image–caption dataset."""

    def __init__(self, dataset: ImageTextSource) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def read(self, indices: np.ndarray) -> RawBatch:
        batch = self.dataset.batch([int(i) for i in indices])
        return RawBatch(indices=indices, captions=list(batch.captions), images=batch.images)


def open_source(cfg: DataConfig) -> ImageSource:
    """The configured image–caption source (unsharded: the sampler picks each rank's samples).

    Raises
    ------
    ValueError
        A streaming ``.tar`` (no random access: precompute features from it instead), or what
        :func:`seedfast.data.open_image_captions` raises.
    """
    if cfg.source == "procedural":
        pc = ProceduralConfig(image_size=cfg.image_size, max_objects=cfg.max_objects, seed=cfg.seed,
                              train_size=cfg.train_size)
        return ImageSource(ProceduralDataset(pc, "train"))
    data = open_image_captions(cfg.source, cfg.image_size)
    if isinstance(data, TarImageCaptions):
        raise ValueError(f"{cfg.source} is a stream (.tar) without random access; run --precompute-features on "
                         "it and train from the features folder (data.features)")
    return ImageSource(data)


class GlobalSampler:
    """Sample indices of every step (see the module docstring).

    Parameters
    ----------
    size : int
        Samples in the source.
    global_batch : int
    seed : int
    shuffle : bool
    """

    def __init__(self, size: int, global_batch: int, seed: int, shuffle: bool) -> None:
        if size < 1:
            raise ValueError("the training data holds no samples")
        self.size, self.global_batch, self.seed, self.shuffle = size, global_batch, seed, shuffle
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) > 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = (np.random.default_rng([self.seed, epoch]).permutation(self.size)
                                   if self.shuffle else np.arange(self.size))
        return self._orders[epoch]

    def step_indices(self, step: int) -> np.ndarray:
        """The global batch of optimizer step ``step`` (0-based): ``[global_batch]`` int64."""
        start = step * self.global_batch
        out = np.empty(self.global_batch, dtype=np.int64)
        filled = 0
        while filled < self.global_batch:
            epoch, pos = divmod(start + filled, self.size)
            take = min(self.global_batch - filled, self.size - pos)
            out[filled:filled + take] = self._order(epoch)[pos:pos + take]
            filled += take
        return out

    def micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[np.ndarray]:
        """This rank's micro-batches of step ``step``, in accumulation order."""
        indices = self.step_indices(step)
        accum = self.global_batch // (micro_batch * world_size)
        return [indices[(m * world_size + rank) * micro_batch:(m * world_size + rank + 1) * micro_batch]
                for m in range(accum)]

    def epoch(self, step: int) -> float:
        """Epochs completed before step ``step``."""
        return step * self.global_batch / self.size


class Prefetcher:
    """Reads the next step's micro-batches in a background thread while this one computes.

    Reading is pure (a function of the step), so prefetching never changes what is read; a
    source must therefore not draw from torch's global random generator, which the loop
    re-seeds at every step (the procedural dataset draws from per-sample numpy streams).
    """

    def __init__(self, read_step: Callable[[int], list[RawBatch]]) -> None:
        self._read = read_step
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="seedfast-data")
        self._pending: dict[int, concurrent.futures.Future] = {}

    def get(self, step: int) -> list[RawBatch]:
        """Step ``step``'s micro-batches; starts reading step ``step + 1``."""
        future = self._pending.pop(step, None)
        batches = future.result() if future is not None else self._read(step)
        self._pending[step + 1] = self._pool.submit(self._read, step + 1)
        return batches

    def close(self) -> None:
        for f in self._pending.values():
            f.cancel()
        self._pool.shutdown(wait=True)
