"""The demo's trained models: one :class:`~seedfast.pipeline.SeedPipeline` (SEED tokenizer,
SEED-LLaMA, de-tokenizer) with the procedural captions' words as its text tokenizer and the
demo manifest on top, loaded from the folder ``seedfast demo`` writes (or from the user's own
checkpoints). The demo, the user commands and the released weights run the same pipeline code.

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
from seedfast.generation.sampling import SamplingParams
from seedfast.models.detokenizer import SeedDetokenizer
from seedfast.models.llama import Llama
from seedfast.models.seed_llama import BOI_TOKEN, IMAGE_PLACEHOLDER, PLAIN, image_block, tiny_visual_vocab
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.pipeline import SeedPipeline
from seedfast.train.text import WordTokenizer, clean_caption
from seedfast.visual_vocab import VisualVocab

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

    def __init__(self, detokenizer: SeedDetokenizer, normaliser: EmbeddingNormaliser, *, steps: int | None = None,
                 guidance_scale: float | None = None) -> None:
        if normaliser.dim != detokenizer.embed_dim:
            raise ValueError(f"NormalisedDetokenizer: normaliser is {normaliser.dim}-d, the de-tokenizer takes "
                             f"{detokenizer.embed_dim}-d embeddings")
        self.detokenizer, self.normaliser = detokenizer, normaliser
        self.steps, self.guidance_scale = steps, guidance_scale

    def with_settings(self, *, steps: int | None, guidance_scale: float | None) -> NormalisedDetokenizer:
        """The same models decoding with these sampler settings by default."""
        return NormalisedDetokenizer(self.detokenizer, self.normaliser, steps=steps, guidance_scale=guidance_scale)

    @property
    def image_size(self) -> int:
        return self.detokenizer.image_size

    @property
    def embed_dim(self) -> int:
        return self.detokenizer.embed_dim

    def decode(self, embeddings: torch.Tensor, *, seed: int | Sequence[int] = 0, steps: int | None = None,
               guidance_scale: float | None = None) -> torch.Tensor:
        """Generation embeddings ``[B, E]`` → images ``[B, 3, H, W]`` float in [0, 1] (see
        :meth:`SeedDetokenizer.decode`; ``steps`` and ``guidance_scale`` default to this object's)."""
        return self.detokenizer.decode(self.normaliser(embeddings), seed=seed,
                                       steps=self.steps if steps is None else steps,
                                       guidance_scale=self.guidance_scale if guidance_scale is None else guidance_scale)

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


class WordPromptTokenizer:
    """The demo's text tokenizer for :class:`~seedfast.pipeline.SeedPipeline`: the procedural
    captions' words, bos first, images as ``<img>`` + codes + ``</img>`` blocks.

    Parameters
    ----------
    words : WordTokenizer
    vocab : VisualVocab
        Where the codes and image markers sit after the words' ids.
    """

    def __init__(self, words: WordTokenizer, vocab: VisualVocab) -> None:
        self.words, self.vocab = words, vocab

    def word_ids(self, text: str) -> list[int]:
        """Word ids of ``text`` after SEED's caption cleaning (lower case, punctuation dropped).

        Raises
        ------
        ValueError
            A word outside the demo's vocabulary (the words are listed).
        """
        words = clean_caption(text).split()
        unknown = [w for w in words if w not in self.words.words]
        if unknown:
            raise ValueError(f"word(s) {', '.join(repr(w) for w in dict.fromkeys(unknown))} are not in the demo's "
                             f"vocabulary: {' '.join(self.words.words)}")
        return self.words.encode(" ".join(words))

    def encode(self, text: str, image_codes: Sequence[Sequence[int] | torch.Tensor] = ()) -> list[int]:
        """Prompt ids: bos, the words, each ``<image>`` replaced by the next image's block, a final
        ``<img>`` kept (it makes the model draw).

        Raises
        ------
        ValueError
            Unknown words, or a placeholder count that differs from the number of images.
        """
        forced = text.endswith(BOI_TOKEN)
        pieces = (text[:-len(BOI_TOKEN)] if forced else text).split(IMAGE_PLACEHOLDER)
        if len(pieces) - 1 != len(image_codes):
            raise ValueError(f"prompt has {len(pieces) - 1} {IMAGE_PLACEHOLDER} placeholder(s) but "
                             f"{len(image_codes)} image(s)")
        ids = [self.words.bos_id]
        for piece, codes in zip(pieces, [*image_codes, None]):
            ids += self.word_ids(piece)
            if codes is not None:
                ids += image_block(codes, self.vocab)
        return ids + ([self.vocab.boi_id] if forced else [])

    def decode(self, ids: Sequence[int]) -> str:
        return self.words.decode(ids)


class DemoModels(SeedPipeline):
    """The demo's :class:`~seedfast.pipeline.SeedPipeline`, on the CPU, in eval mode.

    Parameters
    ----------
    tokenizer : SeedTokenizer
    detokenizer : NormalisedDetokenizer
        Decodes with the manifest's sampler steps and guidance.
    llm : Llama
    manifest : Manifest
        Also gives the sampling: captions at ``caption_temperature`` (top-k and top-p off, at
        most :data:`MAX_CAPTION_TOKENS`), images at ``image_temperature``/``image_top_k``/``image_top_p``.
    words : WordTokenizer, optional
        Default: the procedural caption grammar's words.

    Raises
    ------
    DemoModelError
        The parts do not fit together (code count, embedding size, vocabulary).
    """

    def __init__(self, tokenizer: SeedTokenizer, detokenizer: NormalisedDetokenizer, llm: Llama, manifest: Manifest,
                 words: WordTokenizer | None = None) -> None:
        self.manifest = manifest
        m = manifest
        text = WordPromptTokenizer(words or WordTokenizer.procedural(), tiny_visual_vocab())
        super().__init__(
            tokenizer, llm, text,
            detokenizer.with_settings(steps=m.decode_steps, guidance_scale=m.guidance_scale), template=PLAIN,
            sampling=SamplingParams(max_new_tokens=MAX_CAPTION_TOKENS, temperature=m.caption_temperature, top_k=0,
                                    top_p=1.0),
            image_sampling=SamplingParams(temperature=m.image_temperature, top_k=m.image_top_k,
                                          top_p=m.image_top_p))

    @property
    def words(self) -> WordTokenizer:
        return self.text_tokenizer.words

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
        return cls(seed_tokenizer.eval(), detok, model.eval(), manifest)

    def check(self) -> None:
        """Raise :class:`DemoModelError` unless the parts fit together."""
        try:
            super().check()
        except ValueError as err:
            raise DemoModelError(str(err)) from None

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

    def caption_ids(self, caption: str) -> list[int]:
        """Word ids of a caption after SEED's cleaning (lower case, punctuation dropped).

        Raises
        ------
        ValueError
            Empty, or a word outside the demo's vocabulary (the words are listed).
        """
        ids = self.text_tokenizer.word_ids(caption)
        if not ids:
            raise ValueError("the caption is empty")
        return ids


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())
