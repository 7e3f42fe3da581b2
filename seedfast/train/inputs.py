"""Raw micro-batches → device tensors for a stage's objective (see :mod:`seedfast.train.stages`).

Per-sample random choices (stage 3's caption side) are drawn from the sample's own stream,
``numpy.random.default_rng([seed, 3, index])``: the same whatever rank or step reads it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from seedfast.data import reading_order_caption
from seedfast.models.preprocess import clip_preprocess
from seedfast.visual_vocab import VisualVocab
from seedfast.train.config import CAPTION_ORDERS
from seedfast.train.data import RawBatch
from seedfast.train.text import TextTokenizer, clean_caption, interleave, stage1_text


@dataclass
class MicroBatch:
    """What one forward consumes.

    Attributes
    ----------
    inputs : dict of device tensors, the objective's argument
    units : int
        What the loss averages over: images (stages 1–2) or predicted tokens (stage 3).
    samples : int
    tokens : int
        Tokens processed, for tokens/s: ViT tokens (+ real text tokens in stage 1) per image in
        stages 1–2, real sequence tokens in stage 3.
    """

    inputs: dict[str, torch.Tensor]
    units: int
    samples: int
    tokens: int


class InputBuilder:
    """Turns a :class:`RawBatch` into a :class:`MicroBatch` for one stage.

    Parameters
    ----------
    stage : {1, 2, 3}
    device : torch.device
    image_size : int
        The tokenizer's input size (images are resized and CLIP-normalised, spec §2).
    image_dtype : torch.dtype
        The frozen ViT's weight dtype.
    vit_tokens : int
        Tokens the ViT sees per image (``num_patches + 1``).
    text : TextTokenizer, optional
        Stages 1 and 3.
    text_length, max_words : int
        Stage 1 text ids; caption cleaning.
    target : module, optional
        Stage 2 without stored targets: preprocessed images → target embedding.
    coder : module with ``encode(images) -> codes``, optional
        Stage 3: the frozen SEED tokenizer (and ``encode_causal(features) -> codes`` when the
        batches hold causal features instead of images).
    vocab : VisualVocab, optional
        Stage 3.
    seq_len : int
    caption_first_p : float
    caption_order : {"given", "reading"}
        Stage 3: ``"reading"`` restates the captions of image-first rows in reading order
        (see :class:`seedfast.train.config.DataConfig`).
    seed : int
    """

    def __init__(self, stage: int, device: torch.device, *, image_size: int, image_dtype: torch.dtype,
                 vit_tokens: int, text: TextTokenizer | None = None, text_length: int = 32, max_words: int = 50,
                 target: nn.Module | None = None, coder: nn.Module | None = None, vocab: VisualVocab | None = None,
                 seq_len: int = 200, caption_first_p: float = 0.5, caption_order: str = "given",
                 seed: int = 0) -> None:
        if caption_order not in CAPTION_ORDERS:
            raise ValueError(f"caption_order must be one of {CAPTION_ORDERS}, got {caption_order!r}")
        self.stage, self.device = stage, device
        self.image_size, self.image_dtype, self.vit_tokens = image_size, image_dtype, vit_tokens
        self.text, self.text_length, self.max_words = text, text_length, max_words
        self.target, self.coder, self.vocab = target, coder, vocab
        self.seq_len, self.caption_first_p, self.seed = seq_len, caption_first_p, seed
        self.caption_order = caption_order

    def _images(self, raw: RawBatch) -> torch.Tensor:
        assert raw.images is not None
        return clip_preprocess(raw.images.to(self.device, non_blocking=True), size=self.image_size)

    def __call__(self, raw: RawBatch) -> MicroBatch:
        b = len(raw)
        captions = [clean_caption(c, self.max_words) for c in raw.captions]
        if self.stage == 3:
            return self._stage3(raw, captions)
        inputs: dict[str, torch.Tensor] = {}
        images = None
        if raw.features is not None:
            inputs["features"] = raw.features.to(self.device, non_blocking=True)
        else:
            images = self._images(raw)
            inputs["images"] = images.to(self.image_dtype)
        tokens = b * self.vit_tokens
        if self.stage == 1:
            assert self.text is not None
            ids, lengths = stage1_text(captions, self.text, self.text_length)
            inputs["text_ids"], inputs["text_lengths"] = ids.to(self.device), lengths.to(self.device)
            tokens += int(lengths.sum())
        elif raw.target is not None:
            inputs["target"] = raw.target.to(self.device, torch.float32)
        else:
            assert self.target is not None and images is not None
            inputs["target"] = self.target(images)
        return MicroBatch(inputs, units=b, samples=b, tokens=tokens)

    def _stage3(self, raw: RawBatch, captions: list[str]) -> MicroBatch:
        assert self.coder is not None and self.vocab is not None and self.text is not None
        with torch.no_grad():
            if raw.features is not None:  # causal features of the coder's own frozen encoder
                codes = self.coder.encode_causal(raw.features.to(self.device, self.image_dtype)).cpu()
            else:
                codes = self.coder.encode(self._images(raw).to(self.image_dtype)).cpu()
        first = [bool(np.random.default_rng([self.seed, 3, int(i)]).random() < self.caption_first_p)
                 for i in raw.indices]
        if self.caption_order == "reading":
            captions = [c if f else reading_order_caption(c) for c, f in zip(captions, first)]
        seqs = interleave(captions, codes, first, self.text, self.vocab, self.seq_len)
        inputs = {"tokens": seqs.tokens.to(self.device), "lengths": seqs.lengths.to(self.device)}
        return MicroBatch(inputs, units=seqs.num_targets, samples=len(raw), tokens=int(seqs.lengths.sum()))
