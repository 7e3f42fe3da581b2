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

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seedfast.generation.generate import GenerationOutput, generate
from seedfast.models.detokenizer import SeedDetokenizer
from seedfast.models.llama import Llama
from seedfast.models.preprocess import clip_preprocess
from seedfast.models.seed_llama import (
    BOI_TOKEN,
    IMAGE_PLACEHOLDER,
    LLAMA2_CHAT,
    VICUNA,
    PromptTemplate,
    get_template,
)
from seedfast.models.seed_llama_tokenizer import SeedLlamaTokenizer, visual_vocab_from_tokenizer
from seedfast.models.seed_tokenizer import SeedTokenizer

GENERATION_CONFIG_FILE = "generation_config.json"
TEMPLATE_NAMES = {"8b": VICUNA, "14b": LLAMA2_CHAT, "vicuna": VICUNA, "llama2": LLAMA2_CHAT}
"""``--template`` values: SEED-LLaMA 8B speaks Vicuna, 14B LLaMA-2 chat."""
_TEMPLATE_BY_WIDTH = {4096: VICUNA, 5120: LLAMA2_CHAT}


@dataclass(frozen=True)
class SamplingParams:
    """How SEED-LLaMA samples (the official scripts' defaults: temperature 1, top-p 0.5, top-k 50).

    Attributes
    ----------
    max_new_tokens : int
    temperature : float
        ``0``: greedy.
    top_k : int
        ``<= 0``: off.
    top_p : float
        In (0, 1]; ``1``: off.
    """

    max_new_tokens: int = 120
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 0.5

    def replace(self, **overrides: Any) -> SamplingParams:
        """These settings with the given (non-None) ones replacing them."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    @classmethod
    def from_generation_config(cls, folder: str | Path) -> SamplingParams:
        """Defaults from a checkpoint's ``generation_config.json`` (absent: the official defaults).

        ``do_sample: false`` means greedy (temperature 0); ``max_new_tokens``, ``temperature``,
        ``top_k`` and ``top_p`` are taken when present.

        Raises
        ------
        ValueError
            The file is not JSON, or a value has the wrong type (naming the file and key).
        """
        path = Path(folder) / GENERATION_CONFIG_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({' '.join(str(err).split())})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        kinds = {"max_new_tokens": int, "temperature": (int, float), "top_k": int, "top_p": (int, float)}
        values: dict[str, Any] = {}
        for key, kind in kinds.items():
            if key in data and data[key] is not None:
                if isinstance(data[key], bool) or not isinstance(data[key], kind):
                    raise ValueError(f"{path}: {key} must be a number, got {data[key]!r}")
                values[key] = data[key]
        if data.get("do_sample") is False:
            values["temperature"] = 0.0
        return cls(**values)


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
    text_tokenizer : SeedLlamaTokenizer, optional
        Needed with ``llm`` for string prompts.
    detokenizer : SeedDetokenizer, optional
        Codes → pixels (needed by :meth:`detokenize` and :meth:`text_to_image`).
    template : PromptTemplate or {"8b", "14b", "vicuna", "llama2"}, optional
        Default: inferred from the LLM's width (:func:`infer_template`).
    sampling : SamplingParams, optional
        Defaults under the per-call arguments.
    preprocess : callable, optional
        Raw pixels ``[B, 3, H, W]`` → the tokenizer's input; default the official transform
        (:func:`clip_preprocess` at the tokenizer's image size).

    Raises
    ------
    ValueError
        The parts do not fit together (codebook size, vocabulary, embedding width).
    """

    def __init__(self, tokenizer: SeedTokenizer, llm: Llama | None = None,
                 text_tokenizer: SeedLlamaTokenizer | None = None, detokenizer: SeedDetokenizer | None = None, *,
                 template: PromptTemplate | str | None = None, sampling: SamplingParams | None = None,
                 preprocess: Any = None) -> None:
        self.tokenizer = tokenizer
        self.llm = llm
        self.text_tokenizer = text_tokenizer
        self.detokenizer = detokenizer
        if isinstance(template, str) and template in TEMPLATE_NAMES:
            template = TEMPLATE_NAMES[template]
        self.template = get_template(template) if template is not None else (
            infer_template(llm) if llm is not None else None)
        self.sampling = sampling or SamplingParams()
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
    def vocab(self):
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
        seeds = [seed] * len(codes) if isinstance(seed, int) else list(seed)
        return self.detokenizer.decode(self.tokenizer.generation_embedding(codes), seed=seeds)

    def _codes(self, images: Any) -> list[list[int]]:
        if isinstance(images, torch.Tensor) and not images.is_floating_point() and images.dtype != torch.uint8:
            codes = images[None] if images.dim() == 1 else images
            return codes.tolist()
        return self.tokenize(images).tolist()

    # -- SEED-LLaMA ----------------------------------------------------------------------------

    def _generate(self, texts: list[str], codes: list[list[list[int]]], seed: int | Sequence[int],
                  sampling: SamplingParams) -> list[GenerationOutput]:
        seeds = [seed] * len(texts) if isinstance(seed, int) else list(seed)
        prompts = [self.text_tokenizer.encode(t, c) for t, c in zip(texts, codes)]
        return generate(self.llm, prompts, vocab=self.vocab, tokenizer=None, max_new_tokens=sampling.max_new_tokens,
                        temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, seed=seeds,
                        stream=0)

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
    def text_to_image(self, prompts: str | Sequence[str], *, seed: int | Sequence[int] = 0,
                      **sampling: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Prompts → ``(codes [B, 32], images [B, 3, H, W])``: the template, then a forced ``<img>``.

        ``sampling`` overrides :attr:`sampling` (``temperature``, ``top_k``, ``top_p``);
        ``max_new_tokens`` is one image's worth.
        """
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        texts = [self.render(p) + BOI_TOKEN for p in prompts]
        params = self.sampling.replace(**sampling, max_new_tokens=self.vocab.codes_per_image + 1)
        outputs = self._generate(texts, [[] for _ in texts], seed, params)
        codes = torch.stack([o.image_codes[0] for o in outputs])
        seeds = [seed] * len(prompts) if isinstance(seed, int) else list(seed)
        images = self.detokenize(codes, seed=seeds) if self.detokenizer is not None else None
        return codes, images

    @torch.no_grad()
    def answer(self, images: Any, question: str | None = None, *, seed: int | Sequence[int] = 0,
               **sampling: Any) -> list[GenerationOutput]:
        """Images (pixels or codes ``[B, 32]``) → SEED-LLaMA's full outputs, text segments decoded.

        ``finish_reason == "length"`` says the answer was cut at ``max_new_tokens``.
        """
        text = self.render(IMAGE_PLACEHOLDER + (question or ""))
        codes = self._codes(images)
        outputs = self._generate([text] * len(codes), [[c] for c in codes], seed, self.sampling.replace(**sampling))
        for out in outputs:
            out.text_segments = [self.text_tokenizer.decode(s) for s in out.text_segments]
        return outputs

    def caption(self, images: Any, question: str | None = None, *, seed: int | Sequence[int] = 0,
                **sampling: Any) -> list[str]:
        """Images (pixels or codes ``[B, 32]``) → SEED-LLaMA's answer each (the text before any image it draws)."""
        return [out.text_segments[0].strip() for out in self.answer(images, question, seed=seed, **sampling)]

    @torch.no_grad()
    def chat(self, turns: Sequence[str], images: Sequence[Any] = (), *, seed: int = 0,
             **sampling: Any) -> GenerationOutput:
        """One conversation: alternating user/assistant turns ending with the user's, ``<image>`` where each image goes.

        Returns
        -------
        GenerationOutput
            ``text_segments`` decoded to strings.
        """
        codes = [self._codes(i)[0] for i in images]
        out = self._generate([self.render(list(turns))], [codes], seed, self.sampling.replace(**sampling))[0]
        out.text_segments = [self.text_tokenizer.decode(s) for s in out.text_segments]
        return out


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


__all__ = ["GENERATION_CONFIG_FILE", "SamplingParams", "SeedPipeline", "TEMPLATE_NAMES", "image_pixels",
           "infer_template", "load_text_tokenizer"]
