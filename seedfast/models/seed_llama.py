"""SEED-LLaMA glue: prompt templates, the vocabulary layout, image blocks in and out.

An image in a prompt is ``<img>`` + its 32 code ids (code ``k`` → ``vocab.first_code_id + k``) +
``</img>``, spliced in as ids: the codes never round-trip through a Hugging Face tokenizer (spec
§13 item 10). The text tokenizer (official prompt ids) is
:mod:`seedfast.models.seed_llama_tokenizer`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from seedfast._lazy import moved_names
from seedfast.constants import (
    CODEBOOK_SIZE,
    CODES_PER_IMAGE,
    SEED_LLAMA_BOI_ID,
    SEED_LLAMA_EOI_ID,
    SEED_LLAMA_EOS_ID,
    SEED_LLAMA_FIRST_CODE_ID,
    SEED_LLAMA_TEXT_VOCAB,
)
from seedfast.nn.constrained_sample import image_positions_by_token
from seedfast.visual_vocab import VisualVocab

IMAGE_PLACEHOLDER = "<image>"
BOI_TOKEN, EOI_TOKEN = "<img>", "</img>"


def code_token(k: int) -> str:
    """The tokenizer string of visual code ``k``: ``<img_00042>``."""
    return f"<img_{k:05d}>"


def tiny_visual_vocab() -> VisualVocab:
    """The layout of :meth:`seedfast.models.llama.LlamaConfig.tiny` (322 ids).

    256 text ids (eos = 2), 64 codes, ``<img>`` = 320, ``</img>`` = 321; 32 codes per image as in SEED.
    """
    return VisualVocab(text_vocab_size=256, first_code_id=256, num_codes=64, boi_id=320, eoi_id=321, eos_id=2)


# ---------------------------------------------------------------------------------------------
# Prompt templates (spec §11.3)


@dataclass(frozen=True)
class PromptTemplate:
    """How turns become a prompt string (before tokenization; the bos string comes first).

    Attributes
    ----------
    name : str
    user : str
        A user turn, with ``{text}``.
    assistant : str
        A finished assistant turn, with ``{text}``.
    generation : str
        What ends the prompt so the assistant speaks next.
    """

    name: str
    user: str
    assistant: str
    generation: str

    def render(self, turns: str | Sequence[str]) -> str:
        """One question, or alternating user / assistant turns ending with a user turn.

        Raises
        ------
        ValueError
            An even number of turns (the last one must be the user's).
        """
        turns = [turns] if isinstance(turns, str) else list(turns)
        if len(turns) % 2 != 1:
            raise ValueError(f"PromptTemplate.render: turns must alternate user/assistant and end with a user turn "
                             f"(an odd count), got {len(turns)}")
        parts = [(self.user if i % 2 == 0 else self.assistant).format(text=t) for i, t in enumerate(turns)]
        return "".join(parts) + self.generation


# SEED-LLaMA 8B (Vicuna): "<s>USER: {img}{question}\nASSISTANT:"; multi-turn "ROLE: text\n" per message.
VICUNA = PromptTemplate("vicuna", user="USER: {text}\n", assistant="ASSISTANT: {text}\n", generation="ASSISTANT:")
# SEED-LLaMA 14B (LLaMA-2 chat): "<s>[INST] {img}{question} [/INST]\n"; then "assistant\n" per turn.
LLAMA2_CHAT = PromptTemplate("llama2", user="[INST] {text} [/INST]\n", assistant="{text}\n", generation="")
# The text as it is (models trained without a chat template, e.g. the demo's).
PLAIN = PromptTemplate("plain", user="{text}", assistant="{text}", generation="")
TEMPLATES = {t.name: t for t in (VICUNA, LLAMA2_CHAT, PLAIN)}


def get_template(template: PromptTemplate | str | None) -> PromptTemplate | None:
    """A template by name (``"vicuna"``, ``"llama2"``), as given, or None (prompts used verbatim)."""
    if template is None or isinstance(template, PromptTemplate):
        return template
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)} or a PromptTemplate, got {template!r}")
    return TEMPLATES[template]


# ---------------------------------------------------------------------------------------------
# Image blocks as ids


def codes_list(codes: Sequence[int] | torch.Tensor, vocab: VisualVocab, what: str) -> list[int]:
    """One image's codes as ints, checked: exactly ``vocab.codes_per_image`` of them in ``[0, num_codes)``."""
    values = codes.tolist() if isinstance(codes, torch.Tensor) else [int(c) for c in codes]
    if len(values) != vocab.codes_per_image or not all(0 <= c < vocab.num_codes for c in values):
        raise ValueError(f"{what} must be {vocab.codes_per_image} codes in [0, {vocab.num_codes}), got {values}")
    return values


def image_block(codes: Sequence[int] | torch.Tensor, vocab: VisualVocab) -> list[int]:
    """``<img>`` + code ids + ``</img>`` for one image's codes.

    Raises
    ------
    ValueError
        Not ``vocab.codes_per_image`` codes in ``[0, vocab.num_codes)``.
    """
    values = codes_list(codes, vocab, "image_block: codes")
    return [vocab.boi_id, *(vocab.first_code_id + c for c in values), vocab.eoi_id]


def open_image_position(ids: Sequence[int], vocab: VisualVocab) -> int:
    """The sampler's ``image_pos`` after ``ids``: ``-1`` in text, ``k`` after ``<img>`` and ``k`` codes.

    The state is :func:`seedfast.nn.constrained_sample.image_positions_by_token`'s (the one
    implementation of the grammar state); this checks that the prompt keeps the grammar too.

    Raises
    ------
    ValueError
        An ``<img>`` followed by more codes than an image holds, or by a non-code id.
    """
    if len(ids) == 0:
        return -1
    row = torch.tensor([list(ids)], dtype=torch.int64)
    after = image_positions_by_token(row, vocab)[0]
    before = torch.cat([after.new_full((1,), -1), after[:-1]])
    t, n = row[0], vocab.codes_per_image
    is_code = (t >= vocab.first_code_id) & (t < vocab.first_code_id + vocab.num_codes)
    # In text anything goes; inside an image only codes, and </img> exactly when the image is full.
    ok = (before < 0) | ((before < n) & is_code) | ((before == n) & (t == vocab.eoi_id))
    bad = torch.nonzero(~ok).flatten()
    if len(bad):
        raise ValueError(f"prompt breaks the image grammar at id {int(t[bad[0]])}: an image is <img>, "
                         f"{vocab.codes_per_image} codes, </img>")
    return int(after[-1])


def open_image_codes(ids: Sequence[int], vocab: VisualVocab) -> list[int] | None:
    """The codes (``0 .. num_codes - 1``) of the image ``ids`` leave open, or None when they end in text.

    Raises
    ------
    ValueError
        As :func:`open_image_position`.
    """
    pos = open_image_position(ids, vocab)
    if pos < 0:
        return None
    return [int(t) - vocab.first_code_id for t in ids[len(ids) - pos:]]


@dataclass
class GeneratedParts:
    """Generated ids split at images.

    Attributes
    ----------
    text_ids : list of list of int
        Text around the images, ``len(image_codes) + 1`` segments.
    image_codes : list of list of int
        Codes (``0 .. num_codes - 1``) of each complete image, ``codes_per_image`` each.
    """

    text_ids: list[list[int]]
    image_codes: list[list[int]]


def split_generated(ids: Sequence[int], vocab: VisualVocab, open_codes: Sequence[int] | None = None) -> GeneratedParts:
    """Split generated ids into text segments and images.

    Parameters
    ----------
    ids : sequence of int
        Generated ids.
    open_codes : sequence of int, optional
        When the prompt ended inside an image (after ``<img>`` and these codes), the image the
        generation completes: :func:`open_image_codes` of the prompt.

    A final eos is dropped; an image cut short (only possible when a row stopped on a sampler
    error) is dropped.
    """
    ids = list(ids)
    if ids and ids[-1] == vocab.eos_id:
        ids = ids[:-1]
    text: list[list[int]] = [[]]
    images: list[list[int]] = []
    current = None if open_codes is None else list(open_codes)
    for t in ids:
        t = int(t)
        if current is None:
            if t == vocab.boi_id:
                current = []
            else:
                text[-1].append(t)
        elif vocab.first_code_id <= t < vocab.first_code_id + vocab.num_codes:
            current.append(t - vocab.first_code_id)
        else:
            if t == vocab.eoi_id and len(current) == vocab.codes_per_image:
                images.append(current)
                text.append([])
            current = None
    return GeneratedParts(text, images)


# ---------------------------------------------------------------------------------------------
# The text tokenizer


def seed_llama_vocab() -> VisualVocab:
    """SEED-LLaMA's layout (spec §11.2): 32000 text ids, code ``k`` at ``32000 + k``, then ``<img>``, ``</img>``.

    The spec infers ``<img>`` = 40192 and ``</img>`` = 40193 (8194 added tokens); a checkpoint's
    tokenizer that says otherwise is read with :func:`visual_vocab_from_tokenizer`.
    """
    return VisualVocab(text_vocab_size=SEED_LLAMA_TEXT_VOCAB, first_code_id=SEED_LLAMA_FIRST_CODE_ID,
                       num_codes=CODEBOOK_SIZE, boi_id=SEED_LLAMA_BOI_ID, eoi_id=SEED_LLAMA_EOI_ID,
                       eos_id=SEED_LLAMA_EOS_ID, codes_per_image=CODES_PER_IMAGE)


# The text tokenizer moved to its own module; the old paths work for one release.
__getattr__ = moved_names(__name__, {name: "seedfast.models.seed_llama_tokenizer" for name in (
    "SEED_LLAMA_EXTRA", "SeedLlamaTokenizer", "check_tokenizer_layout", "load_seed_llama", "official_prompt_ids",
    "require_sentencepiece", "split_at_added_tokens", "visual_vocab_from_tokenizer")})
