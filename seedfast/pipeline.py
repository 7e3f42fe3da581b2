"""SEED as released, as one object: SEED tokenizer → SEED-LLaMA → de-tokenizer.

:class:`SeedPipeline` composes the models (:mod:`seedfast.models`) with generation
(:mod:`seedfast.generation`), so it lives above both. It loads local folders (nothing is
downloaded), normalises images the way the released tokenizer expects (the official transform,
:func:`seedfast.models.preprocess.clip_preprocess`), renders the official prompt templates, reads
the checkpoint's ``generation_config.json`` as defaults under explicit arguments, and offers what
users do: :meth:`~SeedPipeline.tokenize`, :meth:`~SeedPipeline.detokenize`,
:meth:`~SeedPipeline.text_to_image`, :meth:`~SeedPipeline.caption`, :meth:`~SeedPipeline.chat`.

Every request gets its own seed and the sampler stream 0, so a request's output does not depend
on the batch it runs in or its row there.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from seedfast.generation.generate import generate
from seedfast.generation.sampling import GENERATION_CONFIG_FILE, SamplingParams
from seedfast.models.detokenizer import SeedDetokenizer
from seedfast.models.llama import Llama
from seedfast.models.preprocess import clip_preprocess
from seedfast.models.seed_llama import (
    BOI_TOKEN,
    IMAGE_PLACEHOLDER,
    LLAMA2_CHAT,
    PLAIN,
    VICUNA,
    PromptTemplate,
    get_template,
)
from seedfast.models.seed_llama_tokenizer import SeedLlamaTokenizer, visual_vocab_from_tokenizer
from seedfast.models.seed_tokenizer import SeedTokenizer
from seedfast.visual_vocab import VisualVocab

TEMPLATE_NAMES = {"8b": VICUNA, "14b": LLAMA2_CHAT, "vicuna": VICUNA, "llama2": LLAMA2_CHAT, "plain": PLAIN}
"""``--template`` values: SEED-LLaMA 8B speaks Vicuna, 14B LLaMA-2 chat; ``plain`` uses the text as it is."""
_TEMPLATE_BY_WIDTH = {4096: VICUNA, 5120: LLAMA2_CHAT}


@runtime_checkable
class TextTokenizer(Protocol):
    """What the pipeline needs of a text tokenizer (:class:`SeedLlamaTokenizer`, or the demo's words)."""

    vocab: VisualVocab

    def encode(self, text: str, image_codes: Sequence[Sequence[int] | torch.Tensor] = ()) -> list[int]:
        """Prompt ids, bos first, each ``<image>`` of ``text`` replaced by the next image's block."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text ids → a string."""
        ...


@runtime_checkable
class ImageDetokenizer(Protocol):
    """What the pipeline needs of a de-tokenizer (:class:`SeedDetokenizer`, or the demo's)."""

    embed_dim: int

    def decode(self, embeddings: torch.Tensor, *, seed: int | Sequence[int] = 0) -> torch.Tensor:
        """Generation embeddings ``[B, E]`` → images ``[B, 3, H, W]`` float in [0, 1]."""
        ...


@dataclass
class Reply:
    """SEED-LLaMA's answer to one request.

    Attributes
    ----------
    prompt_ids : list of int
        The prompt as the model saw it (bos, template and image blocks included).
    token_ids : list of int
        Generated ids, the final eos included when the row stopped on it.
    text_segments : list of str
        The text before, between and after the generated images (``len(image_codes) + 1``).
    image_codes : Tensor ``[n_images, 32]``, int64
    images : Tensor ``[n_images, 3, H, W]`` float in [0, 1], or None
        The generated images decoded (when the pipeline has a de-tokenizer).
    finish_reason : {"eos", "length", "error"}
        ``"length"``: the answer was cut at ``max_new_tokens``.
    """

    prompt_ids: list[int]
    token_ids: list[int]
    text_segments: list[str]
    image_codes: torch.Tensor
    images: torch.Tensor | None
    finish_reason: str

    @property
    def text(self) -> str:
        """The text with ``<image>`` where each generated image is."""
        return IMAGE_PLACEHOLDER.join(self.text_segments)


def infer_template(llm: Llama) -> PromptTemplate | None:
    """The official template of a SEED-LLaMA model by its width (8B: Vicuna, 14B: LLaMA-2 chat); None if unknown."""
    return _TEMPLATE_BY_WIDTH.get(llm.config.dim)


def image_pixels(images: Any) -> torch.Tensor:
    """Images as one ``[B, 3, H, W]`` tensor of raw pixels (uint8, or float in [0, 1]).

    Parameters
    ----------
    images : PIL image, sequence of PIL images, or Tensor ``[3, H, W]`` / ``[B, 3, H, W]``
        PIL images are converted with ``.convert("RGB")`` (the official transform; all must be one
        size to batch). Tensors: uint8 0–255, or float in [0, 1].

    Raises
    ------
    TypeError
        Not a PIL image or tensor, or a tensor that is neither uint8 nor floating.
    ValueError
        The wrong shape, or a float tensor outside [0, 1] (CLIP-normalised or 0–255 floats: the
        pipeline normalises itself and wants raw pixels).
    """
    if isinstance(images, torch.Tensor):
        pixels = images[None] if images.dim() == 3 else images
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise ValueError(f"images must be [3, H, W] or [B, 3, H, W], got {tuple(images.shape)}")
        if pixels.is_floating_point():
            if pixels.numel() and not (float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0):
                raise ValueError(
                    f"float images must be raw pixels in [0, 1], got values in [{float(pixels.min()):.3g}, "
                    f"{float(pixels.max()):.3g}]; pass uint8 0-255, floats in [0, 1] or PIL images (the pipeline "
                    "applies the CLIP normalisation itself), or codes to skip the tokenizer")
        elif pixels.dtype != torch.uint8:
            raise TypeError(f"images must be uint8 or floating, got {pixels.dtype}")
        return pixels
    items = [images] if hasattr(images, "convert") else list(images) if isinstance(images, (list, tuple)) else None
    if not items or not all(hasattr(i, "convert") for i in items):
        raise TypeError(f"images must be PIL images or a tensor, got {type(images).__name__}")
    import numpy as np

    arrays = [torch.from_numpy(np.asarray(i.convert("RGB")).copy()).permute(2, 0, 1) for i in items]
    if len({tuple(a.shape) for a in arrays}) > 1:
        raise ValueError(f"images must be one size to batch, got {sorted({tuple(a.shape[1:]) for a in arrays})}")
    return torch.stack(arrays)


class SeedPipeline:
    """SEED tokenizer → SEED-LLaMA → de-tokenizer.

    Parameters
    ----------
    tokenizer : SeedTokenizer
        Images ↔ codes; its generation head makes the de-tokenizer's embeddings.
    llm : Llama, optional
        SEED-LLaMA (needed by :meth:`text_to_image`, :meth:`caption`, :meth:`chat`).
    text_tokenizer : TextTokenizer, optional
        Needed with ``llm``: a :class:`SeedLlamaTokenizer`, or any object with ``vocab``,
        ``encode(text, image_codes)`` and ``decode(ids)``.
    detokenizer : ImageDetokenizer, optional
        Codes → pixels (needed by :meth:`detokenize`, and by :meth:`text_to_image` for pixels).
    template : PromptTemplate or {"8b", "14b", "vicuna", "llama2", "plain"}, optional
        Default: inferred from the LLM's width (:func:`infer_template`).
    sampling : SamplingParams, optional
        Defaults for answers, under the per-call arguments.
    image_sampling : SamplingParams, optional
        Defaults for :meth:`text_to_image` (its ``max_new_tokens`` is always one image's worth);
        default ``sampling``, as the official scripts use one setting for both.
    preprocess : callable, optional
        Raw pixels ``[B, 3, H, W]`` → the tokenizer's input; default the official transform
        (:func:`clip_preprocess` at the tokenizer's image size).

    Raises
    ------
    ValueError
        The parts do not fit together (codebook size, vocabulary, embedding width).

    Notes
    -----
    Every request samples on stream 0 with its own seed, so its output does not depend on the
    batch it runs in or its row there. A single ``seed`` is every request's seed.
    """

    def __init__(self, tokenizer: SeedTokenizer, llm: Llama | None = None,
                 text_tokenizer: TextTokenizer | None = None, detokenizer: ImageDetokenizer | None = None, *,
                 template: PromptTemplate | str | None = None, sampling: SamplingParams | None = None,
                 image_sampling: SamplingParams | None = None, preprocess: Any = None) -> None:
        self.tokenizer = tokenizer
        self.llm = llm
        self.text_tokenizer = text_tokenizer
        self.detokenizer = detokenizer
        if isinstance(template, str) and template in TEMPLATE_NAMES:
            template = TEMPLATE_NAMES[template]
        self.template = get_template(template) if template is not None else (
            infer_template(llm) if llm is not None else None)
        self.sampling = sampling or SamplingParams()
        self.image_sampling = image_sampling or self.sampling
        size = tokenizer.config.image_size
        self.preprocess = preprocess or (lambda pixels: clip_preprocess(pixels, size=size))
        self.check()

    def check(self) -> None:
        """Raise ValueError unless the parts fit together."""
        cfg = self.tokenizer.config
        if self.text_tokenizer is not None:
            vocab = self.text_tokenizer.vocab
            if vocab.num_codes != cfg.codebook_size:
                raise ValueError(f"the tokenizer has {cfg.codebook_size} codes, the text tokenizer's vocabulary "
                                 f"{vocab.num_codes}")
            if self.llm is not None and self.llm.config.vocab_size < vocab.min_vocab_size:
                raise ValueError(f"the LLM has {self.llm.config.vocab_size} ids, the text tokenizer needs "
                                 f"{vocab.min_vocab_size}")
        if self.detokenizer is not None and self.detokenizer.embed_dim != cfg.generation_embed_dim:
            raise ValueError(f"the tokenizer makes {cfg.generation_embed_dim}-d generation embeddings, the "
                             f"de-tokenizer takes {self.detokenizer.embed_dim}-d ones")

    @classmethod
    def from_pretrained(cls, tokenizer: str | Path, llm: str | Path | None = None,
                        detokenizer: str | Path | None = None, *, text_tokenizer: str | Path | None = None,
                        vit: str | Path | None = None, template: PromptTemplate | str | None = None,
                        device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> SeedPipeline:
        """Load the released folders (nothing is downloaded).

        Parameters
        ----------
        tokenizer : path
            A ``seedfast convert`` output folder, or the official ``seed_quantizer.pt`` (with ``vit``).
        llm : path, optional
            A Hugging Face SEED-LLaMA folder (``LlamaForCausalLM``); its ``generation_config.json``
            gives the sampling defaults.
        detokenizer : path, optional
            A diffusers ``StableUnCLIPImg2ImgPipeline`` folder (or a ``PixelDetokenizer`` folder).
        text_tokenizer : path, optional
            The text tokenizer folder; default ``llm``.
        vit : path, optional
            ``eva_vit_g.pth`` for an official ``seed_quantizer.pt``.
        template : {"8b", "14b"} or PromptTemplate, optional
            Default: inferred from the LLM's width.
        device, dtype
            Where the LLM and the tokenizer run (the de-tokenizer picks its own dtype).

        Raises
        ------
        FileNotFoundError
            A path that does not exist.
        ValueError, ImportError
            From the loaders, or parts that do not fit together.
        """
        paths = {"tokenizer": tokenizer, "llm": llm, "detokenizer": detokenizer, "text_tokenizer": text_tokenizer,
                 "vit": vit}
        for name, path in paths.items():
            if path is not None and not Path(path).exists():
                raise FileNotFoundError(f"{name}: {path} does not exist")
        if Path(tokenizer).is_file():
            seed_tokenizer = SeedTokenizer.from_official(tokenizer, vit, device=device)
        else:
            seed_tokenizer = SeedTokenizer.load(tokenizer, device=device)
        model = text = None
        sampling = SamplingParams()
        if llm is not None:
            model = Llama.from_hf(llm, dtype=dtype, device=device).eval()
            sampling = SamplingParams.from_generation_config(llm)
            text = load_text_tokenizer(text_tokenizer or llm, seed_tokenizer.config.codebook_size)
        detok = SeedDetokenizer.load(detokenizer, device=device) if detokenizer is not None else None
        return cls(seed_tokenizer.eval(), model, text, detok, template=template, sampling=sampling)

    load = from_pretrained

    @property
    def vocab(self) -> VisualVocab:
        """Where text, codes, ``<img>``, ``</img>`` and eos sit among the LLM's ids."""
        if self.text_tokenizer is None:
            raise ValueError("this pipeline has no text tokenizer (load it with llm=)")
        return self.text_tokenizer.vocab

    @property
    def device(self) -> torch.device:
        return next(self.tokenizer.parameters()).device

    # -- images ↔ codes ------------------------------------------------------------------------

    @torch.no_grad()
    def tokenize(self, images: Any) -> torch.Tensor:
        """Images → codes ``[B, 32]`` int64 (see :func:`image_pixels` for the accepted forms)."""
        pixels = self.preprocess(image_pixels(images).to(self.device))
        return self.tokenizer.encode(pixels.to(next(self.tokenizer.parameters()).dtype))

    @torch.no_grad()
    def detokenize(self, codes: torch.Tensor | Sequence[Sequence[int]], *, seed: int | Sequence[int] = 0
                   ) -> torch.Tensor:
        """Codes ``[B, 32]`` → images ``[B, 3, H, W]`` float in [0, 1] (one seed, or one per image).

        Raises
        ------
        ValueError
            No de-tokenizer, or bad codes.
        """
        if self.detokenizer is None:
            raise ValueError("this pipeline has no de-tokenizer (load it with detokenizer=)")
        codes = torch.as_tensor(codes, dtype=torch.int64, device=self.device)
        return self.detokenizer.decode(self.tokenizer.generation_embedding(codes), seed=_seeds(seed, len(codes)))

    def codes(self, images: Any) -> list[list[int]]:
        """Images in any form :meth:`tokenize` takes, or codes ``[B, 32]`` / ``[32]`` (an integer
        tensor other than uint8, or nested lists of ints), as lists of codes."""
        if isinstance(images, torch.Tensor) and not images.is_floating_point() and images.dtype != torch.uint8:
            return (images[None] if images.dim() == 1 else images).tolist()
        if isinstance(images, (list, tuple)) and images and all(isinstance(c, int) for c in images):
            return [list(images)]
        if isinstance(images, (list, tuple)) and images and all(isinstance(i, (list, tuple)) for i in images):
            return [[int(c) for c in row] for row in images]
        return self.tokenize(images).tolist()

    def _one_image(self, image: Any, where: str) -> list[int]:
        codes = self.codes(image)
        if len(codes) != 1:
            raise ValueError(f"{where} must be one image, got {len(codes)}")
        return codes[0]

    # -- SEED-LLaMA ----------------------------------------------------------------------------

    def render(self, turns: str | Sequence[str]) -> str:
        """The prompt string (without bos) of one question or alternating turns, by this pipeline's template.

        Raises
        ------
        ValueError
            No LLM/text tokenizer, or no template (a model neither 8B nor 14B wide: pass ``template=``).
        """
        if self.llm is None or self.text_tokenizer is None:
            raise ValueError("this pipeline has no LLM and text tokenizer (load them with llm=)")
        if self.template is None:
            raise ValueError("the prompt template is unknown for this LLM: pass template='8b' or '14b'")
        return self.template.render(turns)

    @torch.no_grad()
    def complete(self, texts: Sequence[str], images: Sequence[Sequence[Any]] | None = None, *,
                 seed: int | Sequence[int] = 0, sampling: SamplingParams | Sequence[SamplingParams] | None = None,
                 progress: bool = False) -> list[Reply]:
        """Rendered prompts (see :meth:`render`) → SEED-LLaMA's replies, generated images decoded.

        Parameters
        ----------
        texts : sequence of str
            Prompt strings without bos; ``<image>`` marks where each of the request's images goes,
            a final ``<img>`` makes the model draw.
        images : sequence, optional
            Per request, its images (codes ``[32]`` or anything :meth:`codes` takes, one image each).
        seed : int or one per request
        sampling : SamplingParams or one per request, optional
            Default :attr:`sampling`.
        progress : bool
            A progress bar over decode steps.

        Raises
        ------
        ValueError
            Bad arguments, a prompt beyond the model's context (see
            :func:`seedfast.generation.generate`), or a ``<image>`` count that differs from the
            request's images.
        """
        if self.llm is None or self.text_tokenizer is None:
            raise ValueError("this pipeline has no LLM and text tokenizer (load them with llm=)")
        texts = list(texts)
        images = [[] for _ in texts] if images is None else [list(i) for i in images]
        if len(images) != len(texts):
            raise ValueError(f"images must hold one list per prompt ({len(texts)}), got {len(images)}")
        seeds = _seeds(seed, len(texts))
        # One image per tokenizer call: a batch's matmuls may round differently from a single
        # image's, and a near tie in the codebook search would then give a request other codes
        # in another batch (its output must not depend on the batch).
        codes = [[self._one_image(image, f"images[{r}][{j}]") for j, image in enumerate(row)]
                 for r, row in enumerate(images)]
        prompts = [self.text_tokenizer.encode(t, c) for t, c in zip(texts, codes)]
        outputs = generate(self.llm, prompts, sampling if sampling is not None else self.sampling, vocab=self.vocab,
                           seed=seeds, stream=0, progress=progress)
        replies = [Reply(o.prompt_ids, o.token_ids, [self.text_tokenizer.decode(t) for t in o.text_ids],
                         o.image_codes, None, o.finish_reason) for o in outputs]
        drawn = [(r, s) for r, s in zip(replies, seeds) if len(r.image_codes)]
        if drawn and self.detokenizer is not None:
            all_codes = torch.cat([r.image_codes for r, _ in drawn])
            pixels = self.detokenize(all_codes, seed=[s for r, s in drawn for _ in range(len(r.image_codes))])
            for (r, _), chunk in zip(drawn, pixels.split([len(r.image_codes) for r, _ in drawn])):
                r.images = chunk
        return replies

    def text_to_image(self, prompts: str | Sequence[str], *, seed: int | Sequence[int] = 0,
                      **sampling: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prompts → ``(codes [B, 32], images [B, 3, H, W] or None without a de-tokenizer)``: the
        template, then a forced ``<img>``.

        ``sampling`` overrides :attr:`image_sampling` (``temperature``, ``top_k``, ``top_p``);
        ``max_new_tokens`` is one image's worth.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = self.image_sampling.replace(**sampling, max_new_tokens=self.vocab.codes_per_image + 1)
        replies = self.complete([self.render(p) + BOI_TOKEN for p in prompts], seed=seed, sampling=params)
        codes = torch.stack([r.image_codes[0] for r in replies])
        images = torch.stack([r.images[0] for r in replies]) if self.detokenizer is not None else None
        return codes, images

    def answer(self, images: Any, question: str | None = None, *, seed: int | Sequence[int] = 0,
               **sampling: Any) -> list[Reply]:
        """Images (pixels, or codes ``[B, 32]``) → SEED-LLaMA's replies to ``<image>{question}``."""
        codes = self.codes(images)
        text = self.render(IMAGE_PLACEHOLDER + (question or ""))
        return self.complete([text] * len(codes), [[c] for c in codes], seed=seed,
                             sampling=self.sampling.replace(**sampling))

    def caption(self, images: Any, question: str | None = None, *, seed: int | Sequence[int] = 0,
                **sampling: Any) -> list[str]:
        """Images (pixels or codes ``[B, 32]``) → SEED-LLaMA's answer each (the text before any image it draws)."""
        return [r.text_segments[0].strip() for r in self.answer(images, question, seed=seed, **sampling)]

    def chat(self, turns: Sequence[str], images: Sequence[Any] = (), *, seed: int = 0, **sampling: Any) -> Reply:
        """One conversation: alternating user/assistant turns ending with the user's, ``<image>`` where each image goes."""
        return self.complete([self.render(list(turns))], [list(images)], seed=seed,
                             sampling=self.sampling.replace(**sampling))[0]


def _seeds(seed: int | Sequence[int], n: int) -> list[int]:
    if isinstance(seed, (list, tuple)):
        if len(seed) != n:
            raise ValueError(f"seed must be one int or {n} (one per request), got {len(seed)}")
        return [int(s) for s in seed]
    return [int(seed)] * n


def load_text_tokenizer(folder: str | Path, num_codes: int) -> SeedLlamaTokenizer:
    """The SEED-LLaMA text tokenizer of ``folder``, its visual layout read from the tokenizer itself.

    Raises
    ------
    ValueError, ImportError
        As :meth:`SeedLlamaTokenizer.from_pretrained` and :func:`visual_vocab_from_tokenizer`.
    """
    from transformers import AutoTokenizer

    from seedfast.models.seed_llama_tokenizer import require_sentencepiece

    sp_file = Path(folder) / "tokenizer.model"
    sp_model = None
    if sp_file.is_file():
        sp_model = require_sentencepiece(f"the text tokenizer {sp_file}").SentencePieceProcessor(
            model_file=str(sp_file))
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return SeedLlamaTokenizer(tokenizer, visual_vocab_from_tokenizer(tokenizer, num_codes=num_codes),
                              sp_model=sp_model)


__all__ = ["GENERATION_CONFIG_FILE", "ImageDetokenizer", "Reply", "SamplingParams", "SeedPipeline", "TEMPLATE_NAMES",
           "TextTokenizer", "image_pixels", "infer_template", "load_text_tokenizer"]
