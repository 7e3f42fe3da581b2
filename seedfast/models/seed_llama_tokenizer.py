"""SEED-LLaMA's text tokenizer: prompt text to ids by the official scripts' algorithm, plus the visual tokens.

Prompt text is tokenized by the algorithm of the official scripts' tokenizer under the
transformers version they pin (4.30.2, a slow ``LlamaTokenizer`` with the visual tokens added by
``add_tokens``), as read from that version's source:

1. the string is split at the added tokens (``<s>``, ``</s>``, ``<unk>``, ``<img>``, ``</img>``,
   ``<img_%05d>``);
2. whitespace next to a visual token is stripped (tokens added as plain strings strip both
   sides); the bos/eos/unk tokens strip nothing;
3. each remaining text piece is encoded on its own by the sentencepiece model (which adds its
   dummy-prefix ``▁`` to every piece), no special tokens added.

:func:`official_prompt_ids` implements those steps, so the ids do not depend on the installed
transformers version (newer versions tokenize the whole string in one pass and give different
ids next to the image markers). The tests check the steps on a stand-in vocabulary with
transformers 4.45 and 5.25; ids produced by transformers 4.30.2 itself have not been compared yet.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from seedfast.constants import CODEBOOK_SIZE, CODES_PER_IMAGE
from seedfast.models.llama import Llama
from seedfast.models.seed_llama import (
    BOI_TOKEN,
    EOI_TOKEN,
    IMAGE_PLACEHOLDER,
    code_token,
    codes_list,
    seed_llama_vocab,
)
from seedfast.visual_vocab import VisualVocab


def visual_vocab_from_tokenizer(tokenizer: Any, *, num_codes: int = CODEBOOK_SIZE,
                                codes_per_image: int = CODES_PER_IMAGE) -> VisualVocab:
    """Read the visual layout a Hugging Face tokenizer actually has (``<img>``, ``</img>``, ``<img_%05d>``).

    Raises
    ------
    ValueError
        A visual token is missing, or the code ids are not consecutive.
    """
    ids = tokenizer.convert_tokens_to_ids([BOI_TOKEN, EOI_TOKEN, *(code_token(k) for k in range(num_codes))])
    unk = tokenizer.unk_token_id
    names = [BOI_TOKEN, EOI_TOKEN, code_token(0)]
    for name, i in zip(names, ids):
        if i is None or i == unk:
            raise ValueError(f"tokenizer has no {name} token")
    first = ids[2]
    for k, i in enumerate(ids[2:]):
        if i != first + k:
            raise ValueError(f"tokenizer's code ids are not consecutive: {code_token(k)} is {i}, expected {first + k}")
    return VisualVocab(text_vocab_size=min(ids[0], ids[1], first), first_code_id=first, num_codes=num_codes,
                       boi_id=ids[0], eoi_id=ids[1], eos_id=tokenizer.eos_token_id, codes_per_image=codes_per_image)


def check_tokenizer_layout(tokenizer: Any, vocab: VisualVocab) -> None:
    """Check that ``tokenizer`` maps ``<img>``, ``</img>``, every ``<img_%05d>`` and eos where ``vocab`` says.

    Raises
    ------
    ValueError
        The first disagreement, naming the token, the tokenizer's id and the layout's id.
    """
    names = [BOI_TOKEN, EOI_TOKEN, *(code_token(k) for k in range(vocab.num_codes))]
    expected = [vocab.boi_id, vocab.eoi_id, *range(vocab.first_code_id, vocab.first_code_id + vocab.num_codes)]
    got = tokenizer.convert_tokens_to_ids(names)
    for name, want, have in zip(names, expected, got):
        if have != want:
            raise ValueError(f"tokenizer maps {name} to id {have} but the visual vocab layout says {want}; "
                             "build the layout with visual_vocab_from_tokenizer(tokenizer) if the tokenizer is right")
    if tokenizer.eos_token_id != vocab.eos_id:
        raise ValueError(f"tokenizer's eos id is {tokenizer.eos_token_id} but the visual vocab layout says "
                         f"{vocab.eos_id}")


SEED_LLAMA_EXTRA = "pip install 'seedfast[seed-llama]'"
_VISUAL_TOKEN = re.compile(r"<img>|</img>|<img_(\d{5})>")


def require_sentencepiece(what: str) -> Any:
    """The ``sentencepiece`` module, or an ImportError naming the extra that installs it (and protobuf).

    Raises
    ------
    ImportError
        ``sentencepiece`` or ``protobuf`` (which transformers needs to read a sentencepiece
        model) is not installed.
    """
    try:
        import sentencepiece
    except ImportError as err:
        raise ImportError(f"{what} needs the sentencepiece package; install it with {SEED_LLAMA_EXTRA}") from err
    try:
        import google.protobuf  # noqa: F401 (transformers reads tokenizer.model through it)
    except ImportError as err:
        raise ImportError(f"{what} needs the protobuf package; install it with {SEED_LLAMA_EXTRA}") from err
    return sentencepiece


def split_at_added_tokens(text: str, special_tokens: Sequence[str], vocab: VisualVocab) -> list[tuple[str, int | None]]:
    """Steps 1 and 2 of the official tokenization: text pieces and added tokens, spaces stripped.

    Parameters
    ----------
    text : str
    special_tokens : sequence of str
        The bos/eos/unk strings (split at, nothing stripped next to them).
    vocab : VisualVocab
        ``<img>``, ``</img>`` and ``<img_%05d>`` for ``k < vocab.num_codes`` are split at, and the
        whitespace on both sides of each is stripped (a ``<img_%05d>`` beyond the codebook is text).

    Returns
    -------
    list of (str, int or None)
        ``(piece, None)`` for a text piece (never empty), ``(token, id)`` for a visual token and
        ``(token, -1)`` for a special token (its id is the text tokenizer's).
    """
    specials = sorted({t for t in special_tokens if t}, key=len, reverse=True)
    pattern = "|".join([_VISUAL_TOKEN.pattern, *map(re.escape, specials)])
    parts: list[list] = []  # [piece, id or None, strips its neighbours]
    pos = 0
    for m in re.finditer(pattern, text):
        token, code = m.group(0), m.group(1)
        if token == BOI_TOKEN:
            tid = vocab.boi_id
        elif token == EOI_TOKEN:
            tid = vocab.eoi_id
        elif code is not None and int(code) < vocab.num_codes:
            tid = vocab.first_code_id + int(code)
        elif code is not None:
            continue  # not an added token: stays in the text around it
        else:
            tid = -1
        parts.append([text[pos:m.start()], None, False])
        parts.append([token, tid, tid != -1])
        pos = m.end()
    parts.append([text[pos:], None, False])
    for i, (_, tid, strips) in enumerate(parts):
        if strips:
            # transformers 4.30.2 strips every kind of whitespace (str.strip) on both sides.
            parts[i - 1][0] = parts[i - 1][0].rstrip()
            parts[i + 1][0] = parts[i + 1][0].lstrip()
    return [(piece, tid) for piece, tid, _ in parts if tid is not None or piece]


def official_prompt_ids(text: str, encode_piece: Any, special_ids: dict[str, int], vocab: VisualVocab) -> list[int]:
    """Prompt ids as the official SEED-LLaMA scripts get them (transformers 4.30.2 semantics).

    Parameters
    ----------
    text : str
        The whole prompt string, bos string and ``<img><img_%05d>…</img>`` blocks included.
    encode_piece : callable ``str -> list of int``
        The sentencepiece encoding of one text piece (dummy prefix, no bos/eos).
    special_ids : dict of str to int
        The bos/eos/unk strings and their ids.
    vocab : VisualVocab

    Returns
    -------
    list of int
    """
    ids: list[int] = []
    for piece, tid in split_at_added_tokens(text, list(special_ids), vocab):
        if tid is None:
            ids.extend(int(t) for t in encode_piece(piece))
        else:
            ids.append(special_ids[piece] if tid == -1 else tid)
    return ids


class SeedLlamaTokenizer:
    """A Hugging Face LLaMA tokenizer with SEED's visual tokens, checked against a :class:`VisualVocab`.

    Prompts are tokenized as the official scripts did (module docstring): split at the added
    tokens, the spaces next to the visual tokens stripped, each text piece encoded on its own by
    the sentencepiece model; the result does not depend on the installed transformers version.

    Parameters
    ----------
    tokenizer : transformers tokenizer
        With ``<img>``, ``</img>`` and ``<img_00000>`` … as added tokens; used for the layout
        check, the bos/eos/unk strings and decoding.
    vocab : VisualVocab, optional
        Default :meth:`VisualVocab.seed_llama`.
    sp_model : sentencepiece.SentencePieceProcessor, optional
        Encodes the text pieces. Default: the tokenizer's own (``sp_model``), else its
        ``vocab_file`` (``tokenizer.model``) loaded with sentencepiece, else (a tokenizer with no
        sentencepiece model) the tokenizer itself, one piece at a time.

    Raises
    ------
    ValueError
        The tokenizer disagrees with the layout (:func:`check_tokenizer_layout`).
    ImportError
        The tokenizer has a ``tokenizer.model`` but sentencepiece/protobuf is missing (naming the
        extra to install).
    """

    def __init__(self, tokenizer: Any, vocab: VisualVocab | None = None, *, sp_model: Any = None):
        self.tokenizer = tokenizer
        self.vocab = seed_llama_vocab() if vocab is None else vocab
        check_tokenizer_layout(tokenizer, self.vocab)
        if sp_model is None:
            sp_model = getattr(tokenizer, "sp_model", None)
        vocab_file = getattr(tokenizer, "vocab_file", None)
        if sp_model is None and vocab_file and Path(vocab_file).is_file():
            spm = require_sentencepiece("SeedLlamaTokenizer")
            sp_model = spm.SentencePieceProcessor(model_file=str(vocab_file))
        self.sp_model = sp_model
        self.special_ids = {t: i for t, i in ((tokenizer.bos_token, tokenizer.bos_token_id),
                                              (tokenizer.eos_token, tokenizer.eos_token_id),
                                              (tokenizer.unk_token, tokenizer.unk_token_id)) if t and i is not None}

    @classmethod
    def from_pretrained(cls, path: str | Path, vocab: VisualVocab | None = None) -> SeedLlamaTokenizer:
        """Load a tokenizer directory (``transformers.AutoTokenizer``; its ``tokenizer.model`` with sentencepiece).

        Raises
        ------
        ImportError
            The directory has a ``tokenizer.model`` and sentencepiece or protobuf is missing.
        """
        from transformers import AutoTokenizer

        sp_file = Path(path) / "tokenizer.model"
        sp_model = None
        if sp_file.is_file():
            spm = require_sentencepiece(f"the SEED-LLaMA text tokenizer {sp_file}")
            sp_model = spm.SentencePieceProcessor(model_file=str(sp_file))
        return cls(AutoTokenizer.from_pretrained(str(path)), vocab, sp_model=sp_model)

    @property
    def bos_token(self) -> str:
        return self.tokenizer.bos_token

    def __len__(self) -> int:
        return len(self.tokenizer)

    def encode_piece(self, piece: str) -> list[int]:
        """One text piece (no added tokens in it) as the official tokenizer encodes it: dummy ``▁`` prefix, no bos."""
        if self.sp_model is not None:
            return list(self.sp_model.encode(piece))
        return list(self.tokenizer(piece, add_special_tokens=False)["input_ids"])

    def encode(self, text: str, image_codes: Sequence[Sequence[int] | torch.Tensor] = ()) -> list[int]:
        """Prompt ids: the bos string + ``text``, tokenized as the official scripts do, images spliced in.

        Each ``<image>`` in ``text`` is replaced, in order, by the next image's
        ``<img><img_%05d>…</img>`` block; ``text`` may also hold such blocks or a lone ``<img>``
        (which makes the model draw) written out.

        Parameters
        ----------
        text : str
            A rendered template, without the bos string.
        image_codes : sequence of ``[codes_per_image]`` int sequences or tensors

        Returns
        -------
        list of int

        Raises
        ------
        ValueError
            The number of ``<image>`` placeholders differs from the number of images, or bad codes.
        """
        n = text.count(IMAGE_PLACEHOLDER)
        if n != len(image_codes):
            raise ValueError(f"prompt has {n} {IMAGE_PLACEHOLDER} placeholder(s) but {len(image_codes)} image(s)")
        pieces = text.split(IMAGE_PLACEHOLDER)
        blocks = [BOI_TOKEN + "".join(code_token(c) for c in codes_list(codes, self.vocab, "image codes"))
                  + EOI_TOKEN for codes in image_codes]
        rendered = self.bos_token + "".join(p + b for p, b in zip(pieces, [*blocks, ""]))
        return official_prompt_ids(rendered, self.encode_piece, self.special_ids, self.vocab)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)


def load_seed_llama(model_path: str | Path, tokenizer_path: str | Path | None = None, *,
                    vocab: VisualVocab | None = None, dtype: torch.dtype | None = None,
                    device: torch.device | str = "cpu") -> tuple[Llama, SeedLlamaTokenizer | None]:
    """A SEED-LLaMA checkpoint directory (HF ``LlamaForCausalLM``) and, optionally, its tokenizer.

    Parameters
    ----------
    model_path : path
        ``AILab-CVC/seed-llama-{8b,14b}-{pretrain,sft}`` or any HF LLaMA directory.
    tokenizer_path : path, optional
        A tokenizer directory with the visual tokens (``AILab-CVC/seed-tokenizer-2``; its
        sentencepiece ``tokenizer.model`` needs ``pip install 'seedfast[seed-llama]'``).
    vocab : VisualVocab, optional
        Default :meth:`VisualVocab.seed_llama`.
    dtype, device
        As :meth:`Llama.from_hf`.

    Raises
    ------
    ValueError
        The tokenizer disagrees with the layout, or has more ids than the model.
    ImportError
        sentencepiece or protobuf is missing for a sentencepiece tokenizer.
    """
    model = Llama.from_hf(model_path, dtype=dtype, device=device)
    if tokenizer_path is None:
        return model, None
    tokenizer = SeedLlamaTokenizer.from_pretrained(tokenizer_path, vocab)
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} ids but the model only {model.config.vocab_size}")
    return model, tokenizer
