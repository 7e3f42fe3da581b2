"""Precomputed frozen-encoder features: run the frozen part of the tokenizer once over the data,
store it in safetensors shards, and train stages 1–2 from the shards.

The frozen EVA ViT-g is ~95 % of a tokenizer step's FLOPs and the official recipe re-runs it
every epoch (spec §13 item 11). Two kinds of features:

* ``vit`` (``--precompute-features`` with stage 1): the ViT's output ``[257, 1408]`` per image,
  before ``ln_vision`` (which stage 1 trains). Stages 1 and 2 can read it.
* ``causal`` (with stage 2): the frozen stage-1 Q-Former's output ``[32, 768]`` per image
  (eval mode: no dropout), 15× smaller than ``vit``, and the stage-2 target.

Caching fixes each image's pixels: the official random-resized-crop/flip augmentation (spec §2)
is not re-drawn per epoch. A folder holds ``features.json`` (kind, count, shards, the
tokenizer config, a SHA-256 fingerprint of the frozen weights, the target) and
``shard-r<rank>-<k>.safetensors`` files with ``features``, ``index`` (source sample index),
optionally ``target``, and the captions in the metadata.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from seedfast.train.data import RawBatch

FORMAT = "seedfast-features"
VERSION = 1
INDEX_FILE = "features.json"
KINDS = ("vit", "causal")
SHARD_SAMPLES = 1024
"""Samples per shard file (official ``vit`` features: ~0.74 GB in bf16)."""
_ENCODER_MODULES = {"vit": ("visual_encoder",), "causal": ("visual_encoder", "ln_vision", "query_tokens", "Qformer")}


def encoder_fingerprint(model: nn.Module, kind: str) -> str:
    """SHA-256 over the frozen weights that produce ``kind`` features (names sorted, float32 bytes).

    Compute it before casting the frozen modules to a lower precision, so that a GPU and a CPU
    run with the same weights agree.
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        if name.split(".", 1)[0] in _ENCODER_MODULES[kind]:
            h.update(name.encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def _fsync_write(path: Path, write: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_shard(path: Path, features: torch.Tensor, index: np.ndarray, captions: list[str],
                target: torch.Tensor | None) -> None:
    """One shard file, written atomically (temporary file, fsync, rename)."""
    from safetensors.torch import save_file

    tensors = {"features": features.contiguous(), "index": torch.from_numpy(np.asarray(index, dtype=np.int64))}
    if target is not None:
        tensors["target"] = target.contiguous()
    _fsync_write(path, lambda tmp: save_file(tensors, str(tmp), metadata={"captions": json.dumps(captions)}))


def write_index(folder: Path, meta: dict[str, Any]) -> Path:
    """``features.json`` (written last: a folder without it is incomplete)."""
    path = folder / INDEX_FILE
    _fsync_write(path, lambda tmp: tmp.write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta},
                                                              indent=1) + "\n", encoding="utf-8"))
    return path


class FeatureStore:
    """Random access to a features folder: rows as :class:`~seedfast.train.data.RawBatch` objects.

    Parameters
    ----------
    folder : path

    Raises
    ------
    ValueError
        No ``features.json`` (an unfinished precompute), another format or version, or a shard
        whose file is missing or of another size than recorded.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        index = self.folder / INDEX_FILE
        if not index.is_file():
            raise ValueError(f"{self.folder}: no {INDEX_FILE}; not a features folder, or its precompute did not finish")
        meta = json.loads(index.read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise ValueError(f"{index}: format {meta.get('format')!r} v{meta.get('version')!r}, "
                             f"expected {FORMAT!r} v{VERSION}")
        self.meta = meta
        self.kind: str = meta["kind"]
        self._shards = [(self.folder / s["file"], int(s["count"]), int(s["bytes"])) for s in meta["shards"]]
        for path, _, size in self._shards:
            if not path.is_file() or path.stat().st_size != size:
                got = path.stat().st_size if path.is_file() else "missing"
                raise ValueError(f"{path}: expected {size} bytes, got {got} (truncated or replaced shard)")
        self._starts = np.cumsum([0] + [c for _, c, _ in self._shards])
        self._open: dict[int, tuple[Any, list[str]]] = {}

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def has_target(self) -> bool:
        return self.meta.get("target") is not None

    def _shard(self, k: int) -> tuple[Any, list[str]]:
        if k not in self._open:
            from safetensors import safe_open

            handle = safe_open(str(self._shards[k][0]), framework="pt")
            self._open[k] = (handle, json.loads(handle.metadata()["captions"]))
        return self._open[k]

    def read(self, indices: np.ndarray) -> RawBatch:
        """Rows ``indices`` (in that order) of the concatenated shards."""
        feats, targets, captions = [], [], []
        shards = np.searchsorted(self._starts, indices, side="right") - 1
        for i, k in zip(indices, shards):
            handle, caps = self._shard(int(k))
            row = int(i - self._starts[k])
            feats.append(handle.get_slice("features")[row:row + 1])
            if self.has_target:
                targets.append(handle.get_slice("target")[row:row + 1])
            captions.append(caps[row])
        return RawBatch(indices=indices, captions=captions, features=torch.cat(feats),
                        target=torch.cat(targets) if targets else None)


def precompute(cfg: Any, folder: str | Path, *, device: str | None = None, progress: bool = True) -> Path:
    """Run the frozen encoder once over ``cfg.data.source`` and write a features folder.

    Stage 1 writes ``vit`` features; stage 2 writes ``causal`` features and the stage-2 target
    (``data.target``). Under ``torchrun`` each rank encodes every ``world``-th sample and writes
    its own shards; rank 0 writes ``features.json`` last.

    Parameters
    ----------
    cfg : RunConfig
        Stage 1 or 2; ``train.init`` gives the frozen weights (stage 2: the stage-1 result).
    folder : path
    device : {"cpu", "cuda"}, optional

    Returns
    -------
    ``folder``.

    Raises
    ------
    ValueError
        Stage 3, or a source that cannot be read.
    """
    from tqdm import tqdm

    from seedfast.train import distributed as D
    from seedfast.train.precision import compute_dtype
    from seedfast.train.stages import build_tokenizer
    from seedfast.train.targets import ClipTarget, build_target

    if cfg.stage not in (1, 2):
        raise ValueError("--precompute-features is for stages 1 (vit features) and 2 (causal features + targets)")
    kind = "vit" if cfg.stage == 1 else "causal"
    out = Path(folder)
    info = D.setup(device)
    try:
        model, _ = build_tokenizer(cfg, cfg.stage)
        fingerprint = encoder_fingerprint(model, kind)
        dtype = compute_dtype(cfg, info.device)
        model = model.eval().requires_grad_(False).to(info.device, dtype)
        target = None
        if cfg.stage == 2:
            target = build_target(cfg.data.target, model.config.generation_embed_dim).to(info.device)
            if isinstance(target, ClipTarget):
                target.to(dtype)
        out.mkdir(parents=True, exist_ok=True)
        shards: list[dict[str, Any]] = []
        buf: dict[str, list] = {"features": [], "index": [], "captions": [], "target": []}
        chunks, total = _chunks(cfg, info.rank, info.world_size, cfg.train.micro_batch or 64)
        with tqdm(total=total, desc="features", unit="img", disable=not (progress and info.is_main)) as bar:
            for images, captions, indices in chunks:
                feats, tgt = _encode(model, kind, images, target, info.device, dtype)
                buf["features"].append(feats)
                buf["index"].extend(int(i) for i in indices)
                buf["captions"].extend(captions)
                buf["target"].append(tgt)
                bar.update(len(indices))
                if len(buf["index"]) >= SHARD_SAMPLES:
                    shards.append(_flush(out, info.rank, len(shards), buf))
        if buf["index"]:
            shards.append(_flush(out, info.rank, len(shards), buf))
        everyone = [shards]
        if info.distributed:
            import torch.distributed as dist

            everyone = [None] * info.world_size
            dist.all_gather_object(everyone, shards)
        if info.is_main:
            listed = sorted((s for part in everyone for s in part), key=lambda s: s["file"])
            write_index(out, {"kind": kind, "count": sum(s["count"] for s in listed), "shards": listed,
                              "tokenizer": model.config.to_dict(), "fingerprint": fingerprint,
                              "target": cfg.data.target if cfg.stage == 2 else None, "dtype": str(dtype),
                              "source": cfg.data.source})
        D.barrier(info)
        return out
    finally:
        D.teardown(info)


def _chunks(cfg: Any, rank: int, world_size: int, size: int) -> tuple[Iterator[tuple], int | None]:
    """This rank's samples (every ``world_size``-th, from ``rank``) in chunks of ``size``:
    ``(images uint8, captions, source indices)``; and their number when known (not for streams)."""
    from seedfast.data import open_image_captions
    from seedfast.train.data import open_source

    if not cfg.data.source.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        source = open_source(cfg.data)
        mine = np.arange(rank, len(source), world_size)

        def indexed() -> Iterator[tuple]:
            for start in range(0, len(mine), size):
                raw = source.read(mine[start:start + size])
                yield raw.images, raw.captions, raw.indices

        return indexed(), len(mine)
    stream = iter(open_image_captions(cfg.data.source, cfg.data.image_size, rank=rank, world_size=world_size))

    def streamed() -> Iterator[tuple]:
        position = 0
        while got := list(itertools.islice(stream, size)):
            # The rank's j-th sample is the stream's sample j·world_size + rank.
            indices = (np.arange(position, position + len(got)) * world_size + rank)
            position += len(got)
            yield torch.stack([s.image for s in got]), [s.caption for s in got], indices

    return streamed(), None


@torch.no_grad()
def _encode(model: Any, kind: str, images: torch.Tensor, target: nn.Module | None, device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    from seedfast.models.preprocess import clip_preprocess

    pixels = clip_preprocess(images.to(device), size=model.config.image_size)
    vit = model.visual_encoder(pixels.to(dtype))
    feats = vit if kind == "vit" else model.Qformer(model.query_tokens, model.ln_vision(vit).to(dtype))
    tgt = target(pixels).float().cpu() if target is not None else None
    return feats.cpu(), tgt


def _flush(out: Path, rank: int, k: int, buf: dict[str, list]) -> dict[str, Any]:
    path = out / f"shard-r{rank:03d}-{k:05d}.safetensors"
    targets = [t for t in buf["target"] if t is not None]
    write_shard(path, torch.cat(buf["features"]), np.asarray(buf["index"]), list(buf["captions"]),
                torch.cat(targets) if targets else None)
    entry = {"file": path.name, "count": len(buf["index"]), "bytes": path.stat().st_size}
    for v in buf.values():
        v.clear()
    return entry
