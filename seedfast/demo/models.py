"""The demo's trained models as one bundle: SEED tokenizer, de-tokenizer, SEED-LLaMA and the
word-level text tokenizer, loaded from the folder ``seedfast demo`` writes (or from the
user's own checkpoints), with the four SEED operations the commands and the report use.

Folder layout (``DIR/models`` of a demo run)::

    demo.json          format, version, what the models were trained on, decode settings
    tokenizer/         SeedTokenizer.save (config.json, model.safetensors)
    detokenizer/       PixelDetokenizer.save + normaliser.safetensors (or any SeedDetokenizer folder)
    llm/               Hugging Face LLaMA folder (config.json, model.safetensors)

The de-tokenizer reads generation embeddings through an :class:`EmbeddingNormaliser`, the
counterpart of SD-2.1-unCLIP's ``image_normalizer`` (spec §8: "normaliser-scale"): each
dimension is centred and scaled by statistics of the training targets, so the small
differences between images, not the large shared component, drive the conditioning.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedfast.checkpoint_io import load_safetensors, save_safetensors
from seedfast.models.detokenizer import SeedDetokenizer
from seedfast.models.llama import Llama
from seedfast.models.seed_llama import tiny_visual_vocab
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.visual_vocab import VisualVocab
from seedfast.train.text import WordTokenizer, clean_caption

FORMAT = "seedfast.demo"
VERSION = 1
MANIFEST_FILE = "demo.json"
NORMALISER_FILE = "normaliser.safetensors"
TOKENIZER_DIR, DETOKENIZER_DIR, LLM_DIR = "tokenizer", "detokenizer", "llm"
MAX_CAPTION_TOKENS = 24
"""Caption generation stops here at the latest (the grammar's longest caption has 14 words)."""


class DemoModelError(Exception):
    """Checkpoints that cannot be loaded or do not fit together; the message says which and why."""


class EmbeddingNormaliser:
    """``(e − mean) / std`` per dimension, with fixed statistics of training targets.

    Parameters
    ----------
    mean, std : Tensor ``[E]``, float32
        ``std`` is floored at ``1e-6``.
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        if mean.dim() != 1 or mean.shape != std.shape:
            raise ValueError(f"EmbeddingNormaliser: mean and std must be [E] of one shape, got "
                             f"{tuple(mean.shape)} and {tuple(std.shape)}")
        self.mean = mean.detach().float().cpu()
        self.std = std.detach().float().cpu().clamp_min(1e-6)

    @classmethod
    def fit(cls, embeddings: torch.Tensor) -> EmbeddingNormaliser:
        """Statistics of ``[N, E]`` embeddings (N ≥ 2)."""
        if embeddings.dim() != 2 or embeddings.shape[0] < 2:
            raise ValueError(f"EmbeddingNormaliser.fit: need [N >= 2, E] embeddings, got {tuple(embeddings.shape)}")
        return cls(embeddings.float().mean(0), embeddings.float().std(0))

    @classmethod
    def identity(cls, dim: int) -> EmbeddingNormaliser:
        """Leaves embeddings as they are (for a de-tokenizer folder without statistics)."""
        return cls(torch.zeros(dim), torch.ones(dim))

    @property
    def dim(self) -> int:
        return self.mean.numel()

    def __call__(self, embeddings: torch.Tensor) -> torch.Tensor:
        return (embeddings.float() - self.mean.to(embeddings.device)) / self.std.to(embeddings.device)

    def save(self, path: str | Path) -> None:
        """Write ``mean`` and ``std`` to the safetensors file ``path``, atomically."""
        save_safetensors(path, {"mean": self.mean, "std": self.std}, metadata={"format": FORMAT})

    @classmethod
    def load(cls, path: str | Path) -> EmbeddingNormaliser:
        """Read a file written by :meth:`save`.

        Raises
        ------
        CheckpointError
            The file is missing or unreadable (named).
        ValueError
            It does not hold exactly ``mean`` and ``std``.
        """
        tensors = load_safetensors(path)
        if set(tensors) != {"mean", "std"}:
            raise ValueError(f"{path}: expected tensors 'mean' and 'std', got {sorted(tensors)}")
        return cls(tensors["mean"], tensors["std"])


class NormalisedDetokenizer:
    """A :class:`~seedfast.models.detokenizer.SeedDetokenizer` behind an :class:`EmbeddingNormaliser`.

    Implements the ``decode(embeddings, *, seed)`` protocol that
    :func:`seedfast.generation.generate` expects of a de-tokenizer.
    """

    def __init__(self, detokenizer: SeedDetokenizer, normaliser: EmbeddingNormaliser) -> None:
        if normaliser.dim != detokenizer.embed_dim:
            raise ValueError(f"NormalisedDetokenizer: normaliser is {normaliser.dim}-d, the de-tokenizer takes "
                             f"{detokenizer.embed_dim}-d embeddings")
        self.detokenizer, self.normaliser = detokenizer, normaliser

    @property
    def image_size(self) -> int:
        return self.detokenizer.image_size

    @property
    def embed_dim(self) -> int:
        return self.detokenizer.embed_dim

    def decode(self, embeddings: torch.Tensor, *, seed: int | Sequence[int] = 0, steps: int | None = None,
               guidance_scale: float | None = None) -> torch.Tensor:
        """Generation embeddings ``[B, E]`` → images ``[B, 3, H, W]`` float in [0, 1] (see
        :meth:`SeedDetokenizer.decode`)."""
        return self.detokenizer.decode(self.normaliser(embeddings), seed=seed, steps=steps,
                                       guidance_scale=guidance_scale)

    def save(self, path: str | Path) -> None:
        """The de-tokenizer's folder plus ``normaliser.safetensors`` (pixel de-tokenizers only)."""
        self.detokenizer.save(path)
        self.normaliser.save(Path(path) / NORMALISER_FILE)

    @classmethod
    def load(cls, path: str | Path) -> NormalisedDetokenizer:
        """Any :meth:`SeedDetokenizer.load` folder; without ``normaliser.safetensors`` the
        embeddings go in unchanged. Runs on the CPU."""
        detokenizer = SeedDetokenizer.load(path, device="cpu")
        stats = Path(path) / NORMALISER_FILE
        normaliser = (EmbeddingNormaliser.load(stats) if stats.is_file()
                      else EmbeddingNormaliser.identity(detokenizer.embed_dim))
        return cls(detokenizer, normaliser)


@dataclass(frozen=True)
class Manifest:
    """``demo.json``: what the bundle's models were trained on and how to decode.

    Attributes
    ----------
    image_size : int
        Side of the procedural images the models saw.
    max_objects : int
        Objects per training scene (1 or 2); the checker reads at most this many.
    decode_steps : int
        De-tokenizer sampler steps.
    guidance_scale : float
        De-tokenizer classifier-free guidance.
    caption_temperature : float
        0: greedy captions.
    image_temperature, image_top_k, image_top_p : float, int, float
        How the LLM samples the 32 codes of a generated image.
    """

    image_size: int
    max_objects: int
    decode_steps: int
    guidance_scale: float
    caption_temperature: float
    image_temperature: float
    image_top_k: int
    image_top_p: float

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "version": VERSION, **self.__dict__}

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> Manifest:
        if data.get("format") != FORMAT or data.get("version") != VERSION:
            raise DemoModelError(f"{where}: not a {FORMAT} v{VERSION} manifest")
        fields = {k: v for k, v in data.items() if k not in ("format", "version")}
        try:
            return cls(**fields)
        except TypeError as err:
            raise DemoModelError(f"{where}: {err}") from None


@dataclass
class DemoModels:
    """Everything the user commands and the report need, on the CPU, in eval mode.

    Attributes
    ----------
    tokenizer : SeedTokenizer
    detokenizer : NormalisedDetokenizer
    llm : Llama
    text : WordTokenizer
        The procedural caption grammar's words.
    vocab : VisualVocab
        Where text, codes, ``<img>`` and ``</img>`` sit among the LLM's ids.
    manifest : Manifest
    """

    tokenizer: SeedTokenizer
    detokenizer: NormalisedDetokenizer
    llm: Llama
    text: WordTokenizer
    vocab: VisualVocab
    manifest: Manifest

    @classmethod
    def load(cls, folder: str | Path, *, tokenizer: str | Path | None = None, detokenizer: str | Path | None = None,
             llm: str | Path | None = None) -> DemoModels:
        """The bundle in ``folder`` (a demo's ``models/``), any part replaced by a folder of the user's.

        Raises
        ------
        DemoModelError
            A missing or unreadable checkpoint, or parts that do not fit together (code count,
            embedding size, vocabulary).
        """
        root = Path(folder)
        manifest_path = root / MANIFEST_FILE
        if not manifest_path.is_file():
            raise DemoModelError(f"no demo checkpoints in {root} ({MANIFEST_FILE} missing); run `seedfast demo` "
                                 "first, or pass --demo DIR of a demo run")
        try:
            manifest = Manifest.from_dict(json.loads(manifest_path.read_text(encoding="utf-8")), str(manifest_path))
        except json.JSONDecodeError as err:
            raise DemoModelError(f"{manifest_path}: not valid JSON ({err})") from None
        paths = {"tokenizer": Path(tokenizer or root / TOKENIZER_DIR),
                 "detokenizer": Path(detokenizer or root / DETOKENIZER_DIR), "llm": Path(llm or root / LLM_DIR)}
        for name, path in paths.items():
            if not path.is_dir():
                raise DemoModelError(f"{name} checkpoint not found: {path} is not a folder")
        from safetensors import SafetensorError

        try:
            seed_tokenizer = SeedTokenizer.load(paths["tokenizer"])
            detok = NormalisedDetokenizer.load(paths["detokenizer"])
            model = Llama.from_hf(paths["llm"], dtype=torch.float32)
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise DemoModelError(f"cannot load the checkpoints: {_one_line(err)}") from None
        models = cls(seed_tokenizer.eval(), detok, model.eval(), WordTokenizer.procedural(), tiny_visual_vocab(),
                     manifest)
        models.check()
        return models

    def check(self) -> None:
        """Raise :class:`DemoModelError` unless the parts fit together."""
        tc, vocab = self.tokenizer.config, self.vocab
        if tc.codebook_size != vocab.num_codes:
            raise DemoModelError(f"the tokenizer has {tc.codebook_size} codes, the LLM's vocabulary {vocab.num_codes}")
        if tc.generation_embed_dim != self.detokenizer.embed_dim:
            raise DemoModelError(f"the tokenizer makes {tc.generation_embed_dim}-d generation embeddings, the "
                                 f"de-tokenizer takes {self.detokenizer.embed_dim}-d ones")
        if self.llm.config.vocab_size < vocab.min_vocab_size:
            raise DemoModelError(f"the LLM has {self.llm.config.vocab_size} ids, the vocabulary layout needs "
                                 f"{vocab.min_vocab_size}")

    def save(self, folder: str | Path) -> Path:
        """Write the bundle (manifest, tokenizer, de-tokenizer, LLM) into ``folder``; return it."""
        from seedfast.models.llama_hf import save_hf

        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(root / TOKENIZER_DIR)
        self.detokenizer.save(root / DETOKENIZER_DIR)
        save_hf(self.llm, None, root / LLM_DIR)
        (root / MANIFEST_FILE).write_text(json.dumps(self.manifest.to_dict(), indent=1) + "\n", encoding="utf-8")
        return root

    # -----------------------------------------------------------------------------------------
    # The four SEED operations

    @torch.no_grad()
    def tokenize(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` (uint8, or float in [0, 1]) → codes ``[B, 32]`` int64."""
        return self.tokenizer.encode_pixels(images)

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor, *, seed: int | Sequence[int] = 0) -> torch.Tensor:
        """Codes ``[B, 32]`` → images ``[B, 3, H, W]`` float in [0, 1] (generation embedding, then
        the de-tokenizer).

        Raises
        ------
        ValueError
            Not ``[B, 32]``, or a code outside the codebook.
        """
        return self._decode(self.tokenizer.generation_embedding(codes), seed)

    def _decode(self, embeddings: torch.Tensor, seed: int | Sequence[int]) -> torch.Tensor:
        m = self.manifest
        return self.detokenizer.decode(embeddings, seed=seed, steps=m.decode_steps, guidance_scale=m.guidance_scale)

    def caption_ids(self, caption: str) -> list[int]:
        """Word ids of a caption after SEED's cleaning (lower case, punctuation dropped).

        Raises
        ------
        ValueError
            Empty, or a word outside the demo's vocabulary (the words are listed).
        """
        words = clean_caption(caption).split()
        if not words:
            raise ValueError("the caption is empty")
        unknown = [w for w in words if w not in self.text.words]
        if unknown:
            raise ValueError(f"word(s) {', '.join(repr(w) for w in dict.fromkeys(unknown))} are not in the demo's "
                             f"vocabulary: {' '.join(self.text.words)}")
        return self.text.encode(" ".join(words))

    @torch.no_grad()
    def caption(self, codes: torch.Tensor, *, seed: int | Sequence[int] = 0) -> list[str]:
        """Codes ``[B, 32]`` → one caption each: the LLM continues ``<s> <img> codes </img>``."""
        from seedfast.generation import generate

        vocab = self.vocab
        prompts = [[self.text.bos_id, vocab.boi_id, *(vocab.first_code_id + c for c in row), vocab.eoi_id]
                   for row in codes.tolist()]
        t = self.manifest.caption_temperature
        outputs = generate(self.llm, prompts, vocab=vocab, max_new_tokens=MAX_CAPTION_TOKENS, temperature=t,
                           top_k=0, top_p=1.0, seed=_seeds(seed, len(prompts)))
        # The caption is the text up to an image the LLM may go on to draw.
        return [self.text.decode(out.text_segments[0]) for out in outputs]

    @torch.no_grad()
    def draw(self, captions: Sequence[str], *, seed: int | Sequence[int] = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions → ``(codes [B, 32], images [B, 3, H, W])``: the LLM continues ``<s> caption <img>``
        with exactly 32 codes (constrained sampling), which are then de-tokenized.

        Raises
        ------
        ValueError
            A caption with words outside the vocabulary.
        """
        from seedfast.generation import generate

        vocab, m = self.vocab, self.manifest
        prompts = [[self.text.bos_id, *self.caption_ids(c), vocab.boi_id] for c in captions]
        seeds = _seeds(seed, len(prompts))
        outputs = generate(self.llm, prompts, vocab=vocab, max_new_tokens=vocab.codes_per_image + 1,
                           temperature=m.image_temperature, top_k=m.image_top_k, top_p=m.image_top_p, seed=seeds)
        codes = torch.stack([out.image_codes[0] for out in outputs])
        return codes, self.detokenize(codes, seed=seeds)


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """One seed per row: a given sequence, or ``seed + row``."""
    if isinstance(seed, int):
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n:
        raise ValueError(f"need {n} seeds (one per row), got {len(seeds)}")
    return seeds


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
