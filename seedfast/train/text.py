"""Text for training: caption cleaning, the stage-1 text ids and the stage-3 interleaved sequences.

Two text tokenizers share one small interface (:class:`TextTokenizer`): :class:`WordTokenizer`,
a word-level vocabulary over the procedural caption grammar (offline, for the tiny preset), and
:class:`HFTextTokenizer` over a Hugging Face tokenizer folder (``bert-base-uncased`` for stage 1,
the SEED-LLaMA tokenizer for stage 3).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from seedfast.data.scene import COLOURS, POSITION_PHRASES, RELATIONS, SHAPES, SIZES
from seedfast.models.seed_llama import image_block
from seedfast.visual_vocab import VisualVocab

_PUNCTUATION = re.compile(r"[.!\"()*#:;~]")


def clean_caption(caption: str, max_words: int = 50) -> str:
    """SEED's training caption cleaning (spec §2): lower case, ``.!"()*#:;~`` → space, at most
    ``max_words`` words."""
    return " ".join(_PUNCTUATION.sub(" ", caption.lower()).split()[:max_words])


class TextTokenizer(Protocol):
    """What the loop needs from a text tokenizer."""

    pad_id: int
    bos_id: int
    eos_id: int
    vocab_size: int

    def encode(self, text: str) -> list[int]:
        """Ids of ``text``, without special tokens."""
        ...


class WordTokenizer:
    """One id per word of a closed vocabulary, after four specials.

    Ids: ``0`` pad, ``1`` bos (stage 1 reads the text feature there, as BERT's ``[CLS]``),
    ``2`` eos, ``3`` unknown word, then the words in order. With the procedural grammar's 23
    words the ids stay below 27, under the tiny LLM's text range (256) and the tiny Q-Former's
    vocabulary (64); eos 2 is :func:`seedfast.models.seed_llama.tiny_visual_vocab` 's.

    Parameters
    ----------
    words : sequence of str
        Distinct, lower-case words without spaces.
    """

    SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")
    pad_id, bos_id, eos_id, unk_id = 0, 1, 2, 3

    def __init__(self, words: Sequence[str]) -> None:
        if len(set(words)) != len(words) or any(not w or " " in w for w in words):
            raise ValueError("WordTokenizer: words must be distinct non-empty strings without spaces")
        self.words = tuple(words)
        self._ids = {w: i + len(self.SPECIALS) for i, w in enumerate(self.words)}

    @classmethod
    def procedural(cls) -> WordTokenizer:
        """Every word of the procedural caption grammar (:mod:`seedfast.data.scene`)."""
        phrases = ["a", *SIZES, *COLOURS, *SHAPES, *POSITION_PHRASES.values(), *RELATIONS.values()]
        return cls(list(dict.fromkeys(w for p in phrases for w in p.split())))

    @property
    def vocab_size(self) -> int:
        return len(self.SPECIALS) + len(self.words)

    def encode(self, text: str) -> list[int]:
        """Word ids; a word outside the vocabulary becomes ``unk_id``."""
        return [self._ids.get(w, self.unk_id) for w in text.split()]

    def decode(self, ids: Sequence[int]) -> str:
        """Words of ``ids``, specials left out."""
        n = len(self.SPECIALS)
        return " ".join(self.words[i - n] for i in ids if n <= i < self.vocab_size)


class HFTextTokenizer:
    """A Hugging Face tokenizer folder behind :class:`TextTokenizer`.

    bos/eos are ``[CLS]``/``[SEP]`` for BERT-style tokenizers, ``<s>``/``</s>`` for LLaMA's; pad
    is the tokenizer's pad (LLaMA: unk, id 0), which the loss never reads (it masks by length).
    """

    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tokenizer: Any = AutoTokenizer.from_pretrained(path)
        t = self.tokenizer
        bos = t.cls_token_id if t.cls_token_id is not None else t.bos_token_id
        eos = t.sep_token_id if t.sep_token_id is not None else t.eos_token_id
        if bos is None or eos is None:
            raise ValueError(f"tokenizer {path} has neither [CLS]/[SEP] nor bos/eos tokens")
        self.bos_id, self.eos_id = int(bos), int(eos)
        pad = t.pad_token_id if t.pad_token_id is not None else t.unk_token_id
        self.pad_id = int(pad if pad is not None else 0)
        self.vocab_size = len(t)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def load_text_tokenizer(name: str) -> TextTokenizer:
    """``"words"`` → :meth:`WordTokenizer.procedural`; anything else is a Hugging Face tokenizer folder."""
    return WordTokenizer.procedural() if name == "words" else HFTextTokenizer(name)


def stage1_text(captions: Sequence[str], tokenizer: TextTokenizer,
                max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[bos] + words + [eos]`` per caption, cut to ``max_length`` and right-padded to it
    (fixed shapes: no recompilation under ``torch.compile``; the official pads to ``max_txt_len`` too).

    Returns
    -------
    ids : Tensor ``[B, max_length]``, int64
    lengths : Tensor ``[B]``, int64
    """
    rows = [[tokenizer.bos_id, *tokenizer.encode(c)[: max_length - 2], tokenizer.eos_id] for c in captions]
    ids = torch.full((len(rows), max_length), tokenizer.pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
    return ids, torch.tensor([len(r) for r in rows], dtype=torch.int64)


@dataclass(frozen=True)
class Sequences:
    """Stage-3 token rows, right-padded.

    Attributes
    ----------
    tokens : Tensor ``[B, seq_len]``, int64
    lengths : Tensor ``[B]``, int64
        Real tokens per row; the loss covers every next-token target inside them.
    """

    tokens: torch.Tensor
    lengths: torch.Tensor

    @property
    def num_targets(self) -> int:
        """Next-token predictions the loss averages over (``length - 1`` per row)."""
        return int((self.lengths - 1).clamp(min=0).sum())


def interleave(
    captions: Sequence[str],
    codes: torch.Tensor,
    caption_first: Sequence[bool],
    tokenizer: TextTokenizer,
    vocab: VisualVocab,
    seq_len: int,
) -> Sequences:
    """Spec §11.5's caption pipe: ``bos, caption, <img> codes </img>, eos`` or
    ``bos, <img> codes </img>, caption, eos``.

    The caption is cut so that a row fits ``seq_len``; rows are right-padded with ``pad_id`` to
    ``seq_len`` (fixed shapes for ``torch.compile``).

    Raises
    ------
    ValueError
        ``seq_len`` cannot hold an image block with bos and eos, or a text id falls outside
        the layout's text range.
    """
    block_len = vocab.codes_per_image + 2
    room = seq_len - block_len - 2
    if room < 0:
        raise ValueError(f"seq_len {seq_len} cannot hold bos + an image ({block_len} ids) + eos")
    rows = []
    for caption, image, first in zip(captions, codes.tolist(), caption_first):
        text = tokenizer.encode(caption)[:room]
        if text and max(text) >= vocab.text_vocab_size:
            raise ValueError(f"text id {max(text)} is outside the LLM's text ids [0, {vocab.text_vocab_size})")
        block = image_block(image, vocab)
        rows.append([tokenizer.bos_id, *(text + block if first else block + text), tokenizer.eos_id])
    tokens = torch.full((len(rows), seq_len), tokenizer.pad_id, dtype=torch.int64)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = torch.tensor(r)
    return Sequences(tokens, torch.tensor([len(r) for r in rows], dtype=torch.int64))
