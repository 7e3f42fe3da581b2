"""Where text, visual codes and the image markers sit in an LLM's vocabulary.

A low-level module of its own: the sampling op, the drop-in sampler, the models and the
integrations all read this layout, and it depends on nothing but SEED's constants.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

from seedfast.constants import (
    CODEBOOK_SIZE,
    CODES_PER_IMAGE,
    SEED_LLAMA_BOI_ID,
    SEED_LLAMA_EOI_ID,
    SEED_LLAMA_EOS_ID,
    SEED_LLAMA_FIRST_CODE_ID,
    SEED_LLAMA_TEXT_VOCAB,
)


@dataclass(frozen=True)
class VisualVocab:
    """Where text, visual codes and the image markers sit in an LLM's vocabulary.

    Attributes
    ----------
    text_vocab_size : int
        Ids ``[0, text_vocab_size)`` are text (eos included).
    first_code_id : int
        Code ``c`` is id ``first_code_id + c``.
    num_codes : int
        Codebook size.
    boi_id, eoi_id : int
        ``<img>`` and ``</img>``.
    eos_id : int
        End of sequence; also what error rows emit.
    codes_per_image : int
        N: codes between ``<img>`` and ``</img>``.
    """

    text_vocab_size: int
    first_code_id: int
    num_codes: int
    boi_id: int
    eoi_id: int
    eos_id: int
    codes_per_image: int = CODES_PER_IMAGE

    def __post_init__(self) -> None:
        for name in ("text_vocab_size", "num_codes", "codes_per_image"):
            if getattr(self, name) < 1:
                raise ValueError(f"VisualVocab: {name} must be >= 1, got {getattr(self, name)}")
        codes = range(self.first_code_id, self.first_code_id + self.num_codes)
        if self.first_code_id < self.text_vocab_size:
            raise ValueError(f"VisualVocab: codes (from id {self.first_code_id}) overlap text ids "
                             f"[0, {self.text_vocab_size})")
        for name in ("boi_id", "eoi_id"):
            value = getattr(self, name)
            if value < self.text_vocab_size or value in codes:
                raise ValueError(f"VisualVocab: {name}={value} must be outside text ids and codes")
        if self.boi_id == self.eoi_id:
            raise ValueError("VisualVocab: boi_id and eoi_id must differ")
        if not 0 <= self.eos_id < self.text_vocab_size:
            raise ValueError(f"VisualVocab: eos_id={self.eos_id} must be a text id in [0, {self.text_vocab_size})")

    @property
    def min_vocab_size(self) -> int:
        """The smallest logits width this layout fits in."""
        return max(self.first_code_id + self.num_codes, self.boi_id + 1, self.eoi_id + 1)

    @classmethod
    def seed_llama(cls) -> VisualVocab:
        """SEED-LLaMA's layout (spec §11.2). Deprecated: use
        :func:`seedfast.models.seed_llama.seed_llama_vocab`, which lives with the model.
        """
        warnings.warn("VisualVocab.seed_llama() moved to seedfast.models.seed_llama.seed_llama_vocab(); "
                      "this alias goes in the next release", DeprecationWarning, stacklevel=2)
        return cls(text_vocab_size=SEED_LLAMA_TEXT_VOCAB, first_code_id=SEED_LLAMA_FIRST_CODE_ID,
                   num_codes=CODEBOOK_SIZE, boi_id=SEED_LLAMA_BOI_ID, eoi_id=SEED_LLAMA_EOI_ID,
                   eos_id=SEED_LLAMA_EOS_ID)
